"""python -m provisioner"""

from .cli.main import main

main()

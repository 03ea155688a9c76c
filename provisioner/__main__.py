"""python -m provisioner"""

from .cli import main

main()

"""provisioner: declare Cloud Elements element instances in a YAML manifest, then validate, plan,
apply and destroy them.

The public surface is what this module lists; everything else is internal.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]

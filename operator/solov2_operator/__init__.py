"""solov2_operator: the kopf operator that runs SOLOv2Training resources as gangs of trainer pods.

It never imports torch or the trainer package (an import-linter contract in pyproject.toml checks
this): its only contract with the trainer is the CLI flags, the Prometheus metric names and the JSON
of the termination message, documented in the README.
"""

__version__ = "0.1.0"

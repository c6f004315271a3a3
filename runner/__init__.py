"""plm-runner: one Hydra CLI for efficient pre-trained language model research.

Importing this package is cheap on purpose (no torch): `python -m runner --cfg job` must stay fast.
"""

__version__ = "0.1.0"

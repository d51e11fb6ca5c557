"""`python -m syncnorm.check`: the layer-level SyncBatchNorm check, `syncnorm.training.check`."""
import sys

from .training.check import main

if __name__ == "__main__":
    sys.exit(main())

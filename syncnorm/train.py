"""`python -m syncnorm.train` and `syncnorm-train`: the training job, `syncnorm.training.train`."""
import sys

from .training.train import main

if __name__ == "__main__":
    sys.exit(main())

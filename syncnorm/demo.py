"""`python -m syncnorm.demo`: the README's main job, `syncnorm.training.demo`."""
import sys

from .training.demo import main

if __name__ == "__main__":
    sys.exit(main())

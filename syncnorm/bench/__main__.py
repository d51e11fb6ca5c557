"""python -m syncnorm.bench: see syncnorm.bench.cli."""
import sys

from .cli import main

sys.exit(main())

"""`python -m syncnorm.launch`: the same as the `syncnorm-launch` command."""
import sys

from . import main

sys.exit(main())

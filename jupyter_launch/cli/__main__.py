"""``python -m jupyter_launch.cli``: the same as ``jupyter launch``."""

import sys

from .main import main

sys.exit(main())

"""``python -m pytest_chaos_cluster``: see cli.py."""

import sys

from .cli import main

sys.exit(main())

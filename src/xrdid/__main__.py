"""``python -m xrdid`` = the ``xrdid`` command."""

import sys

from xrdid.cli import main

sys.exit(main())

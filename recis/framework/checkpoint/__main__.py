"""``python -m recis.framework.checkpoint PATH [--verify]``: see :mod:`.summary`."""

import sys

from recis.framework.checkpoint.summary import main

sys.exit(main())

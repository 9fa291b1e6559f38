"""``python -m recis.framework.checkpoint PATH [--verify]``: see :mod:`.summary`."""

import os
import sys

from recis.framework.checkpoint.summary import main

try:
    sys.exit(main())
except BrokenPipeError:
    # The reader went away (``| head``): no traceback, and none at exit either
    # (Python's recipe: point stdout at devnull before the final flush).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)

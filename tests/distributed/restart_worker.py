"""A torchrun worker whose first attempt loses rank 1 after one all-reduce.

Run as ``torchrun --max_restarts=1 ... tests/distributed/restart_worker.py MARKER``:
the first attempt joins with :func:`recis.distributed.process_group.init_distributed`,
all-reduces once, and rank 1 leaves (creating ``MARKER``); torchrun restarts the
workers, which must join again and all-reduce. Prints what each attempt did.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from recis.distributed.process_group import init_distributed

marker = sys.argv[1]
attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
init_distributed("gloo", "cpu", timeout=timedelta(seconds=60))
total = torch.ones(1)
dist.all_reduce(total)
print(f"attempt {attempt}: rank {dist.get_rank()} joined, sum {int(total)}", flush=True)
if not os.path.exists(marker):
    time.sleep(1)  # both ranks have all-reduced: the store holds this attempt's keys
    if dist.get_rank() == 1:
        open(marker, "w").close()
        os._exit(3)
    time.sleep(60)  # torchrun stops this rank when it sees rank 1 gone

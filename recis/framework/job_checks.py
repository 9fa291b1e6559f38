"""What a job checks across its ranks: that they share their options, and that no
rank's loss went NaN or infinite before a checkpoint is written."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import recis
from recis.framework.rank_sync import RankSync
from recis.framework.training_args import TrainingArguments
from recis.optim.sparse_optimizer import plain_hyperparameters


def code_digest(package: Path) -> str:
    """A digest of the Python files under ``package``, by path and content: two
    installs of the same code agree wherever they live."""
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def recis_code_digest() -> str:
    """:func:`code_digest` of the recis package this process imported."""
    return code_digest(Path(recis.__file__).parent)


def optimizer_hyperparameters(optimizers: Mapping[str, Any]) -> dict[str, Any]:
    """``{"the dense optimizer's lr": 0.1, ...}``: the hyper-parameters
    (:func:`plain_hyperparameters`) of each optimizer's param groups, named by its role
    in ``optimizers`` and, where it has several groups, by group. ``None`` stands for
    no optimizer.

    Example::

        >>> optimizer_hyperparameters({"dense": torch.optim.SGD(model.parameters(), lr=0.1)})
        {"the dense optimizer's lr": 0.1, "the dense optimizer's momentum": 0, ...}
    """
    found: dict[str, Any] = {}
    for role, optimizer in optimizers.items():
        groups = getattr(optimizer, "param_groups", [])
        for i, group in enumerate(groups):
            group_name = f" (param group {i})" if len(groups) > 1 else ""
            for key, value in plain_hyperparameters(group).items():
                found[f"the {role} optimizer's {key}{group_name}"] = value
    return found


def check_same_setup(
    sync: RankSync,
    args: TrainingArguments,
    optimizers: dict[str, Any],
    datasets: dict[str, Any],
) -> None:
    """Raises on every rank unless the ranks agree on ``args.shared()``, the
    hyper-parameters of ``optimizers`` and the setup of ``datasets`` (their
    ``shared_setup()``, where they have one: files, batch size, shuffling): ranks
    that disagree on when to save, evaluate or stop meet in different collectives
    and wait for each other for ever, dense replicas stepped with different learning
    rates drift apart, and ranks that share out their files otherwise read some
    records twice and others never. ``optimizers`` and ``datasets`` map a role
    (``"dense"``, ``"train"``) to each. The ranks must also run the same torch and
    recis (:func:`recis_code_digest`): a node left on an older image or checkout
    could read the options alike and still compute, save or communicate otherwise."""
    mine: dict[str, Any] = {
        "the torch version": torch.__version__,
        "the recis code": recis_code_digest(),
    }
    mine.update({f"TrainingArguments.{k}": v for k, v in args.shared().items()})
    mine.update(optimizer_hyperparameters(optimizers))
    error = None
    for role, dataset in datasets.items():
        shared_setup = getattr(dataset, "shared_setup", None)
        if callable(shared_setup) and error is None:
            try:  # it measures the files: a rank may fail to read them
                mine.update({f"the {role} dataset's {k}": v for k, v in shared_setup().items()})
            except Exception as e:
                error = e
    sync.raise_if_any_failed(error, "/".join(datasets), step=0)
    sync.check_same(mine, "another config, install or copy of the data on some node?")


class NonFiniteLossWatch:
    """Notes the first step whose loss was NaN or infinite, on the device so that
    noting costs no sync; :meth:`check` reads it on every rank before a save.

    Example::

        >>> watch = NonFiniteLossWatch(torch.device("cpu"))
        >>> watch.note(torch.tensor(float("nan")), step=3)
        >>> watch.check(sync, step=4, newest="out/ckpt-2")  # FloatingPointError
    """

    def __init__(self, device: torch.device) -> None:
        self._first = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet

    def note(self, loss: Tensor, step: int) -> None:
        self._first = torch.where((self._first == 0) & ~torch.isfinite(loss), step, self._first)

    def check(self, sync: RankSync, step: int, newest: str | None) -> None:
        """Raises ``FloatingPointError`` on every rank when a rank's loss was not
        finite at some step so far (one small all-gather); ``newest``: the last good
        checkpoint, for the message."""
        firsts = sync.gather(int(self._first), step)
        bad = [(first, rank) for rank, first in enumerate(firsts) if first]
        if bad:
            first, rank = min(bad)
            raise FloatingPointError(
                f"the training loss of rank {rank} was NaN or infinite at step {first}; "
                f"stopping at step {step} without a checkpoint, so that the last good one "
                f"stays the newest ({newest or 'none yet'}). A learning rate too high, or "
                "inputs out of range?"
            )

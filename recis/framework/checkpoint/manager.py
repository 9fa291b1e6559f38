"""CheckpointManager: saves every ``save_interval`` steps and resumes from the newest
checkpoint of a :class:`~recis.framework.checkpoint_manager.Saver`'s ``output_dir``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from recis.distributed.comm import rank_and_world
from recis.framework.checkpoint.commit import LIST_FILE
from recis.framework.checkpoint.load import is_damage

if TYPE_CHECKING:
    from recis.framework.checkpoint_manager import Saver

logger = logging.getLogger(__name__)


class CheckpointManager:
    """Saves every ``save_interval`` optimizer steps and restores the latest checkpoint.

    The manager's own global step is saved with each checkpoint (as extra state
    ``checkpoint_manager``), so ``restore()`` returns the step to resume from.

    Example::

        >>> manager = CheckpointManager(saver, save_interval=1000)
        >>> start = manager.restore()          # 0 on a fresh job
        >>> for step in range(start, total_steps):
        ...     train_one_step()
        ...     manager.step()                 # saves at steps 1000, 2000, ...
    """

    def __init__(self, saver: Saver, save_interval: int) -> None:
        if save_interval < 0:
            raise ValueError(
                f"save_interval must be >= 0 (0: never automatically), got {save_interval}"
            )
        self.saver = saver
        self.save_interval = save_interval
        self._global_step = 0
        saver.register_for_checkpointing("checkpoint_manager", self)

    @property
    def global_step(self) -> int:
        return self._global_step

    def saves_next(self) -> bool:
        """Whether the next :meth:`step` completes an interval, and so saves."""
        return bool(self.save_interval) and (self._global_step + 1) % self.save_interval == 0

    def step(self, blocking: bool = True) -> str | None:
        """Counts one optimizer step; saves when it completes an interval (path, else
        None). ``blocking=False``: see :meth:`Saver.save
        <recis.framework.checkpoint_manager.Saver.save>`."""
        due = self.saves_next()
        self._global_step += 1
        return self.save(blocking) if due else None

    def save(self, blocking: bool = True) -> str:
        """Saves now as ``ckpt-<global_step>``; returns the checkpoint's path."""
        return self.saver.save(f"ckpt-{self._global_step}", blocking=blocking)

    def restore(self) -> int:
        """Loads the latest checkpoint of the saver's ``output_dir``; returns its global
        step (0, loading nothing, when there is none)."""
        ids = self.saver.checkpoints()
        if not ids:
            return 0
        try:
            self.saver.load()
        except Exception as e:
            if is_damage(e) and len(ids) > 1 and rank_and_world(self.saver.process_group)[0] == 0:
                self._explain_fallback(ids)
            raise
        return self._global_step

    def _explain_fallback(self, ids: list[str]) -> None:
        # The list only names complete checkpoints, so a listed one that is gone or
        # broken was deleted or damaged after its save: going back to an older one
        # loses steps, which only the user can agree to.
        output_dir = self.saver.output_dir.rstrip("/")
        logger.error(
            "resuming from %s, the newest checkpoint that %s lists, failed: it is missing "
            "or damaged. To resume from %s instead, delete the line %r from that file "
            "(`python -m recis.framework.checkpoint %s --id %s --verify` checks it first).",
            ids[-1],
            f"{output_dir}/{LIST_FILE}",
            ids[-2],
            ids[-1],
            output_dir,
            ids[-2],
        )

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self._global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._global_step = int(state["global_step"])

"""TrainerCheckpoints: what a Trainer saves, when it saves, and what it resumes from."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from recis.distributed.host_memory import TIGHT_SHARE, RankHost, host_loads
from recis.framework.checkpoint.disk_space import host_state_bytes, mib, rank_checkpoint_bytes
from recis.framework.checkpoint_manager import CheckpointManager, Saver
from recis.framework.job_checks import NonFiniteLossWatch, optimizer_hyperparameters
from recis.framework.progress import Progress
from recis.framework.rank_sync import skip_batches

if TYPE_CHECKING:
    from torch import Tensor

    from recis.framework.rank_sync import RankSync
    from recis.framework.trainer import Trainer

# The Trainer's messages, under its logger's name.
logger = logging.getLogger("recis.framework.trainer")

# Between saves the ranks also compare their losses' finiteness this often, so that
# a diverged job stops within these steps, not only at its next save (one small
# all-gather, and on a GPU one sync, per that many steps).
NONFINITE_CHECK_STEPS = 100


def has_read_position(dataset: Any) -> bool:
    """A dataset whose read position can be checkpointed (``state_dict``/``load_state_dict``)."""
    return callable(getattr(dataset, "state_dict", None)) and callable(
        getattr(dataset, "load_state_dict", None)
    )


class TrainerCheckpoints:
    """A Trainer's checkpoints of ``args.output_dir``.

    The :class:`Saver` is built on first use (after the Trainer's optimizers and
    datasets are final) and holds the model, the sparse and dense optimizers, their LR
    schedulers, the :class:`TrainerState` and, per rank, the train dataset's read
    position. A :class:`CheckpointManager` saves every ``args.save_steps``. A model
    whose loss went NaN or infinite on any rank is never saved: every rank raises
    before writing, so that it cannot push the good checkpoints out.

    Example (the Trainer makes one; its saver is public)::

        >>> trainer.checkpoints.saver.latest_checkpoint()
        '/ckpt/dcn/ckpt-4000'
    """

    def __init__(self, trainer: Trainer, sync: RankSync) -> None:
        self._trainer = trainer
        self._sync = sync
        self._manager: CheckpointManager | None = None
        self.last_saved_step = -1  # the step of the newest checkpoint saved or restored
        self._loading: str | None = None  # what restore() was loading when it stopped
        self._batches_to_skip = 0  # see skip_trained_batches()
        self._nonfinite_loss = NonFiniteLossWatch(trainer.device)

    @property
    def manager(self) -> CheckpointManager:
        """The CheckpointManager over ``output_dir``, built on first use."""
        if self._manager is None:
            self._manager = self._build()
        return self._manager

    @property
    def saver(self) -> Saver:
        return self.manager.saver

    def _build(self) -> CheckpointManager:
        trainer, args = self._trainer, self._trainer.args
        saver = Saver(
            trainer.model,
            trainer.sparse_optimizer,
            args.output_dir,
            max_keep=args.max_to_keep,
            concurrency=args.save_concurrency_per_rank,
        )
        if trainer.dense_optimizer is not None:
            saver.register_for_checkpointing("dense_optimizer", trainer.dense_optimizer)
        for name in ("dense_lr_scheduler", "sparse_lr_scheduler"):
            if getattr(trainer, name) is not None:
                saver.register_for_checkpointing(name, getattr(trainer, name))
        saver.register_for_checkpointing("trainer_state", trainer.state)
        if has_read_position(trainer.train_dataset):
            saver.register_for_checkpointing("train_dataset", trainer.train_dataset, per_rank=True)
        # save_interval 0: no periodic saves, only train()'s final one.
        return CheckpointManager(saver, args.save_steps or 0)

    def _hyperparameters(self) -> dict[str, Any]:
        """What a checkpoint restores of the Trainer's optimizers' param groups."""
        trainer = self._trainer
        return optimizer_hyperparameters(
            {"dense": trainer.dense_optimizer, "sparse": trainer.sparse_optimizer}
        )

    def restore(self) -> int:
        """Loads the newest checkpoint of ``output_dir``, else each ``model_bank`` entry
        in order; returns the step training goes on from (see ``Trainer.restore``)."""
        trainer = self._trainer
        state, main = trainer.state, trainer.is_main_process
        built_with = self._hyperparameters()
        self._loading = "the newest checkpoint"
        step = int(self.manager.restore())
        if step:
            state.global_step = step
            self.last_saved_step = step
            if main:
                logger.info("resumed from %s at step %d", trainer.args.output_dir, step)
        elif trainer.args.model_bank:
            for entry in trainer.args.model_bank:
                self._loading = f"model bank entry {entry['path']}"
                conf = {k: v for k, v in entry.items() if k != "path"}
                self.saver.load_by_config(entry["path"], conf)
                if main:
                    # Loading "extra" brings that job's step: say where training goes on.
                    at = f" at step {state.global_step}" if state.global_step else ""
                    logger.info("warm-started from model bank entry %s%s", entry["path"], at)
        self._loading = None
        if not has_read_position(trainer.train_dataset):
            self._batches_to_skip = state.epoch_batches
        restored = self._hyperparameters()
        changed = [
            f"{key} {restored[key]} (built with {value})"
            for key, value in built_with.items()
            if restored.get(key, value) != value
        ]
        if changed and main:
            logger.info(
                "restored from the checkpoint: %s; to change them, set them after restore()",
                ", ".join(changed),
            )
        return state.global_step

    def skip_trained_batches(self, it: Iterator[Any], epoch: int) -> Iterator[Any]:
        """``it`` (the restored epoch's batches), without those trained before the
        checkpoint when the train dataset has no read position (a list, a
        ``DataLoader``): it starts its epoch over. Applies once, after a restore;
        rank 0 warns, and a long skip logs its progress."""
        count, self._batches_to_skip = self._batches_to_skip, 0
        if not count:
            return it
        main = self._trainer.is_main_process
        if main:
            logger.warning(
                "train_dataset has no read position to checkpoint (state_dict and "
                "load_state_dict): reading the %d batches of epoch %d trained before the "
                "checkpoint again, to skip them",
                count,
                epoch,
            )
        what = f"skipping the batches of epoch {epoch} trained before the checkpoint"
        return skip_batches(it, count, Progress(what, "skipped", count, "batches", log=main))

    def note_loss(self, loss: Tensor, step: int) -> None:
        """Notes a step's loss (no device sync) for the finiteness check before a save."""
        self._nonfinite_loss.note(loss, step)

    def save_if_due(self, final: bool = False) -> None:
        """Saves when the step is a multiple of ``save_steps``, or (``final``) unless
        this step is saved already. All ranks call it together. Raises
        ``FloatingPointError`` on every rank instead when a rank's loss was NaN or
        infinite, checked before each save and every ``NONFINITE_CHECK_STEPS``."""
        trainer = self._trainer
        step = trainer.state.global_step
        start = time.monotonic()
        if final:
            if step != self.last_saved_step:
                self._check_losses_finite()
                self.manager.save()
                self.last_saved_step = step
            self.saver.wait()  # a background save of this very step
        elif self.manager.saves_next():  # step is a multiple of save_steps
            self._check_losses_finite()
            self.manager.step(blocking=not trainer.args.async_save)
            self.last_saved_step = step
        else:
            if step % NONFINITE_CHECK_STEPS == 0:
                self._check_losses_finite()
            self.manager.step()
        trainer.state.checkpoint_seconds += time.monotonic() - start

    def check_staging_memory(self) -> None:
        """Raises on every rank when the ranks of a host need more host memory for the
        copies a background save makes (``args.async_save``) than the host has
        available; rank 0 warns when they would take most of it."""
        trainer = self._trainer
        model, optimizer = trainer.model, trainer.sparse_optimizer
        # The optimizer state of tables in host memory comes on top once created: the
        # memory available now has not paid for it yet.
        need = rank_checkpoint_bytes(model, optimizer) + host_state_bytes(model, optimizer)
        everyone = self._sync.gather_objects((need, RankHost.here(True)))
        for load in host_loads([n for n, _ in everyone], [h for _, h in everyone]):
            if load.available is None:
                continue
            what = (
                f"TrainingArguments.async_save: the ranks on host {load.host!r} need "
                f"{mib(load.total)} of its memory ({load.shares(2**20, 'MiB')}) for the "
                "copy a background save makes of their shards, optimizer state and dense "
                "state (and for optimizer state not created yet), and it has "
                f"{mib(load.available)} available"
            )
            if load.total > load.available:
                raise MemoryError(
                    f"{what}: the ranks would be killed (SIGKILL) at the first save. Set "
                    "async_save to False (each save then holds the training while it writes)"
                )
            if load.total > TIGHT_SHARE * load.available and trainer.is_main_process:
                logger.warning("%s: the training may run out of memory at a save", what)

    def _check_losses_finite(self) -> None:
        newest = self.saver.latest_checkpoint()
        self._nonfinite_loss.check(self._sync, self._trainer.state.global_step, newest)

    def log_sigterm_stop(self) -> None:
        """Tells, on the main process, that SIGTERM stops the training at this step and
        whether its checkpoint is saved, being written or still to be saved."""
        trainer = self._trainer
        if not trainer.is_main_process:
            return
        step = trainer.state.global_step
        if self.last_saved_step != step:
            what = "saving a checkpoint"
        elif self.saver.background_save is not None:
            what = "its checkpoint is being written"
        else:
            what = "its checkpoint is saved"
        logger.warning(
            "SIGTERM: %s at step %d and stopping; running the job again resumes it", what, step
        )

    def finish_background_save(self, why: str, log: bool) -> None:
        """Waits for a background save still being written when the training stops
        early (Ctrl-C, an error), so that its checkpoint is committed rather than cut
        short; ``log``: say so, starting with ``why``. Its failure is logged, not
        raised: the error that stopped the training is the one to raise."""
        if self._manager is None:
            return
        saver = self._manager.saver
        pending, start = saver.background_save, time.monotonic()
        if pending is not None and log:
            logger.warning("%s: finishing the background save of %r first", why, pending)
        try:
            saver.wait()
        except Exception as e:
            if log:
                what = f"the background save of {pending!r}" if pending else "a background save"
                logger.warning("%s: %s failed: %s", why, what, e)
            return
        if pending is not None and log:
            logger.warning(
                "the background save of %r is complete (%.1f s)",
                pending,
                time.monotonic() - start,
            )

    def log_interrupt(self) -> None:
        """Tells, on the main process, what a Ctrl-C leaves to resume from."""
        trainer = self._trainer
        if not trainer.is_main_process:
            return
        step = trainer.state.global_step
        newest = self.saver.latest_checkpoint()
        if self._loading is not None:
            loading = newest if self._loading == "the newest checkpoint" else self._loading
            logger.warning(
                "interrupted while loading %s, before training: running the job again "
                "loads it again",
                loading,
            )
        elif newest is None:
            logger.warning("interrupted at step %d, before any checkpoint was saved", step)
        else:
            logger.warning(
                "interrupted at step %d; the newest checkpoint is %s: running the job "
                "again resumes from it",
                step,
                newest,
            )

"""Trainer: the training and evaluation loop of recis."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from recis.distributed.cpu_threads import idle_cores_hint
from recis.distributed.process_group import (
    init_distributed,
    rank,
    resolve_device,
    set_seed,
    world_size,
)
from recis.framework.evaluation import (
    EvalMetrics,
    check_eval_set_not_empty,
    eval_iterator,
    run_eval_batches,
)
from recis.framework.job_checks import check_same_setup
from recis.framework.metrics import clear_metrics, format_metrics, get_global_metrics
from recis.framework.progress import Progress
from recis.framework.rank_sync import RankSync, deferred_iter
from recis.framework.stop_signal import StopSignal
from recis.framework.trainer_checkpoints import TrainerCheckpoints
from recis.framework.training_args import TrainingArguments, positive_or_none
from recis.hooks import Hook, LoggerHook
from recis.nn import filter_out_sparse_param
from recis.ops import keep_freed_host_memory

__all__ = ["Trainer", "TrainerState", "TrainingArguments"]

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """Progress of training; ``global_step``, ``epoch`` and ``epoch_batches`` are
    checkpointed."""

    global_step: int = 0
    epoch: int = 0
    epoch_batches: int = 0  # batches trained in this epoch (k per step)
    samples: int = 0  # this rank's samples trained by this process (for throughput)
    checkpoint_seconds: float = 0.0  # this process's time in checkpoint saves (likewise)
    evaluation_seconds: float = 0.0  # and in evaluations (likewise)
    stopped_by_signal: bool = False  # train() stopped early on SIGTERM, after a checkpoint

    def state_dict(self) -> dict[str, int]:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "epoch_batches": self.epoch_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.epoch_batches = int(state.get("epoch_batches", 0))  # not in older checkpoints


def _batch_size(data: Any) -> int:
    """Samples in a batch: its label, dense or sparse part (0 when unknown)."""
    if isinstance(data, dict):
        for key in ("label", "dense"):
            if isinstance(data.get(key), Tensor):
                return int(data[key].shape[0])
        sparse = data.get("sparse")
        return int(sparse.stride()) if hasattr(sparse, "stride") else 0
    if isinstance(data, Tensor) and data.dim() > 0:
        return int(data.shape[0])
    return 0


def _check_loss(loss: Any, source: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else ""
        raise TypeError(
            f"{source} must return the scalar loss tensor, got {type(loss).__name__}{shape}"
        )
    return loss


class Trainer:
    """Trains ``model`` on ``train_dataset`` with a dense and a sparse optimizer.

    ``model(batch)`` returns the scalar loss and reports other values with
    :func:`~recis.framework.metrics.add_metric`. ``train_dataset`` is an iterable of
    batches (this rank's part of the data); each epoch calls ``iter()`` on it (and
    ``set_epoch(epoch)`` first when it has one). Batches are moved to
    :attr:`device`; the model must already be there (``DistributedModelParallel``
    places it). ``dense_optimizers`` is ``(optimizer, lr_scheduler)``, either may be
    ``None``; ``sparse_optimizer`` updates the embedding tables, and
    ``sparse_lr_scheduler`` (e.g. a ``torch.optim.lr_scheduler.StepLR`` over it) is
    stepped after each optimizer step like the dense one; both schedulers and the
    optimizers' rates are checkpointed.

    Every step the ranks agree (one small all-reduce) on whether any of them ran
    out of data or failed to read it, so uneven data ends the epoch on every rank
    at the same step, and a rank that cannot read its data makes every rank raise
    (the process group stays usable). An error inside a step (forward, backward,
    optimizer, hook, checkpoint) cannot be announced that way, since the other
    ranks may be waiting in a collective of the model: the failing rank raises and
    destroys its process group, and the others' pending collective fails when that
    process ends (as under torchrun) or lets go of the group, which the trainer
    reports as "another rank failed"; the group's timeout is the last resort.

    ``train()`` first restores the latest checkpoint in ``args.output_dir`` (so
    re-running a job resumes it), then saves every ``save_steps`` steps and at the
    end: the model, the sparse optimizer, the dense optimizer and scheduler, the
    trainer state and, per rank, the train dataset's read position when it has
    ``state_dict``/``load_state_dict``. A dataset without one (a list, a
    ``DataLoader``) starts its epoch over on resume: the trainer reads again and
    skips the batches of the epoch trained before the checkpoint (rank 0 warns),
    which gives the same batches when the epoch's order is reproducible (a
    ``DistributedSampler`` with ``set_epoch``). A save raises ``FloatingPointError`` instead
    when any rank's loss has been NaN or infinite since the job started: a diverged
    model must not push the good checkpoints out (``max_to_keep``). Between saves the
    ranks check this every 100 steps, so a diverged job stops soon. ``checkpoints``
    (:class:`~recis.framework.trainer_checkpoints.TrainerCheckpoints`) does this; its
    ``saver`` is the :class:`Saver` of ``output_dir``.

    Example::

        >>> model = DistributedModelParallel(DLRM(...))
        >>> trainer = Trainer(
        ...     model, TrainingArguments(output_dir="ckpt", train_steps=1000),
        ...     train_dataset=train_data, eval_dataset=eval_data,
        ...     dense_optimizers=(torch.optim.AdamW(model.parameters(), lr=1e-3), None),
        ...     sparse_optimizer=SparseAdagrad(filter_out_sparse_param(model), lr=0.05))
        >>> trainer.train()
        >>> trainer.evaluate()
        {'auc': 0.79, 'logloss': 0.45, 'count': 100000, 'loss': 0.45}
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments | None = None,
        train_dataset: Iterable[Any] | None = None,
        eval_dataset: Iterable[Any] | None = None,
        hooks: Sequence[Hook] | None = None,
        dense_optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        sparse_optimizer: Any = None,
        sparse_lr_scheduler: Any = None,
    ) -> None:
        self.args = args if args is not None else TrainingArguments()
        if not isinstance(self.args, TrainingArguments):
            raise TypeError(f"args must be TrainingArguments, got {type(self.args).__name__}")
        if not isinstance(dense_optimizers, (tuple, list)) or len(dense_optimizers) != 2:
            raise TypeError("dense_optimizers must be a pair (optimizer, lr_scheduler)")
        init_distributed(
            self.args.backend, self.args.device, timedelta(seconds=self.args.ddp_timeout)
        )
        self.device = resolve_device(self.args.device)
        self.rank, self.world_size = rank(), world_size()
        if self.args.keep_freed_host_memory and keep_freed_host_memory() and self.rank == 0:
            logger.info(
                "malloc keeps the host memory each step frees "
                "(TrainingArguments.keep_freed_host_memory=False leaves its defaults)"
            )
        if self.device.type == "cpu" and self.rank == 0:
            hint = idle_cores_hint(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            if hint is not None:
                logger.warning(hint)
        self._sync = RankSync(
            self.rank,
            self.world_size,
            self.device,
            before_leaving=lambda: self.checkpoints.finish_background_save(
                f"rank {self.rank}", log=True
            ),
        )
        set_seed(self.args.seed)
        self.model = model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.dense_optimizer, self.dense_lr_scheduler = dense_optimizers
        self.sparse_optimizer = sparse_optimizer
        self.sparse_lr_scheduler = sparse_lr_scheduler
        # Tables nobody updates still record gradients; clear them every step.
        self._untrained_tables = (
            list(filter_out_sparse_param(model).values()) if sparse_optimizer is None else []
        )
        if self._untrained_tables:
            logger.warning(
                "no sparse_optimizer: embedding tables %s will not be trained",
                [t.name for t in self._untrained_tables],
            )
        self._bf16 = self.args.bf16 and self.device.type == "cuda"
        if self.args.bf16 and not self._bf16:
            logger.warning(
                "bf16 autocast needs a CUDA device; training in float32 on %s", self.device
            )
        self.state = TrainerState()
        self.hooks: list[Hook] = []
        if self.args.log_steps:
            self.add_hook(LoggerHook(self.args.log_steps))
        if hooks:
            self.add_hooks(hooks)
        self.checkpoints = TrainerCheckpoints(self, self._sync)
        self._restored = False
        self._stop_signal = StopSignal()
        self.last_evaluation: tuple[int, dict[str, float]] | None = None  # (step, metrics)

    # ----------------------------------------------------------------- properties
    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps this run will reach, when knowable (for progress and ETA)."""
        args = self.args
        per_epoch = None
        with contextlib.suppress(TypeError):
            per_epoch = len(self.train_dataset) // args.gradient_accumulation_steps  # type: ignore[arg-type]
        by_epochs = None
        if per_epoch is not None and (args.train_epoch or not args.train_steps):
            by_epochs = (args.train_epoch or 1) * per_epoch
        candidates = [s for s in (args.train_steps, by_epochs) if s is not None]
        return min(candidates) if candidates else None

    @property
    def progress(self) -> float | None:
        """The fraction of this run's training done, from 0 to 1, when knowable.

        By steps when :attr:`total_steps` is known; for epochs of a dataset of unknown
        length, by the epochs done and how far this rank's ``train_dataset`` is
        through the current one, when it says (``epoch_progress()``, as
        :class:`recis.io.CriteoDataset` does, by bytes). Training stops at whichever
        of ``train_steps`` and ``train_epoch`` comes first, so the larger fraction
        counts.
        """
        args = self.args
        fractions = []
        total = self.total_steps
        if total:
            fractions.append(self.state.global_step / total)
        epochs = args.train_epoch or (None if args.train_steps else 1)
        epoch_progress = getattr(self.train_dataset, "epoch_progress", None)
        if epochs and callable(epoch_progress):
            done = epoch_progress()
            if done is not None:
                fractions.append((self.state.epoch + done) / epochs)
        return min(1.0, max(fractions)) if fractions else None

    # ---------------------------------------------------------------------- hooks
    def add_hook(self, hook: Hook) -> None:
        """Adds a hook; hooks are called in the order they were added."""
        if not isinstance(hook, Hook):
            raise TypeError(f"hooks must subclass recis.hooks.Hook, got {type(hook).__name__}")
        hook.attach(self)
        self.hooks.append(hook)

    def add_hooks(self, hooks: Iterable[Hook]) -> None:
        for hook in hooks:
            self.add_hook(hook)

    def _call_hooks(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, method)(*args)

    # -------------------------------------------------------------- checkpointing
    def restore(self) -> int:
        """Loads the latest checkpoint of ``output_dir`` (or the model bank); returns the step.

        ``train()`` calls this first; calling it yourself beforehand is fine (it
        restores once). With no checkpoint to resume, each ``model_bank`` entry is
        loaded in order (a warm start, typically ``"load": ["sparse", "dense"]``;
        loading ``extra`` too would also bring that job's optimizer state and step).
        """
        if not self._restored:
            self._restored = True
            self.checkpoints.restore()
        return self.state.global_step

    # ------------------------------------------------------------------- helpers
    def _to_device(self, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: self._to_device(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self._to_device(v) for v in data)
        if getattr(data, "device", self.device) != self.device and hasattr(data, "to"):
            return data.to(self.device)
        return data

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when ``args.bf16`` on CUDA; otherwise does nothing."""
        if self._bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        """Back-propagates ``loss`` scaled by ``1 / gradient_accumulation_steps``."""
        k = self.args.gradient_accumulation_steps
        (loss / k if k > 1 else loss).backward()

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """Skips the dense gradient all-reduce: the model's ``no_sync()`` when it has
        one (DDP), else that of every DDP inside it (e.g. DMP's dense part)."""
        no_sync = getattr(self.model, "no_sync", None)
        if callable(no_sync):
            return no_sync()
        stack = contextlib.ExitStack()
        for module in self.model.modules():
            if isinstance(module, DistributedDataParallel):
                stack.enter_context(module.no_sync())
        return stack

    def _zero_grad(self) -> None:
        if self.dense_optimizer is not None:
            self.dense_optimizer.zero_grad()
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.zero_grad()
        for table in self._untrained_tables:
            table.zero_grad()

    def _optimizer_step(self) -> None:
        if self.dense_optimizer is not None:
            self.dense_optimizer.step()
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.step()
        for scheduler in (self.dense_lr_scheduler, self.sparse_lr_scheduler):
            if scheduler is not None:
                scheduler.step()
        self._zero_grad()

    # ---------------------------------------------------------------- training
    def _train_step(self, data: Any, epoch: int, metrics: dict[str, Any]) -> Tensor:
        """Forward and backward of ONE micro-batch; override to customise a step.

        Contract: compute the loss of ``data`` (already on :attr:`device`), call
        :meth:`backward` on it exactly once (it scales by 1/k for gradient
        accumulation) and return the loss (detached is fine). Do not step or
        zero the optimizers: the trainer does that once per k micro-batches, and
        wraps the first k-1 calls in the model's ``no_sync()``. Values put in
        ``metrics`` reach the hooks' ``after_step`` (they win over ``add_metric``
        values of the same name); ``epoch`` is the current epoch (from 0).

        Example::

            >>> class MyTrainer(Trainer):
            ...     def _train_step(self, data, epoch, metrics):
            ...         with self.autocast():
            ...             loss = self.model(data)
            ...             l2 = sum(p.pow(2).sum() for p in self.model.parameters())
            ...         self.backward(loss + 1e-5 * l2)
            ...         metrics["l2"] = l2.detach()
            ...         return loss.detach()
        """
        with self.autocast():
            loss = _check_loss(self.model(data), "model(batch)")
        self.backward(loss)
        return loss.detach()

    def _run_step(self, window: list[Any], epoch: int) -> dict[str, Any]:
        """k micro-batches, then one optimizer step; returns the step's metrics."""
        clear_metrics()
        metrics: dict[str, Any] = {}
        losses: list[Tensor] = []
        last = len(window) - 1
        for i, data in enumerate(window):
            data = self._to_device(data)
            with self._no_sync() if i < last else contextlib.nullcontext():
                loss = self._train_step(data, epoch, metrics)
            _check_loss(loss, f"{type(self).__name__}._train_step")
            losses.append(loss.detach().float().reshape(()))
            self.state.samples += _batch_size(data)
        self._optimizer_step()
        self.state.global_step += 1
        self.state.epoch_batches += len(window)
        loss = torch.stack(losses).mean()
        self.checkpoints.note_loss(loss, self.state.global_step)
        return {**get_global_metrics(), "loss": loss, **metrics}

    def _run_epoch(self, epoch: int) -> tuple[int, bool]:
        """Steps of one epoch until the data or ``train_steps`` ends; (steps, exhausted)."""
        k = self.args.gradient_accumulation_steps
        it = self.checkpoints.skip_trained_batches(deferred_iter(self.train_dataset), epoch)
        steps = 0
        while self.args.train_steps is None or self.state.global_step < self.args.train_steps:
            # The ranks agree on a stop (SIGTERM) with the window's read and stop after
            # training it, so that its batches count as read in the checkpoint saved.
            window, stop = self._sync.next_window(
                it, k, "training", self.state.global_step, self._stop_requested
            )
            self.state.stopped_by_signal = stop
            if window is None:
                return steps, True
            if stop and self.checkpoints.last_saved_step == self.state.global_step:
                # Just saved (or restored): the checkpoint's data position is before
                # this window, so it is read again on resume; stop without training it.
                return steps, False
            try:
                self._call_hooks("before_step", self.state.global_step)
                metrics = self._run_step(window, epoch)
                self.checkpoints.save_if_due()
                self._call_hooks("after_step", metrics, self.state.global_step)
            except Exception as e:
                raise self._sync.fail(e, self.state.global_step) from e
            steps += 1
            if stop:
                break  # no evaluation: the grace period is for the checkpoint
            every = self.args.eval_every_steps
            if every and self.state.global_step % every == 0:
                self.evaluate()  # handles its own failures, like a step
                if self.state.stopped_by_signal:  # SIGTERM cut the evaluation short
                    break
        return steps, False

    def _stop_requested(self) -> bool:
        return self._stop_signal.requested

    def _set_epoch(self, epoch: int) -> None:
        # Datasets (or a DataLoader's DistributedSampler) that shuffle per epoch.
        ds = self.train_dataset
        for owner in (ds, getattr(ds, "sampler", None)):
            if callable(getattr(owner, "set_epoch", None)):
                owner.set_epoch(epoch)
                return

    def _check_model_device(self) -> None:
        param = next(iter(self.model.parameters()), None)
        if param is not None and param.device.type not in (self.device.type, "meta"):
            raise ValueError(
                f"the model's parameters are on {param.device} but the trainer runs on "
                f"{self.device}: move the model there first (model.to(trainer.device)); "
                "DistributedModelParallel places it itself"
            )

    def _train_epochs(self, max_epochs: int | None, resumed: bool) -> None:
        """Epochs until ``train_steps``, ``max_epochs`` or a stop on SIGTERM."""
        args = self.args
        epoch = self.state.epoch
        start_step, was_resumed = self.state.global_step, resumed
        while not self._limit_reached(max_epochs):
            self.state.epoch = epoch
            self._set_epoch(epoch)
            self._call_hooks("before_epoch", epoch)
            steps, exhausted = self._run_epoch(epoch)
            self._call_hooks("after_epoch", epoch)
            if exhausted:
                epoch += 1
                self.state.epoch, self.state.epoch_batches = epoch, 0
            if self.state.stopped_by_signal:
                break
            # A resumed epoch may be at its end already; a fresh empty one means the
            # dataset cannot be iterated again (e.g. a one-shot generator), or, before
            # any step at all, that there is no data: a job must not pass as done.
            if steps == 0 and exhausted and not resumed:
                if self.state.global_step == 0:
                    ran_out = self._sync.gather(int(self._sync.ran_out), step=0)
                    empty = [r for r, out in enumerate(ran_out) if out]
                    raise ValueError(
                        f"train_dataset gave not one training step in epoch {epoch - 1}: "
                        f"the data of rank{'s' if len(empty) > 1 else ''} "
                        f"{', '.join(map(str, empty))} of {len(ran_out)} ended before "
                        f"{args.gradient_accumulation_steps} batch"
                        f"{'es' if args.gradient_accumulation_steps > 1 else ''} (one step "
                        "with gradient_accumulation_steps). Is the training data empty, or "
                        "smaller than a batch for each rank?"
                    )
                logger.warning(
                    "train_dataset yielded no full step in epoch %d; stopping at step %d",
                    epoch - 1,
                    self.state.global_step,
                )
                break
            resumed = False
        if was_resumed and self.state.global_step == start_step and self.is_main_process:
            reached = self._limit_reached(max_epochs)
            if reached:
                logger.warning(
                    "nothing to train: the job resumed at step %d has reached %s; raise it "
                    "to train on",
                    start_step,
                    reached,
                )

    def _limit_reached(self, max_epochs: int | None) -> str | None:
        """The limit (``train_steps`` or the epochs) training has reached, if any."""
        steps = self.args.train_steps
        if steps is not None and self.state.global_step >= steps:
            return f"train_steps={steps}"
        if max_epochs is not None and self.state.epoch >= max_epochs:
            if self.args.train_epoch:
                return f"train_epoch={max_epochs}"
            return "its one epoch (neither train_steps nor train_epoch is set)"
        return None

    def train(self) -> TrainerState:
        """Trains until ``train_steps`` or ``train_epoch`` (see :class:`TrainingArguments`).

        Restores the latest checkpoint first (after checking that the eval set, if
        any, is not empty on every rank), saves every ``save_steps`` and at the
        end, evaluates every ``eval_every_steps``, and returns the final
        :class:`TrainerState`. With ``args.save_on_sigterm`` (the default), a SIGTERM
        to any rank makes every rank finish the step after it, save a checkpoint and
        return early with ``state.stopped_by_signal`` set. A KeyboardInterrupt (Ctrl-C)
        is raised on, after the main process logs the step it stopped at and the newest
        checkpoint, which a rerun resumes from. A checkpoint still being written in the
        background (``args.async_save``) is finished first, on an error too.
        """
        if self.train_dataset is None:
            raise ValueError("Trainer.train() needs a train_dataset")
        if self.dense_optimizer is None and self.sparse_optimizer is None:
            raise ValueError("Trainer.train() needs a dense optimizer, a sparse optimizer or both")
        if self.args.eval_every_steps and self.eval_dataset is None:
            raise ValueError("TrainingArguments.eval_every_steps needs the Trainer's eval_dataset")
        args = self.args
        max_epochs = args.train_epoch if args.train_epoch else (None if args.train_steps else 1)
        self._check_model_device()
        try:
            self._check_setup()
        except KeyboardInterrupt:  # measuring big remote data files can take minutes
            if self.is_main_process:
                logger.warning(
                    "interrupted before training, while checking the ranks' setup and "
                    "data: nothing was written to %s",
                    self.args.output_dir,
                )
            raise
        self.checkpoints.saver.claim()
        self.state.stopped_by_signal = False
        stop_signal = self._stop_signal if args.save_on_sigterm else contextlib.nullcontext()
        try:
            self.restore()
            self._train_then_save(stop_signal, max_epochs)
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            how = "interrupted" if interrupted else "stopping"
            self.checkpoints.finish_background_save(
                f"{how} at step {self.state.global_step}", log=self.is_main_process
            )
            if interrupted:
                self.checkpoints.log_interrupt()
            raise
        return self.state

    def _check_setup(self) -> None:
        """What must hold on every rank before a step, checked at the start rather than
        hours in: the same options, code and data files, an eval set that is not empty,
        and an ``output_dir`` every rank can write and sees alike."""
        check_same_setup(
            self._sync,
            self.args,
            {"dense": self.dense_optimizer, "sparse": self.sparse_optimizer},
            {"train": self.train_dataset, "eval": self.eval_dataset},
        )
        if self.eval_dataset is not None:  # an empty one would fail the first evaluation
            check_eval_set_not_empty(self.eval_dataset, self._sync, self.state.global_step)
        self.checkpoints.saver.check_writable()
        if self.args.async_save:
            self.checkpoints.check_staging_memory()

    def _train_then_save(
        self, stop_signal: contextlib.AbstractContextManager, max_epochs: int | None
    ) -> None:
        try:
            with stop_signal:
                self._call_hooks("before_train")
                self.model.train()
                self._zero_grad()
                self._train_epochs(max_epochs, resumed=self.state.global_step > 0)
                if self.state.stopped_by_signal:
                    self.checkpoints.log_sigterm_stop()
                try:
                    self.checkpoints.save_if_due(final=True)
                except Exception as e:
                    raise self._sync.fail(e, self.state.global_step) from e
                self._call_hooks("after_train")
        finally:
            self._call_hooks("end")

    # --------------------------------------------------------------- evaluation
    def evaluate(
        self, eval_dataset: Iterable[Any] | None = None, eval_steps: int | None = None
    ) -> dict[str, float]:
        """Runs the model over the eval set and returns its metrics, exact across ranks.

        Every :class:`Predictions` metric the model reports is fed to a
        :class:`BinaryClassificationMetric`: the one named ``"auc"`` gives ``auc``,
        ``logloss`` and ``count``; another named ``name`` gives ``name/auc``,
        ``name/logloss`` and ``name/count``. Scalar metrics (e.g. ``loss``) are
        averaged over batches and ranks. Runs ``eval_steps`` steps (default
        ``args.eval_steps``; ``None``: until every rank's data ends). A rank whose
        data ended before the others' runs its last batch cut to zero samples, so
        that the model's collectives still meet on every rank, and reports nothing
        from it; a rank whose eval data is empty (an eval set smaller than the
        ranks) runs zero-sample batches throughout. The model's
        train/eval mode is restored afterwards, and so is the read position of a
        dataset that has one (``state_dict``/``load_state_dict``, as recis.io's
        datasets): every evaluation starts at the same batch. A long evaluation logs
        its progress from rank 0 every 10 s. Inside ``train()`` (``eval_every_steps``),
        a SIGTERM stops the evaluation at once: it returns ``{}`` without calling
        ``after_evaluate``, and training saves and stops. A KeyboardInterrupt (Ctrl-C)
        is raised on after rank 0 logs how far the evaluation got.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Trainer.evaluate() needs an eval_dataset")
        steps = eval_steps if eval_steps is not None else self.args.eval_steps
        positive_or_none("eval_steps", steps)
        self._check_model_device()
        was_training = self.model.training
        self._call_hooks("before_evaluate")
        metrics = EvalMetrics()
        self.model.eval()
        what = f"evaluation at step {self.state.global_step}"
        progress = Progress(what, "evaluated", steps, unit="batches", log=self.is_main_process)
        start = time.monotonic()
        try:
            with eval_iterator(dataset) as it, torch.no_grad():
                done, stopped = run_eval_batches(
                    it,
                    self._sync,
                    self._eval_batch,
                    metrics,
                    steps,
                    self.state.global_step,
                    self._stop_requested,
                    progress,
                )
            if stopped:  # SIGTERM inside train(): the checkpoint comes first
                self.state.stopped_by_signal = True
            else:
                # Every rank ran the same number of batches of the same model, so the
                # metric names match and the reduction's collectives line up.
                results = metrics.reduce(self.world_size, self._sync.comm_device())
        except KeyboardInterrupt:
            if self.is_main_process:
                logger.warning("%s: interrupted after %d batches", what, progress.done)
            raise
        finally:
            self.state.evaluation_seconds += time.monotonic() - start
            self.model.train(was_training)
        if stopped:
            if self.is_main_process:
                logger.warning("%s: stopped by SIGTERM after %d batches", what, done)
            return {}
        if self.is_main_process:  # at full precision in last_evaluation and the result
            logger.info("%s: %s (%.1f s)", what, format_metrics(results), time.monotonic() - start)
        self.last_evaluation = (self.state.global_step, results)
        self._call_hooks("after_evaluate", results)
        return results

    def _eval_batch(self, data: Any) -> dict[str, Any]:
        """Runs the model on one eval batch; returns what it reported (its loss as
        ``loss`` when it reported none)."""
        clear_metrics()
        with self.autocast():
            loss = self.model(self._to_device(data))
        reported = get_global_metrics()
        if "loss" not in reported and isinstance(loss, Tensor) and loss.numel() == 1:
            reported["loss"] = loss
        return reported

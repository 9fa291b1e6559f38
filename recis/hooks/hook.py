"""Hook: the base class of every training callback, and the order of its calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recis.framework.trainer import Trainer


class Hook:
    """A callback of the :class:`~recis.framework.trainer.Trainer`. Override what you need.

    Order of the calls (on every rank)::

        train():
            before_train()
            for each epoch:
                before_epoch(epoch)
                for each optimizer step:
                    before_step(global_step)          # steps done so far
                    ... k micro-batches, optimizer step ...
                    after_step(metrics, global_step)  # global_step now counts this step
                    evaluate()                        # every eval_every_steps (below)
                after_epoch(epoch)
            after_train()                             # only when training succeeded
                                                      # (or stopped on SIGTERM)
            end()                                     # always, even after an error
        evaluate():
            before_evaluate()
            after_evaluate(metrics)

    ``metrics`` holds the step's values: scalars (0-d tensors or numbers; ``loss`` is
    the mean over the step's micro-batches) and
    :class:`~recis.framework.metrics.Predictions`; after evaluation, floats.
    A hook runs on every rank; one that must act once checks ``self.is_main_process``.
    Hooks must not issue collectives that only some ranks reach.
    ``self.trainer`` is the Trainer the hook was added to (set by ``add_hook``).

    Example::

        >>> class PrintLoss(Hook):
        ...     def after_step(self, metrics, global_step):
        ...         if self.is_main_process:
        ...             print(global_step, metrics["loss"])
        >>> trainer.add_hook(PrintLoss())
    """

    trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> None:
        """Called by ``Trainer.add_hook``; keeps a reference to the trainer."""
        self.trainer = trainer

    @property
    def is_main_process(self) -> bool:
        return self.trainer is None or self.trainer.is_main_process

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self, epoch: int) -> None:
        pass

    def after_epoch(self, epoch: int) -> None:
        pass

    def before_step(self, global_step: int) -> None:
        pass

    def after_step(self, metrics: dict[str, Any], global_step: int) -> None:
        pass

    def before_evaluate(self) -> None:
        pass

    def after_evaluate(self, metrics: dict[str, Any]) -> None:
        pass

    def end(self) -> None:
        pass

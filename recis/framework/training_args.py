"""TrainingArguments: what the Trainer trains for how long, and where it saves."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from recis.distributed.process_group import resolve_device
from recis.framework.checkpoint.storage import check_url_supported


def positive_or_none(name: str, value: Any) -> None:
    """Raises ValueError naming ``name`` unless ``value`` is None or an int >= 1."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"TrainingArguments.{name} must be None or an int >= 1, got {value!r}")


def _check_url(name: str, path: str) -> None:
    try:
        check_url_supported(path)
    except ValueError as e:
        raise ValueError(f"TrainingArguments.{name} {e}") from None


@dataclass
class TrainingArguments:
    """What to train for how long, and where to save it.

    - ``output_dir``: where checkpoints are written (a local path or an fsspec URL);
      training resumes from the newest one there.
    - ``train_steps``: stop after exactly this many optimizer steps (counting the
      steps of a restored checkpoint), going over the dataset as often as needed.
    - ``train_epoch``: number of passes over ``train_dataset``. With both set,
      training stops at whichever comes first; with neither, one epoch.
    - ``eval_steps``: batches per evaluation (``None``: the whole eval set).
    - ``eval_every_steps``: ``train()`` evaluates ``eval_dataset`` every that many
      optimizer steps (``None``: only when ``evaluate()`` is called).
    - ``log_steps``: a :class:`~recis.hooks.LoggerHook` prints every that many
      steps (``None``: no default logger).
    - ``save_steps``: checkpoint every that many optimizer steps (``None``: only at
      the end).
    - ``max_to_keep``: how many of the newest checkpoints are kept; older ones are
      deleted once a newer one is committed.
    - ``async_save``: each ``save_steps`` save copies the state to host memory and
      is written by a background thread while training goes on (one host copy of
      each rank's shards and their optimizer state, checked against the hosts'
      memory at the start); a failed background save raises at the next save. The
      last save, and one on SIGTERM, is complete when ``train()`` returns; one still
      being written at a Ctrl-C or an error is finished before it raises. It pays
      where the ranks leave CPU cores idle (GPU training): where every core trains,
      the writes slow the steps about as much as a blocking save stops them.
    - ``save_concurrency_per_rank``: threads with which each rank writes its shards.
    - ``gradient_accumulation_steps``: k; each optimizer step averages the gradients
      of k micro-batches (the loss is scaled by 1/k; DDP syncs once).
    - ``model_bank``: checkpoints to warm-start from when ``output_dir`` has none
      to resume: a list of ``{"path": ..., "load": [...], "exclude": [...],
      "strict": bool}``; each is loaded with ``Saver.load_by_config(path, conf)``
      where ``conf`` is the entry without ``path``.
    - ``seed``: seeds Python, NumPy and torch when the Trainer is built.
    - ``bf16``: run the model's forward under bfloat16 autocast (CUDA only; the
      embedding lookups stay float32). Ignored with a warning on CPU.
    - ``device``: ``"auto"`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else
      CPU; or ``"cpu"``, ``"cuda"`` (``cuda:LOCAL_RANK``), ``"cuda:N"``.
    - ``backend``: the process group's backend; ``"auto"`` picks nccl on CUDA, gloo
      on CPU.
    - ``ddp_timeout``: seconds a rank waits in a collective for the others before
      the job fails (the process group's timeout, where the Trainer creates it):
      raise it when saving, loading or reading data can hold one rank for longer.
    - ``save_on_sigterm``: on SIGTERM (Slurm preemption or time limit, a Kubernetes
      eviction, torchrun stopping its workers), every rank finishes the step after
      it, saves a checkpoint and ``train()`` returns early; False leaves SIGTERM's
      action (the process ends at once). The save must fit in the grace period
      before SIGKILL (torchrun's ``--shutdown-timeout``, 30 s by default; Slurm's
      ``KillWait``; the pod's ``terminationGracePeriodSeconds``).
    - ``keep_freed_host_memory``: the Trainer makes malloc keep the host memory each
      step frees for the next one (:func:`recis.ops.keep_freed_host_memory`) instead
      of the OS faulting it in again every step; False leaves malloc's defaults.

    Every rank of a job must have the same arguments but for ``device``, ``seed``,
    ``log_steps``, ``save_concurrency_per_rank`` and ``keep_freed_host_memory``:
    ``Trainer.train()`` checks (:meth:`shared`), and the optimizers' hyper-parameters
    and the datasets' ``shared_setup()`` (a shuffling ``CriteoDataset`` needs one seed).

    Example::

        >>> args = TrainingArguments(output_dir="ckpt", train_steps=1000, save_steps=200,
        ...                          gradient_accumulation_steps=2)
    """

    output_dir: str = "output"
    train_steps: int | None = None
    train_epoch: int | None = None
    eval_steps: int | None = None
    eval_every_steps: int | None = None
    log_steps: int | None = 100
    save_steps: int | None = 1000
    max_to_keep: int = 5
    async_save: bool = False
    save_concurrency_per_rank: int = 4
    gradient_accumulation_steps: int = 1
    model_bank: list[dict[str, Any]] | None = None
    seed: int = 42
    bf16: bool = False
    device: str = "auto"
    backend: str = "auto"
    ddp_timeout: int = 1800
    save_on_sigterm: bool = True
    keep_freed_host_memory: bool = True

    def __post_init__(self) -> None:
        for name in (
            "train_steps",
            "train_epoch",
            "eval_steps",
            "eval_every_steps",
            "log_steps",
            "save_steps",
        ):
            positive_or_none(name, getattr(self, name))
        for name in (
            "max_to_keep",
            "save_concurrency_per_rank",
            "gradient_accumulation_steps",
            "ddp_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainingArguments.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(
                f"TrainingArguments.output_dir must be a path, got {self.output_dir!r}"
            )
        _check_url("output_dir", self.output_dir)
        for name in ("keep_freed_host_memory", "save_on_sigterm", "async_save"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"TrainingArguments.{name} must be a bool, got {getattr(self, name)!r}"
                )
        if not isinstance(self.seed, int):
            raise ValueError(f"TrainingArguments.seed must be an int, got {self.seed!r}")
        if self.model_bank is not None:
            if not isinstance(self.model_bank, list):
                raise ValueError("TrainingArguments.model_bank must be a list of dicts")
            for i, entry in enumerate(self.model_bank):
                if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                    raise ValueError(
                        f"TrainingArguments.model_bank[{i}] must be a dict with a 'path' string, "
                        f"got {entry!r}"
                    )
                _check_url(f"model_bank[{i}]", entry["path"])
        resolve_device(self.device)  # raises a clear error for a bad or unavailable device
        if self.backend not in ("auto", "gloo", "nccl", "mpi", "ucc"):
            raise ValueError(
                f"TrainingArguments.backend must be 'auto', 'gloo', 'nccl', 'mpi' or 'ucc', "
                f"got {self.backend!r}"
            )

    def shared(self) -> dict[str, Any]:
        """The fields every rank of a job must agree on: all but :data:`PER_RANK_FIELDS`
        (ranks that disagree on when to save, evaluate or stop would meet in different
        collectives and wait for each other for ever)."""
        return {k: v for k, v in asdict(self).items() if k not in PER_RANK_FIELDS}


# Fields a rank may set for itself: they change no collective.
PER_RANK_FIELDS = (
    "device",
    "seed",
    "log_steps",
    "save_concurrency_per_rank",
    "keep_freed_host_memory",
)

"""Train a CTR model with recis: ``torchrun --nproc_per_node=N launch/train.py [options]``.

Every :class:`~recis.framework.training_args.TrainingArguments` field is an option
(``--train_steps 1000``), plus the model, data and sharding options of
:class:`RunConfig`. With no options it trains DLRM on synthetic Criteo-shaped data;
running the same command again resumes from the newest checkpoint in
``--output_dir``.

Examples::

    torchrun --nproc_per_node=2 launch/train.py                       # synthetic default
    torchrun --nproc_per_node=8 launch/train.py --model dcnv2 \\
        --data /data/criteo/train --eval_data /data/criteo/test --sharding auto
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import inspect
import json
import logging
import math
import os
import re
import signal
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from recis.distributed import SHARDING_TYPES, DistributedModelParallel, plan_sharding
from recis.distributed.process_group import (
    init_distributed,
    rank,
    resolve_device,
    set_seed,
    world_size,
)
from recis.framework.trainer import Trainer, TrainingArguments
from recis.hooks import Hook, TensorBoardHook
from recis.io import CriteoDataset, SyntheticCriteoDataset, default_table_sizes
from recis.models import DLRM, DCNv2, DeepFM
from recis.models.common import criteo_tables
from recis.nn import filter_out_sparse_param
from recis.optim import SparseAdagrad, SparseAdam, SparseAdamW, SparseRowWiseAdagrad, SparseSGD

MODELS = {"dlrm": DLRM, "deepfm": DeepFM, "dcnv2": DCNv2}
SPARSE_OPTIMIZERS = {
    "rowwise_adagrad": SparseRowWiseAdagrad,
    "adagrad": SparseAdagrad,
    "adam": SparseAdam,
    "adamw": SparseAdamW,
    "sgd": SparseSGD,
}
# Adam's step is about lr whatever the gradient's size: at the Adagrads' 0.05 the
# embeddings of DeepFM's factorization machine grow until its logits saturate
# (synthetic data, 300 steps: logloss 1.46 against 0.52 at 0.001). Plain SGD's step
# is the gradient's, which is small per row: 0.5 trained every model better than 0.05
# and 1 in 1500 steps, and DeepFM went NaN at 5 (docs/DECISIONS.md).
SPARSE_LR_DEFAULTS = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.5}
SPARSE_LR_DEFAULT = 0.05
# Each one's name in the planner's estimate of a shard's memory (weights + state).
PLANNER_OPTIMIZER = {"rowwise_adagrad": "row_wise_adagrad"}
# The values of the options that name one of a few things (checked by RunConfig).
CHOICES = {
    "model": list(MODELS),
    "sharding": ["auto", *SHARDING_TYPES],
    "sparse_optimizer": list(SPARSE_OPTIMIZERS),
}
SYNTHETIC_DEFAULT_STEPS = 300
EVAL_FIRST_BATCH = 1 << 40  # synthetic eval: a range of batch indices training never reaches


@dataclass
class RunConfig:
    """What to train on what: the options of train.py besides TrainingArguments.

    - ``model``: the CTR model (see ``recis.models``).
    - ``data``: ``synthetic`` (an endless stream of Criteo-shaped batches), or Criteo
      TSV/CSV/Parquet data: a file, folder, glob or fsspec URL.
    - ``eval_data``: evaluation data, as ``data``: ``synthetic`` is a held-out
      synthetic split (the default with synthetic ``data``).
    - ``skip_malformed``: skip (and count) the records of ``data`` and ``eval_data``
      that cannot be parsed, instead of stopping with an error naming the first; each
      rank warns of the count at the end of an epoch.
    - ``shuffle_window``: with Criteo ``data``, each epoch shares the files out in
      another order and each rank permutes its records in windows of this many
      batches (seeded by ``seed``, which every rank must then share, and the epoch;
      0: read in file order). Resumes exactly, on any number of ranks.
    - ``eval_batches``: batches per rank of the synthetic evaluation.
    - ``sharding``: ``auto`` (the planner chooses for each table), or one sharding type
      for every table.
    - ``batch_size``: samples per rank in each (micro-)batch.
    - ``table_size``: cap on each table's rows (the Criteo Kaggle cardinalities).
    - ``embedding_dim``: every table's embedding dim.
    - ``sparse_optimizer``: the embedding tables' optimizer.
    - ``sparse_lr``: the sparse optimizer's learning rate (None: 0.05 for the
      Adagrads, 0.001 for Adam and AdamW, 0.5 for SGD).
    - ``dense_lr``: the learning rate of AdamW on the dense parameters.
    - ``threads_per_rank``: torch's threads in each rank (None: torch's setting, which
      torchrun makes 1 when it starts several ranks; on CPU rank 0 warns when the
      ranks leave most of the host's cores idle).
    - ``tensorboard``: rank 0 writes for TensorBoard, under ``OUTPUT_DIR/tensorboard``,
      the loss, samples/s and the AUC of its predictions every ``log_steps`` steps (100
      when that is none), and every evaluation's metrics (needs
      ``pip install tensorboard``).
    """

    model: str = "dlrm"
    data: str = "synthetic"
    eval_data: str | None = None
    skip_malformed: bool = False
    shuffle_window: int = 0
    eval_batches: int = 20
    sharding: str = "auto"
    batch_size: int = 2048
    table_size: int = 100_000
    embedding_dim: int = 16
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float | None = None
    dense_lr: float = 1e-3
    threads_per_rank: int | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.sharding != "auto" and self.sharding not in SHARDING_TYPES:
            raise ValueError(
                f"--sharding must be auto or one of {list(SHARDING_TYPES)}, got {self.sharding!r}"
            )
        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(
                f"--sparse_optimizer must be one of {sorted(SPARSE_OPTIMIZERS)}, "
                f"got {self.sparse_optimizer!r}"
            )
        if self.sparse_lr is None:
            self.sparse_lr = SPARSE_LR_DEFAULTS.get(self.sparse_optimizer, SPARSE_LR_DEFAULT)
        for name in ("batch_size", "table_size", "embedding_dim", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.threads_per_rank is not None and self.threads_per_rank < 1:
            raise ValueError(f"--threads_per_rank must be >= 1, got {self.threads_per_rank}")
        if self.shuffle_window < 0:
            raise ValueError(f"--shuffle_window must be >= 0, got {self.shuffle_window}")
        for name in ("sparse_lr", "dense_lr"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(
                    f"--{name} must be a finite number >= 0, got {getattr(self, name)}"
                )


def _parse_model_bank(text: str) -> list[dict[str, Any]]:
    """``--model_bank``: a JSON list of entries, one JSON entry, or one checkpoint path."""
    if not text.lstrip().startswith(("[", "{")):
        return [{"path": text}]
    value = json.loads(text)
    return [value] if isinstance(value, dict) else value


# Options train.py parses beyond what their field's type gives, and says so.
PARSERS = {"model_bank": _parse_model_bank}
MORE_HELP = {
    "model_bank": " train.py also takes one entry, or a path alone: --model_bank /ckpt/old "
    'is [{"path": "/ckpt/old"}]'
}


# What a malformed option value should have been, by the option's parser.
_EXPECTED: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    json.loads: "JSON",
    _parse_model_bank: "JSON or a checkpoint path",
}


def _parse_bool(text: str) -> bool:
    """true/false, yes/no, 1/0 (any case); anything else is a usage error, not False."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """The argparse type of a dataclass field, and whether it may be None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _option_type(inner[0])[0], True
    if annotation is bool:
        return _parse_bool, False
    if annotation in (int, float, str):
        return annotation, False
    return json.loads, False  # lists and dicts (e.g. model_bank) as JSON


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description: the bullet of ``cls``'s docstring that starts with its
    name (``- ``name``: ...``), as plain text."""
    bullets: list[str] = []
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        if line.startswith("- "):
            bullets.append(line[2:])
        elif bullets and line.startswith("  "):
            bullets[-1] += " " + line.strip()
        elif bullets and line.strip():
            bullets.append("")  # the list ended
    docs: dict[str, str] = {}
    for field in dataclasses.fields(cls):
        prefix = f"``{field.name}``: "
        named = [b for b in bullets if b.startswith(prefix)]
        if named:
            docs[field.name] = _plain(" ".join(named[0].removeprefix(prefix).split()))
    return docs


def _plain(rst: str) -> str:
    """``rst`` without its markup: ``code`` and :role:`~target` as plain words."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", rst).replace("``", "")


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field`` option per field of dataclass ``cls``, described by its docstring."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        kind, optional = _option_type(hints[field.name])
        kind = PARSERS.get(field.name, kind)

        def parse(text: str, kind: Any = kind, optional: bool = optional) -> Any:
            if optional and text.lower() == "none":
                return None
            try:
                return kind(text)
            except ValueError as e:  # argparse would say "invalid parse value"
                what = _EXPECTED.get(kind, "a valid value") + (" or none" if optional else "")
                raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from e

        default = field.default if field.default is not dataclasses.MISSING else None
        choices = CHOICES.get(field.name)
        group.add_argument(
            f"--{field.name}",
            type=parse,
            default=default,
            metavar="{" + ",".join(choices) + "}" if choices else None,
            # argparse formats help with %: a literal one is doubled.
            help=f"{docs.get(field.name, '')}{MORE_HELP.get(field.name, '')} "
            f"(default: {default})".replace("%", "%%"),
        )


def build_parser() -> argparse.ArgumentParser:
    """train.py's options: every TrainingArguments and RunConfig field."""
    parser = argparse.ArgumentParser(description=_plain(__doc__.split("\n\n")[0]))
    add_dataclass_options(parser, TrainingArguments)
    add_dataclass_options(parser, RunConfig)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainingArguments, RunConfig]:
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    pick = lambda cls: cls(**{f.name: ns[f.name] for f in dataclasses.fields(cls)})  # noqa: E731
    try:
        args, run = pick(TrainingArguments), pick(RunConfig)
    except ValueError as e:  # a bad value: argparse's usage line and exit status 2
        parser.error(str(e))
    if run.data == "synthetic" and args.train_epoch is not None and args.train_steps is None:
        parser.error(
            "--train_epoch counts passes over --data, and synthetic data never ends: "
            "give --train_steps"
        )
    if args.eval_every_steps and run.data != "synthetic" and run.eval_data is None:
        parser.error("--eval_every_steps needs --eval_data: the files to evaluate on")
    if run.tensorboard and importlib.util.find_spec("tensorboard") is None:
        parser.error("--tensorboard true needs the tensorboard package: pip install tensorboard")
    if run.data == "synthetic" and args.train_steps is None:
        args.train_steps = SYNTHETIC_DEFAULT_STEPS  # the synthetic stream never ends
    return args, run


def build_datasets(run: RunConfig, seed: int) -> tuple[Any, Any]:
    sizes = _table_sizes(run)
    skip = run.skip_malformed
    if run.data == "synthetic":
        train = SyntheticCriteoDataset(run.batch_size, sizes, seed=seed)
    else:
        with _naming_option("--data"):
            train = CriteoDataset(
                run.data,
                run.batch_size,
                sizes,
                skip_malformed=skip,
                shuffle_window=run.shuffle_window,
                seed=seed,
            )
    if run.eval_data == "synthetic" or (run.eval_data is None and run.data == "synthetic"):
        evaluation = SyntheticCriteoDataset(
            run.batch_size, sizes, run.eval_batches, seed=seed, first_batch=EVAL_FIRST_BATCH
        )
    elif run.eval_data is not None:
        with _naming_option("--eval_data"):
            evaluation = CriteoDataset(run.eval_data, run.batch_size, sizes, skip_malformed=skip)
    else:
        evaluation = None
    shared = sorted(
        set(getattr(train, "all_files", ())) & set(getattr(evaluation, "all_files", ()))
    )
    if shared and rank() == 0:
        logging.warning(
            "--eval_data shares %d file(s) with --data (%s%s): its metrics are not those of "
            "held-out data",
            len(shared),
            shared[0],
            ", ..." if len(shared) > 1 else "",
        )
    return train, evaluation


@contextlib.contextmanager
def _naming_option(option: str) -> Iterator[None]:
    """Data errors (no such file, an unknown format) name the option that gave the path."""
    try:
        yield
    except (ValueError, OSError) as e:
        try:
            named = type(e)(f"{option}: {e}")
        except Exception:  # a type that needs more than a message: as it was
            raise e from None
        raise named from e


def _table_sizes(run: RunConfig) -> list[int]:
    return default_table_sizes(cap=run.table_size)


def build_model(run: RunConfig, device: torch.device) -> DistributedModelParallel:
    tables = criteo_tables(_table_sizes(run), run.embedding_dim)
    # Tables start on meta and are initialised shard by shard: none exists whole.
    model = MODELS[run.model](tables=tables, embedding_device="meta")
    constraints = None if run.sharding == "auto" else {t.name: run.sharding for t in tables}
    optimizer = PLANNER_OPTIMIZER.get(run.sparse_optimizer, run.sparse_optimizer)
    plan = plan_sharding(
        model, world_size=world_size(), constraints=constraints, optimizer=optimizer
    )
    if rank() == 0:
        print(plan, flush=True)
    return DistributedModelParallel(model, plan=plan, device=device)


def build_trainer(args: TrainingArguments, run: RunConfig) -> Trainer:
    """The process group, datasets, sharded model, optimizers and Trainer of a job."""
    if run.threads_per_rank is not None:
        torch.set_num_threads(run.threads_per_rank)
    init_distributed(args.backend, args.device, timedelta(seconds=args.ddp_timeout))
    device = resolve_device(args.device)
    set_seed(args.seed)
    train_ds, eval_ds = build_datasets(run, args.seed)  # first: a bad path fails at once
    model = build_model(run, device)
    sparse_opt = SPARSE_OPTIMIZERS[run.sparse_optimizer](
        filter_out_sparse_param(model), lr=run.sparse_lr
    )
    dense_opt = torch.optim.AdamW(model.parameters(), lr=run.dense_lr)
    rates = CommandLineRates(
        {"--dense_lr": (dense_opt, run.dense_lr), "--sparse_lr": (sparse_opt, run.sparse_lr)}
    )
    tensorboard = [TensorBoardHook(log_steps=args.log_steps or 100)] if run.tensorboard else []
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        dense_optimizers=(dense_opt, None),
        sparse_optimizer=sparse_opt,
        hooks=[rates, *tensorboard],
    )


class CommandLineRates(Hook):
    """The launcher's learning rates hold for the whole run, a resumed one too (a
    checkpoint restores the rates the optimizers were saved with): it has no LR
    schedule, so the command line says what the job trains with."""

    def __init__(self, rates: dict[str, tuple[torch.optim.Optimizer, float]]) -> None:
        self.rates = rates

    def before_train(self) -> None:  # after the restore
        replaced = []
        for option, (optimizer, lr) in self.rates.items():
            for group in optimizer.param_groups:
                if group["lr"] != lr:
                    replaced.append(f"{option} {lr} replaces the checkpoint's {group['lr']}")
                    group["lr"] = lr
        if replaced and self.is_main_process:
            logging.info("; ".join(dict.fromkeys(replaced)))


# torchrun's failure summary shows the first failed rank's exception, not "<N/A>".
@record
def main(argv: list[str] | None = None) -> dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args, run = parse_args(argv)
    try:
        trainer = build_trainer(args, run)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # set by torchrun before any process group
            logging.warning(
                "interrupted before training: nothing was written to %s", args.output_dir
            )
        raise
    eval_ds = trainer.eval_dataset
    try:
        state = trainer.train()
        if state.stopped_by_signal:
            # 128 + SIGTERM, as if the signal had ended the process: schedulers treat
            # it as retryable, where 0 would mark the unfinished job as succeeded.
            raise SystemExit(128 + signal.SIGTERM)
        if eval_ds is None:
            return {}
        last = trainer.last_evaluation  # logged already
        return last[1] if last and last[0] == state.global_step else trainer.evaluate()
    finally:
        for ds in (trainer.train_dataset, eval_ds):
            if ds is not None:
                ds.close()


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    # Ctrl-C reaches a worker twice, from the terminal and passed on by torchrun: a
    # second KeyboardInterrupt would break into the first one's cleanup with a traceback.
    # torchrun kills workers that do not end within its shutdown timeout.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        main()
    except KeyboardInterrupt:
        # The Trainer has said where to resume from; a traceback per rank adds nothing.
        raise SystemExit(128 + signal.SIGINT) from None

"""Which part of a model's state a checkpoint calls "dense", and under which names."""

from __future__ import annotations

from typing import Any

from torch import nn

from recis.nn.table import EmbeddingTable


def strip_wrappers(name: str) -> str:
    # DDP / DMP wrap the model as ``module``: a sharded and an unsharded model must
    # name their dense parameters alike.
    while name.startswith("module."):
        name = name[len("module.") :]
    return name


def table_state_keys(model: nn.Module) -> set[str]:
    keys: set[str] = set()
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, EmbeddingTable):
            keys.update(f"{path}.{k}" if path else k for k in module.state_dict())
    return keys


def dense_state_dict(model: nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` without embedding-table buffers, ``module.`` prefixes
    stripped (what a checkpoint saves as "dense")."""
    state = model.state_dict()
    return {name: state[key] for name, key in dense_names(model).items()}


def dense_names(model: nn.Module) -> dict[str, str]:
    """Checkpoint name (wrappers stripped) -> ``model.state_dict()`` key, tables left out."""
    # Compared without wrapper prefixes: DMP + DDP nest two ``module`` levels while
    # DMP's state_dict() names one.
    skip = {strip_wrappers(k) for k in table_state_keys(model)}
    names = {strip_wrappers(k): k for k in model.state_dict()}
    return {name: key for name, key in names.items() if name not in skip}

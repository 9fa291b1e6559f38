"""Nested state (``state_dict()`` of optimizers, schedulers, readers) as JSON + tensors.

Nothing is pickled: tensors are pulled out into safetensors files by path, and the
rest becomes JSON. Python types JSON cannot tell apart are tagged so that they come
back as they went in: tuples (``{"__tuple__": [...]}``), dicts with non-string keys
such as a torch optimizer's ``state`` keyed by parameter index
(``{"__dict__": [[key, value], ...]}``) and tensors (``{"__tensor__": ref}``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_TAGS = ("__tensor__", "__tuple__", "__dict__", "__float__")


def encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able form of ``obj``; each tensor is stored in ``tensors`` under its path.

    Example::

        >>> tensors = {}
        >>> encode({"step": 3, "m": torch.ones(2)}, "opt", tensors)
        {'step': 3, 'm': {'__tensor__': 'opt/m'}}
    """
    if isinstance(obj, Tensor):
        if path in tensors:
            raise ValueError(f"two tensors of checkpoint state map to the same path {path!r}")
        tensors[path] = obj
        return {"__tensor__": path}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        # JSON has no inf/nan; keep them exact through a tag.
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {
            "__dict__": [
                [encode(k, f"{path}/k{i}", tensors), encode(v, f"{path}/{i}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    raise TypeError(
        f"checkpoint state at {path!r} has a value of type {type(obj).__name__}, which "
        "cannot be saved without pickling (use tensors, numbers, strings, lists, tuples, dicts)"
    )


def decode(node: Any, fetch: Callable[[Any], Tensor]) -> Any:
    """Inverse of :func:`encode`; ``fetch(ref)`` returns the tensor stored under ``ref``."""
    if isinstance(node, list):
        return [decode(v, fetch) for v in node]
    if isinstance(node, dict):
        if "__tensor__" in node:
            return fetch(node["__tensor__"])
        if "__tuple__" in node:
            return tuple(decode(v, fetch) for v in node["__tuple__"])
        if "__float__" in node:
            return float(node["__float__"])
        if "__dict__" in node:
            return {_hashable(decode(k, fetch)): decode(v, fetch) for k, v in node["__dict__"]}
        return {k: decode(v, fetch) for k, v in node.items()}
    return node


def map_refs(node: Any, fn: Callable[[Any], Any]) -> Any:
    """``node`` with every tensor reference ``r`` replaced by ``fn(r)``."""
    if isinstance(node, list):
        return [map_refs(v, fn) for v in node]
    if isinstance(node, dict):
        if "__tensor__" in node:
            return {"__tensor__": fn(node["__tensor__"])}
        return {k: map_refs(v, fn) for k, v in node.items()}
    return node


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, torch.Tensor):
        raise TypeError("tensors cannot be dict keys in checkpoint state")
    return key

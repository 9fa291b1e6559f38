"""KeyedTensor: pooled embeddings of several features side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class KeyedTensor:
    """A ``[B, Σ dims]`` tensor whose column blocks belong to named features.

    Example::

        >>> kt = KeyedTensor(["a", "b"], [2, 3], torch.zeros(4, 5))
        >>> kt["b"].shape
        torch.Size([4, 3])
    """

    def __init__(self, keys: Sequence[str], length_per_key: Sequence[int], values: Tensor) -> None:
        keys, length_per_key = list(keys), [int(n) for n in length_per_key]
        if len(keys) != len(length_per_key):
            raise ValueError(f"{len(keys)} keys but {len(length_per_key)} lengths")
        if len(set(keys)) != len(keys):
            raise ValueError(f"KeyedTensor keys must be unique, got {keys!r}")
        if values.dim() != 2 or values.shape[1] != sum(length_per_key):
            raise ValueError(
                f"KeyedTensor values must be [B, {sum(length_per_key)}], got {tuple(values.shape)}"
            )
        self._keys = keys
        self._length_per_key = length_per_key
        self._values = values
        self._offsets = [0]
        for n in length_per_key:
            self._offsets.append(self._offsets[-1] + n)

    def keys(self) -> list[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def length_per_key(self) -> list[int]:
        return self._length_per_key

    def offset_per_key(self) -> list[int]:
        return self._offsets

    def __getitem__(self, key: str) -> Tensor:
        try:
            i = self._keys.index(key)
        except ValueError:
            raise KeyError(
                f"feature {key!r} is not in this KeyedTensor (keys: {self._keys})"
            ) from None
        return self._values[:, self._offsets[i] : self._offsets[i + 1]]

    def to_dict(self) -> dict[str, Tensor]:
        return {k: self[k] for k in self._keys}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedTensor:
        return KeyedTensor(
            self._keys, self._length_per_key, self._values.to(device, non_blocking=non_blocking)
        )

    @classmethod
    def from_tensor_list(cls, keys: Sequence[str], tensors: Sequence[Tensor]) -> KeyedTensor:
        return cls(keys, [t.shape[1] for t in tensors], torch.cat(list(tensors), dim=1))

    @classmethod
    def from_torchrec(cls, kt: Any) -> KeyedTensor:
        return cls(kt.keys(), kt.length_per_key(), kt.values())

    def to_torchrec(self) -> Any:
        from torchrec.sparse.jagged_tensor import KeyedTensor as TorchrecKT

        return TorchrecKT(keys=self._keys, length_per_key=self._length_per_key, values=self._values)

    def __repr__(self) -> str:
        return f"KeyedTensor(keys={self._keys}, shape={tuple(self._values.shape)})"

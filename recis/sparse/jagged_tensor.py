"""JaggedTensor and KeyedJaggedTensor: the sparse-feature batch of a training step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from recis.sparse._validate import check_jagged, offsets_from_lengths


class JaggedTensor:
    """One feature's ids for a batch: ``values`` split into bags by ``lengths``.

    Example::

        >>> jt = JaggedTensor(torch.tensor([4, 5, 6]), torch.tensor([2, 0, 1]))
        >>> jt.offsets()
        tensor([0, 2, 2, 3])
        >>> jt.to_dense()
        [tensor([4, 5]), tensor([], dtype=torch.int64), tensor([6])]
    """

    def __init__(
        self,
        values: Tensor,
        lengths: Tensor,
        weights: Tensor | None = None,
        _validate: bool = True,
    ) -> None:
        if _validate:
            check_jagged(values, lengths, weights, "JaggedTensor")
        self._values = values
        self._lengths = lengths
        self._weights = weights
        self._offsets: Tensor | None = None

    def values(self) -> Tensor:
        return self._values

    def lengths(self) -> Tensor:
        return self._lengths

    def weights_or_none(self) -> Tensor | None:
        return self._weights

    def weights(self) -> Tensor:
        if self._weights is None:
            raise ValueError("this JaggedTensor has no weights")
        return self._weights

    def offsets(self) -> Tensor:
        if self._offsets is None:
            self._offsets = offsets_from_lengths(self._lengths)
        return self._offsets

    def to_dense(self) -> list[Tensor]:
        return list(torch.split(self._values, self._lengths.tolist()))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedTensor:
        w = self._weights
        return JaggedTensor(
            self._values.to(device, non_blocking=non_blocking),
            self._lengths.to(device, non_blocking=non_blocking),
            None if w is None else w.to(device, non_blocking=non_blocking),
            _validate=False,
        )

    def __repr__(self) -> str:
        return f"JaggedTensor(bags={self._lengths.numel()}, values={self._values.numel()})"


class KeyedJaggedTensor:
    """Ids of several sparse features for one batch, key-major as in TorchRec.

    ``lengths`` has ``len(keys) * B`` entries: the B bag lengths of ``keys[0]``, then
    of ``keys[1]``, ...; ``values`` (and optional per-id ``weights``) follow the same
    order. The constructor validates everything and raises ``ValueError``.

    Example::

        >>> kjt = KeyedJaggedTensor(
        ...     keys=["user", "item"],
        ...     values=torch.tensor([1, 2, 3, 7, 8]),
        ...     lengths=torch.tensor([2, 1, 0, 2]),  # user: [1,2],[3]; item: [],[7,8]
        ... )
        >>> kjt.stride(), kjt["item"].values()
        (2, tensor([7, 8]))
    """

    def __init__(
        self,
        keys: Sequence[str],
        values: Tensor,
        lengths: Tensor,
        weights: Tensor | None = None,
        stride: int | None = None,
        _validate: bool = True,
    ) -> None:
        keys = list(keys)
        if not all(isinstance(k, str) for k in keys):
            raise ValueError(f"KeyedJaggedTensor keys must be strings, got {keys!r}")
        if len(set(keys)) != len(keys):
            raise ValueError(f"KeyedJaggedTensor keys must be unique, got {keys!r}")
        if _validate:
            check_jagged(values, lengths, weights, "KeyedJaggedTensor")
        if keys:
            if lengths.numel() % len(keys):
                raise ValueError(
                    f"KeyedJaggedTensor has {lengths.numel()} lengths for {len(keys)} keys: "
                    "lengths must hold len(keys) * batch_size entries (key-major)"
                )
            inferred = lengths.numel() // len(keys)
            if stride is not None and stride != inferred:
                raise ValueError(f"stride={stride} but lengths imply batch size {inferred}")
            stride = inferred
        self._keys = keys
        self._values = values
        self._lengths = lengths
        self._weights = weights
        self._stride = stride or 0
        self._offsets: Tensor | None = None
        self._length_per_key: list[int] | None = None
        self._offset_per_key: list[int] | None = None

    # -- accessors ---------------------------------------------------------------
    def keys(self) -> list[str]:
        return self._keys

    def values(self) -> Tensor:
        return self._values

    def lengths(self) -> Tensor:
        return self._lengths

    def weights_or_none(self) -> Tensor | None:
        return self._weights

    def weights(self) -> Tensor:
        if self._weights is None:
            raise ValueError("this KeyedJaggedTensor has no weights")
        return self._weights

    def stride(self) -> int:
        """The batch size B."""
        return self._stride

    def offsets(self) -> Tensor:
        if self._offsets is None:
            self._offsets = offsets_from_lengths(self._lengths)
        return self._offsets

    def length_per_key(self) -> list[int]:
        """Number of ids of each key."""
        if self._length_per_key is None:
            if not self._keys:
                self._length_per_key = []
            else:
                per_key = self._lengths.view(len(self._keys), self._stride).sum(dim=1)
                self._length_per_key = per_key.tolist()
        return self._length_per_key

    def offset_per_key(self) -> list[int]:
        if self._offset_per_key is None:
            out = [0]
            for n in self.length_per_key():
                out.append(out[-1] + n)
            self._offset_per_key = out
        return self._offset_per_key

    def index_of(self, key: str) -> int:
        try:
            return self._keys.index(key)
        except ValueError:
            raise KeyError(
                f"feature {key!r} is not in this KeyedJaggedTensor (keys: {self._keys})"
            ) from None

    def __getitem__(self, key: str) -> JaggedTensor:
        i = self.index_of(key)
        start, stop = self.offset_per_key()[i], self.offset_per_key()[i + 1]
        w = self._weights
        return JaggedTensor(
            self._values[start:stop],
            self._lengths[i * self._stride : (i + 1) * self._stride],
            None if w is None else w[start:stop],
            _validate=False,  # a slice of a valid KJT
        )

    def to_dict(self) -> dict[str, JaggedTensor]:
        return {k: self[k] for k in self._keys}

    # -- transformations ---------------------------------------------------------
    def select(self, keys: Sequence[str]) -> KeyedJaggedTensor:
        """A KJT of just ``keys``, in that order."""
        parts = [self[k] for k in keys]
        return KeyedJaggedTensor.from_jagged(keys, parts, stride=self._stride)

    @classmethod
    def from_jagged(
        cls, keys: Sequence[str], parts: Sequence[JaggedTensor], stride: int | None = None
    ) -> KeyedJaggedTensor:
        """Concatenates one JaggedTensor per key (all with the same number of bags)."""
        if len(keys) != len(parts):
            raise ValueError(f"{len(keys)} keys but {len(parts)} jagged tensors")
        if not parts:
            return cls(
                [],
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long),
                stride=stride,
            )
        has_w = [p.weights_or_none() is not None for p in parts]
        if any(has_w) and not all(has_w):
            raise ValueError("either every feature has weights or none does")
        return cls(
            list(keys),
            torch.cat([p.values() for p in parts]),
            torch.cat([p.lengths() for p in parts]),
            torch.cat([p.weights() for p in parts]) if all(has_w) else None,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> KeyedJaggedTensor:
        w = self._weights
        return KeyedJaggedTensor(
            self._keys,
            self._values.to(device, non_blocking=non_blocking),
            self._lengths.to(device, non_blocking=non_blocking),
            None if w is None else w.to(device, non_blocking=non_blocking),
            stride=self._stride,
            _validate=False,  # moving a valid KJT keeps it valid; checking would sync
        )

    @property
    def device(self) -> torch.device:
        return self._values.device

    # -- interop -------------------------------------------------------------------
    @classmethod
    def from_torchrec(cls, kjt: Any) -> KeyedJaggedTensor:
        """From a ``torchrec.sparse.jagged_tensor.KeyedJaggedTensor``."""
        return cls(
            kjt.keys(), kjt.values(), kjt.lengths(), kjt.weights_or_none(), stride=kjt.stride()
        )

    def to_torchrec(self) -> Any:
        """To a ``torchrec.sparse.jagged_tensor.KeyedJaggedTensor`` (needs torchrec)."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor as TorchrecKJT

        return TorchrecKJT(
            keys=self._keys,
            values=self._values,
            lengths=self._lengths,
            weights=self._weights,
            stride=self._stride,
        )

    def __repr__(self) -> str:
        return (
            f"KeyedJaggedTensor(keys={self._keys}, batch={self._stride}, "
            f"values={self._values.numel()}, weighted={self._weights is not None})"
        )

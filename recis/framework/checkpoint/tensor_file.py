"""safetensors files: written in one streaming pass with block checksums, read by slices.

The files are standard safetensors (``safetensors.safe_open`` reads them): an
8-byte little-endian header length, a JSON header giving each tensor's dtype, shape
and byte range, then the raw row-major data. Writing the format here (it is that
small) lets the writer checksum the bytes as it streams them, and reading it here
lets a rank fetch only the rows it owns, from local files or fsspec URLs alike,
verifying exactly the checksum blocks it touches.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from recis.framework.checkpoint.integrity import (
    ALGORITHM,
    BlockChecksum,
    ChecksumError,
    verify_blocks,
)
from recis.framework.checkpoint.storage import Storage

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPES:
        raise TypeError(f"dtype {dtype} cannot be stored in a checkpoint")
    return _DTYPES[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _FROM_NAME:
        raise ValueError(f"unknown tensor dtype {name!r} in checkpoint")
    return _FROM_NAME[name]


def _as_bytes(t: Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def write_tensor_file(
    storage: Storage,
    path: str,
    tensors: list[tuple[str, Tensor]],
    block_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Writes ``tensors`` (key, tensor) as one safetensors file; returns its record
    ``{"size", "block_size", "algorithm", "checksums"}`` for the manifest.
    ``progress(nbytes)`` is called after each slice of tensor data written."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, t in tensors:
        nbytes = t.numel() * t.element_size()
        header[key] = {
            "dtype": dtype_name(t.dtype),
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors does
    checksum = BlockChecksum(block_size)
    prefix = struct.pack("<Q", len(raw)) + raw
    with storage.open_write(path) as f:
        f.write(prefix)
        checksum.update(prefix)
        for _, t in tensors:
            data = _as_bytes(t)
            # Checksum what is written, in slices small enough to stay in cache.
            step = 4 << 20
            for start in range(0, len(data), step):
                chunk = data[start : start + step]
                checksum.update(chunk)
                f.write(chunk)
                if progress is not None:
                    progress(len(chunk))
    return {
        "size": len(prefix) + offset,
        "block_size": block_size,
        "algorithm": ALGORITHM,
        "checksums": checksum.finish(),
    }


def _missing_tensor(name: str, key: str) -> ChecksumError:
    return ChecksumError(f"{name}: has no tensor {key!r} although the manifest lists it")


class TensorFileReader:
    """Reads tensors, or row ranges of them, from one checkpoint file, verified.

    ``name`` is what errors show (the file's path or URL). The file's size is
    checked against ``record`` when it is opened, so a truncated file is reported
    before anything is read.
    """

    def __init__(self, storage: Storage, path: str, name: str, record: dict[str, Any]) -> None:
        self.storage, self.path, self.name = storage, path, name
        self.size = int(record["size"])
        self.block_size = int(record["block_size"])
        self.checksums = [int(c) for c in record["checksums"]]
        if record.get("algorithm", ALGORITHM) != ALGORITHM:
            raise ChecksumError(f"{name}: unknown checksum algorithm {record['algorithm']!r}")
        try:
            actual = storage.size(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint file {name} is missing") from None
        if actual != self.size:
            raise ChecksumError(
                f"{name}: size is {actual} bytes but the manifest records {self.size} "
                "(truncated or overwritten file)"
            )
        if self.size < 8:
            raise ChecksumError(f"{name}: too short to be a safetensors file")
        # The first checksum block usually holds the whole header: read it once.
        head = self._read_verified(0, min(self.block_size, self.size))
        (hlen,) = struct.unpack("<Q", bytes(head[:8]))
        if 8 + hlen > self.size:
            raise ChecksumError(f"{name}: header length {hlen} exceeds the file")
        raw = head[8 : 8 + hlen] if 8 + hlen <= len(head) else self._read_verified(8, 8 + hlen)
        try:
            self.header = json.loads(bytes(raw))
        except ValueError as e:
            raise ChecksumError(f"{name}: unreadable safetensors header ({e})") from None
        self.data_start = 8 + hlen
        for key, info in self.header.items():
            if key == "__metadata__":
                continue
            self._check_entry(key, info)

    def _check_entry(self, key: str, info: Any) -> None:
        """A header entry must lie within the file and hold exactly its shape's bytes
        (reads of row ranges rely on both)."""
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and 0 <= offsets[0] <= offsets[1] <= self.size - self.data_start
        ):
            raise ChecksumError(f"{self.name}: tensor {key!r} lies outside the file")
        try:
            dtype = dtype_from_name(info.get("dtype"))
        except ValueError as e:
            raise ChecksumError(f"{self.name}: tensor {key!r}: {e}") from None
        shape = info.get("shape")
        want = math.prod(shape) * dtype.itemsize if isinstance(shape, list) else None
        if want != offsets[1] - offsets[0]:
            raise ChecksumError(
                f"{self.name}: tensor {key!r} holds {offsets[1] - offsets[0]} bytes, not the "
                f"{want} of its {info.get('dtype')} {shape}"
            )

    def verify(self, keys: Iterable[str] = ()) -> None:
        """Reads the whole file, checking every checksum block, and that it holds every
        tensor in ``keys`` (opening it checked its size and that each tensor lies within
        it)."""
        for start in range(0, self.size, self.block_size):
            self._read_verified(start, min(start + self.block_size, self.size))
        for key in keys:
            if key not in self.header:
                raise _missing_tensor(self.name, key)

    def _read_verified(self, start: int, stop: int) -> memoryview:
        """Bytes ``[start, stop)``, after verifying every checksum block they touch."""
        if stop <= start:
            return memoryview(b"")
        bs = self.block_size
        first = start // bs
        lo, hi = first * bs, min(math.ceil(stop / bs) * bs, self.size)
        buf = self.storage.read_range(self.path, lo, hi)
        verify_blocks(self.name, [buf], first, bs, self.checksums)
        return memoryview(buf)[start - lo : stop - lo]

    def _read_verified_into(self, start: int, out: memoryview) -> None:
        """Like :meth:`_read_verified`, straight into ``out``: only the partial
        checksum blocks at both ends go through scratch buffers."""
        stop = start + len(out)
        if stop <= start:
            return
        bs = self.block_size
        first = start // bs
        lo, hi = first * bs, min(math.ceil(stop / bs) * bs, self.size)
        head = self.storage.read_range(self.path, lo, start)
        self.storage.read_into(self.path, start, out)
        tail = self.storage.read_range(self.path, stop, hi)
        verify_blocks(self.name, [head, out, tail], first, bs, self.checksums)

    def read(
        self, key: str, rows: tuple[int, int] | None = None, out: Tensor | None = None
    ) -> Tensor:
        """Tensor ``key``, or rows ``[rows[0], rows[1])`` of its first dimension.

        With ``out`` (a contiguous CPU tensor of the same dtype and size), the bytes
        are read straight into it, which saves a copy of every byte.
        """
        if key not in self.header:
            raise _missing_tensor(self.name, key)
        info = self.header[key]
        dtype = dtype_from_name(info["dtype"])
        shape = list(info["shape"])
        begin, end = info["data_offsets"]
        if rows is not None:
            if not shape or not (0 <= rows[0] <= rows[1] <= shape[0]):
                raise ChecksumError(f"{self.name}: rows {rows} out of range for {key!r} {shape}")
            row_bytes = (end - begin) // shape[0] if shape[0] else 0
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
            shape[0] = rows[1] - rows[0]
        if out is not None:
            if not out.is_contiguous() or out.device.type != "cpu":
                raise ValueError("reading into a tensor needs a contiguous CPU tensor")
            if out.dtype != dtype or out.numel() != math.prod(shape):
                raise ValueError(
                    f"{self.name}: {key!r} is {info['dtype']} {shape}, not {out.dtype} {list(out.shape)}"
                )
            if out.numel():
                self._read_verified_into(self.data_start + begin, _as_bytes(out))
            return out
        data = self._read_verified(self.data_start + begin, self.data_start + end)
        if len(data) == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(shape)


class ReaderCache:
    """One :class:`TensorFileReader` per file of a checkpoint, opened on first use;
    ``progress(nbytes)`` (from any thread) after each tensor read."""

    def __init__(
        self,
        storage: Storage,
        ckpt_dir: str,
        files: dict[str, dict[str, Any]],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.storage, self.ckpt_dir, self.files = storage, ckpt_dir, files
        self.progress = progress
        self._readers: dict[str, TensorFileReader] = {}
        self._lock = threading.Lock()

    def dtype(self, ref: list[str] | tuple[str, str]) -> torch.dtype:
        """The stored dtype of the tensor at ``ref``."""
        reader = self.get(ref[0])
        if ref[1] not in reader.header:
            raise _missing_tensor(reader.name, ref[1])
        return dtype_from_name(reader.header[ref[1]]["dtype"])

    def get(self, file: str) -> TensorFileReader:
        with self._lock:
            reader = self._readers.get(file)
        if reader is None:
            if file not in self.files:
                raise ChecksumError(f"manifest refers to file {file!r} that it does not record")
            path = self.storage.join(self.ckpt_dir, file)
            reader = TensorFileReader(self.storage, path, self.storage.url(path), self.files[file])
            with self._lock:
                self._readers.setdefault(file, reader)
        return reader

    def read(
        self,
        ref: list[str] | tuple[str, str],
        rows: tuple[int, int] | None = None,
        out: Tensor | None = None,
    ) -> Tensor:
        """The tensor at ``ref = [file, key]`` (optionally a row range, into ``out``)."""
        tensor = self.get(ref[0]).read(ref[1], rows, out)
        if self.progress is not None:
            self.progress(tensor.numel() * tensor.element_size())
        return tensor

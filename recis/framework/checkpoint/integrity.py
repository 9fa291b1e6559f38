"""Block checksums of checkpoint files.

A file is checksummed in fixed-size blocks (CRC-32 per block) rather than as a
whole, so that a rank that reads only a slice of a file (resharding) still
verifies every byte it reads without reading the rest. ``zlib.crc32`` releases
the GIL on large buffers, so writer threads checksum in parallel.
"""

from __future__ import annotations

import zlib

ALGORITHM = "crc32"
DEFAULT_BLOCK_SIZE = 8 << 20


class ChecksumError(IOError):
    """A checkpoint file does not match the checksum or size its manifest records."""


class BlockChecksum:
    """Streaming CRC-32 of consecutive ``block_size`` blocks of a byte stream.

    Example::

        >>> c = BlockChecksum(4)
        >>> c.update(b"abcdef"); c.finish()
        [zlib.crc32(b"abcd"), zlib.crc32(b"ef")]
    """

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.crcs: list[int] = []
        self._crc = 0
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self.block_size - self._filled)
            self._crc = zlib.crc32(view[:take], self._crc)
            self._filled += take
            view = view[take:]
            if self._filled == self.block_size:
                self.crcs.append(self._crc)
                self._crc, self._filled = 0, 0

    def finish(self) -> list[int]:
        if self._filled:
            self.crcs.append(self._crc)
            self._crc, self._filled = 0, 0
        return self.crcs


def verify_blocks(
    name: str,
    segments: list[bytes | bytearray | memoryview],
    first_block: int,
    block_size: int,
    crcs: list[int],
) -> None:
    """Checks bytes against the recorded ``crcs``.

    ``segments`` joined are consecutive file bytes that start at block
    ``first_block`` and end at a block boundary or at the end of the file. They may
    live in different buffers (a reader fills the caller's tensor directly and only
    the partial blocks around it in scratch buffers).
    """
    block, filled, crc = first_block, 0, 0

    def close_block() -> None:
        nonlocal block, filled, crc
        if block >= len(crcs):
            raise ChecksumError(f"{name}: longer than its manifest records ({len(crcs)} blocks)")
        if crc != crcs[block]:
            start = block * block_size
            raise ChecksumError(
                f"{name}: checksum mismatch in bytes [{start}, {start + filled}): "
                "the file is corrupted"
            )
        block, filled, crc = block + 1, 0, 0

    for segment in segments:
        view = memoryview(segment).cast("B")
        while len(view):
            take = min(len(view), block_size - filled)
            crc = zlib.crc32(view[:take], crc)
            filled += take
            view = view[take:]
            if filled == block_size:
                close_block()
    if filled:
        close_block()

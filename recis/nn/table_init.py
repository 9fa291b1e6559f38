"""A table's initial values, the same whether it is built whole or sharded any way."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from recis.nn.config import EmbeddingBagConfig

# Rows drawn under one seed. A shard starting or ending inside a block draws the
# whole block and keeps its part; a column shard draws its rows at full width.
ROWS_PER_SEED = 4096


def block_seed(seed: int, table: str, block: int) -> int:
    """The seed of rows ``[block * ROWS_PER_SEED, ...)`` of ``table``."""
    digest = hashlib.blake2b(f"{seed}/{table}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes < 2**63


@contextlib.contextmanager
def _seeding(device: torch.device) -> Iterator[Callable[[int], object]]:
    """Yields ``seed(s)``, which seeds the CPU generator (and ``device``'s, for a GPU)
    for ``init_fn``; every generator is put back afterwards."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"), torch.cuda.device(index):

            def seed_cuda(s: int) -> None:
                torch.random.default_generator.manual_seed(s)
                torch.cuda.manual_seed(s)

            yield seed_cuda
    else:
        with torch.random.fork_rng(devices=[]):
            yield torch.random.default_generator.manual_seed


def init_table_part(
    cfg: EmbeddingBagConfig,
    out: Tensor,
    row_offset: int = 0,
    col_offset: int = 0,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Fills ``out`` with rows ``[row_offset, row_offset + len(out))`` and columns
    ``[col_offset, col_offset + out.shape[1])`` of table ``cfg``'s initial values.

    Each block of :data:`ROWS_PER_SEED` rows is drawn by ``cfg``'s ``init_fn`` at full
    width under its own seed, from ``seed``, the table's name and the block: a table
    gets the same values built whole on one rank or sharded by any plan on any number
    of ranks (for one device type), its shards are not copies of each other, and the
    global RNG is left as it was. ``progress(nbytes)`` is called after each block.

    Example::

        >>> whole = torch.empty(10, 4); init_table_part(cfg, whole, seed=42)
        >>> part = torch.empty(3, 2); init_table_part(cfg, part, 5, 2, seed=42)
        >>> torch.equal(part, whole[5:8, 2:4])
        True
    """
    rows, cols = out.shape
    init, dim, size = cfg.initializer(), cfg.embedding_dim, cfg.num_embeddings
    if not (
        0 <= row_offset <= row_offset + rows <= size and 0 <= col_offset <= col_offset + cols <= dim
    ):
        raise ValueError(
            f"table {cfg.name!r} is {size}x{dim}: rows [{row_offset}, {row_offset + rows}) "
            f"x cols [{col_offset}, {col_offset + cols}) lie outside it"
        )
    if rows == 0 or cols == 0:
        return
    with torch.no_grad(), _seeding(out.device) as seed_block:
        first, last = row_offset // ROWS_PER_SEED, (row_offset + rows - 1) // ROWS_PER_SEED
        for block in range(first, last + 1):
            start = block * ROWS_PER_SEED
            end = min(start + ROWS_PER_SEED, size)
            r0, r1 = max(start, row_offset), min(end, row_offset + rows)
            dest = out[r0 - row_offset : r1 - row_offset]
            seed_block(block_seed(seed, cfg.name, block))
            if (r0, r1, col_offset, cols) == (start, end, 0, dim) and dest.is_contiguous():
                init(dest)  # the whole block: drawn in place
            else:
                drawn = torch.empty(end - start, dim, dtype=out.dtype, device=out.device)
                init(drawn)
                dest.copy_(drawn[r0 - start : r1 - start, col_offset : col_offset + cols])
            if progress is not None:
                progress(dest.numel() * dest.element_size())

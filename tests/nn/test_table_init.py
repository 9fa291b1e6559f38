"""init_table_part: a table's initial values are the same built whole or in any part."""

import pytest
import torch

from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, table_init
from recis.nn.table_init import init_table_part


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # Blocks of 7 rows: parts of a few dozen rows start, end and span blocks.
    monkeypatch.setattr(table_init, "ROWS_PER_SEED", 7)


def whole(cfg: EmbeddingBagConfig, seed: int = 3) -> torch.Tensor:
    out = torch.empty(cfg.num_embeddings, cfg.embedding_dim)
    init_table_part(cfg, out, seed=seed)
    return out


def part(cfg, rows, cols, seed=3):
    out = torch.empty(rows.stop - rows.start, cols.stop - cols.start)
    init_table_part(cfg, out, rows.start, cols.start, seed=seed)
    return out


@pytest.mark.parametrize("init_fn", [None, lambda w: w.normal_(0.0, 0.1)])
def test_every_part_equals_that_slice_of_the_whole_table(init_fn):
    cfg = EmbeddingBagConfig("t", 45, 5, ["f"], init_fn=init_fn)  # 45 = 6 blocks + 3 rows
    full = whole(cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        r0, r1 = sorted(torch.randint(0, 46, (2,), generator=g).tolist())
        c0, c1 = sorted(torch.randint(0, 6, (2,), generator=g).tolist())
        assert torch.equal(part(cfg, slice(r0, r1), slice(c0, c1)), full[r0:r1, c0:c1])
    assert torch.equal(part(cfg, slice(44, 45), slice(0, 5)), full[44:])  # the last row
    assert torch.equal(part(cfg, slice(14, 21), slice(0, 5)), full[14:21])  # one whole block


def test_shards_are_not_copies_of_each_other():
    # Before, every rank drew its shard from the same seeded RNG: row-wise halves and
    # column-wise halves of a table started equal.
    cfg = EmbeddingBagConfig("t", 28, 8, ["f"])
    full = whole(cfg)
    assert not torch.equal(full[:14], full[14:])
    assert not torch.equal(full[:, :4], full[:, 4:])
    assert len(set(full.flatten().tolist())) == full.numel()


def test_values_depend_on_the_seed_and_the_table_name_only():
    a = EmbeddingBagConfig("a", 20, 4, ["f"])
    assert torch.equal(whole(a, seed=1), whole(a, seed=1))
    assert not torch.equal(whole(a, seed=1), whole(a, seed=2))
    assert not torch.equal(whole(a), whole(EmbeddingBagConfig("b", 20, 4, ["f"])))
    bound = (1.0 / 20) ** 0.5  # the default init: uniform in +-sqrt(1 / num_embeddings)
    assert bool((whole(a).abs() <= bound).all())


def test_the_global_rng_is_left_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    whole(EmbeddingBagConfig("t", 30, 4, ["f"]))
    assert torch.equal(torch.rand(3), expected)


def test_a_part_outside_the_table_is_refused_naming_it():
    cfg = EmbeddingBagConfig("t_user", 10, 4, ["f"])
    with pytest.raises(ValueError, match=r"table 't_user' is 10x4: rows \[8, 11\) x cols"):
        part(cfg, slice(8, 11), slice(0, 4))
    with pytest.raises(ValueError, match=r"cols \[2, 5\) lie outside it"):
        part(cfg, slice(0, 1), slice(2, 5))


def test_empty_parts_and_a_one_row_table():
    cfg = EmbeddingBagConfig("t", 1, 3, ["f"])
    assert part(cfg, slice(0, 0), slice(0, 3)).shape == (0, 3)
    assert torch.equal(part(cfg, slice(0, 1), slice(1, 3)), whole(cfg)[:, 1:])


def test_a_collection_built_whole_uses_the_global_seed():
    cfgs = [EmbeddingBagConfig("t", 30, 4, ["f"])]
    torch.manual_seed(9)
    first = EmbeddingBagCollection(cfgs).tables["t"].weight
    torch.manual_seed(9)
    assert torch.equal(EmbeddingBagCollection(cfgs).tables["t"].weight, first)
    assert torch.equal(first, whole(cfgs[0], seed=9))


@pytest.mark.cuda
def test_on_a_gpu_every_part_equals_that_slice_of_the_whole_table():
    cfg = EmbeddingBagConfig("t", 45, 5, ["f"])
    device = torch.device("cuda")
    full = torch.empty(45, 5, device=device)
    init_table_part(cfg, full, seed=3)
    cpu_rng, gpu_rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    out = torch.empty(17, 3, device=device)
    init_table_part(cfg, out, 20, 1, seed=3)
    assert torch.equal(out, full[20:37, 1:4])
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert torch.equal(torch.cuda.get_rng_state(), gpu_rng)

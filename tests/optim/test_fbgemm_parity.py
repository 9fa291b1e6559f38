"""SparseRowWiseAdagrad, SparseAdagrad and SparseSGD against FBGEMM's table-batched
embeddings with fused optimizer (CPU): same initial weights, same batches; the
pooled outputs and the updated weights agree step by step.

FBGEMM's CPU path has no ADAM (it asserts "Optimizer adam is not supported in CPU
mode"), so SparseAdam is checked against torch.optim.Adam in test_sparse_optimizers
and this file only pins that FBGEMM limitation."""

import pytest
import torch

from recis.nn import EmbeddingBagConfig, EmbeddingTable, table_lookup
from recis.optim import SparseAdagrad, SparseRowWiseAdagrad, SparseSGD

tbe = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_training")
from fbgemm_gpu.split_embedding_configs import EmbOptimType  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_common import (  # noqa: E402
    EmbeddingLocation,
    PoolingMode,
)

pytestmark = pytest.mark.peers

SHAPES = [(20, 4), (15, 8), (9, 12), (11, 16)]  # (rows, dim) per table; 16: a fixed-width kernel
BATCH = 6

CASES = {
    "rowwise_adagrad": (
        EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        dict(learning_rate=0.1, eps=1e-6),
        lambda tables: SparseRowWiseAdagrad(tables, lr=0.1, eps=1e-6),
    ),
    "adagrad": (
        EmbOptimType.EXACT_ADAGRAD,
        dict(learning_rate=0.1, eps=1e-6),
        lambda tables: SparseAdagrad(tables, lr=0.1, eps=1e-6),
    ),
    "sgd": (
        EmbOptimType.EXACT_SGD,
        dict(learning_rate=0.1),
        lambda tables: SparseSGD(tables, lr=0.1),
    ),
}


def _batch(weighted):
    """Feature-major ids and offsets (T * BATCH + 1) over all tables, TBE's layout."""
    lengths = torch.randint(0, 5, (len(SHAPES), BATCH))
    ids = torch.cat(
        [torch.randint(0, rows, (int(lengths[t].sum()),)) for t, (rows, _) in enumerate(SHAPES)]
    )
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long)
    offsets[1:] = lengths.flatten().cumsum(0)
    psw = torch.rand(ids.numel()) + 0.5 if weighted else None
    return ids, offsets, psw


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mode", ["sum", "mean", "weighted"])
def test_matches_fbgemm_tbe_over_several_steps(name, mode):
    optim_type, fbgemm_hyper, make_opt = CASES[name]
    pooling = "mean" if mode == "mean" else "sum"
    tables = {
        f"t{i}": EmbeddingTable(
            EmbeddingBagConfig(f"t{i}", rows, dim, [f"f{i}"], pooling=pooling),
            torch.randn(rows, dim),
        )
        for i, (rows, dim) in enumerate(SHAPES)
    }
    emb = tbe.SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[
            (rows, dim, EmbeddingLocation.HOST, tbe.ComputeDevice.CPU) for rows, dim in SHAPES
        ],
        optimizer=optim_type,
        pooling_mode=PoolingMode.MEAN if pooling == "mean" else PoolingMode.SUM,
        **fbgemm_hyper,
    )
    with torch.no_grad():
        for w, table in zip(emb.split_embedding_weights(), tables.values(), strict=True):
            w.copy_(table.weight)
    opt = make_opt(tables)
    for _ in range(4):
        ids, offsets, psw = _batch(mode == "weighted")
        target = torch.randn(BATCH, sum(d for _, d in SHAPES))
        theirs = emb(ids, offsets, psw)
        ((theirs - target) ** 2).sum().backward()  # TBE applies its optimizer in backward
        opt.zero_grad()
        outs = []
        for t, table in enumerate(tables.values()):
            lo, hi = int(offsets[t * BATCH]), int(offsets[(t + 1) * BATCH])
            bag_offsets = offsets[t * BATCH : (t + 1) * BATCH + 1] - lo
            outs.append(
                table_lookup(
                    table,
                    ids[lo:hi],
                    bag_offsets,
                    None if psw is None else psw[lo:hi],
                    pooling == "mean",
                )
            )
        ours = torch.cat(outs, dim=1)
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-5)
        ((ours - target) ** 2).sum().backward()
        opt.step()
        for w, table in zip(emb.split_embedding_weights(), tables.values(), strict=True):
            torch.testing.assert_close(table.weight, w, rtol=1e-5, atol=1e-5)


def test_fbgemm_cpu_has_no_adam():
    # Why SparseAdam has no FBGEMM parity test here (see the module docstring).
    with pytest.raises(AssertionError, match="not supported in CPU mode"):
        tbe.SplitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(4, 4, EmbeddingLocation.HOST, tbe.ComputeDevice.CPU)],
            optimizer=EmbOptimType.ADAM,
        )

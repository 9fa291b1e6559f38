"""SparseRowWiseAdagrad, SparseAdagrad, SparseSGD and SparseAdam against FBGEMM's
table-batched embeddings with fused optimizer: same initial weights, same batches;
the pooled outputs and the updated weights agree step by step.

FBGEMM's CPU path has no ADAM (it asserts "Optimizer adam is not supported in CPU
mode"), so SparseAdam is compared with it on CUDA only (and with torch.optim.Adam
everywhere in test_sparse_optimizers); the CUDA cases run where a GPU is."""

import pytest
import torch

from recis.nn import EmbeddingBagConfig, EmbeddingTable, table_lookup
from recis.optim import SparseAdagrad, SparseAdam, SparseRowWiseAdagrad, SparseSGD

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
    "adam": (
        EmbOptimType.ADAM,
        dict(learning_rate=0.1, eps=1e-6, beta1=0.9, beta2=0.999),
        lambda tables: SparseAdam(tables, lr=0.1, betas=(0.9, 0.999), eps=1e-6),
    ),
}
# (optimizer, device) pairs; FBGEMM's CPU path has no ADAM (test_fbgemm_cpu_has_no_adam).
RUNS = [
    pytest.param(name, device, id=f"{name}-{device}", marks=[pytest.mark.cuda] * (device == "cuda"))
    for device in ("cpu", "cuda")
    for name in CASES
    if (name, device) != ("adam", "cpu")
]


def _batch(weighted):
    """Feature-major ids and offsets (T * BATCH + 1) over all tables, TBE's layout.
    Each table's first bag is not empty: FBGEMM's Adam counts its steps for all tables
    at once, recis's per table that had a gradient."""
    lengths = torch.randint(0, 5, (len(SHAPES), BATCH))
    lengths[:, 0].clamp_(min=1)
    ids = torch.cat(
        [torch.randint(0, rows, (int(lengths[t].sum()),)) for t, (rows, _) in enumerate(SHAPES)]
    )
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.long)
    offsets[1:] = lengths.flatten().cumsum(0)
    psw = torch.rand(ids.numel()) + 0.5 if weighted else None
    return ids, offsets, psw


def _tables(pooling: str, device: str) -> dict[str, EmbeddingTable]:
    tables = {}
    for i, (rows, dim) in enumerate(SHAPES):
        cfg = EmbeddingBagConfig(f"t{i}", rows, dim, [f"f{i}"], pooling=pooling)
        table = EmbeddingTable(cfg, torch.randn(rows, dim).to(device))
        table.grad_anchor = table.grad_anchor.to(device)
        tables[cfg.name] = table
    return tables


@pytest.mark.parametrize(("name", "device"), RUNS)
@pytest.mark.parametrize("mode", ["sum", "mean", "weighted"])
def test_matches_fbgemm_tbe_over_several_steps(name, device, mode):
    optim_type, fbgemm_hyper, make_opt = CASES[name]
    pooling = "mean" if mode == "mean" else "sum"
    tables = _tables(pooling, device)
    location, compute = (
        (EmbeddingLocation.HOST, tbe.ComputeDevice.CPU)
        if device == "cpu"
        else (EmbeddingLocation.DEVICE, tbe.ComputeDevice.CUDA)
    )
    emb = tbe.SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(rows, dim, location, compute) for rows, dim in SHAPES],
        optimizer=optim_type,
        pooling_mode=PoolingMode.MEAN if pooling == "mean" else PoolingMode.SUM,
        **fbgemm_hyper,
    )
    with torch.no_grad():
        for w, table in zip(emb.split_embedding_weights(), tables.values(), strict=True):
            w.copy_(table.weight)
    opt = make_opt(tables)
    for _ in range(4):
        ids, offsets, psw = (
            None if t is None else t.to(device) for t in _batch(mode == "weighted")
        )
        target = torch.randn(BATCH, sum(d for _, d in SHAPES)).to(device)
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

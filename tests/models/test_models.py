import math

import pytest
import torch

from recis.framework.evaluation import without_samples
from recis.framework.metrics import Predictions, clear_metrics, get_global_metrics
from recis.io import SyntheticCriteoDataset
from recis.models import DLRM, DCNv2, DeepFM, criteo_tables
from recis.nn import EmbeddingBagCollection, filter_out_sparse_param
from recis.optim import SparseSGD

SIZE, DIM = 40, 8


def build(name, **kw):
    if name == "dlrm":
        return DLRM(table_sizes=SIZE, embedding_dim=DIM, bottom_mlp=(16, DIM), top_mlp=(16,), **kw)
    if name == "deepfm":
        return DeepFM(table_sizes=SIZE, embedding_dim=DIM, deep_mlp=(16,), **kw)
    return DCNv2(table_sizes=SIZE, embedding_dim=DIM, num_cross_layers=2, deep_mlp=(16,), **kw)


MODELS = ["dlrm", "deepfm", "dcnv2"]


def data(batch_size=32, num_batches=4, seed=0, first_batch=0):
    return SyntheticCriteoDataset(
        batch_size,
        table_sizes=SIZE,
        num_batches=num_batches,
        seed=seed,
        prefetch=0,
        first_batch=first_batch,
    )


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_metrics(name):
    model = build(name)
    assert isinstance(model.sparse_arch, EmbeddingBagCollection)
    batch = next(iter(data()))
    clear_metrics()
    loss = model(batch)
    assert loss.shape == () and math.isfinite(loss.item())
    metrics = get_global_metrics()
    assert torch.equal(metrics["loss"], loss.detach())
    auc = metrics["auc"]
    assert isinstance(auc, Predictions)
    assert auc.preds.shape == (32,) and bool(((auc.preds >= 0) & (auc.preds <= 1)).all())
    assert torch.equal(auc.labels, batch["label"])
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    tables = filter_out_sparse_param(model)
    assert len(tables) == 26 and not set(map(id, tables.values())) & set(
        map(id, model.parameters())
    )
    for t in tables.values():
        g = t.sparse_grad()
        assert g is not None and g.grad_out.shape == (32, DIM)


def sgd_step(model, dense_opt, sparse_opt):
    for opt in (dense_opt, sparse_opt):
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("name", MODELS)
def test_a_few_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    model = build(name)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sparse_opt = SparseSGD(filter_out_sparse_param(model), lr=0.05)
    train = list(data(batch_size=32, num_batches=10, seed=1))
    # Held out: the same distribution (seed), batches training never sees.
    held_out = next(iter(data(batch_size=512, num_batches=1, seed=1, first_batch=10_000)))
    with torch.no_grad():
        before = float(model(held_out))
    for batch in train:
        model(batch).backward()
        sgd_step(model, opt, sparse_opt)
    with torch.no_grad():
        after = float(model(held_out))
    assert after < before - 0.03, (before, after)


@pytest.mark.parametrize("name", MODELS)
def test_meta_device_embeddings(name):
    model = build(name, embedding_device="meta")
    for t in filter_out_sparse_param(model).values():
        assert t.weight.device.type == "meta" and t.weight.shape == (SIZE, DIM)
    assert all(p.device.type == "cpu" for p in model.parameters())
    # A table far larger than memory costs nothing until it is sharded.
    huge = DLRM(
        tables=criteo_tables([10**10] + [10] * 25, 16), embedding_device="meta"
    ).sparse_arch.tables["t_C1"]
    assert huge.weight.shape == (10**10, 16) and huge.weight.device.type == "meta"


def test_input_checks():
    batch = next(iter(data()))
    bad = dict(batch, dense=batch["dense"][:, :5])
    with pytest.raises(ValueError, match="dense"):
        build("dlrm")(bad)
    with pytest.raises(ValueError, match="bottom_mlp"):
        DLRM(table_sizes=SIZE, embedding_dim=DIM, bottom_mlp=(16, 4))
    # The default bottom MLP ends at whatever the embedding dim is.
    assert DLRM(table_sizes=SIZE, embedding_dim=24).bottom[-2].out_features == 24
    mixed = criteo_tables(SIZE, DIM)
    mixed[0] = criteo_tables(SIZE, 4)[0]
    for model_class in (DLRM, DeepFM):  # the error names the model and each table's dim
        with pytest.raises(
            ValueError, match=rf"{model_class.__name__} needs one embedding dim.*'t_C1': 4"
        ):
            model_class(tables=mixed)
    # DCNv2 accepts tables of different dims.
    model = DCNv2(tables=mixed, num_cross_layers=1, low_rank=4, deep_mlp=(8,))
    assert math.isfinite(model(batch).item())


@pytest.mark.parametrize("name", MODELS)
def test_a_batch_without_samples_runs(name):
    # A rank whose eval data ended runs such a batch while the others evaluate.
    model = build(name)
    empty = without_samples(next(iter(data())))
    clear_metrics()
    with torch.no_grad():
        model(empty)
    assert get_global_metrics()["auc"].preds.shape == (0,)

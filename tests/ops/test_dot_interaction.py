import pytest
import torch

from recis import ops
from recis.ops import reference
from tests.ops.helpers import torch_threads


def inputs(batch, features, dim, dtype=torch.float32):
    dense = torch.randn(batch, dim, dtype=dtype, requires_grad=True)
    embeddings = torch.randn(batch, features * dim, dtype=dtype, requires_grad=True)
    return dense, embeddings


@pytest.mark.parametrize("features", [0, 1, 2, 7, 8, 26, 40])
@pytest.mark.parametrize("dim", [1, 3, 4, 8, 16, 17, 64, 127])
def test_forward_and_backward_match_the_reference(features, dim):
    dense, emb = inputs(37, features, dim)
    out = ops.dot_interaction(dense, emb)
    n = features + 1
    assert out.shape == (37, dim + n * (n - 1) // 2)
    ref_dense, ref_emb = (
        dense.detach().clone().requires_grad_(),
        emb.detach().clone().requires_grad_(),
    )
    want = reference.dot_interaction(ref_dense, ref_emb)
    torch.testing.assert_close(out, want)
    grad = torch.randn_like(out)
    out.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(dense.grad, ref_dense.grad)
    torch.testing.assert_close(emb.grad, ref_emb.grad)


def test_pairs_are_the_row_major_upper_triangle():
    dense = torch.tensor([[1.0, 0.0]])
    emb = torch.tensor([[2.0, 0.0, 0.0, 3.0, 1.0, 1.0]])  # e1 = (2, 0), e2 = (0, 3), e3 = (1, 1)
    out = ops.dot_interaction(dense, emb)
    # dense, then (x0.e1, x0.e2, x0.e3, e1.e2, e1.e3, e2.e3)
    assert out.tolist() == [[1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 2.0, 3.0]]


def test_double_precision_gradients_are_exact():
    dense, emb = inputs(5, 4, 6, torch.float64)
    assert torch.autograd.gradcheck(ops.dot_interaction, (dense, emb))


def test_an_empty_batch():
    dense, emb = inputs(0, 3, 4)
    out = ops.dot_interaction(dense, emb)
    assert out.shape == (0, 4 + 6)
    assert reference.dot_interaction(dense, emb).shape == (0, 4 + 6)
    out.sum().backward()
    assert dense.grad.shape == (0, 4) and emb.grad.shape == (0, 12)


def test_several_threads_give_the_single_thread_result():
    dense, emb = inputs(1000, 26, 16)
    with torch_threads(1):
        one = ops.dot_interaction(dense, emb)
    with torch_threads(2):
        two = ops.dot_interaction(dense, emb)
    assert torch.equal(one, two)


def test_bad_shapes_and_dtypes_raise():
    with pytest.raises(RuntimeError, match="not a multiple of the dense width 4"):
        ops.dot_interaction(torch.randn(2, 4), torch.randn(2, 10))
    with pytest.raises(RuntimeError, match="dense needs at least one column"):
        ops.dot_interaction(torch.randn(2, 0), torch.randn(2, 0))
    with pytest.raises(RuntimeError, match="dense has 2 samples but embeddings has 3"):
        ops.dot_interaction(torch.randn(2, 4), torch.randn(3, 8))
    with pytest.raises(RuntimeError, match="dense is Float but embeddings is Double"):
        ops.dot_interaction(torch.randn(2, 4), torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="needs float32 or float64"):
        ops.dot_interaction(torch.randn(2, 4).half(), torch.randn(2, 8).half())


@pytest.mark.cuda
def test_cuda_matches_cpu():
    dense, emb = inputs(64, 26, 16)
    cpu = ops.dot_interaction(dense, emb)
    gpu = ops.dot_interaction(dense.detach().cuda(), emb.detach().cuda())
    torch.testing.assert_close(gpu.cpu(), cpu.detach(), rtol=1e-4, atol=1e-4)

"""Device/backend selection, process-group set-up from torchrun variables, seeding."""

from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist
from torch import nn

from recis.distributed.process_group import (
    init_distributed,
    resolve_backend,
    resolve_device,
    set_seed,
    world_size,
)
from recis.framework.trainer import Trainer, TrainingArguments
from recis.testing.distributed import free_port

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def test_resolve_device_and_backend():
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert resolve_backend("gloo", torch.device("cpu")) == "gloo"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_backend("nccl", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("carrier-pigeon")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("abacus")


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_each_local_rank_gets_its_own_gpu(monkeypatch, device):
    # Only which index is chosen is under test, so two GPUs are pretended on CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for local_rank, index in [("0", 0), ("1", 1), ("3", 1)]:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert resolve_device(device) == torch.device("cuda", index)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an index is kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_init_distributed_reads_torchrun_variables(monkeypatch):
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not init_distributed()  # plain `python train.py`: single process
    assert world_size() == 1
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed()
    # What torchrun --nproc-per-node 1 sets: a real one-rank group is created.
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    try:
        assert init_distributed(device="cpu")
        assert dist.get_backend() == "gloo" and world_size() == 1
        assert not init_distributed()  # already initialised: nothing to do
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_set_seed_makes_every_generator_repeat():
    set_seed(7)
    first = (random.random(), torch.rand(3))
    set_seed(7)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


class _AutocastProbe(nn.Module):
    """Dense-only model that records whether its forward ran under autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch):
        out = self.linear(batch["dense"]).squeeze(1)
        self.dtypes.append(out.dtype)
        return ((out.float() - batch["label"]) ** 2).mean()


def _probe_batches(n: int) -> list[dict]:
    return [{"dense": torch.randn(8, 4), "label": torch.rand(8)} for _ in range(n)]


def test_bf16_is_ignored_with_a_warning_on_cpu(tmp_path, caplog):
    model = _AutocastProbe()
    with caplog.at_level("WARNING"):
        trainer = Trainer(
            model,
            TrainingArguments(output_dir=str(tmp_path), bf16=True, device="cpu", log_steps=None),
            train_dataset=_probe_batches(2),
            dense_optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
        )
    assert "bf16 autocast needs a CUDA device" in caplog.text
    trainer.train()
    assert model.dtypes == [torch.float32, torch.float32]


@pytest.mark.cuda
def test_bf16_autocasts_the_forward_on_cuda(tmp_path):
    model = _AutocastProbe().cuda()
    trainer = Trainer(
        model,
        TrainingArguments(output_dir=str(tmp_path), bf16=True, log_steps=None),
        train_dataset=_probe_batches(3),
        dense_optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
    )
    assert trainer.device.type == "cuda"
    trainer.train()
    assert model.dtypes == [torch.bfloat16] * 3
    assert model.linear.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="move the model there first"):
        Trainer(
            _AutocastProbe(),
            TrainingArguments(output_dir=str(tmp_path)),
            train_dataset=[],
            dense_optimizers=(torch.optim.SGD(model.parameters()), None),
        ).train()

"""A checkpoint that does not fit in output_dir: stopped before it fills the disk where
the last one's size tells, and otherwise a message with the sizes and what to do."""

from __future__ import annotations

import errno
import os
from contextlib import nullcontext
from unittest import mock

import pytest
import torch.distributed as dist

from recis.framework.checkpoint.dense import dense_state_dict
from recis.framework.checkpoint.disk_space import (
    host_state_bytes,
    least_checkpoint_bytes,
    rank_checkpoint_bytes,
)
from recis.framework.checkpoint.storage import LocalStorage
from recis.framework.checkpoint_manager import CheckpointError, Saver
from recis.nn import filter_out_sparse_param
from recis.optim import SparseAdagrad, SparseAdam, SparseRowWiseAdagrad, SparseSGD
from recis.testing import run_distributed
from tests.framework.ckpt_helpers import FakeSparseOptimizer, ShardedTables

SPECS = [("a", 13, 5, "table_wise", 0), ("b", 17, 7, "row_wise", 1)]


def _saver(path: str, rank: int = 0, world: int = 1, max_keep: int | None = 5) -> Saver:
    model = ShardedTables(SPECS, rank, world)
    return Saver(model, FakeSparseOptimizer(filter_out_sparse_param(model)), path, max_keep)


def test_free_space_is_read_off_the_nearest_existing_folder(tmp_path):
    storage = LocalStorage()
    assert storage.free_bytes(str(tmp_path / "not" / "yet")) == storage.free_bytes(str(tmp_path))
    assert storage.free_bytes(str(tmp_path)) > 0


def test_a_save_bigger_than_the_free_space_stops_before_writing(tmp_path):
    saver = _saver(str(tmp_path), max_keep=3)
    saver.save("s1")
    with (
        mock.patch.object(LocalStorage, "free_bytes", return_value=1000),
        pytest.raises(CheckpointError) as raised,
    ):
        saver.save("s2")
    message = str(raised.value)
    assert message.startswith(
        f"checkpoint 's2': output_dir {tmp_path} has 0.0 MiB free, less than the "
    )
    assert "MiB of the last checkpoint, and nothing was written: output_dir keeps the " in message
    assert (
        "newest 3 checkpoints and deletes the oldest only after a new one is committed" in message
    )
    assert "max_to_keep" in message
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "s1"]
    assert saver.checkpoints() == ["s1"]
    saver.save("s2")  # room again
    assert saver.checkpoints() == ["s1", "s2"]
    # A resumed job knows the size from the checkpoint it loaded whole.
    resumed = _saver(str(tmp_path))
    resumed.load()
    with (
        mock.patch.object(LocalStorage, "free_bytes", return_value=1000),
        pytest.raises(CheckpointError, match=r"less than the .* of the last checkpoint"),
    ):
        resumed.save("s3")
    # A part of it (a model bank's tables, say) may be another model's: no size known.
    warm = _saver(str(tmp_path / "warm"))
    warm.load_by_config(str(tmp_path), {"load": ["sparse"]})
    with mock.patch.object(LocalStorage, "free_bytes", return_value=1000):
        warm.save("w1")


def _rank_1_runs_out_of_room(path: str) -> str:
    rank, world = dist.get_rank(), dist.get_world_size()
    saver = _saver(path, rank, world, max_keep=None)

    def full_disk(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with (
        mock.patch.object(LocalStorage, "open_write", full_disk) if rank == 1 else nullcontext(),
        pytest.raises(CheckpointError) as raised,
    ):
        saver.save("s1")
    assert saver.checkpoints() == []
    return str(raised.value)


def test_a_rank_out_of_room_fails_every_rank_with_the_sizes_and_what_to_do(tmp_path):
    errors = run_distributed(_rank_1_runs_out_of_room, 2, str(tmp_path), timeout=60)
    assert errors[0] == errors[1]
    assert errors[0].startswith(
        f"checkpoint {tmp_path}/s1 was not saved: rank 1: OSError: [Errno 28] No space left "
        "on device, writing 0.0 MiB; output_dir has "
    )
    assert "MiB free. output_dir keeps every checkpoint and deletes the oldest" in errors[0]
    assert os.listdir(tmp_path) == []  # the temporary folder is gone


def _least_bytes(saver: Saver) -> int:
    """What the test expects: every table's whole weight and the optimizer's state
    (momentum per element, visits per row) once, and the dense state."""
    tables = sum(rows * (2 * cols + 1) * 4 for _, rows, cols, _, _ in SPECS)
    dense = dense_state_dict(saver.model).values()
    return tables + sum(t.numel() * t.element_size() for t in dense)


def _start_check_job(path: str) -> list[str]:
    rank, world = dist.get_rank(), dist.get_world_size()
    saver = _saver(path, rank, world, max_keep=2)
    least = _least_bytes(saver)  # table "b" is cut over both ranks: counted once
    outcomes = []
    for free in (least - 1, least, 3 * least):
        with mock.patch.object(LocalStorage, "free_bytes", return_value=free):
            try:
                saver.check_writable()
                outcomes.append("ok")
            except CheckpointError as e:
                outcomes.append(str(e))
    return outcomes


def test_a_job_whose_first_checkpoint_cannot_fit_stops_at_its_start(tmp_path, caplog):
    outcomes = run_distributed(_start_check_job, 2, str(tmp_path), timeout=60)
    assert outcomes[0] == outcomes[1]
    too_small, tight, roomy = outcomes[0]
    assert too_small.startswith(
        f"output_dir {tmp_path}: it has 0.0 MiB free, but a checkpoint takes at least 0.0 MiB "
        "(this model's weights and sparse-optimizer state): not one fits there"
    )
    assert (tight, roomy) == ("ok", "ok")
    # One process: the warning when fewer fit than max_keep and the one being saved.
    saver = _saver(str(tmp_path / "one"), max_keep=2)
    with (
        caplog.at_level("WARNING"),
        mock.patch.object(LocalStorage, "free_bytes", return_value=_least_bytes(saver) * 2),
    ):
        saver.check_writable()
    assert "room for 2 checkpoints of at least 0.0 MiB (this model's weights and" in caplog.text
    assert "keeps the newest 2 checkpoints" in caplog.text


@pytest.mark.parametrize("optimizer", [SparseSGD, SparseRowWiseAdagrad, SparseAdagrad, SparseAdam])
def test_the_start_bound_is_a_checkpoint_of_the_model_before_its_headers(tmp_path, optimizer):
    model = ShardedTables([("a", 3000, 16, "table_wise", 0), ("b", 2000, 8, "table_wise", 0)], 0, 1)
    saver = Saver(model, optimizer(filter_out_sparse_param(model), lr=0.1), str(tmp_path))
    tables, dense = least_checkpoint_bytes(saver.model, saver.sparse_optimizer)
    saver.save("c1")
    saved = sum(f.stat().st_size for f in (tmp_path / "c1").iterdir())
    least = tables["a"] + tables["b"] + dense
    assert least <= saved < least * 1.05  # the rest: file headers, the manifest
    # On one rank its shards are the whole tables; their state alone is the rest.
    assert rank_checkpoint_bytes(saver.model, saver.sparse_optimizer) == least
    weights = (3000 * 16 + 2000 * 8) * 4
    assert host_state_bytes(saver.model, saver.sparse_optimizer) == least - weights - dense

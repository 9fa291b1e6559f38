"""Saver behaviour: max_keep, stale temporaries, load_by_config, fsspec, concurrency,
background saves, CheckpointManager, one job per output_dir."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from recis.distributed.comm import group_timeout
from recis.framework import checkpoint_manager, progress
from recis.framework.checkpoint.writer import map_in_threads
from recis.framework.checkpoint_manager import (
    CheckpointError,
    CheckpointManager,
    Saver,
    parse_load_conf,
)
from recis.nn import EmbeddingBagCollection, EmbeddingBagConfig, filter_out_sparse_param
from recis.optim import SparseAdam
from recis.sparse import KeyedJaggedTensor
from recis.testing import run_distributed
from tests.framework.ckpt_helpers import (
    FakeSparseOptimizer,
    IOState,
    ShardedTables,
    assert_tree_equal,
    fill,
    global_weight,
)
from tests.framework.test_trainer_resume import held_writes

SPECS = [("a", 13, 5, "table_wise", 0), ("b", 17, 7, "row_wise", 1)]


def _model(specs=SPECS, rank=0, world=1):
    model = ShardedTables(specs, rank, world)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    return model, opt


def test_max_keep_prunes_this_and_earlier_runs_and_stale_temporaries(tmp_path):
    model, opt = _model()
    first = Saver(model, opt, str(tmp_path), max_keep=None)
    for i in range(4):
        first.save(f"old{i}")
    (tmp_path / ".tmp-crashed-123").mkdir()
    (tmp_path / ".tmp-crashed-123" / "rank00000-0.safetensors").write_bytes(b"partial")
    # A folder committed but never listed (a crash between rename and list update).
    os.rename(tmp_path / "old0", tmp_path / "orphan")
    (tmp_path / "checkpoint").write_text("old1\nold2\nold3\n")
    (tmp_path / "notes").mkdir()  # not a checkpoint: left alone

    saver = Saver(model, opt, str(tmp_path), max_keep=2)
    saver.save("new0")
    assert saver.checkpoints() == ["old3", "new0"]
    saver.save("new1")
    assert saver.checkpoints() == ["new0", "new1"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "new0", "new1", "notes"]
    assert saver.latest_checkpoint() == str(tmp_path / "new1")
    # Saving an id again replaces it and makes it the newest.
    saver.save("new0")
    assert saver.checkpoints() == ["new1", "new0"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "new0", "new1", "notes"]


def test_a_deleted_checkpoint_list_is_rebuilt_from_the_complete_folders(tmp_path, caplog):
    model, opt = _model()
    saver = Saver(model, opt, str(tmp_path), max_keep=3)
    for ckpt_id in ("b-first", "a-second"):  # their names sort against their order
        saver.save(ckpt_id)
    os.remove(tmp_path / "checkpoint")
    (tmp_path / "notes").mkdir()  # not a checkpoint
    (tmp_path / "half").mkdir()  # a manifest cut short
    (tmp_path / "half" / "manifest.json").write_text('{"format": "recis')
    with caplog.at_level("WARNING"):
        assert saver.checkpoints() == ["b-first", "a-second"]
        assert saver.latest_checkpoint() == f"{tmp_path}/a-second"
    assert caplog.text.count("has no list of committed checkpoints") == 1
    saver.save("c-third")  # they are kept, not pruned as folders a crash left unlisted
    assert saver.checkpoints() == ["b-first", "a-second", "c-third"]
    assert (tmp_path / "checkpoint").read_text() == "b-first\na-second\nc-third\n"


def test_invalid_ids_and_conf():
    model, opt = _model()
    saver = Saver(model, opt, "/tmp/unused-recis")
    for bad in ["", "../x", ".hidden", "a/b", "checkpoint"]:
        with pytest.raises(ValueError, match="invalid checkpoint id"):
            saver.save(bad)
    assert parse_load_conf({"load": "*", "exclude": ["io_state"]}) == (
        {"sparse", "sparse_opt", "dense", "extra"},
        True,
    )
    with pytest.raises(ValueError, match="unknown categories"):
        parse_load_conf({"load": ["weights"]})
    with pytest.raises(ValueError, match="unknown keys"):
        parse_load_conf({"include": ["sparse"]})


def test_load_by_config_warm_start_from_a_model_bank(tmp_path):
    bank, opt = _model()
    fill(bank, opt)
    torch.nn.init.constant_(bank.dense.weight, 3.0)
    Saver(bank, opt, str(tmp_path / "bank")).save("final")

    model, opt2 = _model()
    dense_before = model.dense.weight.clone()
    saver = Saver(model, opt2, str(tmp_path / "job"))
    saver.load_by_config(str(tmp_path / "bank"), {"load": ["sparse"]})
    for name in model.tables:
        assert torch.equal(model.tables[name].weight, bank.tables[name].weight)
        assert torch.equal(
            opt2.table_state(name)["momentum"], torch.zeros_like(bank.tables[name].weight)
        )
    assert torch.equal(model.dense.weight, dense_before)
    # Everything but the sparse optimizer state, by path of the checkpoint itself.
    saver.load_by_config(str(tmp_path / "bank" / "final"), {"load": "*", "exclude": ["sparse_opt"]})
    assert torch.equal(model.dense.weight, bank.dense.weight)
    assert float(opt2.table_state("a")["step"]) == 0.0
    saver.load_by_config(str(tmp_path / "bank"), {"load": ["sparse_opt"]})
    assert_tree_equal(opt2.table_state("a"), opt.table_state("a"))


def test_a_file_url_is_a_local_path_with_its_durable_commit(tmp_path, monkeypatch):
    # fsspec's own local rename deletes, then moves: not the atomic os.replace.
    saver = Saver(*_model(), f"file://{tmp_path}/job")
    replaced = []
    monkeypatch.setattr(os, "replace", lambda a, b: replaced.append(b) or os.rename(a, b))
    assert saver.save("s1") == f"{tmp_path}/job/s1"
    assert f"{tmp_path}/job/checkpoint" in replaced and saver.checkpoints() == ["s1"]
    Saver(*_model(), f"local://{tmp_path}/job").load()


def test_fsspec_rename_onto_a_file_that_the_backend_will_not_replace():
    from fsspec.implementations.memory import MemoryFileSystem

    from recis.framework.checkpoint.storage import FsspecStorage

    class NoReplace(MemoryFileSystem):  # as HDFS: a rename onto a file fails
        def mv(self, path1, path2, **kwargs):
            if self.isfile(path2):
                raise FileExistsError(path2)
            super().mv(path1, path2, **kwargs)

    fs, root = NoReplace(), f"/recis-test-{uuid.uuid4().hex}"
    fs.pipe({f"{root}/list": b"old", f"{root}/tmp": b"new"})
    FsspecStorage(fs, "memory").rename(f"{root}/tmp", f"{root}/list")
    assert fs.cat(f"{root}/list") == b"new" and not fs.exists(f"{root}/tmp")


def test_fsspec_memory_round_trip(monkeypatch):
    url = f"memory://recis-test-{uuid.uuid4().hex}/job"
    model, opt = _model()
    fill(model, opt)
    io = IOState(pos=11, seen=torch.arange(3))
    saver = Saver(model, opt, url, max_keep=1, concurrency=3)
    saver.register_for_checkpointing("reader", io, per_rank=True)
    saver.save("s1")
    removed = []
    rm = saver._storage.fs.rm  # fsspec caches the instance: patched for this test only
    monkeypatch.setattr(
        saver._storage.fs, "rm", lambda path, **kw: removed.append(path) or rm(path, **kw)
    )
    saver.save("s2")
    assert saver.checkpoints() == ["s2"]
    assert saver.latest_checkpoint().startswith("memory://")
    # The list of committed checkpoints was replaced, never missing for a moment.
    assert removed and not [p for p in removed if p.endswith("/checkpoint")]

    model2, opt2 = _model()
    io2 = IOState()
    saver2 = Saver(model2, opt2, url)
    saver2.register_for_checkpointing("reader", io2, per_rank=True)
    saver2.load()
    assert_tree_equal(model.state_dict(), model2.state_dict())
    assert_tree_equal(opt.table_state("b"), opt2.table_state("b"))
    assert (io2.pos, io2.seen.tolist()) == (11, [0, 1, 2])
    # A chained URL (a local cache in front of the store) reads it too.
    model3, opt3 = _model()
    Saver(model3, opt3, f"simplecache::{url}").load_by_config(None, {"exclude": ["io_state"]})
    assert_tree_equal(model.state_dict(), model3.state_dict())
    with pytest.raises(ValueError, match="Protocol not known: nosuchfs"):
        Saver(model3, opt3, "simplecache::nosuchfs://bucket/job")


def test_checkpoint_manager(tmp_path):
    model, opt = _model()
    manager = CheckpointManager(Saver(model, opt, str(tmp_path), max_keep=2), save_interval=3)
    assert manager.restore() == 0
    announced, saved = [], []
    for _ in range(7):
        announced.append(manager.saves_next())  # what the Trainer checks before a save
        saved.append(manager.step())
    assert [s is not None for s in saved] == [False, False, True, False, False, True, False]
    assert announced == [s is not None for s in saved]
    assert manager.saver.checkpoints() == ["ckpt-3", "ckpt-6"]
    assert manager.save().endswith("ckpt-7")

    model2, opt2 = _model()
    fresh = CheckpointManager(Saver(model2, opt2, str(tmp_path)), save_interval=3)
    assert fresh.restore() == 7
    assert fresh.global_step == 7


def test_each_save_and_load_logs_its_path(tmp_path, caplog):
    model, opt = _model()
    saver = Saver(model, opt, str(tmp_path))
    with caplog.at_level(logging.INFO, logger="recis.framework.checkpoint_manager"):
        path = saver.save("c1")
        saver.load()
    messages = [r.getMessage() for r in caplog.records]
    (saved,) = [m for m in messages if m.startswith("checkpoint saved")]
    files = [f for f in os.listdir(path) if f.startswith("rank")]
    mib = sum(os.path.getsize(os.path.join(path, f)) for f in files) / 2**20
    assert saved.startswith(
        f"checkpoint saved: {path} ({len(files)} files, {mib:.1f} MiB from 1 rank, "
    )
    (loaded,) = [m for m in messages if m.startswith("checkpoint loaded")]
    assert loaded.startswith(f"checkpoint loaded: {path} (saved by 1 rank, loaded on 1, ")


def test_long_saves_and_loads_report_their_progress(tmp_path, caplog, monkeypatch):
    # A line at most every PROGRESS_SECONDS: at 0, one per slice written or tensor read.
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    model, opt = _model()
    saver = Saver(model, opt, str(tmp_path), concurrency=2)
    with caplog.at_level(logging.INFO, logger="recis.framework.progress"):
        path = saver.save("c1")
        saver.load()
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("progress")]
    saving = [m for m in lines if m.startswith("saving c1: rank 0: ")]
    loading = [m for m in lines if m.startswith(f"loading {path}: rank 0: ")]
    assert saving and loading and len(saving) + len(loading) == len(lines), lines
    assert " GiB written (100%, " in saving[-1]
    # Once the tables' reads are planned, loading knows its total too.
    assert all(" GiB read (" in m and "MiB/s)" in m for m in loading)
    assert re.search(r" of \d+\.\d\d GiB read \(\d+%, ", loading[-2])
    assert " GiB read (100%, " in loading[-1]


def _check_writable_job(tmp: str) -> str:
    # Rank 1's output_dir is a file: every rank hears of it, naming rank 1.
    rank = dist.get_rank()
    model, opt = _model([("only", 13, 5, "table_wise", 0)], rank, dist.get_world_size())
    if rank == 1:
        open(f"{tmp}/a-file", "w").close()
    dist.barrier()
    saver = Saver(model, opt, f"{tmp}/ckpt" if rank == 0 else f"{tmp}/a-file")
    try:
        saver.check_writable()
    except CheckpointError as e:
        return str(e)
    return "no error"


def test_check_writable_fails_every_rank_when_one_cannot_write(tmp_path):
    errors = run_distributed(_check_writable_job, 2, str(tmp_path), timeout=60)
    for error in errors:
        assert "rank 1 cannot write there: FileExistsError" in error, error
    assert errors[0].startswith(f"output_dir {tmp_path}/ckpt: ")
    assert os.listdir(tmp_path / "ckpt") == []  # rank 0's probe is gone


def _unshared_output_dir_job(url: str) -> list[str]:
    # memory:// is each process's own: like a path on each node's local disk.
    rank = dist.get_rank()
    model, opt = _model([("a", 13, 5, "row_wise", 0)], rank, dist.get_world_size())
    saver = Saver(model, opt, url)
    errors = []
    for call in (saver.check_writable, lambda: saver.save("s1")):
        with pytest.raises(CheckpointError) as e:
            call()
        errors.append(str(e.value))
    assert saver.checkpoints() == []
    return errors


def test_an_output_dir_that_the_ranks_do_not_share_fails_at_the_start_and_at_a_save():
    url = f"memory://recis-test-{uuid.uuid4().hex}/job"
    for checked, saved in run_distributed(_unshared_output_dir_job, 2, url, timeout=90):
        assert checked.startswith(f"output_dir {url}: it is not one directory shared by all ranks")
        assert re.search(
            r"rank 0 \(host .+\) does not see memory://.*/\.write-probe-rank1-", checked
        )
        assert "which rank 1 (host " in checked and "NFS" in checked
        assert saved.startswith(f"checkpoint {url}/s1 was not saved: output_dir {url}: it is not")
        assert re.search(
            r"does not see memory://.*/\.tmp-s1-\w+/rank0000[01]-0\.safetensors", saved
        )


def _own_copies_job(url: str) -> str:
    # Each process's memory:// store is like a node's own copy of a model bank: rank r
    # saved "bank-r" there alone (a group of its own), then both load the same URL.
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = [dist.new_group([r]) for r in range(world)]
    specs = [("a", 13, 5, "row_wise", 0)]
    model, opt = _model(specs, 0, 1)
    Saver(model, opt, url, process_group=groups[rank]).save(f"bank-{rank}")
    model, opt = _model(specs, rank, world)
    with pytest.raises(CheckpointError) as raised:
        Saver(model, opt, url).load()
    return str(raised.value)


def test_ranks_that_read_different_checkpoints_of_one_path_all_fail():
    url = f"memory://recis-test-{uuid.uuid4().hex}/bank"
    for error in run_distributed(_own_copies_job, 2, url, timeout=90):
        assert error.startswith(
            f"loading {url}: the ranks read different checkpoints there: rank 1 'bank-1' saved 20"
        ), error
        assert " UTC, rank 0 'bank-0' saved " in error and "one shared copy" in error


def _concurrency_job(out_dir: str) -> None:
    # One small table, all on rank 0: rank 1 holds no table at all, and rank 0 has
    # fewer tensors than writer threads for most concurrencies.
    rank, world = dist.get_rank(), dist.get_world_size()
    specs = [("only", 13, 5, "table_wise", 0)]
    for concurrency in range(1, 9):
        torch.manual_seed(0)  # dense values equal on both ranks, as with DDP
        model, opt = _model(specs, rank, world)
        fill(model, opt)
        saver = Saver(model, opt, out_dir, max_keep=1, concurrency=concurrency)
        saver.save(f"c{concurrency}")
        files = sorted(os.listdir(os.path.join(out_dir, f"c{concurrency}")))
        rank1_files = [f for f in files if f.startswith("rank00001")]
        assert rank1_files == [], files
        model2, opt2 = _model(specs, rank, world)
        Saver(model2, opt2, out_dir, concurrency=concurrency).load()
        assert_tree_equal(model.state_dict(), model2.state_dict())
        if rank == 0:
            assert torch.equal(model2.tables["only"].weight, global_weight("only", 13, 5))
            assert_tree_equal(opt.table_state("only"), opt2.table_state("only"))
        dist.barrier()
    _async_save(out_dir, rank, world)


def _async_save(out_dir: str, rank: int, world: int) -> None:
    # A background save keeps the values of the moment it was called, while the
    # training goes on changing them (and running collectives of its own).
    specs = [("a", 13, 5, "row_wise", 0), ("b", 17, 7, "data_parallel", 0)]
    torch.manual_seed(0)
    model, opt = _model(specs, rank, world)
    fill(model, opt)
    saver = Saver(model, opt, out_dir, max_keep=1)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    path = saver.save("async", blocking=False)
    for table in model.tables.values():
        table.weight.add_(1.0)
    if world > 1:
        dist.all_reduce(torch.ones(3))
        # Its collectives wait as long as the training's (120 s in run_distributed),
        # not torch's 30-minute default for a new group.
        assert group_timeout(saver._async_group) == timedelta(seconds=120)
    assert saver.wait() == path
    assert saver.wait() is None
    model2, opt2 = _model(specs, rank, world)
    Saver(model2, opt2, out_dir).load()
    assert_tree_equal(expected, model2.state_dict())


def test_async_save_in_one_process(tmp_path):
    _async_save(str(tmp_path), 0, 1)


def _trained_collection(device: str) -> tuple[EmbeddingBagCollection, SparseAdam]:
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection([EmbeddingBagConfig("t", 1000, 16, ["f"])]).to(device)
    opt = SparseAdam(filter_out_sparse_param(ebc), lr=0.01)
    ids = torch.tensor([1, 5, 5, 999], device=device)
    batch = KeyedJaggedTensor(["f"], ids, torch.tensor([2, 0, 2], device=device))
    ebc(batch).values().sum().backward()
    opt.step()
    return ebc, opt


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_background_save_holds_the_tables_of_its_call_on_any_device(
    tmp_path, monkeypatch, device
):
    # GPU tables are staged in pinned host memory; the training changes them before
    # the save writes them.
    held_writes(monkeypatch, 0.3)
    ebc, opt = _trained_collection(device)
    expected = {k: v.cpu().clone() for k, v in ebc.state_dict().items()}
    expected_state = {k: v.cpu().clone() for k, v in opt.table_state("t").items()}
    saver = Saver(ebc, opt, str(tmp_path))
    saver.save("s1", blocking=False)
    staged = ["sparse/t/exp_avg", "sparse/t/exp_avg_sq", "sparse/t/step", "sparse/t/weight"]
    assert sorted(saver._staging) == staged
    assert all(t.device.type == "cpu" for t in saver._staging.values())
    assert all(t.is_pinned() == (device == "cuda") for t in saver._staging.values())
    with torch.no_grad():
        filter_out_sparse_param(ebc)["t"].weight.add_(1.0)
        opt.table_state("t")["exp_avg"].add_(1.0)
    saver.wait()
    loaded, loaded_opt = _trained_collection("cpu")
    Saver(loaded, loaded_opt, str(tmp_path)).load()
    assert_tree_equal(expected, loaded.state_dict())
    assert_tree_equal(expected_state, loaded_opt.table_state("t"))


def test_a_save_held_up_by_the_background_one_before_it_says_so(tmp_path, monkeypatch, caplog):
    held_writes(monkeypatch, 0.3)
    monkeypatch.setattr(checkpoint_manager, "WAIT_REPORTED_SECONDS", 0.1)
    saver = Saver(*_model(), str(tmp_path))
    with caplog.at_level("WARNING"):
        saver.save("s1", blocking=False)
        saver.save("s2", blocking=False)  # s1 is still being written
        saver._pending[0].join()  # s2 written, not yet waited for
        saver.save("s3")  # no wait to report
    assert saver.checkpoints() == ["s1", "s2", "s3"]
    held_up = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert len(held_up) == 1, held_up
    assert re.fullmatch(
        r"checkpoint 's2' waited \d+\.\d s for the background save of 's1': saves come "
        r"faster than they are written \(save less often: TrainingArguments.save_steps\)",
        held_up[0],
    )


_ENDS_DURING_A_SAVE = """
import sys, time
from recis.framework import checkpoint_manager
from tests.framework.test_checkpoint_saver import _model
from recis.framework.checkpoint_manager import Saver

write_rank = checkpoint_manager.write_rank
def held(*args, **kwargs):
    time.sleep(0.5)
    return write_rank(*args, **kwargs)
checkpoint_manager.write_rank = held
Saver(*_model(), sys.argv[1], concurrency=4).save("s1", blocking=False)
"""


def test_a_program_that_ends_during_a_background_save_still_commits_it(tmp_path):
    # Without wait(): the interpreter waits for the save's thread and its writers,
    # and the process exits 0 (a daemon thread inside a torch op at exit aborts it).
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _ENDS_DURING_A_SAVE, str(tmp_path)],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "checkpoint").read_text().split() == ["s1"]
    model, opt = _model()
    Saver(model, opt, str(tmp_path)).load()


def test_map_in_threads_keeps_the_order_and_raises_the_first_error_after_all_ended():
    assert map_in_threads(lambda i: i * i, 5, "squares") == [0, 1, 4, 9, 16]
    assert map_in_threads(lambda i: i, 1, "one") == [0]
    ended = []

    def fail_odd(i: int) -> int:
        time.sleep(0.05 * (4 - i))
        ended.append(i)
        if i % 2:
            raise OSError(f"file {i}")
        return i

    with pytest.raises(OSError, match="file 1"):
        map_in_threads(fail_odd, 4, "files")
    assert sorted(ended) == [0, 1, 2, 3]


def test_concurrency_1_to_8_with_a_rank_without_tensors(tmp_path):
    run_distributed(_concurrency_job, 2, str(tmp_path))


def test_load_reads_only_the_owned_rows(tmp_path, monkeypatch):
    from recis.framework.checkpoint.storage import LocalStorage
    from recis.nn import EmbeddingBagConfig, EmbeddingTable

    cfg = EmbeddingBagConfig("big", 1000, 16, ["f"])
    full = torch.nn.ModuleDict({"t": EmbeddingTable(cfg, torch.randn(1000, 16))})
    Saver(full, None, str(tmp_path), block_size=4096).save("c")
    part = torch.nn.ModuleDict({"t": EmbeddingTable(cfg, torch.zeros(100, 16), row_offset=300)})
    read = []
    original = LocalStorage.read_into

    def counting(self, path, start, out):
        read.append(len(out))
        return original(self, path, start, out)

    monkeypatch.setattr(LocalStorage, "read_into", counting)
    Saver(part, None, str(tmp_path)).load_by_config(None, {"load": ["sparse"]})
    assert torch.equal(part["t"].weight, full["t"].weight[300:400])
    # The 100 rows (6400 bytes), the header's block and the partial blocks around them.
    assert 100 * 16 * 4 <= sum(read) <= 100 * 16 * 4 + 3 * 4096, sum(read)


def test_manifest_records_the_layout_and_plan(tmp_path):
    import json

    class Plan:
        def to_json(self) -> str:
            return json.dumps({"a": "table_wise"})

    model, opt = _model()
    model.plan = Plan()
    Saver(model, opt, str(tmp_path), concurrency=2).save("m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert (manifest["format"], manifest["format_version"]) == ("recis-checkpoint", 1)
    assert (manifest["world_size"], manifest["ckpt_id"]) == (1, "m")
    assert manifest["plan"] == {"a": "table_wise"}
    a = manifest["tables"]["a"]
    assert a["global_shape"] == [13, 5] and a["dtype"] == "F32"
    assert a["state"] == {
        "weight": "element",
        "momentum": "element",
        "visits": "row",
        "step": "scalar",
    }
    assert [(p["rows"], p["cols"]) for p in a["pieces"]] == [([0, 13], [0, 5])]
    assert set(manifest["files"]) == {p.name for p in (tmp_path / "m").glob("*.safetensors")}
    for record in manifest["files"].values():
        assert record["algorithm"] == "crc32" and record["checksums"]
    assert set(manifest["dense"]) == {"dense.weight", "dense.bias", "dense_buf"}
    assert manifest["io_state"] == {"0": {}}


def _job(out: str) -> Saver:
    """A job's Saver that has claimed ``out``."""
    saver = Saver(*_model(), out)
    saver.claim()
    return saver


def test_the_job_that_claimed_an_output_dir_last_keeps_it(tmp_path, monkeypatch):
    out = str(tmp_path)
    first = _job(out)
    first.save("first-1")
    second = _job(out)  # started later on the same output_dir, by mistake or as a rerun
    second.save("second-1")
    took_over = r"another job took over output_dir .* this one stops without saving"
    with pytest.raises(CheckpointError, match=took_over):
        first.save("first-2")
    assert second.checkpoints() == ["first-1", "second-1"]
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]
    # A claim found deleted is written again.
    os.remove(tmp_path / ".owner")
    second.save("second-2")
    assert json.loads((tmp_path / ".owner").read_text())["id"] == second._owner["id"]
    # A takeover while a save is being written stops it before its commit.
    write_rank = checkpoint_manager.write_rank

    def taken_over_meanwhile(*args, **kwargs):
        result = write_rank(*args, **kwargs)
        _job(out)
        return result

    monkeypatch.setattr(checkpoint_manager, "write_rank", taken_over_meanwhile)
    with pytest.raises(CheckpointError, match=r"could not commit: .*" + took_over):
        second.save("second-3")
    assert second.checkpoints() == ["first-1", "second-1", "second-2"]
    # A Saver that never claimed does not check.
    Saver(*_model(), out).save("unclaimed")

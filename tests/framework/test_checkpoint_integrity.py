"""Integrity: damaged files, missing or newer checkpoints, changed tables, resuming past damage."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from recis.framework.checkpoint.integrity import ChecksumError
from recis.framework.checkpoint.manifest import CheckpointFormatError
from recis.framework.checkpoint_manager import CheckpointError, CheckpointManager, Saver
from recis.nn import filter_out_sparse_param
from recis.optim import SparseAdagrad, SparseAdam, SparseRowWiseAdagrad
from recis.testing import run_distributed
from tests.framework.ckpt_helpers import FakeSparseOptimizer, ShardedTables, fill

SPECS = [("a", 13, 5, "table_wise", 0), ("b", 17, 7, "table_wise", 0)]


def _saved(tmp_path, specs=SPECS, block_size=64):
    model = ShardedTables(specs, 0, 1)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    fill(model, opt)
    # Small checksum blocks so that damage is found in a block of its own.
    saver = Saver(model, opt, str(tmp_path), concurrency=2, block_size=block_size)
    saver.save("c1")
    return model, opt, saver


def _fresh(tmp_path, specs=SPECS):
    model = ShardedTables(specs, 0, 1)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    return model, opt, Saver(model, opt, str(tmp_path))


def _shard_files(tmp_path):
    return sorted(p for p in (tmp_path / "c1").iterdir() if p.suffix == ".safetensors")


def test_files_are_standard_safetensors(tmp_path):
    from safetensors import safe_open

    model, _, _ = _saved(tmp_path)
    found = {}
    for path in _shard_files(tmp_path):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                found[key] = f.get_tensor(key)
    assert torch.equal(found["sparse/a/weight/0-13.0-5"], model.tables["a"].weight)


@pytest.mark.parametrize("where", ["header", "data"])
def test_corrupted_byte_raises_naming_the_file(tmp_path, where):
    _saved(tmp_path)
    path = max(_shard_files(tmp_path), key=os.path.getsize)
    data = bytearray(path.read_bytes())
    pos = 20 if where == "header" else len(data) - 3
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=path.name):
        _fresh(tmp_path)[2].load()


def test_truncated_file_raises_naming_the_file(tmp_path):
    _saved(tmp_path)
    path = _shard_files(tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match=rf"{path.name}.*truncated"):
        _fresh(tmp_path)[2].load()


def test_missing_file_raises_naming_the_file(tmp_path):
    _saved(tmp_path)
    path = _shard_files(tmp_path)[0]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=path.name):
        _fresh(tmp_path)[2].load()


def test_damaged_and_newer_manifests(tmp_path):
    _saved(tmp_path)
    manifest = tmp_path / "c1" / "manifest.json"
    body = json.loads(manifest.read_text())
    body["world_size"] = 5  # any edit without a matching checksum is damage
    manifest.write_text(json.dumps(body))
    with pytest.raises(CheckpointFormatError, match="manifest is damaged"):
        _fresh(tmp_path)[2].load()
    body["format_version"] = 99
    manifest.write_text(json.dumps(body))
    with pytest.raises(CheckpointFormatError, match="version 99, newer"):
        _fresh(tmp_path)[2].load()
    manifest.write_text('{"format": "recis-checkpoint", ')
    with pytest.raises(CheckpointFormatError, match="not valid JSON"):
        _fresh(tmp_path)[2].load()


def test_missing_checkpoint(tmp_path):
    saver = _fresh(tmp_path)[2]
    assert saver.latest_checkpoint() is None
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        saver.load()
    _saved(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        saver.load(ckpt_id="nope")


def test_another_model_is_refused_naming_what_differs_and_why(tmp_path):
    _saved(tmp_path)
    why = "a checkpoint loads into the model that saved it: train a new one in a new output_dir"
    with pytest.raises(ValueError, match=r"table 'b' has global shape \[18, 7\].*\[17, 7\]") as e:
        _fresh(tmp_path, [SPECS[0], ("b", 18, 7, "table_wise", 0)])[2].load()
    assert why in str(e.value)
    extra = [*SPECS, ("new", 5, 3, "table_wise", 0)]
    with pytest.raises(KeyError, match="table 'new' is not in checkpoint") as e:
        _fresh(tmp_path, extra)[2].load()
    assert why in str(e.value)
    model, _, saver = _fresh(tmp_path)
    model.dense = torch.nn.Linear(4, 3, bias=False)
    with pytest.raises(KeyError, match=r"does not match the model: missing \[\], unexpected") as e:
        saver.load()
    assert why in str(e.value)
    assert str(e.value).startswith("dense state of checkpoint")  # not quoted, as KeyError's are
    model, _, saver = _fresh(tmp_path, extra)
    with pytest.warns(UserWarning, match="table 'new'"):
        saver.load_by_config(None, {"load": "*", "strict": False})
    expected, _, _ = _saved(tmp_path / "again")
    assert torch.equal(model.tables["a"].weight, expected.tables["a"].weight)
    assert torch.equal(model.tables["new"].weight, torch.zeros(5, 3))


@pytest.mark.parametrize("other", [SparseAdagrad, SparseAdam])
def test_a_checkpoint_of_another_sparse_optimizer_is_refused_naming_how_to_keep_its_weights(
    tmp_path, other
):
    # Adagrad keeps state_sum per element where row-wise Adagrad keeps it per row: the
    # same name must not pass for the same state.
    model = ShardedTables(SPECS, 0, 1)
    fill(model, None)
    Saver(model, SparseRowWiseAdagrad(filter_out_sparse_param(model), lr=0.1), str(tmp_path)).save(
        "c1"
    )
    fresh = ShardedTables(SPECS, 0, 1)
    saver = Saver(fresh, other(filter_out_sparse_param(fresh), lr=0.1), str(tmp_path))
    with pytest.raises(ValueError) as refused:
        saver.load()
    message = str(refused.value)
    assert f"table 'a': {other.__name__} keeps " in message
    assert "has state_sum (per row): it was saved with another sparse optimizer" in message
    assert """--model_bank '[{"path": "OLD_OUTPUT_DIR", "exclude": ["sparse_opt"]}]'""" in message
    saver.load_by_config(str(tmp_path), {"exclude": ["sparse_opt"]})  # the way it names
    for name in ("a", "b"):
        assert torch.equal(fresh.tables[name].weight, model.tables[name].weight)


def test_unpicklable_state_is_refused(tmp_path):
    saver = _fresh(tmp_path)[2]

    class Odd:
        def state_dict(self):
            return {"x": object()}

        def load_state_dict(self, state):
            pass

    saver.register_for_checkpointing("odd", Odd())
    with pytest.raises(RuntimeError, match=r"rank 0: TypeError: .*'extra/odd/x'.*object"):
        saver.save("bad")
    assert saver.checkpoints() == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def _saved_at_steps(tmp_path, steps=(3, 5), specs=SPECS):
    """A job's output_dir holding ckpt-3 and ckpt-5; returns their weights of table 'a'."""
    model = ShardedTables(specs, 0, 1)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    fill(model, opt)
    manager = CheckpointManager(Saver(model, opt, str(tmp_path)), save_interval=0)
    weights = {}
    for step in range(1, max(steps) + 1):
        model.tables["a"].weight.data += 1
        manager.step()
        if step in steps:
            manager.save()
            weights[step] = model.tables["a"].weight.clone()
    return weights


def _resume(tmp_path, caplog, specs=SPECS):
    """A fresh job's CheckpointManager.restore(): (step, model, what it logged)."""
    model, _, saver = _fresh(tmp_path, specs)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="recis.framework.checkpoint.manager"):
        try:
            return CheckpointManager(saver, save_interval=0).restore(), model, caplog.text
        except Exception as e:
            e.logged = caplog.text
            raise


@pytest.mark.parametrize("damage", ["folder deleted", "file corrupted", "manifest cut"])
def test_a_broken_newest_checkpoint_says_how_to_resume_from_the_one_before(
    tmp_path, caplog, damage
):
    weights = _saved_at_steps(tmp_path)
    newest = tmp_path / "ckpt-5"
    if damage == "folder deleted":
        for path in newest.iterdir():
            path.unlink()
        newest.rmdir()
    elif damage == "file corrupted":
        path = max(newest.glob("*.safetensors"), key=os.path.getsize)
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x40
        path.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").write_text('{"format": "recis-checkpoint", ')
    with pytest.raises((FileNotFoundError, ChecksumError, CheckpointFormatError)) as raised:
        _resume(tmp_path, caplog)
    listing = tmp_path / "checkpoint"
    assert (
        f"resuming from ckpt-5, the newest checkpoint that {listing} lists, failed"
        in raised.value.logged
    )
    assert "To resume from ckpt-3 instead, delete the line 'ckpt-5' from that file" in (
        raised.value.logged
    )
    # Doing what it says resumes from ckpt-3.
    listing.write_text(listing.read_text().replace("ckpt-5\n", ""))
    step, model, logged = _resume(tmp_path, caplog)
    assert step == 3 and logged == ""
    assert torch.equal(model.tables["a"].weight, weights[3])


def test_no_fallback_advice_when_the_checkpoint_does_not_fit_or_is_the_only_one(tmp_path, caplog):
    _saved_at_steps(tmp_path)
    with pytest.raises(ValueError, match="global shape") as raised:
        _resume(tmp_path, caplog, [SPECS[0], ("b", 18, 7, "table_wise", 0)])
    assert raised.value.logged == ""
    only = tmp_path / "only"
    _saved_at_steps(only, steps=(2,))
    for path in (only / "ckpt-2").glob("*.safetensors"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="is missing") as raised:
        _resume(only, caplog)
    assert raised.value.logged == ""


def _load_with_rank1_file_missing(out: str) -> tuple[str, bool]:
    import torch.distributed as dist

    rank = dist.get_rank()
    specs = [("a", 13, 5, "table_wise", 0), ("b", 17, 7, "table_wise", 1)]
    model = ShardedTables(specs, rank, 2)
    opt = FakeSparseOptimizer(filter_out_sparse_param(model))
    fill(model, opt)
    saver = Saver(model, opt, out)
    saver.save("c1")
    if rank == 0:
        # Table 'b' lives on rank 1: only rank 1 reads this file.
        for name in os.listdir(os.path.join(out, "c1")):
            if name.startswith("rank00001"):
                os.unlink(os.path.join(out, "c1", name))
    dist.barrier()
    try:
        saver.load()
    except Exception as e:
        return type(e).__name__, isinstance(e, CheckpointError) and e.damaged
    return "loaded", False


def test_every_rank_learns_that_a_load_failed_on_damage(tmp_path):
    results = run_distributed(_load_with_rank1_file_missing, 2, str(tmp_path))
    assert results == [("CheckpointError", True), ("FileNotFoundError", False)]

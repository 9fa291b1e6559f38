"""python -m recis.framework.checkpoint: what a checkpoint holds, and --verify."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from recis.framework.checkpoint import summary
from recis.framework.checkpoint.integrity import ChecksumError
from recis.framework.checkpoint.manifest import dumps
from recis.testing import run_distributed
from tests.framework.test_checkpoint_integrity import _fresh, _saved, _shard_files
from tests.framework.test_checkpoint_with_dmp import train_and_save


def run_main(capsys, *argv):
    status = summary.main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_describes_a_dmp_checkpoint_and_verifies_every_file(tmp_path, capsys):
    path = tmp_path / "job"
    run_distributed(train_and_save, 2, str(path))
    status, out, err = run_main(capsys, path, "--verify")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"checkpoint {path / 'ckpt-2'}"
    assert "committed beside it, oldest first: ckpt-2" in out
    assert "by 2 ranks" in out
    assert "claimed" not in out  # saved without a Trainer: nobody claimed the directory
    # Each table with its shape, the optimizer's state kinds, its lr and its sharding.
    row = {line.split()[0]: line.split() for line in lines if line.startswith("    t_")}
    assert row["t_sum"][-3:] == ["0.0125", "row_wise", "0-1"]  # a StepLR's lr
    assert row["t_small"][-2:] == ["data_parallel", "0-1"]
    assert "exp_avg" in out and "step (scalar)" in out
    files = len(json.loads((path / "ckpt-2" / "manifest.json").read_text())["files"])
    assert lines[-1].startswith(f"verified {files} files")
    # The command line runs the same.
    result = subprocess.run(
        [sys.executable, "-m", "recis.framework.checkpoint", str(path / "ckpt-2")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith(f"checkpoint {path / 'ckpt-2'}")


def test_piped_into_head_it_stops_without_a_traceback(tmp_path):
    _saved(tmp_path)
    command = f"{sys.executable} -m recis.framework.checkpoint {tmp_path} --verify | head -1"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("checkpoint ") and result.stderr == ""


def test_says_which_job_claimed_the_output_dir(tmp_path, capsys):
    saver = _saved(tmp_path)[2]
    saver.claim()
    status, out, _ = run_main(capsys, tmp_path)
    owner = saver._owner
    assert status == 0 and out.splitlines()[2] == (
        f"  its output_dir is claimed by the job on host {owner['host']} (pid {owner['pid']}) "
        f"since {owner['since']}"
    )


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing file", "missing tensor"])
def test_verify_names_the_damaged_file(tmp_path, capsys, damage):
    _saved(tmp_path)  # checkpoint c1, checksum blocks of 64 bytes
    target = max(_shard_files(tmp_path), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        expected = rf"{target.name}: checksum mismatch in bytes \[\d+, \d+\)"
    elif damage == "truncated":
        target.write_bytes(bytes(data[:-1]))
        expected = rf"{target.name}: size is {len(data) - 1} bytes"
    elif damage == "missing file":
        target.unlink()
        expected = rf"checkpoint file .*{target.name} is missing"
    else:  # the manifest lists a tensor the file does not hold
        manifest_path = tmp_path / "c1" / "manifest.json"
        body = json.loads(manifest_path.read_text())
        for key in ("format", "format_version", "checksum"):
            body.pop(key)
        piece = body["tables"]["a"]["pieces"][0]
        piece["tensors"]["weight"][1] = "sparse/a/nope"
        manifest_path.write_bytes(dumps(body))
        expected = r"has no tensor 'sparse/a/nope' although the manifest lists it"
    # Describing reads only the manifest; verifying reads every byte.
    assert run_main(capsys, tmp_path)[0] == 0
    status, _, err = run_main(capsys, tmp_path, "--verify", "--threads", "1")
    assert status == 1 and "Traceback" not in err
    assert err.startswith("verification FAILED: ")
    assert re.search(expected, err), err


def test_verify_reports_progress_on_long_runs(tmp_path, capsys, monkeypatch):
    _saved(tmp_path)
    monkeypatch.setattr(summary, "PROGRESS_EVERY", 0.0)
    status, out, _ = run_main(capsys, tmp_path / "c1", "--verify")
    files = len(_shard_files(tmp_path))
    assert status == 0
    assert f"verified 1 of {files} files" in out and f"verified {files} of {files} files" in out


def test_paths_without_a_checkpoint_are_usage_errors(tmp_path, capsys):
    _saved(tmp_path)
    for argv, message in [
        ([tmp_path / "elsewhere"], "no committed checkpoint in"),
        ([tmp_path / "elsewhere"], "(there is nothing at that path)"),
        (["nosuchfs://bucket/job"], "'nosuchfs://bucket/job': Protocol not known"),
        ([tmp_path / "c1" / "rank00000-0.safetensors"], "(it is a file: give a checkpoint's"),
        ([tmp_path, "--id", "c9"], "no checkpoint at"),
        ([tmp_path, "--id", "../c1"], "invalid checkpoint id"),
    ]:
        status, _, err = run_main(capsys, *argv)
        assert status == 2 and err.startswith("error: ") and message in err, err
    (tmp_path / "c1" / "manifest.json").write_text("{")
    status, _, err = run_main(capsys, tmp_path / "c1")
    assert status == 2 and "not valid JSON" in err


@pytest.mark.parametrize(
    "fault, message",
    [
        ("end offset past the file", "lies outside the file"),
        ("shape of other size", "holds 260 bytes, not the 280 of its F32 [14, 5]"),
    ],
)
def test_a_header_entry_that_does_not_fit_is_named_even_when_the_checksums_match(
    tmp_path, capsys, fault, message
):
    import struct

    from recis.framework.checkpoint.integrity import BlockChecksum

    _saved(tmp_path, block_size=64)
    target = next(p for p in _shard_files(tmp_path) if b"sparse/a/weight" in p.read_bytes())
    data = target.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    key = "sparse/a/weight/0-13.0-5"
    # As a faulty writer could record it.
    if fault == "end offset past the file":
        header[key]["data_offsets"][1] += 10**6
    else:
        header[key]["shape"] = [14, 5]
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + data[8 + hlen :]
    target.write_bytes(data)
    # The manifest records the new bytes, so only the offsets are wrong.
    manifest_path = tmp_path / "c1" / "manifest.json"
    body = json.loads(manifest_path.read_text())
    for field in ("format", "format_version", "checksum"):
        body.pop(field)
    checksum = BlockChecksum(64)
    checksum.update(data)
    body["files"][target.name].update(size=len(data), checksums=checksum.finish())
    manifest_path.write_bytes(dumps(body))
    message = f"{target.name}: tensor {key!r} {message}"
    status, _, err = run_main(capsys, tmp_path, "--verify")
    assert status == 1 and message in err, err
    with pytest.raises(ChecksumError, match=re.escape(message)):  # loading says the same
        _fresh(tmp_path)[2].load()


def test_describes_where_each_dataset_was():
    criteo = {"epoch": 1, "record": 96, "window": None, "work": [[0, {}, None]]}
    manifest = {
        "files": {},
        "created_unix": 0,
        "world_size": 3,
        "format_version": 1,
        "tables": {},
        "io_state": {
            "0": {"train": criteo, "other": {"custom": 7}},
            "1": {"train": {**criteo, "record": 1200, "window": {"emitted": 1}}},
            "2": {"train": {**criteo, "record": 100}, "eval": {"epoch": 0, "batch": 12}},
        },
    }
    lines = summary.describe(manifest, "here", []).splitlines()
    assert "  io state of 3 ranks:" in lines
    assert (
        "    train: epoch 1; 96 to 1,200 records read of it; 1 of 3 ranks inside a shuffle window"
        in lines
    )
    assert "    eval: epoch 0; next batch 12" in lines
    assert '    other: {"custom": 7}' in lines

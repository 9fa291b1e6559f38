"""What a checkpoint holds, and whether every byte of it is intact, without a model.

Before a job resumes from a checkpoint after a failure, or before one is copied away
or deleted, ``python -m recis.framework.checkpoint PATH`` says what it is (when and
by how many ranks it was saved, its tables and their sharding, the state saved
beside them, where the ranks' datasets were in their epoch) and ``--verify`` reads every file once, checking sizes, checksums and
that every tensor the manifest lists is there. ``PATH`` is a checkpoint folder or an
output directory (its newest checkpoint, or ``--id``), local or an fsspec URL.

Example::

    $ python -m recis.framework.checkpoint out/dlrm --verify
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from recis.framework.checkpoint.commit import find_checkpoint, read_claim, read_ids
from recis.framework.checkpoint.disk_space import mib
from recis.framework.checkpoint.integrity import ChecksumError
from recis.framework.checkpoint.manifest import CheckpointFormatError, read_manifest, saved_at
from recis.framework.checkpoint.storage import Storage, storage_for
from recis.framework.checkpoint.tensor_file import TensorFileReader
from recis.framework.checkpoint.tree import map_refs

# A progress line while verifying, at most this often (seconds).
PROGRESS_EVERY = 5.0


@dataclass
class VerifyReport:
    """What :func:`verify` read: files, bytes and the seconds it took."""

    files: int
    bytes: int
    seconds: float


def tensor_refs(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every ``(file, tensor key)`` the manifest refers to."""
    for table in manifest["tables"].values():
        for piece in table["pieces"]:
            yield from (tuple(ref) for ref in piece["tensors"].values())
        yield from (tuple(ref) for ref in table.get("scalars", {}).values())
    refs: list[tuple[str, str]] = []
    trees = [manifest.get("dense", {}), manifest.get("extra", {}), manifest.get("io_state", {})]
    map_refs(trees, lambda ref: refs.append(tuple(ref)))
    yield from refs


def verify(
    storage: Storage,
    ckpt_dir: str,
    manifest: dict[str, Any],
    threads: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Reads every file of the checkpoint at ``ckpt_dir`` once, ``threads`` at a time,
    checking its size and checksums and that it holds the tensors the manifest lists
    in it. Raises ``ChecksumError`` (or ``FileNotFoundError``) naming the first bad
    file. ``progress(files_done, bytes_done)`` is called after each file."""
    files: dict[str, dict[str, Any]] = manifest["files"]
    keys: dict[str, set[str]] = defaultdict(set)
    for file, key in tensor_refs(manifest):
        if file not in files:
            raise ChecksumError(f"manifest refers to file {file!r} that it does not record")
        keys[file].add(key)
    done, done_bytes = 0, 0
    lock = threading.Lock()

    def check(name: str) -> None:
        nonlocal done, done_bytes
        path = storage.join(ckpt_dir, name)
        TensorFileReader(storage, path, storage.url(path), files[name]).verify(keys[name])
        with lock:
            done += 1
            done_bytes += int(files[name]["size"])
            if progress is not None:
                progress(done, done_bytes)

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="recis-ckpt-verify") as pool:
        futures = [pool.submit(check, name) for name in sorted(files)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # report the first bad file without reading the rest
                future.cancel()
            raise
    total = sum(int(f["size"]) for f in files.values())
    return VerifyReport(len(files), total, time.perf_counter() - start)


def describe(
    manifest: dict[str, Any],
    location: str,
    committed: list[str],
    owner: dict[str, str] | None = None,
) -> str:
    """A readable account of a checkpoint's manifest (``location``: where it is;
    ``committed``: the ids its output directory lists, if any; ``owner``: the job that
    claimed that directory, if any)."""
    files = manifest["files"]
    lines = [f"checkpoint {location}"]
    if committed:
        lines.append(f"  committed beside it, oldest first: {', '.join(committed)}")
    if owner:  # Trainer.train() claims its output_dir
        lines.append(
            f"  its output_dir is claimed by the job on host {owner.get('host')} (pid "
            f"{owner.get('pid')}) since {owner.get('since')}"
        )
    lines += [
        f"  saved {saved_at(manifest)} by {_count(manifest['world_size'], 'rank')} "
        f"(checkpoint format {manifest['format_version']})",
        f"  {len(files)} files, {mib(sum(int(f['size']) for f in files.values()))}",
        f"  dense: {_tree_summary(manifest.get('dense', {}))}",
    ]
    for name, tree in sorted(manifest.get("extra", {}).items()):
        lines.append(f"  extra {name}: {_tree_summary(tree)}")
    io_state = manifest.get("io_state", {})
    names = sorted({n for per_rank in io_state.values() for n in per_rank})
    if names:
        lines.append(f"  io state of {len(io_state)} ranks:")
        for name in names:
            states = [per_rank[name] for per_rank in io_state.values() if name in per_rank]
            lines.append(f"    {name}: {_position_summary(states)}")
    plan = manifest.get("plan") or {}
    sharding = {t["name"]: t for t in plan.get("tables", [])}
    tables = manifest["tables"]
    lines.append(f"  {len(tables)} tables:")
    rows = [("table", "rows", "dim", "dtype", "state", "lr", "sharding", "ranks")]
    for name, table in tables.items():
        shape = table["global_shape"]
        state = [k if kind == "element" else f"{k} ({kind})" for k, kind in table["state"].items()]
        placed = sharding.get(name, {})
        ranks = sorted({s["rank"] for s in placed.get("shards", [])})
        rows.append(
            (
                name,
                f"{shape[0]:,}",
                str(shape[1] if len(shape) > 1 else 1),
                table["dtype"],
                ", ".join(state),
                f"{table['hyper']['lr']:g}" if "lr" in table.get("hyper", {}) else "?",
                placed.get("sharding_type", "?"),
                _ranges(ranks) if ranks else "?",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append(
            "    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _position_summary(states: list[Any]) -> str:
    """Where the ranks' datasets were, from the fields recis's datasets keep: the
    epochs, the records (or the next batch) of the epoch over the ranks, and how many
    ranks were inside a shuffle window; any other state as a tree."""
    plain = [s for s in states if isinstance(s, dict)]
    parts = []
    epochs = sorted({int(s["epoch"]) for s in plain if "epoch" in s})
    if epochs:
        parts.append(f"epoch {', '.join(map(str, epochs))}")
    for key, template in (("record", "{} records read of it"), ("batch", "next batch {}")):
        values = [int(s[key]) for s in plain if key in s]
        if values:
            low, high = min(values), max(values)
            parts.append(template.format(f"{low:,}" + (f" to {high:,}" if high != low else "")))
    inside = sum(1 for s in plain if s.get("window"))
    if inside:
        parts.append(f"{inside} of {len(states)} ranks inside a shuffle window")
    return "; ".join(parts) if parts else _tree_summary(states[0])


def _tree_summary(tree: Any) -> str:
    refs: list[Any] = []
    plain = map_refs(tree, lambda ref: refs.append(ref))
    if not refs:
        text = json.dumps(plain)
        return text if len(text) <= 100 else f"{text[:97]}..."
    return f"{len(refs)} tensors"


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    spans: list[list[int]] = []
    for r in ranks:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def main(argv: list[str] | None = None) -> int:
    """``python -m recis.framework.checkpoint PATH [--id ID] [--verify] [--threads N]``;
    returns the exit status: 0, 1 when verification fails, 2 when there is no
    readable checkpoint at ``PATH``."""
    parser = argparse.ArgumentParser(
        prog="python -m recis.framework.checkpoint",
        description="What a recis checkpoint holds, and (--verify) whether it is intact.",
    )
    parser.add_argument("path", help="a checkpoint folder, or an output directory (its newest)")
    parser.add_argument("--id", help="the checkpoint of that id in the output directory PATH")
    parser.add_argument("--verify", action="store_true", help="read and check every file")
    parser.add_argument("--threads", type=int, default=4, help="files verified at once")
    args = parser.parse_args(argv)
    try:
        storage, root = storage_for(args.path)
        ckpt_dir = find_checkpoint(storage, root, args.id)
        committed = read_ids(storage, root) if ckpt_dir != root else []
        manifest = read_manifest(storage, ckpt_dir)
    except (FileNotFoundError, CheckpointFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    owner = read_claim(storage, root) if ckpt_dir != root else None
    print(describe(manifest, storage.url(ckpt_dir), committed, owner), flush=True)
    if not args.verify:
        return 0
    total = sum(int(f["size"]) for f in manifest["files"].values())
    last = time.monotonic()

    def progress(files: int, done: int) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            print(f"verified {files} of {len(manifest['files'])} files, "
                  f"{mib(done)} of {mib(total)}", flush=True)  # fmt: skip

    try:
        report = verify(storage, ckpt_dir, manifest, args.threads, progress)
    except (ChecksumError, FileNotFoundError, OSError) as e:
        print(f"verification FAILED: {e}", file=sys.stderr)
        return 1
    rate = report.bytes / report.seconds if report.seconds > 0 else 0.0
    print(
        f"verified {report.files} files, {mib(report.bytes)} in {report.seconds:.2f} s "
        f"({mib(rate)}/s): every size and checksum matches, every tensor is there"
    )
    return 0

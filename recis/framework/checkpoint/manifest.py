"""manifest.json: the commit record of one checkpoint.

Written last, by rank 0, once every rank's files are durable. It holds the format
version, the world size and plan of the job that wrote it, each table's global
shape, dtype, state kinds and the pieces (row/column range → file and key) that
store it, every file's size and block checksums, and the dense, extra and per-rank
io-state trees (JSON, with references to tensors in the files). The manifest
carries a checksum of its own content so that a damaged one is reported as such.

Layout::

    {"format": "recis-checkpoint", "format_version": 1, "ckpt_id": ..., "world_size": N,
     "plan": ... | null,
     "files": {name: {"size", "block_size", "algorithm", "checksums": [...]}},
     "tables": {name: {"global_shape": [R, C], "dtype": "F32",
                       "state": {"weight": "element", key: "element" | "row" | "scalar"},
                       "pieces": [{"rows": [r0, r1], "cols": [c0, c1],
                                   "tensors": {key: [file, tensor_key]}}],
                       "scalars": {key: [file, tensor_key]},
                       "hyper": {"lr": ..., ...}}},  # the sparse optimizer's, if any
     "dense": tree, "extra": {name: tree}, "io_state": {"<rank>": {name: tree}},
     "checksum": crc32 of the rest}
"""

from __future__ import annotations

import datetime
import json
import zlib
from typing import Any

from recis.framework.checkpoint.storage import Storage

FORMAT = "recis-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class CheckpointFormatError(ValueError):
    """A manifest is unreadable, damaged, or of a format this recis cannot read."""


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def dumps(body: dict[str, Any]) -> bytes:
    """The manifest file content for ``body`` (with its self-checksum)."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **body}
    return json.dumps({**body, "checksum": zlib.crc32(_canonical(body))}, indent=1).encode()


def read_manifest(storage: Storage, ckpt_dir: str) -> dict[str, Any]:
    """Reads and validates ``<ckpt_dir>/manifest.json``.

    Raises ``FileNotFoundError`` when there is no committed checkpoint there and
    :class:`CheckpointFormatError` when it is damaged or from a newer format.
    """
    path = storage.join(ckpt_dir, MANIFEST)
    name = storage.url(path)
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no checkpoint at {storage.url(ckpt_dir)}: {MANIFEST} is missing "
            "(never saved, or the save did not complete)"
        ) from None
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise CheckpointFormatError(f"{name}: not valid JSON ({e}); the file is damaged") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointFormatError(f"{name}: not a recis checkpoint manifest")
    version = body.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{name}: written in checkpoint format version {version}, newer than the "
            f"version {FORMAT_VERSION} this recis reads; upgrade recis to load it"
        )
    checksum = body.pop("checksum", None)
    if checksum != zlib.crc32(_canonical(body)):
        raise CheckpointFormatError(f"{name}: checksum mismatch; the manifest is damaged")
    return body


def saved_at(manifest: dict[str, Any]) -> str:
    """When the checkpoint was saved, for people: ``2026-12-07 20:35:28 UTC``."""
    saved = datetime.datetime.fromtimestamp(manifest.get("created_unix", 0), datetime.UTC)
    return f"{saved:%Y-%m-%d %H:%M:%S} UTC"

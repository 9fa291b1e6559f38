"""Publishing a checkpoint atomically and pruning old ones (rank 0 only).

A checkpoint is written into ``<output_dir>/.tmp-<id>-<nonce>/``; once its manifest
is durable the folder is renamed to ``<output_dir>/<id>`` and the id is appended to
``<output_dir>/checkpoint`` (one id a line, newest last), which is replaced
atomically (write a temporary file, fsync, rename). A crash at any moment leaves
either the old list or the new one, and every id listed names a complete folder:
the list only ever names folders that were renamed into place before it was written,
and a pruned folder leaves the list before it is deleted.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket
import uuid

from recis.framework.checkpoint.manifest import (
    FORMAT,
    MANIFEST,
    CheckpointFormatError,
    read_manifest,
)
from recis.framework.checkpoint.storage import Storage

logger = logging.getLogger(__name__)

LIST_FILE = "checkpoint"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
OWNER_FILE = ".owner"
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")


def validate_id(ckpt_id: str) -> None:
    if not isinstance(ckpt_id, str) or not _ID.match(ckpt_id) or ckpt_id == LIST_FILE:
        raise ValueError(
            f"invalid checkpoint id {ckpt_id!r}: use letters, digits and _ . = + - "
            f"(not starting with '.' or '-', not {LIST_FILE!r})"
        )


def read_ids(storage: Storage, root: str) -> list[str]:
    """Committed checkpoint ids in ``root``, oldest first ([] when none).

    Without the list (deleted by hand, say), the complete checkpoint folders there, by
    the time they were saved: a job would otherwise start again from scratch and its
    first save would prune them as folders a crash left unlisted.
    """
    path = storage.join(root, LIST_FILE)
    try:
        text = storage.read_bytes(path).decode()
    except NotADirectoryError:
        return []
    except FileNotFoundError:
        return _unlisted_checkpoints(storage, root)
    return [line.strip() for line in text.splitlines() if line.strip()]


_warned_unlisted: set[str] = set()


def _unlisted_checkpoints(storage: Storage, root: str) -> list[str]:
    found = []
    for entry in storage.listdir(root):
        path = storage.join(root, entry)
        if entry.startswith(".") or not storage.isdir(path):
            continue
        try:
            found.append((float(read_manifest(storage, path).get("created_unix", 0)), entry))
        except (CheckpointFormatError, OSError):
            continue  # not a checkpoint, or not a whole one
    ids = [entry for _, entry in sorted(found)]
    if ids and storage.url(root) not in _warned_unlisted:
        _warned_unlisted.add(storage.url(root))
        logger.warning(
            "%s has no list of committed checkpoints (%r, deleted?): taking the %d "
            "complete checkpoint folder%s there, newest last: %s. The next save writes "
            "the list again",
            storage.url(root),
            LIST_FILE,
            len(ids),
            "" if len(ids) == 1 else "s",
            ", ".join(ids),
        )
    return ids


def find_checkpoint(
    storage: Storage, root: str, ckpt_id: str | None = None, folder_ok: bool = True
) -> str:
    """The checkpoint folder that ``root`` names: ``root/ckpt_id`` when an id is given,
    ``root`` itself when it is a checkpoint folder (and ``folder_ok``), else the newest
    checkpoint committed in ``root`` (an output directory)."""
    if ckpt_id is not None:
        validate_id(ckpt_id)
        return storage.join(root, ckpt_id)
    if folder_ok and storage.exists(storage.join(root, MANIFEST)):
        return root
    ids = read_ids(storage, root)
    if not ids:
        why = ""
        if not storage.exists(root):
            why = " (there is nothing at that path)"
        elif not storage.isdir(root):
            why = " (it is a file: give a checkpoint's folder or the output_dir above it)"
        raise FileNotFoundError(f"no committed checkpoint in {storage.url(root)}{why}")
    return storage.join(root, ids[-1])


def write_ids(storage: Storage, root: str, ids: list[str], nonce: str) -> None:
    data = "".join(f"{i}\n" for i in ids).encode()
    # A hidden temporary like every other one: a crash leaves it where remove_stale
    # looks, and never where a checkpoint folder could be.
    tmp = storage.join(root, f"{TMP_PREFIX}{LIST_FILE}-{nonce}")
    storage.write_atomic(storage.join(root, LIST_FILE), data, tmp)


def temp_name(ckpt_id: str, nonce: str) -> str:
    return f"{TMP_PREFIX}{ckpt_id}-{nonce}"


def remove_stale(storage: Storage, root: str) -> None:
    """Deletes what interrupted saves left behind (temporary folders and lists).

    Only safe while no other job saves into ``root``: one output directory belongs
    to one job at a time.
    """
    for entry in storage.listdir(root):
        if entry.startswith((TMP_PREFIX, TRASH_PREFIX)):
            storage.remove(storage.join(root, entry))


def _is_checkpoint_dir(storage: Storage, path: str) -> bool:
    try:
        head = storage.read_range(storage.join(path, MANIFEST), 0, 64)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return False
    return FORMAT.encode() in bytes(head)


def commit(
    storage: Storage, root: str, tmp_dir: str, ckpt_id: str, nonce: str, max_keep: int | None
) -> list[str]:
    """Publishes ``tmp_dir`` as checkpoint ``ckpt_id``; prunes to ``max_keep``.

    Returns the ids listed afterwards, oldest first.
    """
    final = storage.join(root, ckpt_id)
    ids = [i for i in read_ids(storage, root) if i != ckpt_id]
    if storage.exists(final):
        # Saving an id again: unlist it first, so that no moment lists a missing folder.
        write_ids(storage, root, ids, nonce)
        storage.rename(final, storage.join(root, f"{TRASH_PREFIX}{ckpt_id}-{nonce}"))
    storage.rename(tmp_dir, final)
    storage.sync_dir(root)
    ids.append(ckpt_id)
    keep = ids[-max_keep:] if max_keep and max_keep > 0 else ids
    write_ids(storage, root, keep, nonce)
    # Pruning: listed ids beyond max_keep, plus committed folders that a crash left
    # unlisted (renamed into place, list not yet written) when max_keep is set.
    dropped = [i for i in ids if i not in keep]
    if max_keep and max_keep > 0:
        for entry in storage.listdir(root):
            if entry not in keep and entry not in dropped and not entry.startswith("."):
                path = storage.join(root, entry)
                if storage.isdir(path) and _is_checkpoint_dir(storage, path):
                    dropped.append(entry)
    for old in dropped:
        # Renamed out of the way first (atomic), so that a crash while deleting
        # leaves a ``.trash-`` folder that the next save removes, never a
        # half-deleted folder under a checkpoint's name.
        trash = storage.join(root, f"{TRASH_PREFIX}{old}-{nonce}")
        if storage.exists(storage.join(root, old)):
            storage.rename(storage.join(root, old), trash)
        storage.remove(trash)
    remove_stale(storage, root)
    return keep


def claim(storage: Storage, root: str) -> dict[str, str]:
    """Marks ``root`` as the output directory of this job; returns the claim written.

    Two jobs saving into one output directory would delete each other's temporaries
    and prune each other's checkpoints: the job that claimed last keeps it, and
    :func:`check_claim` stops the other at its next save.
    """
    owner = {
        "id": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_owner(storage, root, owner)
    return owner


def _write_owner(storage: Storage, root: str, owner: dict[str, str]) -> None:
    tmp = storage.join(root, f"{TMP_PREFIX}{OWNER_FILE[1:]}-{owner['id'][:12]}")
    storage.write_atomic(storage.join(root, OWNER_FILE), json.dumps(owner).encode(), tmp)


def read_claim(storage: Storage, root: str) -> dict[str, str] | None:
    """The claim on ``root`` (see :func:`claim`); None when there is none, ``{}`` when
    it cannot be read."""
    try:
        return json.loads(storage.read_bytes(storage.join(root, OWNER_FILE)))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def check_claim(storage: Storage, root: str, owner: dict[str, str]) -> None:
    """Raises ``RuntimeError`` when another job has claimed ``root`` since ``owner``
    did (a claim found missing is written again)."""
    current = read_claim(storage, root)
    if current is None:
        _write_owner(storage, root, owner)
        return
    if current.get("id") != owner["id"]:
        raise RuntimeError(
            f"another job took over output_dir {storage.url(root)} (host "
            f"{current.get('host', '?')}, pid {current.get('pid', '?')}, since "
            f"{current.get('since', '?')}) after this one (host {owner['host']}, pid "
            f"{owner['pid']}, since {owner['since']}): two jobs must not save into one "
            "output_dir; this one stops without saving"
        )

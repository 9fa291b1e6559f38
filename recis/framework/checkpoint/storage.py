"""Where checkpoint bytes live: a local directory or any fsspec URL.

Local paths get the durability a checkpoint needs (``fsync`` of every file and of
the directories whose entries changed, ``os.replace`` for atomic replacement); so do
``file://`` URLs, which are local paths. Other URLs (``memory://``, ``s3://`` ...) go
through fsspec; there a commit is as atomic as the backend's ``mv``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import IO


class Storage:
    """File operations rooted anywhere; paths are plain strings joined with ``/``."""

    def join(self, *parts: str) -> str:
        return "/".join(p.rstrip("/") for p in parts[:-1]) + "/" + parts[-1]

    def url(self, path: str) -> str:
        """The path as a user would pass it back (URL for fsspec storages)."""
        return path

    def makedirs(self, path: str) -> None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def isdir(self, path: str) -> bool:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        """Base names of the entries of ``path`` ([] when it does not exist)."""
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    @contextlib.contextmanager
    def open_write(self, path: str) -> Iterator[IO[bytes]]:
        """A binary file for writing, durable when the block exits."""
        raise NotImplementedError
        yield  # pragma: no cover

    def read_range(self, path: str, start: int, stop: int) -> bytearray:
        """Bytes ``[start, stop)`` of a file."""
        raise NotImplementedError

    def read_into(self, path: str, start: int, out: memoryview) -> None:
        """Fills ``out`` with the bytes of the file from ``start`` on."""
        out[:] = self.read_range(path, start, start + len(out))

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        """Renames a file or directory; replaces ``dst`` when it is a file."""
        raise NotImplementedError

    def remove(self, path: str) -> None:
        """Removes a file or a whole directory tree; no error when absent."""
        raise NotImplementedError

    def sync_dir(self, path: str) -> None:
        """Makes the entries of directory ``path`` durable (no-op where meaningless)."""

    def free_bytes(self, path: str) -> int | None:
        """Bytes free on the file system that holds ``path`` (or would: the nearest
        existing parent); None where the storage cannot tell (object stores)."""
        return None

    def write_atomic(self, path: str, data: bytes, tmp: str) -> None:
        """Writes ``data`` to ``path`` (through ``tmp``, in the same folder) so that
        readers see the old or the new content."""
        with self.open_write(tmp) as f:
            f.write(data)
        self.rename(tmp, path)
        self.sync_dir(path.rsplit("/", 1)[0] if "/" in path else ".")


class LocalStorage(Storage):
    """A local file system, with fsync for durability."""

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    @contextlib.contextmanager
    def open_write(self, path: str) -> Iterator[IO[bytes]]:
        # Unbuffered: the writer hands over large buffers, an extra copy only costs.
        with open(path, "wb", buffering=0) as f:
            yield f
            os.fsync(f.fileno())

    def read_range(self, path: str, start: int, stop: int) -> bytearray:
        buf = bytearray(stop - start)
        self.read_into(path, start, memoryview(buf))
        return buf

    def read_into(self, path: str, start: int, out: memoryview) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < len(out):
                n = os.preadv(fd, [out[done:]], start + done)
                if n == 0:
                    raise OSError(f"{path}: unexpected end of file at byte {start + done}")
                done += n
        finally:
            os.close(fd)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def free_bytes(self, path: str) -> int | None:
        path = os.path.abspath(path)
        while not os.path.exists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        return shutil.disk_usage(path).free

    def sync_dir(self, path: str) -> None:
        fd = os.open(path or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FsspecStorage(Storage):
    """Any fsspec file system (``file://``, ``memory://``, object stores ...)."""

    def __init__(self, fs, protocol: str) -> None:
        self.fs = fs
        self.protocol = protocol

    def url(self, path: str) -> str:
        on_disk = self.protocol.rsplit("::", 1)[-1] in ("file", "local")  # an absolute path
        return f"{self.protocol}://{path if on_disk else path.lstrip('/')}"

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def exists(self, path: str) -> bool:
        # Object stores cache listings: another rank's new file would look absent.
        self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(path)

    def listdir(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    @contextlib.contextmanager
    def open_write(self, path: str) -> Iterator[IO[bytes]]:
        with self.fs.open(path, "wb") as f:
            yield f

    def read_range(self, path: str, start: int, stop: int) -> bytearray:
        data = self.fs.cat_file(path, start=start, end=stop)
        if len(data) != stop - start:
            raise OSError(f"{self.url(path)}: unexpected end of file at byte {start + len(data)}")
        return bytearray(data)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def rename(self, src: str, dst: str) -> None:
        try:
            # Object stores (and memory://) replace a file in one step: readers of
            # dst (the list of committed checkpoints) see the old or the new one.
            self.fs.mv(src, dst, recursive=True)
        except OSError:
            if not self.fs.isfile(dst):
                raise
            self.fs.rm(dst)  # a backend that will not replace a file: not atomic then
            self.fs.mv(src, dst, recursive=True)

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def check_url_supported(path: str) -> None:
    """Raises ``ValueError`` when ``path`` is a URL whose protocol fsspec does not know
    or whose package is not installed (``s3://`` without s3fs): cheap, no I/O, so a
    job can find out before it spends minutes building its model. Each protocol of a
    chained URL (``simplecache::s3://...``) is checked."""
    if "://" not in path:
        return
    import fsspec

    for link in path.split("::"):
        try:
            fsspec.get_filesystem_class(link.split("://", 1)[0])
        except (ImportError, ValueError) as e:
            raise ValueError(f"{path!r}: {e}") from None


def storage_for(path: str) -> tuple[Storage, str]:
    """The storage that serves ``path`` and the path in that storage's terms.

    Example::

        >>> storage, root = storage_for("memory://jobs/run1")
        >>> storage.makedirs(root)
    """
    if "://" not in path:
        return LocalStorage(), path
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    check_url_supported(path)
    fs, root = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem):
        # fsspec's local rename is a delete and a move, with no fsync: a crash between
        # the two would lose the list of committed checkpoints.
        return LocalStorage(), root
    protocol = path.split("://", 1)[0]
    return FsspecStorage(fs, protocol), root

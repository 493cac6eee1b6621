"""File bytes: a directory, behind an interface an object store can implement too.

Rows in the database say which files exist; bytes live here under the file's id. A
write goes to a temporary name, is fsynced, and is renamed into place, so a crash
leaves either the whole file or none of it; a write that fails (a full or read-only
disk: `StoreUnavailable`) removes its temporary file and leaves no file at all.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from serving.store.faults import os_faults

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BlobStore(Protocol):
    def put(self, blob_id: str, source: BinaryIO) -> int: ...
    def open(self, blob_id: str) -> BinaryIO: ...
    def iter_bytes(self, blob_id: str, chunk: int = 1 << 20) -> Iterator[bytes]: ...
    def delete(self, blob_id: str) -> None: ...


class LocalBlobStore:
    """Blobs as files in one directory (a PVC in the chart's embedded case)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, blob_id: str) -> Path:
        if not _SAFE_ID.match(blob_id):
            raise ValueError(f"bad blob id {blob_id!r}")
        return self.root / blob_id

    def put(self, blob_id: str, source: BinaryIO) -> int:
        """Copy `source` in atomically; returns the number of bytes written."""
        final = self._path(blob_id)
        tmp = final.with_name(f".{blob_id}.{os.getpid()}.tmp")
        size = 0
        try:
            with os_faults():
                with open(tmp, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return size

    def open(self, blob_id: str) -> BinaryIO:
        return open(self._path(blob_id), "rb")

    def iter_bytes(self, blob_id: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.open(blob_id) as handle:
            while data := handle.read(chunk):
                yield data

    def delete(self, blob_id: str) -> None:
        with os_faults():
            self._path(blob_id).unlink(missing_ok=True)

"""Files uploaded through /v1/files: one content file and one JSON sidecar per id, on disk.

    <root>/file-3f2a…  (the bytes)      <root>/file-3f2a….json  (filename, purpose, size...)

Crash safety comes from ordering: content is written to a temporary name, fsynced and renamed
first; the sidecar is renamed into place last, so a file exists exactly when its sidecar does.
Deleting removes the sidecar first. Leftovers of an interrupted write are swept at start-up.

Each file has an owner (a user id; "" = the operator, and every file from before users): the
routes see the store through `OwnedFiles`, in which other owners' files do not exist.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

_ID = re.compile(r"^file-[0-9a-f]{24}$")  # also keeps ids from naming paths outside root
_PARTIAL = ".part"
LEFTOVER_AGE_S = 3600  # an upload still unfinished after this long was cut off by a crash


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int  # unix seconds
    content_type: str | None
    owner: str = ""  # sidecars written before users have none: the operator's


class FileStore:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def create(self, source: BinaryIO, filename: str, purpose: str, content_type: str | None, *,
               owner: str) -> StoredFile:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        content = self._content_path(file_id)
        partial = content.with_name(content.name + _PARTIAL)
        with open(partial, "wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, content)
        stored = StoredFile(file_id, filename, purpose, content.stat().st_size, int(time.time()), content_type, owner)
        self._write_json(self._meta_path(file_id), asdict(stored))
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        if not _ID.match(file_id):
            return None
        try:
            return StoredFile(**json.loads(self._meta_path(file_id).read_text()))
        except FileNotFoundError:
            return None

    def list(self, purpose: str | None = None, *, owner: str) -> list[StoredFile]:
        """Newest first, as OpenAI lists them."""
        found = (self.get(path.name.removesuffix(".json")) for path in self.root.glob("file-*.json"))
        files = [f for f in found if f is not None and f.owner == owner and (purpose is None or f.purpose == purpose)]
        return sorted(files, key=lambda f: (f.created_at, f.id), reverse=True)

    def path(self, file_id: str) -> Path:
        return self._content_path(file_id)

    def read(self, file_id: str) -> bytes:
        return self._content_path(file_id).read_bytes()

    def delete(self, file_id: str) -> bool:
        if self.get(file_id) is None:
            return False
        self._meta_path(file_id).unlink(missing_ok=True)
        self._content_path(file_id).unlink(missing_ok=True)
        return True

    def _content_path(self, file_id: str) -> Path:
        if not _ID.match(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id

    def _meta_path(self, file_id: str) -> Path:
        return self._content_path(file_id).with_suffix(".json")

    def _write_json(self, path: Path, data: dict) -> None:
        partial = path.with_name(path.name + _PARTIAL)
        with open(partial, "w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sweep(self) -> None:
        """Remove half-written files and content whose sidecar never landed, once they are old
        enough that no running server can still be writing them (replicas under Ray Serve share
        this folder, and one starts while others take uploads)."""
        stale_before = time.time() - LEFTOVER_AGE_S
        for path in self.root.iterdir():
            leftover = path.name.endswith(_PARTIAL) or (_ID.match(path.name) and not path.with_suffix(".json").exists())
            if leftover and _mtime(path) < stale_before:
                path.unlink(missing_ok=True)


class OwnedFiles:
    """One owner's view of a FileStore: another owner's file id is not found, as an unknown one."""

    def __init__(self, store: FileStore, owner: str):
        self.store, self.owner = store, owner

    def create(self, source: BinaryIO, filename: str, purpose: str, content_type: str | None) -> StoredFile:
        return self.store.create(source, filename, purpose, content_type, owner=self.owner)

    def get(self, file_id: str) -> StoredFile | None:
        stored = self.store.get(file_id)
        return stored if stored is not None and stored.owner == self.owner else None

    def list(self, purpose: str | None = None) -> list[StoredFile]:
        return self.store.list(purpose, owner=self.owner)

    def path(self, file_id: str) -> Path:
        return self.store.path(self._own(file_id))

    def read(self, file_id: str) -> bytes:
        return self.store.read(self._own(file_id))

    def delete(self, file_id: str) -> bool:
        return self.get(file_id) is not None and self.store.delete(file_id)

    def _own(self, file_id: str) -> str:
        if self.get(file_id) is None:
            raise FileNotFoundError(file_id)
        return file_id


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # another replica finished or removed it meanwhile
        return float("inf")

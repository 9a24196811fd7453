"""Output storage in a local directory (``LOCAL_STORAGE_DIR``): the embedded default.

Files are copied in blocks (bounded memory) to a temporary name beside the destination and renamed into
place, so a reader never sees half a file. URLs are ``file://`` URIs, or ``base_url`` + path when the
directory is served over HTTP by something else.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

from comfy_worker.errors import StorageRejected
from comfy_worker.filehash import READ_BLOCK
from comfy_worker.logs import get_logger
from comfy_worker.pathsafe import contained
from comfy_worker.storage.base import StoredObject, UploadJournal, guess_content_type, validate_path

log = get_logger(__name__)


def _copy_hashing(src: Path, dest: Path, sha256: str | None = None) -> tuple[int, str]:
    """Copy src to dest atomically (tmp + rename), returning (bytes, sha256). Runs in a thread.

    With ``sha256`` already known the bytes are not hashed again and the copy is left to the kernel
    (``shutil.copyfile`` uses ``sendfile`` / ``copy_file_range`` where the platform has them)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        if sha256 is not None:
            os.close(fd)
            shutil.copyfile(src, tmp)
            size = tmp.stat().st_size
        else:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                while block := fin.read(READ_BLOCK):
                    digest.update(block)
                    fout.write(block)
                    size += len(block)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, sha256 if sha256 is not None else digest.hexdigest()


class LocalStorage:
    """A :class:`~comfy_worker.storage.base.Storage` backed by the directory ``root``."""

    def __init__(self, root: Path, base_url: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.base_url = base_url.rstrip("/") if base_url else None

    def _full(self, path: str) -> Path:
        full = self.root / validate_path(path)
        if contained(full, [self.root]) is None:
            raise StorageRejected(
                f"storage path {path!r} leads out of LOCAL_STORAGE_DIR through a symlink", details={"path": path}
            )
        return full

    async def check(self) -> None:
        def probe() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            marker = self.root / f".write-check-{uuid.uuid4().hex}"
            marker.write_bytes(b"ok")
            marker.unlink()

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise StorageRejected(
                f"LOCAL_STORAGE_DIR {str(self.root)!r} is not writable ({exc.strerror or exc}): "
                "point it at a writable directory",
                details={"root": str(self.root)},
            ) from exc

    async def upload(
        self,
        local_path: Path,
        dest_path: str,
        *,
        content_type: str | None = None,
        sha256: str | None = None,
        journal: UploadJournal | None = None,  # a local copy is not resumable: nothing to journal
    ) -> StoredObject:
        dest = self._full(dest_path)
        content_type = content_type or guess_content_type(dest_path)
        try:
            size, sha = await asyncio.to_thread(_copy_hashing, Path(local_path), dest, sha256)
        except FileNotFoundError as exc:
            raise StorageRejected(
                f"cannot upload {str(local_path)!r}: the file does not exist", details={"path": dest_path}
            ) from exc
        except OSError as exc:
            raise StorageRejected(
                f"cannot write {str(dest)!r} under LOCAL_STORAGE_DIR: {exc.strerror or exc}",
                details={"path": dest_path},
            ) from exc
        url = await self.url_for(dest_path)
        log.info("storage_uploaded", backend="local", path=dest_path, bytes=size)
        return StoredObject(path=dest_path, url=url, bytes=size, sha256=sha, content_type=content_type)

    async def download(self, storage_path: str, local_path: Path) -> Path:
        src = self._full(storage_path)
        local_path = Path(local_path)
        try:
            await asyncio.to_thread(_copy_hashing, src, local_path)
        except FileNotFoundError as exc:
            raise StorageRejected(
                f"storage object {storage_path!r} does not exist in LOCAL_STORAGE_DIR {str(self.root)!r}",
                details={"path": storage_path},
            ) from exc
        return local_path

    async def delete(self, paths: list[str]) -> None:
        targets = [self._full(p) for p in paths]

        def remove() -> None:
            for target in targets:
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def url_for(self, path: str) -> str:
        full = self._full(path)
        if self.base_url:
            return f"{self.base_url}/{quote(path)}"
        return full.as_uri()

    async def discard_uploads(self, journal: UploadJournal) -> None:
        return None  # local uploads are never resumable: nothing is ever journalled

    async def aclose(self) -> None:
        return None

"""What the models directory knows about itself: ``MODELS_DIR/.comfy-worker/``.

* ``verified.json`` — per file (``folder/name``): the sha256 we computed, the size and mtime it had then, and
  where it came from. A file whose size and mtime still match needs no re-hash (hashing 100 GB of models
  takes minutes); an entry whose manifest sha256 is null gets its hash recorded here on first sync, so later
  checks notice when the file changes.
* ``downloads/`` — partial downloads (``*.partial`` + ``*.partial.json`` with what was being fetched) and the
  per-file lease locks. On the same volume as the models, so finishing a download is an atomic rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.models_manifest.lock import LeaseLock

STATE_DIR = ".comfy-worker"


@dataclass(frozen=True)
class Record:
    sha256: str
    size: int
    mtime_ns: int
    source: str = ""
    verified_at: float = 0.0

    def matches(self, st: os.stat_result) -> bool:
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


class ModelsState:
    def __init__(self, models_dir: Path) -> None:
        self.root = models_dir / STATE_DIR
        self.verified_path = self.root / "verified.json"
        self.downloads = self.root / "downloads"

    def partial_path(self, relpath: str) -> Path:
        return self.downloads / (relpath.replace("/", "__") + ".partial")

    def lock_for(self, relpath: str, **kwargs: Any) -> LeaseLock:
        return LeaseLock(self.downloads / (relpath.replace("/", "__") + ".lock"), **kwargs)

    def records(self) -> dict[str, Record]:
        try:
            raw = json.loads(self.verified_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        out: dict[str, Record] = {}
        for key, value in (raw.get("files") or {}).items():
            with contextlib.suppress(TypeError, KeyError):
                out[key] = Record(
                    str(value["sha256"]),
                    int(value["size"]),
                    int(value["mtime_ns"]),
                    str(value.get("source", "")),
                    float(value.get("verified_at", 0.0)),
                )
        return out

    def record(self, relpath: str, path: Path, sha256: str, source: str) -> None:
        self._update(relpath, path, sha256, source)

    def forget(self, relpath: str) -> None:
        self._update(relpath, None, "", "")

    def _update(self, relpath: str, path: Path | None, sha256: str, source: str) -> None:
        """Read-modify-write under a short lock; atomic replace so a reader never sees half a file."""
        self.root.mkdir(parents=True, exist_ok=True)
        with LeaseLock(self.root / "verified.json.lock"):
            records = {k: v.__dict__ for k, v in self.records().items()}
            if path is None:
                records.pop(relpath, None)
            else:
                st = path.stat()
                records[relpath] = Record(sha256, st.st_size, st.st_mtime_ns, source, time.time()).__dict__
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".verified.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"version": 1, "files": records}, f, indent=1, sort_keys=True)
                os.replace(tmp, self.verified_path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

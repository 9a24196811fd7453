"""Files the exploration suite writes: atomically (a reader or a crash never sees half a file), and moved flat."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def move_into(files: list[Path], dest: Path) -> list[Path]:
    """Move files flat into ``dest`` (a second file of the same name gets a numbered prefix)."""
    dest.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    for i, f in enumerate(files):
        target = dest / f.name
        if target in moved:
            target = dest / f"{i}_{f.name}"
        shutil.move(str(f), target)
        moved.append(target)
    return moved

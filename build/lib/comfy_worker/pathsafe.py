"""Text from a task that ends up in a file path: pure checks shared by every layer.

A task row is user input: its ``task_id`` is chosen by whoever inserts it, and its params name files. Nothing
here touches the disk except :func:`contained`, which resolves symlinks.

* :func:`path_key` turns any text (a task id) into one safe path component, stable across machines, so work
  directories, ComfyUI subfolders and storage paths built from it stay where they are meant to be.
* :func:`relative_problem` says why a name is not a relative path inside some folder (absolute, ``..``, …).
* :func:`contained` checks a path, symlinks followed, lies under one of some roots.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_DRIVE = re.compile(r"^[A-Za-z]:")


def path_key(text: str) -> str:
    """``text`` as one path component.

    Text that already is a safe component (letters, digits, ``.``, ``_``, ``-``; at most 128 characters;
    starting with a letter or digit; no ``..``) is returned unchanged, so ordinary task ids (UUIDs,
    ``render-42``) keep their documented paths. Anything else becomes its safe characters (at most 48) plus
    ``+`` and a hash of the whole text: ``+`` never occurs in an unchanged key, so two ids never share one."""
    if _SAFE_KEY.match(text) and ".." not in text:
        return text
    stem = _UNSAFE_RUN.sub("_", text).replace("..", "_").strip("._-")[:48].strip("._-")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{stem or 'id'}+{digest}"


def relative_problem(value: str) -> str | None:
    """Why ``value`` is not a relative path that stays inside the folder it is joined to, or None.

    Refused: empty, absolute (``/x``, ``C:x``, ``\\\\host``), ``~`` (expanded by some nodes), backslashes,
    control characters and any ``..`` segment."""
    if not value or not value.strip():
        return "is empty"
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return "contains control characters"
    if value.startswith("/") or _DRIVE.match(value):
        return "is an absolute path"
    if "\\" in value:
        return "contains a backslash"
    if value.startswith("~"):
        return "starts with '~' (a home directory)"
    if ".." in value.split("/"):
        return "contains a '..' segment"
    return None


def contained(path: str | Path, roots: Iterable[str | Path]) -> Path | None:
    """The root (resolved) that ``path`` lies in once symlinks are followed, or None when it is in none.

    The path need not exist: what exists of it is resolved, the rest is taken lexically."""
    real = Path(path).resolve()
    for root in roots:
        base = Path(root).resolve()
        if real == base or real.is_relative_to(base):
            return base
    return None

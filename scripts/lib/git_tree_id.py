"""Print the git tree id of a folder: the id `git write-tree` would give its files (modes 100644 / 100755 /
120000, empty folders left out), computed without git. Used by scripts/lib/comfyui_0364.sh to check that a
downloaded source archive holds exactly the files of the pinned ComfyUI commit.

Usage: python3 git_tree_id.py FOLDER
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys


def _object_id(kind: bytes, data: bytes) -> bytes:
    return hashlib.sha1(b"%s %d\0%s" % (kind, len(data), data)).digest()  # noqa: S324 - git object ids are SHA-1


def tree_id(folder: str) -> bytes | None:
    """The binary id of ``folder``'s tree, or None when it holds no file (git records no empty folder)."""
    entries: list[tuple[bytes, bytes, bytes]] = []  # (sort key, mode, id)
    with os.scandir(folder) as it:
        for entry in it:
            name = os.fsencode(entry.name)
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                entries.append((name, b"120000", _object_id(b"blob", os.fsencode(os.readlink(entry.path)))))
            elif stat.S_ISDIR(info.st_mode):
                sub = tree_id(entry.path)
                if sub is not None:
                    entries.append((name + b"/", b"40000", sub))
            elif stat.S_ISREG(info.st_mode):
                with open(entry.path, "rb") as f:
                    oid = _object_id(b"blob", f.read())
                entries.append((name, b"100755" if info.st_mode & stat.S_IXUSR else b"100644", oid))
    if not entries:
        return None
    body = b"".join(mode + b" " + key.rstrip(b"/") + b"\0" + oid for key, mode, oid in sorted(entries))
    return _object_id(b"tree", body)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: git_tree_id.py FOLDER")
    found = tree_id(sys.argv[1])
    print(found.hex() if found else "")

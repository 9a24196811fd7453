"""Reading files in blocks: the SHA-256 that storage records for an upload and the worker's encoder for the mp4 it
writes, and the block size storage's streams read and write with. Below both layers, so neither imports the other
for it."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_BLOCK = 1024 * 1024  # bytes read from disk per step, here and in storage's streams


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex, read in blocks of READ_BLOCK (blocking: run it in a thread from async code)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()

"""The numbered SQL migrations shipped in ``comfy_worker/sql`` (also reachable as the repository's ``sql/``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # "001_tables"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    return Path(str(resources.files("comfy_worker") / "sql"))


def postgres_migrations() -> list[Migration]:
    """Every ``NNN_name.sql`` in order."""
    return [Migration(p.stem, p.read_text()) for p in sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql"))]


def sqlite_file(name: str) -> str:
    return (sql_dir() / "sqlite" / name).read_text()

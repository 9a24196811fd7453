"""No test reads a path above the repository root: a user's clone has only what is committed (the data the tests
need is in tests/fixtures/). A static check over every file under tests/; scripts/test_standalone.sh proves the
same at run time by running the fixture-reading tests in a clone with nothing beside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
# Path(__file__).resolve().parents[N] followed by .parent any number of times
FILE_PARENTS = re.compile(
    r"__file__\)?\.resolve\(\)\.parents\[(\d+)\]((?:\.parent\b)*)|__file__\)?\.resolve\(\)((?:\.parent\b)+)")
ABOVE_ROOT = [
    (re.compile(r"\bREPO\.parent\b"), "REPO.parent is outside the repository"),
    (re.compile(r"\.\./shared\b|\.parent / \"shared\""),
     "the team's shared folder is not in a user's clone"),
    (re.compile(r"/work/"), "an absolute path of one machine"),
]


def scanned() -> list[Path]:
    files = [p for p in sorted(TESTS.rglob("*")) if p.suffix in {".py", ".sh", ".json", ".yaml", ".yml", ".txt"}]
    return [p for p in files if p.is_file() and p != Path(__file__).resolve() and "__pycache__" not in p.parts]


def problems_in(path: Path, text: str) -> list[str]:
    """Lines of ``text`` (the file at ``path``) that reach above the repository root."""
    depth = len(path.relative_to(REPO).parts) - 1  # parents[depth] of the file is the repository root
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for m in FILE_PARENTS.finditer(line):
            up = int(m[1]) + m[2].count(".parent") if m[1] is not None else m[3].count(".parent") - 1
            if up > depth:
                found.append(f"{path.relative_to(REPO)}:{number}: climbs {up - depth} folder(s) above the repository")
        for pattern, why in ABOVE_ROOT:
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {why}: {line.strip()}")
    return found


def test_no_test_file_reads_above_the_repository_root() -> None:
    files = scanned()
    assert len(files) > 100  # the scan saw the suite, not an empty folder
    found = [p for path in files for p in problems_in(path, path.read_text(errors="replace"))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("relative", "line", "bad"),
    [
        ("tests/unit/test_x.py", "SHARED = Path(__file__).resolve().parents[2]" + '.parent / "shared"', True),
        ("tests/unit/test_x.py", "REPO = Path(__file__).resolve().parents[3]", True),
        ("tests/unit/test_x.py", "REPO = Path(__file__).resolve().parents[2]", False),
        ("tests/unit/explore/test_x.py", "REPO = Path(__file__).resolve().parents[3]", False),
        ("tests/conftest.py", "HERE = Path(__file__).resolve().parent.parent", False),
        ("tests/conftest.py", "UP = Path(__file__).resolve().parent.parent.parent", True),
        ("tests/conftest.py", 'FIXTURES = REPO.parent / "shared" / "fixtures"', True),
        ("tests/x.sh", 'tar -xzf "$REPO/..' + '/shared/vendor/comfyui.tar.gz"', True),
        ("tests/unit/test_x.py", 'bad = "../etc/passwd"  # a traversal the code must refuse', False),
        ("tests/unit/test_x.py", 'vendored = tmp_path / "checkouts" / "shared" / "vendor"', False),
    ],
)
def test_the_check_tells_inside_from_above(relative: str, line: str, bad: bool) -> None:
    assert bool(problems_in(REPO / relative, line)) is bad

"""scripts/lib/comfyui_0364.sh: where the ComfyUI 0.3.64 source comes from (COMFY_0364_TARBALL, else the team's
shared vendor folder beside the repository, else the pinned commit's archive over HTTP, kept only when its files
are the commit's), and the one line a machine with none of the three gets. Runs the real shell function against a
real HTTP server on 127.0.0.1 serving tarballs made here; scripts/lib/git_tree_id.py is checked against git."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "scripts" / "lib" / "comfyui_0364.sh"
TREE_ID = REPO / "scripts" / "lib" / "git_tree_id.py"
VENDORED = "/".join(("..", "shared", "vendor", "comfyui-0.3.64.tar.gz"))  # as the message names it (made up here
# so that no test file spells a path above the repository: tests/unit/test_self_contained.py)


def source_tree(root: Path) -> Path:
    """A small source tree: nested folders, an executable, an empty folder (git records none)."""
    (root / "comfy" / "text_encoders").mkdir(parents=True)
    (root / "main.py").write_text("print('comfy')\n")
    (root / "comfy" / "text_encoders" / "tokenizer.json").write_text('{"model": {}}\n')
    (root / "comfy" / "a-b.py").write_text("x = 1\n")  # sorts before the folder "comfy/text_encoders"
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "output").mkdir()
    return root


def git_tree(folder: Path) -> str:
    env = {**os.environ, "GIT_DIR": str(folder.parent / f"{folder.name}.git"), "GIT_WORK_TREE": str(folder)}
    for args in (["init", "-q"], ["add", "-A", "-f"], ["write-tree"]):
        out = subprocess.run(["git", *args], env=env, capture_output=True, text=True, check=True).stdout
    return out.strip()


def pack(folder: Path, tarball: Path) -> Path:
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname=f"ComfyUI-{'a' * 40}")
    return tarball


class Served:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: list[str] = []
        served = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(served.root), **kwargs)  # type: ignore[arg-type]

            def log_message(self, *_args: object) -> None:
                served.hits.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "www"
    root.mkdir()
    served = Served(root)
    yield served
    served.server.shutdown()
    served.server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/archive.tar.gz"


def pick(repo: Path, cache: Path, *, url: str, tree: str | None = None,
         tarball: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``comfyui_0364_tarball`` as the setup scripts do, with the archive URL (and tree id) pointed here."""
    env = {k: v for k, v in os.environ.items() if k != "COMFY_0364_TARBALL"}
    if tarball is not None:
        env["COMFY_0364_TARBALL"] = tarball
    script = (f'source "{LIB}"; COMFYUI_0364_URL="$1"; [[ -n "$2" ]] && COMFYUI_0364_TREE="$2"; '
              'comfyui_0364_tarball setup_x "$3" "$4"')
    return subprocess.run(["bash", "-c", script, "bash", url, tree or "", str(repo), str(cache)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line]


def test_tree_id_is_the_one_git_computes(tmp_path: Path) -> None:
    folder = source_tree(tmp_path / "src")
    got = subprocess.run(["python3", str(TREE_ID), str(folder)], capture_output=True, text=True, check=True).stdout
    assert got.strip() == git_tree(folder)
    (folder / "run.sh").chmod(0o644)  # an exec bit is part of the tree
    assert subprocess.run(["python3", str(TREE_ID), str(folder)], capture_output=True, text=True,
                          check=True).stdout.strip() != got.strip()


def test_a_machine_with_none_of_the_three_gets_one_line_naming_them(tmp_path: Path) -> None:
    url = closed_port_url()
    out = pick(tmp_path / "repo", tmp_path / "cache", url=url)
    assert out.returncode == 1 and out.stdout == ""
    [line] = errors(out.stderr)
    assert line.startswith("setup_x: ERROR: ComfyUI 0.3.64 source: the download failed (")
    for named in ("COMFY_0364_TARBALL=", VENDORED, f"network access to {url}"):
        assert named in line
    assert not list((tmp_path / "cache").iterdir())  # no partial download left behind


def test_a_named_tarball_that_is_not_there_is_refused(tmp_path: Path) -> None:
    out = pick(tmp_path / "repo", tmp_path / "cache", url=closed_port_url(), tarball=str(tmp_path / "nope.tgz"))
    assert out.returncode == 1 and out.stdout == ""
    [line] = errors(out.stderr)
    assert f"COMFY_0364_TARBALL={tmp_path / 'nope.tgz'} is not a file" in line and VENDORED in line


def test_the_named_tarball_comes_first_then_the_shared_folder(tmp_path: Path) -> None:
    repo = tmp_path / "checkouts" / "comfy-worker"
    repo.mkdir(parents=True)
    vendored = tmp_path / "checkouts" / "shared" / "vendor" / "comfyui-0.3.64.tar.gz"
    vendored.parent.mkdir(parents=True)
    vendored.write_bytes(b"vendored")
    mine = tmp_path / "mine.tar.gz"
    mine.write_bytes(b"mine")
    out = pick(repo, tmp_path / "cache", url=closed_port_url(), tarball="mine.tar.gz", cwd=tmp_path)  # made absolute
    assert (out.returncode, out.stdout.strip()) == (0, str(mine))
    out = pick(repo, tmp_path / "cache", url=closed_port_url())
    assert (out.returncode, out.stdout.strip()) == (0, str(vendored))
    assert "download" not in out.stderr


def test_the_archive_is_kept_only_when_its_files_are_the_commits(tmp_path: Path, http_root: Served) -> None:
    folder = source_tree(tmp_path / "src")
    commit_tree = git_tree(folder)
    pack(folder, http_root.root / "good.tar.gz")
    cache = tmp_path / "cache"
    out = pick(tmp_path / "repo", cache, url=f"{http_root.url}/good.tar.gz", tree=commit_tree)
    assert out.returncode == 0, out.stderr
    kept = Path(out.stdout.strip())
    assert kept.parent == cache and kept.read_bytes() == (http_root.root / "good.tar.gz").read_bytes()
    # a second run uses the checked copy without asking the server again
    again = pick(tmp_path / "repo", cache, url=f"{http_root.url}/good.tar.gz", tree=commit_tree)
    assert (again.returncode, again.stdout, len(http_root.hits)) == (0, out.stdout, 1)

    # one changed byte: refused, nothing kept
    (folder / "main.py").write_text("print('comfz')\n")
    pack(folder, http_root.root / "changed.tar.gz")
    other = tmp_path / "cache2"
    out = pick(tmp_path / "repo", other, url=f"{http_root.url}/changed.tar.gz", tree=commit_tree)
    assert out.returncode == 1 and out.stdout == ""
    [line] = errors(out.stderr)
    assert "does not hold commit" in line and f"expected {commit_tree}" in line
    assert not list(other.iterdir())


def test_the_pinned_commit_is_the_images() -> None:
    """The tests' ComfyUI 0.3.64 and the pod image's (docker/Dockerfile COMFYUI_REF) are one commit: a bump moves
    both (and the tree id with them: `git rev-parse <commit>^{tree}`)."""
    lib = dict(re.findall(r"^(COMFYUI_0364_\w+)=(\S+)$", LIB.read_text(), re.M))
    [ref] = re.findall(r"^ARG COMFYUI_REF=(\w+)$", (REPO / "docker" / "Dockerfile").read_text(), re.M)
    assert lib["COMFYUI_0364_COMMIT"] == ref
    assert re.fullmatch(r"[0-9a-f]{40}", lib["COMFYUI_0364_TREE"]) and lib["COMFYUI_0364_TREE"] != ref

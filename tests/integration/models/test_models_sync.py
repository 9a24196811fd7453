"""`models sync` against a real HTTP server on 127.0.0.1 (tests/standins/model_files.py): downloads, resumes
after a cut (in the same run and in the next one), refuses sha256 / size mismatches, and never downloads a
file twice at once (two real `comfy-worker models sync` processes on one models directory)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from comfy_worker.models_manifest import check_models, load_manifest, sync_models
from comfy_worker.models_manifest.lock import LeaseLock
from comfy_worker.models_manifest.state import ModelsState
from tests.standins.model_files import ModelFileServer

REPO = Path(__file__).resolve().parents[3]
KiB = 1024


def payload(n: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking bytes (so a wrong offset changes the hash)."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


class Recorder:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.labels: list[str] = []

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        self.labels.append(label)

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def message(self, text: str) -> None:
        self.messages.append(text)


def write_manifest(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"version": 1, "models": entries}))  # JSON is YAML
    return path


@pytest.fixture
def server(tmp_path: Path):
    with ModelFileServer(tmp_path / "served") as srv:
        yield srv


def test_sync_downloads_verifies_and_then_leaves_the_file_alone(server: ModelFileServer, tmp_path: Path) -> None:
    data = payload(700 * KiB)
    url = server.add_file("vae.safetensors", data)
    manifest = load_manifest(
        write_manifest(
            tmp_path / "m.yaml",
            [
                {
                    "name": "vae.safetensors",
                    "folder": "vae",
                    "url": url,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ],
        )
    )
    models = tmp_path / "models"
    [out] = sync_models(manifest, models, backoff_s=0)
    assert out.outcome == "downloaded", out.detail
    assert (models / "vae" / "vae.safetensors").read_bytes() == data
    assert not list((models / ".comfy-worker" / "downloads").glob("*.partial*"))
    assert [s.state for s in check_models(manifest, models)] == ["ok"]

    [again] = sync_models(manifest, models, backoff_s=0)
    assert again.outcome == "present"
    assert len(server.gets("/files/vae.safetensors")) == 1


def test_a_cut_mid_file_is_resumed_with_a_range_request_in_the_same_run(
    server: ModelFileServer, tmp_path: Path
) -> None:
    data = payload(1024 * KiB, seed=2)
    url = server.add_file("lora.safetensors", data)
    server.cut("lora.safetensors", after=300 * KiB)
    manifest = load_manifest(
        write_manifest(
            tmp_path / "m.yaml",
            [{"name": "lora.safetensors", "folder": "loras", "url": url, "sha256": hashlib.sha256(data).hexdigest()}],
        )
    )
    progress = Recorder()
    [out] = sync_models(manifest, tmp_path / "models", progress=progress, backoff_s=0)
    assert out.outcome == "downloaded", out.detail
    first, second = server.gets("/files/lora.safetensors")
    assert first.range is None and first.sent == 300 * KiB
    assert second.range == f"bytes={300 * KiB}-", "the retry must continue where the cut left off"
    assert first.sent + second.sent == len(data), "no byte fetched twice"
    assert (tmp_path / "models" / "loras" / "lora.safetensors").read_bytes() == data
    assert any("resuming" in m for m in progress.messages)


def test_a_sync_stopped_mid_file_resumes_in_the_next_run(server: ModelFileServer, tmp_path: Path) -> None:
    data = payload(900 * KiB, seed=3)
    url = server.add_file("te.safetensors", data)
    server.cut("te.safetensors", after=256 * KiB)
    sha = hashlib.sha256(data).hexdigest()
    manifest = load_manifest(
        write_manifest(
            tmp_path / "m.yaml",
            [{"name": "te.safetensors", "folder": "text_encoders", "url": url, "sha256": sha, "size": len(data)}],
        )
    )
    models = tmp_path / "models"
    [failed] = sync_models(manifest, models, retries=0, backoff_s=0)
    assert failed.outcome == "failed" and "run `comfy-worker models sync` again to resume" in failed.detail
    [status] = check_models(manifest, models)
    assert status.state == "missing" and f"partial download of {256 * KiB} bytes" in status.detail
    assert not LeaseLock(ModelsState(models).downloads / "text_encoders__te.safetensors.lock").holder(), (
        "a failed sync must not leave its lock behind"
    )

    [done] = sync_models(manifest, models, retries=0, backoff_s=0)
    assert done.outcome == "downloaded", done.detail
    second = server.gets("/files/te.safetensors")[-1]
    assert second.range == f"bytes={256 * KiB}-" and second.status == 206
    assert (models / "text_encoders" / "te.safetensors").read_bytes() == data


def test_a_sha256_mismatch_is_refused_and_nothing_is_installed(server: ModelFileServer, tmp_path: Path) -> None:
    data = payload(200 * KiB, seed=4)
    url = server.add_file("bad.safetensors", data)
    wrong = hashlib.sha256(b"something else").hexdigest()
    manifest = load_manifest(
        write_manifest(tmp_path / "m.yaml", [{"name": "bad.safetensors", "folder": "vae", "url": url, "sha256": wrong}])
    )
    models = tmp_path / "models"
    [out] = sync_models(manifest, models, backoff_s=0)
    assert out.outcome == "failed"
    assert hashlib.sha256(data).hexdigest() in out.detail and wrong in out.detail
    assert not (models / "vae" / "bad.safetensors").exists()
    assert not list((models / ".comfy-worker" / "downloads").glob("*.partial*")), "the bad bytes are discarded"


def test_a_source_serving_another_size_is_refused_before_writing(server: ModelFileServer, tmp_path: Path) -> None:
    url = server.add_file("x.safetensors", payload(100 * KiB))
    manifest = load_manifest(
        write_manifest(tmp_path / "m.yaml", [{"name": "x.safetensors", "folder": "vae", "url": url, "size": 12345}])
    )
    [out] = sync_models(manifest, tmp_path / "models", backoff_s=0)
    assert out.outcome == "failed" and "serves 102400 bytes, expected 12345" in out.detail
    assert not (tmp_path / "models" / "vae" / "x.safetensors").exists()


def test_one_failing_file_does_not_stop_the_others(server: ModelFileServer, tmp_path: Path) -> None:
    good = payload(50 * KiB, seed=5)
    manifest = load_manifest(
        write_manifest(
            tmp_path / "m.yaml",
            [
                {"name": "gone.pth", "folder": "upscale_models", "url": f"{server.base_url}/files/gone.pth"},
                {"name": "good.pth", "folder": "upscale_models", "url": server.add_file("good.pth", good)},
                {"name": "private.safetensors", "folder": "loras"},
            ],
        )
    )
    outs = {o.entry.name: o for o in sync_models(manifest, tmp_path / "models", backoff_s=0)}
    assert outs["gone.pth"].outcome == "failed" and "HTTP 404" in outs["gone.pth"].detail
    assert outs["good.pth"].outcome == "downloaded"
    assert outs["private.safetensors"].outcome == "manual"


def test_unverified_files_get_their_hash_recorded_and_a_later_change_is_caught(
    server: ModelFileServer, tmp_path: Path
) -> None:
    data = payload(64 * KiB, seed=6)
    manifest = load_manifest(
        write_manifest(
            tmp_path / "m.yaml",
            [{"name": "u.pth", "folder": "upscale_models", "url": server.add_file("u.pth", data), "sha256": None}],
        )
    )
    models = tmp_path / "models"
    [out] = sync_models(manifest, models, backoff_s=0)
    assert out.outcome == "downloaded"
    assert ModelsState(models).records()["upscale_models/u.pth"].sha256 == hashlib.sha256(data).hexdigest()
    assert [s.state for s in check_models(manifest, models)] == ["ok"]

    (models / "upscale_models" / "u.pth").write_bytes(payload(64 * KiB, seed=7))  # same size, other bytes
    [status] = check_models(manifest, models)
    assert status.state == "corrupt" and "recorded when it was synced" in status.detail


def test_check_reuses_recorded_hashes_until_the_file_changes(server: ModelFileServer, tmp_path: Path) -> None:
    data = payload(80 * KiB, seed=8)
    manifest = load_manifest(
        write_manifest(
            tmp_path / "m.yaml",
            [
                {
                    "name": "c.safetensors",
                    "folder": "vae",
                    "url": server.add_file("c.safetensors", data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ],
        )
    )
    models = tmp_path / "models"
    sync_models(manifest, models, backoff_s=0)
    quiet = Recorder()
    assert [s.state for s in check_models(manifest, models, progress=quiet)] == ["ok"]
    assert not [label for label in quiet.labels if label.startswith("hashing")], "a recorded hash is reused"
    rehash = Recorder()
    assert [s.state for s in check_models(manifest, models, verify="full", progress=rehash)] == ["ok"]
    assert rehash.labels == ["hashing vae/c.safetensors"]
    os.utime(models / "vae" / "c.safetensors", ns=(1, 1))
    touched = Recorder()
    check_models(manifest, models, progress=touched)
    assert touched.labels == ["hashing vae/c.safetensors"], "a changed mtime means hashing again"


# --- locks ---------------------------------------------------------------------------------------------------


def _sync_process(manifest: Path, models: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("MODELS_MANIFEST", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfy_worker",
            "models",
            "sync",
            "--manifest",
            str(manifest),
            "--models-dir",
            str(models),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_syncs_on_one_volume_never_download_a_file_twice(server: ModelFileServer, tmp_path: Path) -> None:
    big, small = payload(2048 * KiB, seed=9), payload(100 * KiB, seed=10)
    manifest = write_manifest(
        tmp_path / "m.yaml",
        [
            {
                "name": "big.safetensors",
                "folder": "diffusion_models",
                "url": server.add_file("big.safetensors", big),
                "sha256": hashlib.sha256(big).hexdigest(),
            },
            {
                "name": "small.safetensors",
                "folder": "vae",
                "url": server.add_file("small.safetensors", small),
                "sha256": hashlib.sha256(small).hexdigest(),
            },
        ],
    )
    models = tmp_path / "models"
    started, release = server.hold("big.safetensors")
    first = _sync_process(manifest, models)
    second: subprocess.Popen[str] | None = None
    try:
        assert started.wait(60), "the first sync never started downloading"
        second = _sync_process(manifest, models)
        waiting_line = ""
        assert second.stderr is not None
        for line in second.stderr:
            if "waiting for the download lock" in line:
                waiting_line = line
                break
        assert "diffusion_models/big.safetensors" in waiting_line and f"pid {first.pid}" in waiting_line
        release.set()
        _out1, err1 = first.communicate(timeout=120)
        out2, err2 = second.communicate(timeout=120)
    finally:
        release.set()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert len(server.gets("/files/big.safetensors")) == 1, "the big file was downloaded once"
    assert len(server.gets("/files/small.safetensors")) == 1, "the small file too"
    assert "done_elsewhere" in out2 and "diffusion_models/big.safetensors" in out2
    assert (models / "diffusion_models" / "big.safetensors").read_bytes() == big


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(server: ModelFileServer, tmp_path: Path) -> None:
    data = payload(30 * KiB, seed=11)
    manifest = load_manifest(
        write_manifest(tmp_path / "m.yaml", [{"name": "d.pth", "folder": "vae", "url": server.add_file("d.pth", data)}])
    )
    models = tmp_path / "models"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = ModelsState(models).lock_for("vae/d.pth")
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "old"}))
    [out] = sync_models(manifest, models, backoff_s=0)
    assert out.outcome == "downloaded"


def test_a_lock_nobody_refreshes_is_broken_after_the_stale_time_but_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = LeaseLock(path, stale_s=0.6, refresh_s=0.05)
    assert holder.try_acquire()
    try:
        waiter = LeaseLock(path, stale_s=0.6)
        assert not waiter.acquire(timeout=1.5, poll_s=0.05), "a refreshed lock must never look stale"
    finally:
        holder.release()
    assert not path.exists()

    path.write_text(json.dumps({"host": "another-pod", "pid": 1, "token": "gone"}))  # its pod was terminated
    told: list[dict[str, Any]] = []
    waiter = LeaseLock(path, stale_s=0.3)
    assert waiter.acquire(timeout=10, poll_s=0.05, on_wait=told.append)
    assert told == [{"host": "another-pod", "pid": 1, "token": "gone"}]
    assert waiter.holder()["token"] == waiter.token  # type: ignore[index]
    waiter.release()


def test_the_cli_exits_nonzero_with_a_line_per_missing_file(server: ModelFileServer, tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m.yaml",
        [
            {"name": "a.safetensors", "folder": "vae", "url": f"{server.base_url}/files/a.safetensors"},
            {"name": "b.safetensors", "folder": "loras"},
        ],
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfy_worker",
            "models",
            "check",
            "--manifest",
            str(manifest),
            "--models-dir",
            str(tmp_path / "models"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("missing") and "vae/a.safetensors" in lines[0]
    assert lines[1].startswith("missing") and "copy it into place" in lines[1]
    assert "comfy-worker models sync" in r.stderr


def test_the_verified_record_survives_concurrent_writers(tmp_path: Path) -> None:
    threads = 4
    state = ModelsState(tmp_path)
    files = []
    for i in range(threads):
        f = tmp_path / f"f{i}"
        f.write_bytes(bytes([i]))
        files.append(f)
    workers = [
        threading.Thread(target=state.record, args=(f"vae/f{i}", f, f"{i:064x}", "test")) for i, f in enumerate(files)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(state.records()) == [f"vae/f{i}" for i in range(threads)]

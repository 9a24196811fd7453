"""Hub entries: huggingface-hub resolves them against ``HF_ENDPOINT`` (tests/standins/model_files.py stands in
for huggingface.co's resolve surface); the hub's LFS sha256 verifies files the manifest has no hash for."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from comfy_worker.models_manifest import load_manifest, sync_models
from comfy_worker.models_manifest.state import ModelsState
from tests.integration.models.test_models_sync import KiB, payload, write_manifest
from tests.standins.model_files import ModelFileServer

REPO_ID = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
FILE = "split_files/vae/wan2.2_vae.safetensors"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with ModelFileServer(tmp_path / "hub") as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield srv


def manifest_for(tmp_path: Path, **extra: object):
    entry = {"name": "wan2.2_vae.safetensors", "folder": "vae", "hub": {"repo": REPO_ID, "file": FILE}, **extra}
    return load_manifest(write_manifest(tmp_path / "m.yaml", [entry]))


def test_a_hub_file_without_a_manifest_hash_is_verified_against_the_hubs(hub: ModelFileServer, tmp_path: Path) -> None:
    data = payload(300 * KiB, seed=21)
    sha = hub.add_hub_file(REPO_ID, FILE, data)
    models = tmp_path / "models"
    [out] = sync_models(manifest_for(tmp_path, sha256=None, size=None), models, backoff_s=0)
    assert out.outcome == "downloaded", out.detail
    assert (models / "vae" / "wan2.2_vae.safetensors").read_bytes() == data
    record = ModelsState(models).records()["vae/wan2.2_vae.safetensors"]
    assert record.sha256 == sha and record.source == f"hf://{REPO_ID}/{FILE}@main"
    resolve = [e for e in hub.log if "/resolve/main/" in e.path]
    assert resolve and resolve[0].method == "HEAD"
    assert len(hub.gets(f"/cdn/blob-{sha}")) == 1


def test_bytes_that_do_not_match_the_hubs_hash_are_refused(hub: ModelFileServer, tmp_path: Path) -> None:
    advertised = hashlib.sha256(b"what the hub claims").hexdigest()
    hub.add_hub_file(REPO_ID, FILE, payload(100 * KiB, seed=22), advertise_sha256=advertised)
    models = tmp_path / "models"
    [out] = sync_models(manifest_for(tmp_path), models, backoff_s=0)
    assert out.outcome == "failed" and advertised in out.detail and "(the hub)" in out.detail
    assert not (models / "vae" / "wan2.2_vae.safetensors").exists()


def test_a_manifest_hash_the_hub_disagrees_with_is_refused_before_downloading(
    hub: ModelFileServer, tmp_path: Path
) -> None:
    sha = hub.add_hub_file(REPO_ID, FILE, payload(100 * KiB, seed=23))
    pinned = hashlib.sha256(b"an older upload").hexdigest()
    [out] = sync_models(manifest_for(tmp_path, sha256=pinned), tmp_path / "models", backoff_s=0)
    assert out.outcome == "failed" and "differs from the hub's" in out.detail and "nothing was downloaded" in out.detail
    assert hub.gets(f"/cdn/blob-{sha}") == []


def test_a_cut_hub_download_resumes(hub: ModelFileServer, tmp_path: Path) -> None:
    data = payload(800 * KiB, seed=24)
    sha = hub.add_hub_file(REPO_ID, FILE, data)
    hub.cut(f"blob-{sha}", after=200 * KiB)
    [out] = sync_models(manifest_for(tmp_path, sha256=sha, size=len(data)), tmp_path / "models", backoff_s=0)
    assert out.outcome == "downloaded", out.detail
    first, second = hub.gets(f"/cdn/blob-{sha}")
    assert (first.sent, second.range, second.status) == (200 * KiB, f"bytes={200 * KiB}-", 206)


def test_gated_repositories_need_hf_token(
    hub: ModelFileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(50 * KiB, seed=25)
    hub.add_hub_file(REPO_ID, FILE, data)
    hub.gate_repo(REPO_ID, "hf_test_token")
    models = tmp_path / "models"
    [refused] = sync_models(manifest_for(tmp_path), models, backoff_s=0)
    assert refused.outcome == "failed" and "HF_TOKEN" in refused.detail and "gated or private" in refused.detail

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    [out] = sync_models(manifest_for(tmp_path), models, backoff_s=0)
    assert out.outcome == "downloaded", out.detail
    assert any(e.authorization == "Bearer hf_test_token" for e in hub.log if "/resolve/" in e.path)
    assert [e.authorization for e in hub.log if "/cdn/" in e.path] == [None], "the token never goes to the CDN"


def test_a_file_the_hub_does_not_have_is_named(hub: ModelFileServer, tmp_path: Path) -> None:
    hub.add_hub_file(REPO_ID, "split_files/vae/other.safetensors", b"x")
    [out] = sync_models(manifest_for(tmp_path), tmp_path / "models", backoff_s=0)
    assert out.outcome == "failed" and "not found on the hub" in out.detail and FILE in out.detail

"""STORAGE_URL=az://… against Azurite (Microsoft's Azure Blob Storage emulator, the npm package ``azurite``,
installed into .azurite/ by scripts/install.sh) on 127.0.0.1. obstore speaks to it exactly as to Azure:
SharedKey-signed requests, block-blob multipart uploads, SAS-signed GET URLs. The container is created with
``azure-storage-blob`` (obstore cannot create containers). Skipped only where npm could not install Azurite."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comfy_worker.errors import StorageRejected
from comfy_worker.inputs import fetch_url
from comfy_worker.storage import ObjectStorage
from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[2]
AZURITE = REPO / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key (public, not a secret)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not AZURITE.exists(), reason="Azurite not installed (scripts/install.sh needs npm)")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    data = tmp_path_factory.mktemp("azurite")
    with open(data / "azurite.log", "wb") as log:
        proc = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(data),
             "--skipApiVersionCheck", "--loose"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            break
        time.sleep(0.1)
    from azure.storage.blob import BlobServiceClient

    conn = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={url}/{ACCOUNT};"
    BlobServiceClient.from_connection_string(conn).create_container("renders")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def az_env(azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # obstore reads Azure's settings from the environment, as on a real pod
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", azurite)


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.mark.usefixtures("az_env")
async def test_azure_check_upload_sas_url_download_and_delete(tmp_path: Path) -> None:
    s = ObjectStorage("azure://renders/out", signed_url_ttl_s=3600, env=os.environ, retry_wait_s=0.01)
    await s.check()
    for name, size in (("small.png", 3000), ("large.mp4", 19 * MiB + 5)):
        src = tmp_path / name
        sha = write_random(src, size)
        obj = await s.upload(src, f"comfy/t1/{name}")
        assert (obj.bytes, obj.sha256) == (size, sha)
        resp = httpx.get(obj.url, timeout=60)  # a SAS URL: no credentials needed
        assert resp.status_code == 200 and hashlib.sha256(resp.content).hexdigest() == sha
        assert resp.headers["content-type"] == obj.content_type and "sig=" in obj.url
        back = await s.download(f"comfy/t1/{name}", tmp_path / "back" / name)
        assert back.read_bytes() == src.read_bytes()
    await s.delete(["comfy/t1"])
    with pytest.raises(StorageRejected, match="no such object"):
        await s.download("comfy/t1/small.png", tmp_path / "gone.png")
    await s.aclose()


@pytest.mark.usefixtures("az_env")
async def test_azure_missing_container_names_the_setting_and_az_inputs_are_fetched(tmp_path: Path) -> None:
    s = ObjectStorage("az://no-such-container/x", signed_url_ttl_s=60, env=os.environ, retry_wait_s=0.01)
    with pytest.raises(StorageRejected) as info:
        await s.check()
    assert "'no-such-container'" in str(info.value) and "STORAGE_URL" in str(info.value)
    src = tmp_path / "in.png"
    write_random(src, 4000)
    store = ObjectStorage("az://renders", signed_url_ttl_s=60, env=os.environ)
    await store.upload(src, "incoming/in.png")
    got = await fetch_url("az://renders/incoming/in.png", tmp_path / "inputs", max_bytes=10_000, timeout_s=10)
    assert got.read_bytes() == src.read_bytes()

"""STORAGE_URL=az://… against Azurite (Microsoft's Azure Blob Storage emulator, the npm package ``azurite``,
installed into .azurite/ by scripts/install.sh) on 127.0.0.1. obstore speaks to it exactly as to Azure:
SharedKey-signed requests, block-blob multipart uploads, SAS-signed GET URLs. The container is created with
``azure-storage-blob`` (obstore cannot create containers). Skipped only where npm could not install Azurite."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from comfy_worker.errors import StorageRejected, StorageUnavailable
from comfy_worker.inputs import fetch_url
from comfy_worker.storage import ObjectStorage, UploadJournal
from comfy_worker.storage.azblocks import block_id
from tests.azurite_server import ACCOUNT, AZURITE, KEY, Azurite, container_at, uncommitted_at
from tests.s3_server import CuttingProxy

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not AZURITE.exists(), reason="Azurite not installed (scripts/install.sh needs npm)")


@pytest.fixture(scope="module")
def azurite(azurite_server: Azurite) -> str:
    return azurite_server.url


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


# --- resumable block blob uploads (comfy_worker.storage.azblocks) ---


@pytest.fixture
async def az_proxy(azurite: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CuttingProxy]:
    """A cutting TCP proxy in front of Azurite, the worker pointed at it."""
    p = CuttingProxy(int(azurite.rsplit(":", 1)[1]))
    await p.start()
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", p.url)
    yield p
    await p.stop()


container, uncommitted = container_at, uncommitted_at


def block_puts(proxy: CuttingProxy) -> list[str]:
    return [
        line.split("blockid=")[1].split("&")[0].split(" ")[0]
        for line in proxy.requests
        if line.startswith("PUT ") and "comp=block&" in line
    ]


class Recorder:
    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []

    async def __call__(self, entries: dict[str, Any]) -> None:
        self.saved.append(entries)


async def test_azure_a_new_process_resumes_the_journalled_upload_sending_only_missing_blocks(
    azurite: str, az_proxy: CuttingProxy, tmp_path: Path
) -> None:
    src = tmp_path / "long.mp4"
    sha = write_random(src, 6 * 8 * MiB + 1)
    rec = Recorder()
    first = ObjectStorage(
        "az://renders/res", signed_url_ttl_s=600, env=os.environ, retry_wait_s=0.01, concurrency=1, retry_attempts=1
    )
    assert first._az is not None
    # the first attempt dies for good in block 4 (every try of it cut): blocks 1-3 are held, uncommitted
    az_proxy.cut_after(
        MiB,
        b"blockid=" + block_id(sha, 8 * MiB, 4).replace("=", "%3D").replace("+", "%2B").replace("/", "%2F").encode(),
    )
    with pytest.raises(StorageUnavailable, match="block"):
        await first.upload(src, "comfy/t1/long.mp4", sha256=sha, journal=UploadJournal({}, rec))
    await first.aclose()
    entry = rec.saved[-1]["comfy/t1/long.mp4"]
    assert entry["backend"] == "az" and entry["key"] == "res/comfy/t1/long.mp4"
    held_before = set(uncommitted(azurite, "res/comfy/t1/long.mp4"))
    assert held_before == {block_id(sha, 8 * MiB, n) for n in (1, 2, 3)}
    sent_first = block_puts(az_proxy)
    az_proxy.requests.clear()
    second = ObjectStorage("az://renders/res", signed_url_ttl_s=600, env=os.environ, retry_wait_s=0.01)
    obj = await second.upload(src, "comfy/t1/long.mp4", sha256=sha, journal=UploadJournal(rec.saved[-1], rec))
    await second.aclose()
    assert len(sent_first) == 4
    sent = {unquote(b) for b in block_puts(az_proxy)}
    assert sent == {block_id(sha, 8 * MiB, n) for n in (4, 5, 6, 7)}  # 1-3 were not sent again
    blob = container(azurite).get_blob_client("res/comfy/t1/long.mp4")
    body = blob.download_blob().readall()
    assert hashlib.sha256(body).hexdigest() == sha == obj.sha256
    props = blob.get_blob_properties()
    assert props.content_settings.content_type == "video/mp4" and props.metadata == {"sha256": sha}
    assert uncommitted(azurite, "res/comfy/t1/long.mp4") == [] and rec.saved[-1] == {}
    async with httpx.AsyncClient(timeout=60) as http:  # the SAS URL goes through the proxy of this event loop
        resp = await http.get(obj.url)
    assert hashlib.sha256(resp.content).hexdigest() == sha


async def test_azure_an_upload_nobody_will_finish_leaves_no_blocks_and_no_blob(
    azurite: str, az_proxy: CuttingProxy, tmp_path: Path
) -> None:
    src = tmp_path / "w.mp4"
    write_random(src, 2 * 8 * MiB)
    s = ObjectStorage(
        "az://renders/gone", signed_url_ttl_s=600, env=os.environ, retry_wait_s=0.01, concurrency=1, retry_attempts=1
    )
    az_proxy.cut_after(MiB, b"comp=block&")
    az_proxy.cut_after(MiB, b"comp=block&")
    with pytest.raises(StorageUnavailable):
        await s.upload(src, "comfy/t2/w.mp4")  # no journal: nobody could resume it
    assert uncommitted(azurite, "gone/comfy/t2/w.mp4") == []
    assert list(container(azurite).list_blobs(name_starts_with="gone/")) == []
    # a journalled one is given up when the task ends for good (discard_uploads)
    rec = Recorder()
    journal = UploadJournal({}, rec)
    az_proxy.cut_after(9 * MiB, b"comp=block&")
    with pytest.raises(StorageUnavailable):
        await s.upload(src, "comfy/t2/w.mp4", journal=journal)
    assert len(uncommitted(azurite, "gone/comfy/t2/w.mp4")) == 1
    await s.discard_uploads(journal)
    await s.aclose()
    assert uncommitted(azurite, "gone/comfy/t2/w.mp4") == [] and journal.entries == {}
    assert list(container(azurite).list_blobs(name_starts_with="gone/")) == []


async def test_azure_resumable_uploads_work_with_a_sas_token_and_a_wrong_key_names_the_settings(
    azurite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT,
        "renders",
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    env = {
        "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
        "AZURE_STORAGE_SAS_KEY": sas,
        "AZURE_STORAGE_USE_EMULATOR": "true",
        "AZURITE_BLOB_STORAGE_URL": azurite,
    }
    for name, value in env.items():  # obstore reads Azure's settings from the environment
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY", raising=False)
    src = tmp_path / "s.webm"
    sha = write_random(src, 8 * MiB + 5)
    # obstore cannot sign URLs with a SAS token: the start-up check says so, naming the settings
    unsigned = ObjectStorage("az://renders/sas", signed_url_ttl_s=600, env=os.environ, retry_wait_s=0.01)
    with pytest.raises(StorageRejected, match="AZURE_STORAGE_SAS_KEY alone: set AZURE_STORAGE_ACCOUNT_KEY, or"):
        await unsigned.check()
    await unsigned.aclose()
    s = ObjectStorage(
        "az://renders/sas",
        signed_url_ttl_s=600,
        env=os.environ,
        retry_wait_s=0.01,
        public_base_url="https://cdn.example.com",
    )
    await s.check()
    assert s._az is not None
    obj = await s.upload(src, "comfy/t3/s.webm", journal=UploadJournal({}, Recorder()))
    await s.aclose()
    assert obj.sha256 == sha
    assert hashlib.sha256(container(azurite).download_blob("sas/comfy/t3/s.webm").readall()).hexdigest() == sha
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", base64.b64encode(b"not-the-key" * 4).decode())
    monkeypatch.delenv("AZURE_STORAGE_SAS_KEY")
    bad = ObjectStorage("az://renders/sas", signed_url_ttl_s=600, env=os.environ, retry_wait_s=0.01)
    with pytest.raises(StorageRejected, match="AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY"):
        await bad.upload(src, "comfy/t3/again.webm")
    await bad.aclose()

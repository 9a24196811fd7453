"""Output storage against a real HTTP server: the Supabase Storage stand-in, and a real local directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from comfy_worker.config import load_settings
from comfy_worker.errors import StorageRejected, StorageUnavailable
from comfy_worker.storage import LocalStorage, SupabaseStorage, open_storage
from tests.standins.storage import StorageStandin, metadata_of

KEY = "service-role-test-key"
MiB = 1024 * 1024


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StorageStandin]:
    server = StorageStandin(KEY, tmp_path / "server", buckets={"outputs": False, "pub": True})
    await server.start()
    yield server
    await server.stop()


def make_storage(
    server: StorageStandin, *, bucket: str = "outputs", public: bool = False, **kw
) -> SupabaseStorage:
    return SupabaseStorage(
        server.base_url, KEY, bucket, public=public, signed_url_ttl_s=3600, retry_wait_s=0.01, **kw
    )


@pytest.fixture
async def storage(standin: StorageStandin) -> AsyncIterator[SupabaseStorage]:
    s = make_storage(standin)
    yield s
    await s.aclose()


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


# --- check ---


async def test_check_passes_for_an_existing_bucket(storage: SupabaseStorage, standin: StorageStandin) -> None:
    await storage.check()
    req = standin.calls("GET", "/storage/v1/bucket/outputs")[0]
    assert req.headers["apikey"] == KEY
    assert req.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("not_found_status", [404, 400])
async def test_check_names_a_missing_bucket(tmp_path: Path, not_found_status: int) -> None:
    server = StorageStandin(KEY, tmp_path, buckets={"other": False}, not_found_status=not_found_status)
    await server.start()
    s = make_storage(server)
    try:
        with pytest.raises(StorageRejected) as info:
            await s.check()
    finally:
        await s.aclose()
        await server.stop()
    assert str(info.value) == (
        "bucket 'outputs' does not exist in Supabase Storage: create it or set STORAGE_BUCKET"
    )
    assert len(server.calls("GET")) == 1  # a 4xx is not retried


async def test_check_names_the_key_when_refused(standin: StorageStandin) -> None:
    s = SupabaseStorage(standin.base_url, "wrong-key", "outputs", public=False, signed_url_ttl_s=60)
    try:
        with pytest.raises(StorageRejected, match="SUPABASE_SERVICE_ROLE_KEY"):
            await s.check()
    finally:
        await s.aclose()


async def test_check_refuses_public_urls_on_a_private_bucket(standin: StorageStandin) -> None:
    s = make_storage(standin, public=True)
    try:
        with pytest.raises(StorageRejected, match="STORAGE_PUBLIC=true but bucket 'outputs' is private"):
            await s.check()
    finally:
        await s.aclose()


async def test_unreachable_server_is_retryable(tmp_path: Path) -> None:
    server = StorageStandin(KEY, tmp_path)
    base = await server.start()
    await server.stop()  # nothing listens on that port any more
    s = SupabaseStorage(
        base, KEY, "outputs", public=False, signed_url_ttl_s=60, retry_attempts=2, retry_wait_s=0
    )
    try:
        with pytest.raises(StorageUnavailable) as info:
            await s.check()
    finally:
        await s.aclose()
    assert info.value.retryable


# --- simple uploads ---


async def test_small_file_is_one_streamed_post_with_a_signed_url(
    storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "frame.png"
    sha = write_random(src, 300_000)
    obj = await storage.upload(src, "comfy/task-1/frame.png")

    assert (obj.path, obj.bytes, obj.sha256, obj.content_type) == (
        "comfy/task-1/frame.png",
        300_000,
        sha,
        "image/png",
    )
    post = standin.calls("POST", "/object/outputs/comfy/task-1/frame.png")[0]
    assert post.headers["x-upsert"] == "true"
    assert post.headers["Content-Type"] == "image/png"
    assert post.headers["Content-Length"] == "300000"
    assert post.body_bytes == 300_000
    assert not standin.calls("POST", "/upload/resumable")
    assert standin.object_path("outputs", "comfy/task-1/frame.png").read_bytes() == src.read_bytes()

    assert obj.url.startswith(
        f"{standin.base_url}/storage/v1/object/sign/outputs/comfy/task-1/frame.png?token="
    )
    async with httpx.AsyncClient() as client:
        got = await client.get(obj.url)  # a signed URL needs no key
    assert got.status_code == 200
    assert got.content == src.read_bytes()
    assert got.headers["Content-Type"] == "image/png"


async def test_public_bucket_gives_public_urls(standin: StorageStandin, tmp_path: Path) -> None:
    s = make_storage(standin, bucket="pub", public=True)
    src = tmp_path / "clip.mp4"
    write_random(src, 1000)
    try:
        await s.check()
        obj = await s.upload(src, "comfy/t/clip.mp4")
    finally:
        await s.aclose()
    assert obj.url == f"{standin.base_url}/storage/v1/object/public/pub/comfy/t/clip.mp4"
    assert obj.content_type == "video/mp4"
    assert not standin.calls("POST", "/object/sign/")
    async with httpx.AsyncClient() as client:
        got = await client.get(obj.url)
    assert got.content == src.read_bytes()


async def test_a_file_of_exactly_6_mib_is_not_resumable(
    storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "six.bin"
    write_random(src, 6 * MiB)
    await storage.upload(src, "comfy/t/six.bin")
    assert not standin.calls("POST", "/upload/resumable")
    assert standin.calls("POST", "/object/outputs/comfy/t/six.bin")[0].body_bytes == 6 * MiB


async def test_5xx_is_retried_and_the_hash_is_of_one_copy(
    storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "a.txt"
    sha = write_random(src, 5000)
    standin.fail("POST", status=503)
    obj = await storage.upload(src, "comfy/t/a.txt")
    assert len(standin.calls("POST", "/object/outputs/")) == 2
    assert obj.sha256 == sha
    assert obj.content_type == "text/plain"


async def test_persistent_5xx_ends_as_storage_unavailable(standin: StorageStandin, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    write_random(src, 10)
    s = make_storage(standin, retry_attempts=3)
    for _ in range(3):
        standin.fail("POST", status=502)
    try:
        with pytest.raises(StorageUnavailable, match="HTTP 502"):
            await s.upload(src, "comfy/t/a.bin")
    finally:
        await s.aclose()
    assert len(standin.calls("POST", "/object/outputs/")) == 3


async def test_4xx_is_rejected_with_the_server_message_without_retry(tmp_path: Path) -> None:
    server = StorageStandin(KEY, tmp_path / "srv", max_object_bytes=1000)
    await server.start()
    s = make_storage(server)
    src = tmp_path / "big.bin"
    write_random(src, 5000)
    try:
        with pytest.raises(StorageRejected) as info:
            await s.upload(src, "comfy/t/big.bin")
    finally:
        await s.aclose()
        await server.stop()
    assert "HTTP 413" in str(info.value)
    assert "exceeded the maximum allowed size" in str(info.value)
    assert not info.value.retryable
    assert len(server.calls("POST")) == 1


@pytest.mark.parametrize("bad", ["../escape.png", "/abs/x.png", "comfy//x.png", "comfy/./x.png", ""])
async def test_bad_destination_paths_are_rejected_before_any_request(
    storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path, bad: str
) -> None:
    src = tmp_path / "x.png"
    src.write_bytes(b"x")
    with pytest.raises(StorageRejected, match="storage path"):
        await storage.upload(src, bad)
    assert standin.requests == []


# --- resumable (TUS) uploads ---


async def test_large_file_goes_through_tus_in_6_mib_chunks(
    storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "video.webm"
    size = 2 * 6 * MiB + 123
    sha = write_random(src, size)
    obj = await storage.upload(src, "comfy/task-9/video.webm")

    assert (obj.bytes, obj.sha256, obj.content_type) == (size, sha, "video/webm")
    [create] = standin.calls("POST", "/storage/v1/upload/resumable")
    assert create.headers["Tus-Resumable"] == "1.0.0"
    assert create.headers["Upload-Length"] == str(size)
    assert create.headers["x-upsert"] == "true"
    meta = metadata_of(create)
    assert meta["bucketName"] == "outputs"
    assert meta["objectName"] == "comfy/task-9/video.webm"
    assert meta["contentType"] == "video/webm"
    assert "cacheControl" in meta
    patches = standin.calls("PATCH")
    assert [p.body_bytes for p in patches] == [6 * MiB, 6 * MiB, 123]
    assert [p.headers["Upload-Offset"] for p in patches] == ["0", str(6 * MiB), str(12 * MiB)]
    assert all(p.headers["Content-Type"] == "application/offset+octet-stream" for p in patches)
    assert not standin.calls("POST", "/object/outputs/")
    assert standin.object_path("outputs", "comfy/task-9/video.webm").read_bytes() == src.read_bytes()


async def test_a_failed_chunk_resumes_from_the_servers_offset(
    storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "long.mp4"
    size = 3 * 6 * MiB + 7
    sha = write_random(src, size)
    standin.fail("PATCH", nth=2, status=500, keep_bytes=MiB)  # the server keeps 1 MiB of the 2nd chunk
    obj = await storage.upload(src, "comfy/t/long.mp4")

    assert obj.sha256 == sha
    assert standin.object_path("outputs", "comfy/t/long.mp4").read_bytes() == src.read_bytes()
    assert len(standin.calls("HEAD", "/upload/resumable/")) == 1
    patches = standin.calls("PATCH")
    offsets = [int(p.headers["Upload-Offset"]) for p in patches]
    assert offsets == [0, 6 * MiB, 7 * MiB, 13 * MiB]
    assert [p.status for p in patches] == [204, 500, 204, 204]
    assert [p.body_bytes for p in patches[2:]] == [6 * MiB, size - 13 * MiB]


async def test_an_offset_conflict_is_resolved_with_head(
    storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "c.mp4"
    sha = write_random(src, 6 * MiB + 99)
    standin.fail("PATCH", nth=1, status=409, keep_bytes=2 * MiB)  # server holds more than we were told
    obj = await storage.upload(src, "comfy/t/c.mp4")
    assert obj.sha256 == sha
    assert standin.object_path("outputs", "comfy/t/c.mp4").read_bytes() == src.read_bytes()
    assert [int(p.headers["Upload-Offset"]) for p in standin.calls("PATCH")] == [0, 2 * MiB]
    assert len(standin.calls("HEAD")) == 1


async def test_a_chunk_failing_every_time_ends_as_storage_unavailable(
    standin: StorageStandin, tmp_path: Path
) -> None:
    src = tmp_path / "v.mp4"
    write_random(src, 6 * MiB + 1)
    s = make_storage(standin, retry_attempts=2)
    standin.fail("PATCH", status=500)
    standin.fail("PATCH", status=500)
    try:
        with pytest.raises(StorageUnavailable):
            await s.upload(src, "comfy/t/v.mp4")
    finally:
        await s.aclose()
    assert not standin.object_path("outputs", "comfy/t/v.mp4").exists()


# --- download / delete ---


async def test_download_and_delete(storage: SupabaseStorage, standin: StorageStandin, tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    write_random(src, 7 * MiB)
    await storage.upload(src, "inputs/t/in.wav")
    got = await storage.download("inputs/t/in.wav", tmp_path / "dl" / "copy.wav")
    assert got.read_bytes() == src.read_bytes()
    assert not list((tmp_path / "dl").glob(".*part"))

    await storage.delete(["inputs/t/in.wav", "inputs/t/never-existed.wav"])
    assert not standin.object_path("outputs", "inputs/t/in.wav").exists()
    with pytest.raises(StorageRejected, match="does not exist in bucket 'outputs'"):
        await storage.download("inputs/t/in.wav", tmp_path / "dl" / "again.wav")
    assert not (tmp_path / "dl" / "again.wav").exists()


# --- local directory ---


async def test_local_storage_roundtrip(tmp_path: Path) -> None:
    root = tmp_path / "out"
    s = LocalStorage(root)
    await s.check()
    src = tmp_path / "img.webp"
    sha = write_random(src, 3 * MiB + 5)
    obj = await s.upload(src, "comfy/t1/img.webp")
    assert (obj.bytes, obj.sha256, obj.content_type) == (3 * MiB + 5, sha, "image/webp")
    assert obj.url == (root / "comfy/t1/img.webp").resolve().as_uri()
    assert (root / "comfy/t1/img.webp").read_bytes() == src.read_bytes()
    assert [p.name for p in (root / "comfy/t1").iterdir()] == ["img.webp"]  # no temp files left

    back = await s.download("comfy/t1/img.webp", tmp_path / "back.webp")
    assert back.read_bytes() == src.read_bytes()
    await s.delete(["comfy/t1/img.webp", "comfy/t1/missing.webp"])
    assert not (root / "comfy/t1/img.webp").exists()
    with pytest.raises(StorageRejected, match="does not exist"):
        await s.download("comfy/t1/img.webp", tmp_path / "x")
    with pytest.raises(StorageRejected, match="storage path"):
        await s.upload(src, "../outside.webp")


async def test_local_storage_base_url(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path, base_url="https://cdn.example.com/files/")
    src = tmp_path / "a b.png"
    src.write_bytes(b"png")
    obj = await s.upload(src, "comfy/t/a b.png")
    assert obj.url == "https://cdn.example.com/files/comfy/t/a%20b.png"


async def test_local_storage_check_names_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageRejected, match=r"LOCAL_STORAGE_DIR .* is not writable"):
        await LocalStorage(blocker / "out").check()


async def test_open_storage_picks_the_backend(tmp_path: Path) -> None:
    local = open_storage(load_settings({"LOCAL_STORAGE_DIR": str(tmp_path)}))
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path.resolve()
    remote = open_storage(
        load_settings(
            {
                "SUPABASE_URL": "https://proj.supabase.co",
                "SUPABASE_SERVICE_ROLE_KEY": "k" * 20,
                "STORAGE_BUCKET": "renders",
                "STORAGE_PUBLIC": "true",
            }
        )
    )
    assert isinstance(remote, SupabaseStorage)
    assert (remote.bucket, remote.public) == ("renders", True)
    await remote.aclose()

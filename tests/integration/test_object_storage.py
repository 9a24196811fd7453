"""STORAGE_URL=s3://… against a real S3 server: moto in server mode on 127.0.0.1 (tests/s3_server.py), driven
through the worker's real client path (obstore for single PUTs, GETs, presigning, listing; the SigV4 multipart
client for resumable uploads). Faults come from a TCP proxy that cuts a connection in the middle of a part."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy_worker.config import load_settings
from comfy_worker.errors import ConfigError, InputRejected, StorageRejected
from comfy_worker.inputs import fetch_url
from comfy_worker.storage import ObjectStorage, UploadJournal, open_storage
from tests.s3_server import BUCKET, SECRET_KEY, CuttingProxy, MotoServer

MiB = 1024 * 1024


@pytest.fixture
async def proxy(moto: MotoServer) -> AsyncIterator[CuttingProxy]:
    p = CuttingProxy(moto.port)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"t/{request.node.name[:40]}"


def storage(moto: MotoServer, prefix: str, *, endpoint: str | None = None, **kw: Any) -> ObjectStorage:
    return ObjectStorage(
        f"s3://{BUCKET}/{prefix}", signed_url_ttl_s=3600, env=moto.env(endpoint), retry_wait_s=0.01, **kw
    )


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


class Recorder:
    """A journal's persist callback remembering what a checkpoint would hold."""

    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []

    async def __call__(self, entries: dict[str, Any]) -> None:
        self.saved.append(entries)


def part_puts(proxy: CuttingProxy) -> list[int]:
    out = []
    for line in proxy.requests:
        if line.startswith("PUT ") and "partNumber=" in line:
            out.append(int(line.split("partNumber=")[1].split("&")[0].split(" ")[0]))
    return out


# --- settings and start-up check ---


def test_storage_url_selects_the_object_store_and_rejects_unknown_schemes() -> None:
    s = load_settings({"STORAGE_URL": "s3://bucket/some/prefix"}, dotenv=None)
    assert s.storage_backend == "object"
    assert load_settings({"STORAGE_URL": "file:///srv/out"}, dotenv=None).local_storage_path == Path("/srv/out")
    for bad, needle in [
        ("ftp://bucket/x", "unknown scheme 'ftp'"),
        ("s3://", "names no bucket"),
        ("s3://bucket/../up", "'..'"),
        ("file://relative/dir", "file:///absolute/dir"),
        ("s3://key:secret@bucket/x", "credentials come from"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_settings({"STORAGE_URL": bad}, dotenv=None)
        assert "STORAGE_URL" in str(info.value) and needle in str(info.value)


async def test_check_writes_and_deletes_a_probe_under_the_prefix(moto: MotoServer, prefix: str) -> None:
    s = storage(moto, prefix)
    try:
        await s.check()
    finally:
        await s.aclose()
    assert moto.keys(BUCKET, f"{prefix}/") == []  # the probe was deleted


async def test_check_names_the_setting_when_the_bucket_is_missing(moto: MotoServer) -> None:
    s = ObjectStorage("s3://no-such-bucket/x", signed_url_ttl_s=60, env=moto.env(), retry_wait_s=0.01)
    with pytest.raises(StorageRejected) as info:
        await s.check()
    assert "'no-such-bucket'" in str(info.value) and "STORAGE_URL" in str(info.value)


async def test_check_names_the_endpoint_when_nothing_listens(moto: MotoServer) -> None:
    from tests.s3_server import free_port

    s = ObjectStorage(
        f"s3://{BUCKET}/x", signed_url_ttl_s=60, env=moto.env(f"http://127.0.0.1:{free_port()}"), retry_wait_s=0.01
    )
    with pytest.raises(StorageRejected) as info:
        await asyncio.wait_for(s.check(), 150)
    assert "AWS_ENDPOINT_URL" in str(info.value)


# --- uploads, URLs, downloads ---


@pytest.mark.parametrize("size", [3 * MiB + 7, 20 * MiB + 13])
async def test_upload_stores_the_bytes_with_type_and_digest_and_a_presigned_url_serves_them(
    moto: MotoServer, prefix: str, tmp_path: Path, size: int
) -> None:
    src = tmp_path / "render.mp4"
    sha = write_random(src, size)
    s = storage(moto, prefix)
    try:
        obj = await s.upload(src, "comfy/t1/render.mp4")
    finally:
        await s.aclose()
    assert (obj.bytes, obj.sha256, obj.content_type, obj.path) == (size, sha, "video/mp4", "comfy/t1/render.mp4")
    resp = httpx.get(obj.url)
    assert resp.status_code == 200 and hashlib.sha256(resp.content).hexdigest() == sha
    assert resp.headers["content-type"] == "video/mp4"
    assert "X-Amz-Signature=" in obj.url and "X-Amz-Expires=3600" in obj.url
    assert SECRET_KEY not in obj.url
    assert moto.object(BUCKET, f"{prefix}/comfy/t1/render.mp4") == src.read_bytes()
    assert moto.open_uploads(BUCKET) == []


async def test_obstores_streamed_multipart_is_used_without_a_static_key(
    moto: MotoServer, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "clip.webm"
    sha = write_random(src, 19 * MiB + 1)
    s = storage(moto, prefix)
    s._s3 = None  # what a store with instance credentials (or GCS / Azure) has: no resumable client
    obj = await s.upload(src, "comfy/t2/clip.webm", sha256=None)
    assert obj.sha256 == sha and obj.content_type == "video/webm"
    assert moto.object(BUCKET, f"{prefix}/comfy/t2/clip.webm") == src.read_bytes()


async def test_public_base_url_names_the_object_key(moto: MotoServer, prefix: str, tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    write_random(src, 100)
    s = storage(moto, prefix, public_base_url="https://cdn.example.com/media/")
    obj = await s.upload(src, "comfy/t3/a b.png")
    await s.aclose()
    assert obj.url == f"https://cdn.example.com/media/{prefix}/comfy/t3/a%20b.png"


async def test_download_and_delete_round_trip(moto: MotoServer, prefix: str, tmp_path: Path) -> None:
    src = tmp_path / "x.latent"
    write_random(src, 9 * MiB)
    s = storage(moto, prefix)
    await s.upload(src, "prompt_runner/t4/seg/x.latent")
    out = await s.download("prompt_runner/t4/seg/x.latent", tmp_path / "back" / "x.latent")
    assert out.read_bytes() == src.read_bytes()
    await s.delete(["prompt_runner/t4/seg"])  # a folder: everything under it goes
    with pytest.raises(StorageRejected, match="no such object"):
        await s.download("prompt_runner/t4/seg/x.latent", tmp_path / "gone")
    await s.delete(["prompt_runner/t4/never-existed"])
    await s.aclose()


async def test_a_download_cut_mid_body_resumes_with_a_range_not_from_the_start(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "seg.latent"
    size = 24 * MiB
    sha = write_random(src, size)
    s = storage(moto, prefix, endpoint=proxy.url)
    await s.upload(src, "prompt_runner/t8/seg.latent")
    proxy.heads.clear()
    proxy.downstream_bytes = 0
    proxy.cut_response_after(10 * MiB, b"GET /" + f"{BUCKET}/{prefix}/prompt_runner/t8/seg.latent".encode())
    out = await s.download("prompt_runner/t8/seg.latent", tmp_path / "back.latent")
    await s.aclose()
    assert proxy.cuts == 1
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
    gets = [h.lower() for h in proxy.heads if h.startswith(b"GET ")]
    assert len(gets) == 2 and b"range: bytes=" in gets[1] and b"range: bytes=0-" not in gets[1]
    assert proxy.downstream_bytes < size + 4 * MiB  # the second GET carried the rest, not the whole object
    assert not list(tmp_path.glob(".*.part"))


async def test_a_key_with_dotdot_is_refused_before_anything_is_sent(
    moto: MotoServer, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "a.png"
    write_random(src, 10)
    s = storage(moto, prefix)
    with pytest.raises(StorageRejected, match=r"'\.\.' segment"):
        await s.upload(src, "comfy/../../etc/a.png")


# --- faults and resume ---


async def test_a_part_cut_mid_body_is_sent_again_alone(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "long.mp4"
    sha = write_random(src, 4 * 8 * MiB + 5)
    s = storage(moto, prefix, endpoint=proxy.url, concurrency=1)
    proxy.cut_after(3 * MiB, b"partNumber=2&")
    obj = await s.upload(src, "comfy/t5/long.mp4")
    await s.aclose()
    assert proxy.cuts == 1
    assert sorted(part_puts(proxy)) == [1, 2, 2, 3, 4, 5]
    assert obj.sha256 == sha
    assert hashlib.sha256(moto.object(BUCKET, f"{prefix}/comfy/t5/long.mp4")).hexdigest() == sha
    assert moto.open_uploads(BUCKET) == []


async def test_a_new_process_resumes_the_journalled_upload_sending_only_missing_parts(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "long.mp4"
    sha = write_random(src, 6 * 8 * MiB + 1)
    rec = Recorder()
    first = storage(moto, prefix, endpoint=proxy.url, concurrency=1, retry_attempts=1)
    journal = UploadJournal({}, rec)
    # the first attempt dies for good in part 4 (every try of it is cut): parts 1-3 are on the server
    proxy.cut_after(MiB, b"partNumber=4&")
    task = asyncio.create_task(first.upload(src, "comfy/t6/long.mp4", sha256=sha, journal=journal))
    with pytest.raises(Exception, match="part 4"):
        await task
    assert rec.saved and "upload_id" in rec.saved[0]["comfy/t6/long.mp4"]
    assert moto.open_uploads(BUCKET) == [f"{prefix}/comfy/t6/long.mp4"]
    sent_before = part_puts(proxy)
    proxy.requests.clear()
    # the next attempt: another process, the journal as the task's checkpoint kept it
    second = storage(moto, prefix, endpoint=proxy.url)
    obj = await second.upload(src, "comfy/t6/long.mp4", sha256=sha, journal=UploadJournal(rec.saved[-1], rec))
    await first.aclose()
    await second.aclose()
    assert sorted(sent_before) == [1, 2, 3, 4]
    # 1-3 were not sent again (a part may be sent twice: moto's server now and then answers 500 to concurrent
    # UploadParts, "read of closed file" in its ETag code, and the worker retries the part)
    assert set(part_puts(proxy)) == {4, 5, 6, 7}
    assert hashlib.sha256(moto.object(BUCKET, f"{prefix}/comfy/t6/long.mp4")).hexdigest() == sha == obj.sha256
    assert rec.saved[-1] == {}
    assert moto.open_uploads(BUCKET) == []


async def test_a_journalled_upload_of_another_file_is_aborted_not_left_billed(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "v.mp4"
    write_random(src, 3 * 8 * MiB)
    rec = Recorder()
    s = storage(moto, prefix, endpoint=proxy.url, concurrency=1, retry_attempts=1)
    proxy.cut_after(MiB, b"partNumber=2&")
    with pytest.raises(Exception, match="part 2"):
        await s.upload(src, "comfy/t7/v.mp4", journal=UploadJournal({}, rec))
    assert moto.open_uploads(BUCKET) == [f"{prefix}/comfy/t7/v.mp4"]
    sha = write_random(src, 3 * 8 * MiB)  # the retry rendered a different file
    s2 = storage(moto, prefix)
    obj = await s2.upload(src, "comfy/t7/v.mp4", journal=UploadJournal(rec.saved[-1], rec))
    assert obj.sha256 == sha
    assert moto.open_uploads(BUCKET) == []
    await s.aclose()
    await s2.aclose()


async def test_an_unjournalled_upload_that_gives_up_is_aborted_at_once(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "w.mp4"
    write_random(src, 2 * 8 * MiB)
    s = storage(moto, prefix, endpoint=proxy.url, concurrency=1, retry_attempts=1)
    proxy.cut_after(MiB, b"partNumber=2&")
    with pytest.raises(Exception, match="part 2"):
        await s.upload(src, "comfy/t11/w.mp4")  # no journal: nobody could resume it
    await s.aclose()
    assert f"{prefix}/comfy/t11/w.mp4" not in moto.open_uploads(BUCKET)
    assert moto.keys(BUCKET, f"{prefix}/comfy/t11/") == []  # nothing stored half


async def test_check_aborts_uploads_left_open_longer_than_any_attempt(moto: MotoServer, prefix: str) -> None:
    s = storage(moto, prefix, abandon_after_s=0)
    assert s._s3 is not None
    await s._s3.create(f"{prefix}/comfy/dead/x.mp4", "video/mp4")
    assert moto.open_uploads(BUCKET) == [f"{prefix}/comfy/dead/x.mp4"]
    await asyncio.sleep(1.1)  # S3 timestamps have one-second resolution: the upload must be older than "now - 0"
    await s.check()
    await s.aclose()
    assert moto.open_uploads(BUCKET) == []


# --- inputs ---


async def test_an_s3_url_input_is_fetched_with_the_stores_credentials_and_the_size_cap(
    moto: MotoServer, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in moto.env().items():
        monkeypatch.setenv(k, v)
    moto_key = f"{prefix}/in/photo.png"
    moto.put(BUCKET, moto_key, b"P" * 5000)
    got = await fetch_url(f"s3://{BUCKET}/{moto_key}", tmp_path / "in", max_bytes=10_000, timeout_s=10)
    assert got.name == "photo.png" and got.read_bytes() == b"P" * 5000
    with pytest.raises(InputRejected, match="INPUT_MAX_BYTES"):
        await fetch_url(f"s3://{BUCKET}/{moto_key}", tmp_path / "in2", max_bytes=4999, timeout_s=10)
    assert not (tmp_path / "in2" / "photo.png").exists()
    with pytest.raises(InputRejected, match="no such object"):
        await fetch_url(f"s3://{BUCKET}/{prefix}/nope.png", tmp_path / "in3", max_bytes=10_000, timeout_s=10)
    with pytest.raises(InputRejected, match="'no-bucket' does not exist"):
        await fetch_url("s3://no-bucket/a.png", tmp_path / "in4", max_bytes=10_000, timeout_s=10)
    with pytest.raises(InputRejected, match=r"'\.\.'"):
        await fetch_url(f"s3://{BUCKET}/a/../b.png", tmp_path / "in5", max_bytes=10_000, timeout_s=10)


async def test_a_storage_path_input_is_read_from_the_store_with_the_size_cap(
    moto: MotoServer, prefix: str, tmp_path: Path
) -> None:
    from comfy_worker.inputs import fetch_source

    s = storage(moto, prefix)
    src = tmp_path / "ref.png"
    write_random(src, 6000)
    await s.upload(src, "inputs/t9/ref.png")
    got = await fetch_source(
        {"storage_path": "inputs/t9/ref.png"}, tmp_path / "in", fetch=fetch_url, storage=s, max_bytes=6000
    )
    assert got.read_bytes() == src.read_bytes()
    with pytest.raises(InputRejected, match="over INPUT_MAX_BYTES"):
        await fetch_source(
            {"storage_path": "inputs/t9/ref.png"}, tmp_path / "in2", fetch=fetch_url, storage=s, max_bytes=5999
        )
    assert not any((tmp_path / "in2").glob("*"))
    await s.aclose()


async def test_open_storage_follows_storage_url(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in moto.env().items():
        monkeypatch.setenv(k, v)
    s = open_storage(load_settings({"STORAGE_URL": f"s3://{BUCKET}/x", "SIGNED_URL_TTL_S": "99999999"}, dotenv=None))
    assert isinstance(s, ObjectStorage) and s.signed_url_ttl_s == 7 * 24 * 3600
    await s.check()
    await s.aclose()


async def test_wrong_credentials_stop_the_check_naming_the_credential_variables(tmp_path: Path) -> None:
    server = MotoServer(tmp_path / "moto-auth.log", auth=True)  # moto checks keys against its IAM: ours is unknown
    server.start()
    try:
        s = ObjectStorage(f"s3://{BUCKET}/x", signed_url_ttl_s=60, env=server.env(), retry_wait_s=0.01)
        with pytest.raises(StorageRejected) as info:
            await s.check()
        await s.aclose()
    finally:
        server.stop()
    text = str(info.value)
    assert "S3 refused a test write to STORAGE_URL s3://renders/x" in text
    assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in text and SECRET_KEY not in text


async def test_every_signature_verifies_on_a_server_that_checks_them(tmp_path: Path) -> None:
    """moto with IAM auth checks SigV4 on every request: the resumable multipart calls (our signer, with
    uploadId in the query) and obstore's PUT / GET / LIST / DELETE. (Presigned URLs are checked by the other
    tests on the server without auth: moto answers 500 to any presigned GET under IAM auth, boto3's too.)"""
    server = MotoServer(tmp_path / "moto-iam.log", auth=True, free_actions=3)
    server.start()
    try:
        server.iam_user()
        server.create_bucket(BUCKET)
        s = ObjectStorage(
            f"s3://{BUCKET}/signed", signed_url_ttl_s=600, env=server.env(), retry_wait_s=0.01, retry_attempts=2
        )
        await s.check()
        src = tmp_path / "v.mp4"
        sha = write_random(src, 2 * 8 * MiB + 3)
        rec = Recorder()
        obj = await s.upload(src, "comfy/t10/v.mp4", journal=UploadJournal({}, rec))
        assert obj.sha256 == sha and rec.saved[-1] == {}
        back = await s.download("comfy/t10/v.mp4", tmp_path / "back.mp4")
        assert back.read_bytes() == src.read_bytes()
        assert s._s3 is not None
        assert await s._s3.list_uploads("signed/") == []
        await s.delete(["comfy/t10/v.mp4"])
        # the server really checks: the same calls signed with a wrong secret are refused
        from comfy_worker.storage.s3multipart import S3Multipart

        forged = S3Multipart.from_env(
            BUCKET, {**server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, retry_attempts=1
        )
        assert forged is not None
        with pytest.raises(StorageRejected, match="AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"):
            await forged.create("signed/x.bin", "application/octet-stream")
        await forged.aclose()
        await s.aclose()
    finally:
        server.stop()


# --- review fixes: siblings stopped before an abort, a lost completion answer, discarding, one store per bucket ---

NO_SUCH_UPLOAD = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>NoSuchUpload</Code><Message>The specified multipart "
    b"upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or "
    b"completed.</Message></Error>"
)
# what AWS, MinIO and R2 answer a CompleteMultipartUpload sent again after it succeeded (moto's server treats
# that retry as idempotent instead, so the proxy gives the answer those services give)
NO_SUCH_UPLOAD_RESPONSE = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    + f"Content-Length: {len(NO_SUCH_UPLOAD)}\r\n\r\n".encode()
    + NO_SUCH_UPLOAD
)


async def test_a_part_that_fails_for_good_stops_its_siblings_before_the_upload_is_aborted(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "six.mp4"
    write_random(src, 6 * 8 * MiB)
    s = storage(moto, prefix, endpoint=proxy.url, concurrency=2, retry_attempts=1)
    proxy.throttle_bps = 32 * MiB  # part 1 (8 MiB) is still being sent when part 2 is cut after 1 MiB
    proxy.cut_after(MiB, b"partNumber=2&")
    with pytest.raises(Exception, match="part 2"):
        await s.upload(src, "comfy/t12/six.mp4")  # no journal: the upload is aborted at once
    # nothing of the upload runs any more, and no part was sent after the abort
    sending = [t for t in asyncio.all_tasks() if "_upload_resumable" in t.get_coro().__qualname__]  # type: ignore[union-attr]
    assert not [t for t in sending if not t.done()]
    lines = [line for line in proxy.requests if "uploadId=" in line]
    [abort] = [i for i, line in enumerate(lines) if line.startswith("DELETE ")]
    assert abort == len(lines) - 1, lines
    proxy.throttle_bps = None
    await s.aclose()
    assert f"{prefix}/comfy/t12/six.mp4" not in moto.open_uploads(BUCKET)
    assert moto.keys(BUCKET, f"{prefix}/comfy/t12/") == []


async def test_a_completion_whose_answer_was_lost_is_confirmed_by_the_stored_object(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "done.mp4"
    sha = write_random(src, 2 * 8 * MiB + 9)
    rec = Recorder()
    s = storage(moto, prefix, endpoint=proxy.url)
    # the first CompleteMultipartUpload reaches the server and completes the upload; its answer is lost. The
    # retry is answered NoSuchUpload, as a service that forgot the finished upload answers it.
    proxy.cut_response_after(0, b"<CompleteMultipartUpload>")
    proxy.answer_instead(b"<CompleteMultipartUpload>", NO_SUCH_UPLOAD_RESPONSE, skip=1)
    obj = await s.upload(src, "comfy/t13/done.mp4", sha256=sha, journal=UploadJournal({}, rec))
    await s.aclose()
    assert (proxy.cuts, proxy.answered) == (1, 1)
    assert obj.sha256 == sha and obj.bytes == src.stat().st_size
    assert hashlib.sha256(moto.object(BUCKET, f"{prefix}/comfy/t13/done.mp4")).hexdigest() == sha
    head = moto.client().head_object(Bucket=BUCKET, Key=f"{prefix}/comfy/t13/done.mp4")
    assert head["Metadata"] == {"sha256": sha}
    assert rec.saved[-1] == {} and moto.open_uploads(BUCKET) == []


async def test_a_retried_completion_answered_no_such_upload_fails_when_the_object_is_not_ours(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "lost.mp4"
    write_random(src, 2 * 8 * MiB + 9)
    s = storage(moto, prefix, endpoint=proxy.url)
    # the first completion never reaches the server (cut in its body); the retry is answered NoSuchUpload:
    # no object of this size and digest is there, so the upload fails (and is aborted: nothing stored half)
    proxy.cut_after(0, b"<CompleteMultipartUpload>")
    proxy.answer_instead(b"<CompleteMultipartUpload>", NO_SUCH_UPLOAD_RESPONSE, skip=1)
    with pytest.raises(StorageRejected, match="NoSuchUpload"):
        await s.upload(src, "comfy/t14/lost.mp4")
    await s.aclose()
    assert moto.keys(BUCKET, f"{prefix}/comfy/t14/") == [] and moto.open_uploads(BUCKET) == []


async def test_a_journalled_upload_completed_by_a_worker_that_died_before_saying_so_is_not_sent_again(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "twice.mp4"
    sha = write_random(src, 2 * 8 * MiB + 1)
    s = storage(moto, prefix, endpoint=proxy.url)
    assert s._s3 is not None
    key = f"{prefix}/comfy/t15/twice.mp4"
    # what a worker killed between CompleteMultipartUpload and forgetting the journal entry leaves
    upload_id = await s._s3.create(key, "video/mp4", sha)
    parts = [
        await s._s3.upload_part(
            key, upload_id, n, src, (n - 1) * 8 * MiB, min(8 * MiB, src.stat().st_size - (n - 1) * 8 * MiB)
        )
        for n in (1, 2, 3)
    ]
    await s._s3.complete(key, upload_id, parts)
    entry = {
        "backend": "s3",
        "bucket": BUCKET,
        "key": key,
        "upload_id": upload_id,
        "size": src.stat().st_size,
        "sha256": sha,
        "part_size": 8 * MiB,
    }
    rec = Recorder()
    proxy.requests.clear()
    obj = await s.upload(
        src, "comfy/t15/twice.mp4", sha256=sha, journal=UploadJournal({"comfy/t15/twice.mp4": entry}, rec)
    )
    await s.aclose()
    assert obj.sha256 == sha and part_puts(proxy) == []
    assert not [line for line in proxy.requests if line.startswith("POST ")]
    assert rec.saved[-1] == {}


async def test_discard_uploads_aborts_the_journalled_uploads_of_this_store_only(
    moto: MotoServer, proxy: CuttingProxy, prefix: str, tmp_path: Path
) -> None:
    src = tmp_path / "gone.mp4"
    write_random(src, 3 * 8 * MiB)
    rec = Recorder()
    s = storage(moto, prefix, endpoint=proxy.url, concurrency=1, retry_attempts=1)
    journal = UploadJournal({}, rec)
    proxy.cut_after(MiB, b"partNumber=2&")
    with pytest.raises(Exception, match="part 2"):
        await s.upload(src, "comfy/t16/gone.mp4", journal=journal)
    assert s._s3 is not None
    other = await s._s3.create(f"{prefix}/elsewhere/x.mp4", "video/mp4")  # named by an entry of another path
    journal.entries["comfy/t16/other.mp4"] = {
        "backend": "s3",
        "bucket": BUCKET,
        "key": f"{prefix}/elsewhere/x.mp4",
        "upload_id": other,
    }
    assert sorted(moto.open_uploads(BUCKET)) == [f"{prefix}/comfy/t16/gone.mp4", f"{prefix}/elsewhere/x.mp4"]
    saves = len(rec.saved)
    await s.discard_uploads(journal)
    assert moto.open_uploads(BUCKET) == [f"{prefix}/elsewhere/x.mp4"]  # a key its path does not map to: kept
    assert journal.entries == {} and len(rec.saved) == saves  # forgotten in memory: the task's row is final
    await s._s3.abort(f"{prefix}/elsewhere/x.mp4", other)
    await s.aclose()


async def test_inputs_of_one_bucket_share_one_store_and_the_stores_error_mapping(
    moto: MotoServer, prefix: str, tmp_path: Path
) -> None:
    from comfy_worker.storage import objectstore

    moto.put(BUCKET, f"{prefix}/in/a.png", b"A" * 100)
    moto.put(BUCKET, f"{prefix}/in/b.png", b"B" * 100)
    before = dict(objectstore._INPUT_STORES)
    for name in ("a", "b"):
        got = await objectstore.fetch_object_url(
            f"s3://{BUCKET}/{prefix}/in/{name}.png",
            tmp_path / f"{name}.png",
            max_bytes=1000,
            env=moto.env(),
            retry_wait_s=0.01,
        )
        assert got.read_bytes() == name.upper().encode() * 100
    assert len(objectstore._INPUT_STORES) == len(before) + 1
    with pytest.raises(StorageRejected, match=rf"{BUCKET}/{prefix}/in/c.png.*no such object"):
        await objectstore.fetch_object_url(
            f"s3://{BUCKET}/{prefix}/in/c.png", tmp_path / "c.png", max_bytes=1000, env=moto.env(), retry_wait_s=0.01
        )
    with pytest.raises(StorageRejected, match="bucket 'nope-bucket' does not exist: create it or fix the input URL"):
        await objectstore.fetch_object_url(
            "s3://nope-bucket/x.png", tmp_path / "x.png", max_bytes=1000, env=moto.env(), retry_wait_s=0.01
        )

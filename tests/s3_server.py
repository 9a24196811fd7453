"""A real S3 server for the tests: moto in server mode (``moto[server]``, the ``moto_server`` command) on
127.0.0.1, plus a small TCP proxy that can cut a connection part-way through a request body.

Nothing here imitates S3: the worker talks to moto's S3 implementation over HTTP exactly as it talks to AWS
(SigV4-signed requests, multipart uploads, presigned URLs). moto does not check signatures unless IAM auth is
switched on, so wrong credentials are exercised with ``auth=True`` (``INITIAL_NO_AUTH_ACTION_COUNT``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BUCKET = "renders"
ACCESS_KEY = "AKIATESTWORKER000001"
SECRET_KEY = "test-secret-key-that-must-never-be-logged"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moto_command() -> list[str]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    return [exe] if exe else [sys.executable, "-m", "moto.server"]


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT`` as a subprocess; ``env`` is what a worker needs to use it."""

    def __init__(self, log_path: Path, *, auth: bool = False, free_actions: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.auth = auth
        self.free_actions = free_actions  # with auth: this many first requests need no signature (IAM set-up)
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.free_actions)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*moto_command(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/moto-api/data.json", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("moto_server did not start in 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def iam_user(self) -> None:
        """With ``auth`` and ``free_actions=3``: an IAM user allowed s3:*, whose key the server then verifies
        every signature against (the worker's SigV4 signer and presigned URLs included)."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="worker")
        iam.put_user_policy(
            UserName="worker",
            PolicyName="s3",
            PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", '
            '"Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="worker")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint or self.url,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self) -> Any:
        """boto3 (installed with moto) for the test's own look at the bucket."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def object(self, bucket: str, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, bucket: str, prefix: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]

    def open_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads still open in the bucket."""
        return [u["Key"] for u in self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target``. ``cut_after(n, match)``: the next connection whose
    first bytes contain ``match`` is closed once ``n`` bytes of it went upstream (a connection dying in the
    middle of a part). ``requests`` records the first line of every request seen."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.requests: list[str] = []
        self._cut: tuple[int, bytes] | None = None
        self.cuts = 0
        self.throttle_bps: float | None = None  # upstream bytes per second per connection, when set
        self._cut_response: tuple[int, bytes] | None = None
        self._answer: tuple[bytes, bytes, int] | None = None
        self.answered = 0
        self.heads: list[bytes] = []  # the first bytes of every request (request line and headers)
        self.downstream_bytes = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()  # both ends of every open connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, nbytes: int, match: bytes) -> None:
        self._cut = (nbytes, match)

    def answer_instead(self, match: bytes, response: bytes, *, skip: int = 0) -> None:
        """Requests containing ``match``: the first ``skip`` go through, the next one is not forwarded and is
        answered with ``response`` (a whole HTTP response), its connection closed after it."""
        self._answer = (match, response, skip)

    def cut_response_after(self, nbytes: int, match: bytes) -> None:
        """The next connection whose request contains ``match`` has its response cut after ``nbytes``."""
        self._cut_response = (nbytes, match)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def abort_all(self) -> None:
        """Drop every open connection at once, both ends, forwarding nothing more: what a client host that
        vanished leaves (bytes a killed process had handed its kernel never reach the server)."""
        for w in list(self._live):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._live.clear()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._live.update((writer, up_writer))

        response_limit: list[int | None] = [None]

        async def upstream() -> None:
            sent, limit = 0, None
            buffer = b""
            try:
                while data := await reader.read(65536):
                    buffer = (buffer + data)[-65536:]
                    for line in _request_lines(data):
                        self.requests.append(line)
                        self.heads.append(data[data.find(line.encode("latin-1")) :][:2048])
                    if self._answer is not None and self._answer[0] in data:
                        match, response, skip = self._answer
                        if skip == 0:
                            self._answer = None
                            self.answered += 1
                            writer.write(response)
                            await writer.drain()
                            return
                        self._answer = (match, response, skip - 1)
                    if self._cut_response is not None and self._cut_response[1] in buffer:
                        response_limit[0], self._cut_response = self._cut_response[0], None
                    if self._cut is not None and limit is None and self._cut[1] in buffer:
                        limit, self._cut = sent + self._cut[0], None
                    if limit is not None and sent + len(data) >= limit:
                        up_writer.write(data[: max(0, limit - sent)])
                        self.cuts += 1
                        raise ConnectionResetError("cut by the test proxy")
                    up_writer.write(data)
                    await up_writer.drain()
                    sent += len(data)
                    if self.throttle_bps:
                        await asyncio.sleep(len(data) / self.throttle_bps)
            finally:
                for w in (up_writer, writer):
                    with contextlib.suppress(Exception):
                        w.transport.abort()

        async def downstream() -> None:
            passed = 0
            try:
                while data := await up_reader.read(65536):
                    limit = response_limit[0]
                    if limit is not None and passed + len(data) >= limit:
                        writer.write(data[: limit - passed])
                        await writer.drain()
                        self.cuts += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    writer.write(data)
                    await writer.drain()
                    passed += len(data)
                    self.downstream_bytes += len(data)
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        try:
            with contextlib.suppress(Exception):
                await asyncio.gather(upstream(), downstream())
        finally:
            self._live.discard(writer)
            self._live.discard(up_writer)


def _request_lines(data: bytes) -> list[str]:
    out = []
    for method in (b"GET ", b"PUT ", b"POST ", b"DELETE ", b"HEAD "):
        start = data.find(method)
        while start != -1:
            if start == 0 or data[start - 2 : start] == b"\r\n":
                end = data.find(b"\r\n", start)
                if end != -1:
                    out.append(data[start:end].decode("latin-1"))
            start = data.find(method, start + 1)
    return out

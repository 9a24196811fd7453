"""A real Azure Blob Storage emulator for the tests: Azurite (Microsoft's, the npm package ``azurite``, installed
into .azurite/ by scripts/install.sh) on 127.0.0.1, with the container ``renders``. The worker speaks to it as to
Azure: Shared Key or SAS signed requests, block blobs, SAS-signed GET URLs."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.s3_server import free_port

REPO = Path(__file__).resolve().parents[1]
AZURITE = REPO / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key (public, not a secret)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "renders"


class Azurite:
    """``azurite-blob`` as a subprocess; ``url`` is its blob endpoint (without the account)."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.data / "azurite.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(AZURITE),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.data),
                    "--skipApiVersionCheck",
                    "--loose",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url, timeout=1)
                break
            time.sleep(0.1)
        container_at(self.url).create_container()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """What a worker needs to use it (``endpoint``: a proxy in front of it)."""
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": KEY,
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": endpoint or self.url,
        }

    def container(self) -> Any:
        return container_at(self.url)

    def uncommitted(self, name: str) -> list[str]:
        return uncommitted_at(self.url, name)


def container_at(url: str) -> Any:
    """azure-storage-blob's client of the container at Azurite ``url``, for the test's own look at it."""
    from azure.storage.blob import BlobServiceClient

    conn = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={url}/{ACCOUNT};"
    return BlobServiceClient.from_connection_string(conn).get_container_client(CONTAINER)


def uncommitted_at(url: str, name: str) -> list[str]:
    """The uncommitted block ids (base64, as sent) the service holds for blob ``name``."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        _committed, pending = container_at(url).get_blob_client(name).get_block_list("uncommitted")
    except ResourceNotFoundError:
        return []
    return [base64.b64encode(b.id.encode()).decode() for b in pending]  # the SDK decodes the ids

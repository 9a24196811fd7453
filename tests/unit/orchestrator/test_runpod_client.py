"""The RunPod v2 client against the stand-in of the v2 pods API (real HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gpu_orchestrator.errors import (
    PodNotFound,
    ProviderAuthError,
    ProviderNoCapacity,
    ProviderRejected,
    ProviderUnavailable,
)
from gpu_orchestrator.provider import PodRequest
from gpu_orchestrator.runpod import RunPodClient
from tests.standins.runpod import RunPodStandIn


@pytest.fixture
async def standin() -> AsyncIterator[RunPodStandIn]:
    s = RunPodStandIn(refuse_gpu_types=("NVIDIA H100 PCIe",))
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def client(standin: RunPodStandIn) -> AsyncIterator[RunPodClient]:
    c = RunPodClient("test-key", standin.url, backoff_s=0.01, max_attempts=3)
    yield c
    await c.close()


def _req(name: str = "cw-a", gpus: tuple[str, ...] = ("NVIDIA GeForce RTX 4090",)) -> PodRequest:
    return PodRequest(
        name=name,
        image="ghcr.io/x/comfy-worker:1",
        gpu_types=gpus,
        env={"WORKER_ID": name},
        network_volume_id="vol_1",
    )


async def test_create_sends_the_nested_v2_body_and_parses_the_pod(client: RunPodClient, standin: RunPodStandIn):
    pod = await client.create_pod(_req())
    body = standin.pods[pod.id].body
    assert body["gpu"] == {"id": "NVIDIA GeForce RTX 4090", "count": 1}
    assert body["mounts"] == {"network": [{"volumeId": "vol_1", "path": "/runpod-volume"}]}
    assert body["env"] == {"WORKER_ID": "cw-a"} and body["cloud"] == "SECURE"
    assert pod.status == "RUNNING" and pod.cost_per_hour == 0.44 and pod.gpu_type == "NVIDIA GeForce RTX 4090"
    assert [p.id for p in await client.list_pods()] == [pod.id]
    assert (await client.get_pod(pod.id)).name == "cw-a"


async def test_gpu_preference_list_falls_through_400_to_the_next_type(client: RunPodClient, standin: RunPodStandIn):
    pod = await client.create_pod(_req(gpus=("NVIDIA H100 PCIe", "NVIDIA GeForce RTX 4090")))
    assert pod.gpu_type == "NVIDIA GeForce RTX 4090"
    with pytest.raises(ProviderNoCapacity):
        await client.create_pod(_req("cw-b", gpus=("NVIDIA H100 PCIe",)))
    assert standin.created_total == 1


async def test_429_is_retried_after_retry_after(client: RunPodClient, standin: RunPodStandIn):
    standin.fail("create", 429, retry_after="0")
    standin.fail("list", 429, retry_after="0")
    await client.create_pod(_req())
    assert len(await client.list_pods()) == 1
    assert [s for _, _, s in standin.requests].count(429) == 2
    assert standin.created_total == 1


async def test_500_after_create_adopts_the_pod_instead_of_creating_another(client, standin: RunPodStandIn):
    standin.fail("create", mode="create_then_500")
    pod = await client.create_pod(_req())
    assert standin.created_total == 1 and pod.name == "cw-a"


async def test_500_then_success_creates_exactly_one(client: RunPodClient, standin: RunPodStandIn):
    standin.fail("create", 500)
    await client.create_pod(_req())
    assert standin.created_total == 1


async def test_401_is_an_auth_error_naming_the_key(standin: RunPodStandIn):
    c = RunPodClient("wrong-key", standin.url, backoff_s=0.01)
    try:
        with pytest.raises(ProviderAuthError, match="RUNPOD_API_KEY"):
            await c.create_pod(_req())
    finally:
        await c.close()
    assert standin.created_total == 0


async def test_malformed_json_and_persistent_500_are_unavailable(client: RunPodClient, standin: RunPodStandIn):
    standin.fail("list", mode="malformed", times=10)
    with pytest.raises(ProviderUnavailable, match="not JSON"):
        await client.list_pods()
    standin.faults.clear()
    standin.fail("get", 500, times=10)
    with pytest.raises(ProviderUnavailable):
        await client.get_pod("nope")


async def test_actions_and_terminate_of_a_gone_pod(client: RunPodClient, standin: RunPodStandIn):
    pod = await client.create_pod(_req())
    assert (await client.stop_pod(pod.id)).status == "EXITED"
    assert (await client.start_pod(pod.id)).status == "RUNNING"
    await client.terminate_pod(pod.id)
    await client.terminate_pod(pod.id)  # already gone: not an error
    with pytest.raises(PodNotFound):
        await client.get_pod(pod.id)
    assert await client.list_pods() == []


async def test_422_is_never_retried(client: RunPodClient, standin: RunPodStandIn):
    standin.fail("create", 422)
    with pytest.raises(ProviderRejected):
        await client.create_pod(_req())
    assert len(standin.requests) == 1

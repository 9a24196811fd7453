"""The pod provider interface: what the control loop needs from a GPU cloud. RunPod is in :mod:`.runpod`.

Every method raises only :mod:`gpu_orchestrator.errors` exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Pod statuses (RunPod v2's PodStatus enum; other providers map theirs onto these)
PROVISIONING, STARTING, RUNNING, EXITED, ERROR, TERMINATED = (
    "PROVISIONING",
    "STARTING",
    "RUNNING",
    "EXITED",
    "ERROR",
    "TERMINATED",
)
GONE = (EXITED, ERROR, TERMINATED)  # no worker can be running in it


@dataclass(frozen=True, slots=True)
class PodRequest:
    """What to create. ``gpu_types`` are tried in order until one places (one GPU type per create call)."""

    name: str
    image: str
    gpu_types: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    gpu_count: int = 1
    cloud: str = "SECURE"  # SECURE | COMMUNITY
    disk_gb: int = 50  # container disk (ephemeral)
    volume_gb: int = 0  # host-local persistent volume (ignored when network_volume_id is set)
    network_volume_id: str = ""
    volume_path: str = "/runpod-volume"
    ports: tuple[str, ...] = ()
    data_center_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pod:
    id: str
    name: str
    status: str
    cost_per_hour: float | None = None
    gpu_type: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@runtime_checkable
class Provider(Protocol):
    name: str

    async def create_pod(self, request: PodRequest) -> Pod: ...
    async def list_pods(self) -> list[Pod]: ...
    async def get_pod(self, pod_id: str) -> Pod: ...
    async def start_pod(self, pod_id: str) -> Pod: ...
    async def stop_pod(self, pod_id: str) -> Pod: ...
    async def terminate_pod(self, pod_id: str) -> None:
        """Permanently release the pod. Terminating a pod that is already gone is not an error."""
        ...

    async def close(self) -> None: ...

"""Orchestrator settings, read once from the environment (and ``.env``); errors name the variable.

The queue connection (DATABASE_URL or SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY) and WORKER_TIMEOUT_S come from
comfy_worker's settings; everything about scaling and pods is here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from comfy_worker.config import parse_number, read_environment
from comfy_worker.errors import ConfigError
from gpu_orchestrator.policy import PolicyParams
from gpu_orchestrator.runpod import DEFAULT_API_URL

# Worker env copied from the orchestrator's environment into every pod (when set), besides WORKER_ID and
# the queue connection.
PASSTHROUGH = (
    "STORAGE_BUCKET",
    "STORAGE_PUBLIC",
    "SIGNED_URL_TTL_S",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "TASK_TYPES",
    "LEASE_SECONDS",
    "HEARTBEAT_INTERVAL",
    "WORKER_TIMEOUT_S",
    "COMFY_ARGS",
    "INPUT_URL_ALLOWLIST",
)


@dataclass(frozen=True)
class OrchestratorSettings:
    interval_s: float = 15.0
    min_workers: int = 0
    max_workers: int = 10
    max_hourly_spend: float = math.inf
    pod_cost_per_hour: float = 0.69  # estimate until the provider reports a pod's cost
    idle_timeout_s: float = 15.0
    spawn_timeout_s: float = 900.0
    backlog_horizon_s: float = 30.0  # the backlog clears within one spawn delay plus this
    expected_spawn_s: float = 180.0  # pod create -> worker registered, until spawns have been observed
    target_wait_s: float = 120.0
    staffing_beta: float = 1.5  # used when TARGET_P_WAIT is 0
    target_p_wait: float = 0.08  # Erlang C staffing: P(an arrival waits) at most this
    warm_p: float = 0.3  # quiet hours: one warm worker when P(a task within a spawn delay) >= this
    reconcile_every: int = 4  # cycles between provider-vs-table sweeps
    spawn_backoff_max_s: float = 300.0
    worker_prefix: str = "cw-"
    # RunPod
    runpod_api_key: str = ""
    runpod_api_url: str = DEFAULT_API_URL
    gpu_types: tuple[str, ...] = ()
    image: str = ""
    cloud_type: str = "SECURE"
    container_disk_gb: int = 50
    volume_gb: int = 0
    network_volume_id: str = ""
    volume_path: str = "/runpod-volume"
    pod_env: Mapping[str, str] = field(default_factory=dict)  # extra env for pods (POD_ENV_*)

    def policy(self) -> PolicyParams:
        return PolicyParams(
            kind="queue",
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            max_hourly_spend=self.max_hourly_spend,
            pod_cost_per_hour=self.pod_cost_per_hour,
            idle_timeout_s=self.idle_timeout_s,
            spawn_timeout_s=self.spawn_timeout_s,
            backlog_horizon_s=self.backlog_horizon_s,
            expected_spawn_s=self.expected_spawn_s,
            target_wait_s=self.target_wait_s,
            staffing_beta=self.staffing_beta,
            target_p_wait=self.target_p_wait,
            warm_p=self.warm_p,
        )

    def check_provider(self) -> None:
        """What creating pods needs; --dry-run runs without it."""
        if not self.runpod_api_key:
            raise ConfigError("RUNPOD_API_KEY", "is not set; create an API key in the RunPod console")
        if not self.image:
            raise ConfigError("RUNPOD_IMAGE", "is not set; give the worker image, e.g. ghcr.io/you/comfy-worker:1.2")
        if not self.gpu_types:
            raise ConfigError("RUNPOD_GPU_TYPES", "is not set; list GPU type ids in preference order, comma-separated")


def _num(env: Mapping[str, str], name: str, kind: type, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    return parse_number(name, raw, kind, minimum) if raw else default


def load_orchestrator_settings(
    env: Mapping[str, str] | None = None, dotenv: str | None = ".env"
) -> OrchestratorSettings:
    src = read_environment(env, dotenv or None)
    d = OrchestratorSettings()
    s = OrchestratorSettings(
        interval_s=_num(src, "ORCHESTRATOR_INTERVAL_S", float, d.interval_s, 0.05),
        min_workers=int(_num(src, "MIN_WORKERS", int, d.min_workers, 0)),
        max_workers=int(_num(src, "MAX_WORKERS", int, d.max_workers, 0)),
        max_hourly_spend=_num(src, "MAX_HOURLY_SPEND", float, d.max_hourly_spend, 0),
        pod_cost_per_hour=_num(src, "POD_COST_PER_HOUR", float, d.pod_cost_per_hour, 0.0001),
        idle_timeout_s=_num(src, "IDLE_TIMEOUT_S", float, d.idle_timeout_s, 0),
        spawn_timeout_s=_num(src, "SPAWN_TIMEOUT_S", float, d.spawn_timeout_s, 1),
        backlog_horizon_s=_num(src, "BACKLOG_HORIZON_S", float, d.backlog_horizon_s, 1),
        expected_spawn_s=_num(src, "EXPECTED_SPAWN_S", float, d.expected_spawn_s, 0),
        target_wait_s=_num(src, "TARGET_WAIT_S", float, d.target_wait_s, 0),
        staffing_beta=_num(src, "STAFFING_BETA", float, d.staffing_beta, 0),
        target_p_wait=_num(src, "TARGET_P_WAIT", float, d.target_p_wait, 0),
        warm_p=_num(src, "WARM_P", float, d.warm_p, 0),
        reconcile_every=int(_num(src, "RECONCILE_EVERY", int, d.reconcile_every, 1)),
        worker_prefix=src.get("ORCHESTRATOR_WORKER_PREFIX", "").strip() or d.worker_prefix,
        runpod_api_key=src.get("RUNPOD_API_KEY", "").strip(),
        runpod_api_url=src.get("RUNPOD_API_URL", "").strip() or d.runpod_api_url,
        gpu_types=tuple(p.strip() for p in src.get("RUNPOD_GPU_TYPES", "").split(",") if p.strip()),
        image=src.get("RUNPOD_IMAGE", "").strip(),
        cloud_type=(src.get("RUNPOD_CLOUD_TYPE", "").strip().upper() or d.cloud_type),
        container_disk_gb=int(_num(src, "RUNPOD_CONTAINER_DISK_GB", int, d.container_disk_gb, 1)),
        volume_gb=int(_num(src, "RUNPOD_VOLUME_GB", int, d.volume_gb, 0)),
        network_volume_id=src.get("RUNPOD_NETWORK_VOLUME_ID", "").strip(),
        volume_path=src.get("RUNPOD_VOLUME_PATH", "").strip() or d.volume_path,
        pod_env={k.removeprefix("POD_ENV_"): v for k, v in src.items() if k.startswith("POD_ENV_")}
        | {k: src[k] for k in PASSTHROUGH if src.get(k)},
    )
    if s.cloud_type not in ("SECURE", "COMMUNITY"):
        raise ConfigError("RUNPOD_CLOUD_TYPE", f"expected SECURE or COMMUNITY, got {s.cloud_type!r}")
    if s.min_workers > s.max_workers:
        raise ConfigError("MIN_WORKERS", f"({s.min_workers}) must not exceed MAX_WORKERS ({s.max_workers})")
    if 0 < s.volume_gb < 10:
        raise ConfigError("RUNPOD_VOLUME_GB", f"RunPod's persistent volumes start at 10 GB, got {s.volume_gb}")
    return s

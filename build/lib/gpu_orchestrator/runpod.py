"""RunPod REST API v2 client (https://api.runpod.io/v2), behind :class:`gpu_orchestrator.provider.Provider`.

What the v2 reference (runpod/docs, api-reference-v2/openapi.json) specifies and this client follows:

* ``POST /v2/pods`` takes a nested ``CreatePodRequest``: ``name``, ``image``, ``gpu: {id, count}``, ``cloud``
  (SECURE | COMMUNITY, default SECURE), ``disk`` (container GB), ``env`` (object), ``ports``,
  ``mounts: {network: [{volumeId, path}]}`` or ``{persistent: {size, path}}``, ``dataCenterIds``; answers
  201 with a ``Pod``. It places exactly ONE GPU type and never falls back, so the preference list is walked
  here: 400 (a rule broken, or no capacity for that type) and 403 (pool not accessible) → next type;
  402 (insufficient balance) → stop; 422 (body does not match the contract) → never retry.
* ``GET /v2/pods`` → ``{"pods": [Pod, ...]}``; ``GET /v2/pods/{id}`` → ``Pod``;
  ``POST /v2/pods/{id}/action`` ``{"action": "start|stop|restart|terminate"}`` → 200 ``Pod`` (204 for
  terminate), 409 when the action is not valid for the status; ``DELETE /v2/pods/{id}`` → 204.
* ``Pod``: ``id``, ``name``, ``status`` (PROVISIONING, STARTING, RUNNING, EXITED, ERROR, TERMINATED), ``cost``
  (USD per hour), ``gpu.id``, ``env``, ``createdAt``, …
* Bearer auth; errors are RFC 9457 problem+json (``title``, ``status``, ``detail``, optional ``errors``);
  429 carries ``Retry-After`` (seconds).

Retries (tenacity): 429 and 5xx / network errors / malformed JSON, honouring ``Retry-After``. A create is not
blindly re-POSTed after a 5xx or a timeout (the pod may exist already): the client looks the pod up by its
unique name first and adopts it, so a failed create never turns into two pods.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from comfy_worker.errors import ConfigError
from comfy_worker.logs import get_logger, register_secret
from gpu_orchestrator.errors import (
    PodNotFound,
    ProviderAuthError,
    ProviderConflict,
    ProviderError,
    ProviderForbidden,
    ProviderNoCapacity,
    ProviderQuotaExceeded,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)
from gpu_orchestrator.provider import Pod, PodRequest

DEFAULT_API_URL = "https://api.runpod.io/v2"
log = get_logger(__name__)
T = TypeVar("T")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _problem(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    if not isinstance(body, dict):
        return str(body)[:200]
    text = " ".join(str(body[k]) for k in ("title", "detail") if body.get(k))
    if body.get("errors"):
        text += f" ({'; '.join(map(str, body['errors']))})"
    return text or str(body)[:200]


def _error_for(method: str, path: str, resp: httpx.Response) -> ProviderError:
    status = resp.status_code
    what = f"RunPod {method} {path}: {status} {_problem(resp)}"
    if status == 401:
        return ProviderAuthError(what + " — check RUNPOD_API_KEY", status=status)
    if status == 402:
        return ProviderQuotaExceeded(what + " — top up the RunPod balance", status=status)
    if status == 403:
        return ProviderForbidden(what, status=status)
    if status == 404:
        return PodNotFound(what, status=status)
    if status == 409:
        return ProviderConflict(what, status=status)
    if status == 429:
        return ProviderRateLimited(what, retry_after=_retry_after(resp.headers.get("Retry-After")))
    if status in (400, 422) or 400 <= status < 500:
        return ProviderRejected(what, status=status)
    return ProviderUnavailable(what, status=status)


def parse_pod(body: Any) -> Pod:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("status"), str):
        raise ProviderUnavailable(f"RunPod answered a pod without id/status: {str(body)[:200]}")
    gpu = body.get("gpu") if isinstance(body.get("gpu"), dict) else {}
    cost = body.get("cost")
    return Pod(
        id=body["id"],
        name=str(body.get("name") or ""),
        status=body["status"],
        cost_per_hour=float(cost) if isinstance(cost, (int, float)) else None,
        gpu_type=gpu.get("id"),
        env=dict(body.get("env") or {}),
        created_at=body.get("createdAt"),
        raw=body,
    )


def create_body(req: PodRequest, gpu_type: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": req.name,
        "image": req.image,
        "gpu": {"id": gpu_type, "count": req.gpu_count},
        "cloud": req.cloud,
        "disk": req.disk_gb,
        "env": dict(req.env),
    }
    if req.network_volume_id:
        body["mounts"] = {"network": [{"volumeId": req.network_volume_id, "path": req.volume_path}]}
    elif req.volume_gb:
        body["mounts"] = {"persistent": {"size": max(10, req.volume_gb), "path": req.volume_path}}
    if req.ports:
        body["ports"] = list(req.ports)
    if req.data_center_ids:
        body["dataCenterIds"] = list(req.data_center_ids)
    return body


class RunPodClient:
    """Async RunPod v2 client. One instance (one connection pool) per process; ``close()`` when done."""

    name = "runpod"

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_API_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_s: float = 0.5,
        max_wait_s: float = 120.0,
    ) -> None:
        if not api_key:
            raise ConfigError("RUNPOD_API_KEY", "is empty; create an API key in the RunPod console and set it")
        register_secret(api_key)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        )
        self._attempts, self._backoff, self._max_wait = max_attempts, backoff_s, max_wait_s

    async def close(self) -> None:
        await self._http.aclose()

    # --- plumbing -------------------------------------------------------------------------------------------

    async def _once(self, method: str, path: str, json: Any = None) -> Any:
        """One HTTP call; the parsed JSON body (None for 204) or a mapped ProviderError."""
        try:
            resp = await self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"RunPod {method} {path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            raise _error_for(method, path, resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ProviderUnavailable(
                f"RunPod {method} {path}: {resp.status_code} body is not JSON: {resp.text[:80]!r}",
                status=resp.status_code,
            ) from None

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ProviderRateLimited) and exc.retry_after is not None:
            return min(exc.retry_after, self._max_wait)
        return min(self._backoff * 2 ** (state.attempt_number - 1), self._max_wait)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "runpod_retry",
                call=what,
                attempt=state.attempt_number,
                error=str(exc),
                retry_in_s=round(self._wait(state), 2),
            )

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(ProviderUnavailable),
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")

    # --- pods -----------------------------------------------------------------------------------------------

    async def list_pods(self) -> list[Pod]:
        body = await self._retrying("list_pods", lambda: self._once("GET", "/pods"))
        if not isinstance(body, dict) or not isinstance(body.get("pods"), list):
            raise ProviderUnavailable(f'RunPod GET /pods: expected {{"pods": [...]}}, got {str(body)[:200]}')
        return [parse_pod(p) for p in body["pods"]]

    async def get_pod(self, pod_id: str) -> Pod:
        return parse_pod(await self._retrying("get_pod", lambda: self._once("GET", f"/pods/{pod_id}")))

    async def _action(self, pod_id: str, action: str) -> Any:
        return await self._retrying(
            f"{action}_pod", lambda: self._once("POST", f"/pods/{pod_id}/action", {"action": action})
        )

    async def start_pod(self, pod_id: str) -> Pod:
        return parse_pod(await self._action(pod_id, "start"))

    async def stop_pod(self, pod_id: str) -> Pod:
        return parse_pod(await self._action(pod_id, "stop"))

    async def terminate_pod(self, pod_id: str) -> None:
        try:
            await self._action(pod_id, "terminate")
        except PodNotFound:
            log.info("pod_already_gone", pod_id=pod_id)

    async def delete_pod(self, pod_id: str) -> None:
        try:
            await self._retrying("delete_pod", lambda: self._once("DELETE", f"/pods/{pod_id}"))
        except PodNotFound:
            log.info("pod_already_gone", pod_id=pod_id)

    async def _find_by_name(self, name: str) -> Pod | None:
        try:
            pods = await self.list_pods()
        except ProviderUnavailable:
            return None
        return next((p for p in pods if p.name == name and p.status != "TERMINATED"), None)

    async def create_pod(self, request: PodRequest) -> Pod:
        """Create one pod, trying ``request.gpu_types`` in order. Never creates more than one pod."""
        if not request.gpu_types:
            raise ConfigError("RUNPOD_GPU_TYPES", "lists no GPU type; give at least one, e.g. NVIDIA GeForce RTX 4090")
        last: ProviderError | None = None
        for gpu_type in request.gpu_types:
            body = create_body(request, gpu_type)
            for attempt in range(1, self._attempts + 1):
                try:
                    return parse_pod(await self._once("POST", "/pods", body))
                except ProviderRateLimited as exc:  # refused before processing: safe to send again
                    last = exc
                    wait = min(exc.retry_after if exc.retry_after is not None else self._backoff, self._max_wait)
                    log.warning("runpod_rate_limited", call="create_pod", retry_in_s=wait, attempt=attempt)
                    await asyncio.sleep(wait)
                except ProviderUnavailable as exc:  # the pod may exist: look before posting again
                    last = exc
                    found = await self._find_by_name(request.name)
                    if found is not None:
                        log.warning("runpod_create_adopted", pod_id=found.id, name=request.name, error=str(exc))
                        return found
                    log.warning("runpod_retry", call="create_pod", attempt=attempt, error=str(exc))
                    await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), self._max_wait))
                except (ProviderForbidden, ProviderRejected) as exc:
                    if isinstance(exc, ProviderRejected) and exc.status == 422:
                        raise
                    last = exc
                    log.info("runpod_gpu_type_refused", gpu_type=gpu_type, status=exc.status, error=str(exc))
                    break  # next GPU type
            else:
                assert last is not None
                raise last
        raise ProviderNoCapacity(
            f"RunPod placed none of the GPU types {', '.join(request.gpu_types)}; last answer: {last}",
            status=last.status if last else None,
        )

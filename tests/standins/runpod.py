"""Test-only stand-in for RunPod's REST API v2 pods surface (https://api.runpod.io/v2), whose "pods" are local
processes.

Stands in for: ``POST /v2/pods`` (nested CreatePodRequest → 201 Pod), ``GET /v2/pods`` (``{"pods": [...]}``),
``GET /v2/pods/{id}``, ``POST /v2/pods/{id}/action`` (start | stop | restart | terminate; 200 Pod, 204 for
terminate, 409 when the action is not valid for the status) and ``DELETE /v2/pods/{id}`` (204), with Bearer
auth and RFC 9457 problem+json errors, as documented in runpod/docs api-reference-v2/openapi.json.

A pod runs ``command(pod)`` (argv) as a child process with the pod's ``env`` added to this process's
environment; no command means a pod that is RUNNING with nothing inside. When the process exits the pod is
EXITED. Faults are injected per route with :meth:`RunPodStandIn.fail`: a status (401, 429 with Retry-After,
500, …), ``malformed`` JSON, or ``create_then_500`` (the pod is created but the answer is a 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

ACTIONS_FOR = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
}


@dataclass
class Fault:
    route: str  # "create" | "list" | "get" | "action" | "delete" | "*"
    status: int = 500
    times: int = 1
    retry_after: str | None = None
    mode: str = "status"  # status | malformed | create_then_500


@dataclass
class StandInPod:
    id: str
    body: dict[str, Any]
    status: str = "RUNNING"
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    proc: subprocess.Popen[bytes] | None = None

    def json(self, cost: float) -> dict[str, Any]:
        gpu = dict(self.body.get("gpu") or {})
        gpu.setdefault("count", 1)
        gpu.update(vcpuCount=8, memory=32)
        return {
            "id": self.id,
            "name": self.body["name"],
            "status": self.status,
            "actions": ACTIONS_FOR.get(self.status, []),
            "image": self.body.get("image"),
            "args": self.body.get("args", ""),
            "disk": self.body.get("disk", 50),
            "mounts": self.body.get("mounts", {}),
            "ports": self.body.get("ports", []),
            "env": self.body.get("env", {}),
            "registry": None,
            "gpu": gpu,
            "cloud": self.body.get("cloud", "SECURE"),
            "dataCenterId": "LOCAL-1",
            "cudaVersion": "12.8",
            "ssh": {"proxy": None, "direct": None},
            "template": None,
            "cost": cost if self.status == "RUNNING" else 0.0,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": None,
            "createdAt": self.created_at,
            "startedAt": self.created_at,
        }


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"title": title, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
        headers=headers,
    )


class RunPodStandIn:
    def __init__(
        self,
        api_key: str = "test-key",
        *,
        command: Callable[[StandInPod], list[str]] | None = None,
        cost_per_hour: float = 0.44,
        refuse_gpu_types: tuple[str, ...] = (),
    ) -> None:
        self.api_key = api_key
        self.command = command
        self.cost = cost_per_hour
        self.refuse_gpu_types = set(refuse_gpu_types)
        self.pods: dict[str, StandInPod] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.created_total = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- control ------------------------------------------------------------------------------------------

    def fail(
        self,
        route: str,
        status: int = 500,
        *,
        times: int = 1,
        retry_after: str | None = None,
        mode: str = "status",
    ) -> None:
        self.faults.append(Fault(route, status, times, retry_after, mode))

    def kill(self, pod_id: str) -> None:
        """SIGKILL the pod's process, as if the machine died (the pod becomes EXITED)."""
        pod = self.pods[pod_id]
        if pod.proc and pod.proc.poll() is None:
            pod.proc.kill()
            pod.proc.wait(5)
        pod.status = "EXITED"

    def live(self) -> list[StandInPod]:
        self._refresh()
        return [p for p in self.pods.values() if p.status != "TERMINATED"]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v2/pods", self._create)
        app.router.add_get("/v2/pods", self._list)
        app.router.add_get("/v2/pods/{id}", self._get)
        app.router.add_post("/v2/pods/{id}/action", self._action)
        app.router.add_delete("/v2/pods/{id}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v2"
        return self.url

    async def stop(self) -> None:
        for pod in self.pods.values():
            self._kill_proc(pod)
        if self._runner:
            await self._runner.cleanup()

    # --- internals ----------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        for pod in self.pods.values():
            if pod.status == "RUNNING" and pod.proc is not None and pod.proc.poll() is not None:
                pod.status = "EXITED"

    def _spawn(self, pod: StandInPod) -> None:
        if self.command is None:
            return
        env = {**os.environ, **{str(k): str(v) for k, v in (pod.body.get("env") or {}).items()}}
        pod.proc = subprocess.Popen(self.command(pod), env=env, start_new_session=True)

    @staticmethod
    def _kill_proc(pod: StandInPod) -> None:
        if pod.proc and pod.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.proc.pid, signal.SIGTERM)
            try:
                pod.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait(5)

    def _fault(self, route: str) -> Fault | None:
        for f in self.faults:
            if f.route in (route, "*") and f.times > 0:
                f.times -= 1
                return f
        return None

    def _guard(self, request: web.Request, route: str) -> web.Response | Fault | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _problem(401, "Unauthorized", "missing bearer token")
        fault = self._fault(route)
        if fault is None or fault.mode == "create_then_500":
            return fault
        if fault.mode == "malformed":
            return web.Response(status=200, text='{"pods": [{"id": ', content_type="application/json")
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        titles = {
            401: "Unauthorized",
            429: "Too Many Requests",
            500: "Internal Server Error",
            503: "Unavailable",
        }
        return _problem(fault.status, titles.get(fault.status, "Error"), f"injected {fault.status}", headers)

    def _answer(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        self.requests.append((request.method, request.path, resp.status))
        return resp

    async def _create(self, request: web.Request) -> web.StreamResponse:
        guard = self._guard(request, "create")
        if isinstance(guard, web.Response):
            return self._answer(request, guard)
        try:
            body = await request.json()
        except ValueError:
            return self._answer(request, _problem(400, "Bad Request", "body is not JSON"))
        missing = [k for k in ("name", "image") if not body.get(k)]
        if missing or not isinstance(body.get("gpu"), dict) or not body["gpu"].get("id"):
            return self._answer(
                request,
                _problem(
                    422,
                    "Unprocessable Entity",
                    f"required: name, image, gpu.id (missing {missing or ['gpu']})",
                ),
            )
        if body["gpu"]["id"] in self.refuse_gpu_types:
            return self._answer(request, _problem(400, "Bad Request", "no capacity for this GPU type"))
        pod = StandInPod(id=uuid.uuid4().hex[:14], body=body)
        self.pods[pod.id] = pod
        self.created_total += 1
        self._spawn(pod)
        if isinstance(guard, Fault):  # create_then_500
            return self._answer(request, _problem(500, "Internal Server Error", "injected after create"))
        return self._answer(request, web.json_response(pod.json(self.cost), status=201))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        guard = self._guard(request, "list")
        if isinstance(guard, web.Response):
            return self._answer(request, guard)
        return self._answer(request, web.json_response({"pods": [p.json(self.cost) for p in self.live()]}))

    def _pod(self, request: web.Request) -> StandInPod | None:
        self._refresh()
        pod = self.pods.get(request.match_info["id"])
        return pod if pod and pod.status != "TERMINATED" else None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        guard = self._guard(request, "get")
        if isinstance(guard, web.Response):
            return self._answer(request, guard)
        pod = self._pod(request)
        if pod is None:
            return self._answer(request, _problem(404, "Not Found", "The requested Pod does not exist."))
        return self._answer(request, web.json_response(pod.json(self.cost)))

    async def _action(self, request: web.Request) -> web.StreamResponse:
        guard = self._guard(request, "action")
        if isinstance(guard, web.Response):
            return self._answer(request, guard)
        pod = self._pod(request)
        if pod is None:
            return self._answer(request, _problem(404, "Not Found", "The requested Pod does not exist."))
        action = (await request.json()).get("action")
        if action not in ("start", "stop", "restart", "terminate"):
            return self._answer(request, _problem(422, "Unprocessable Entity", f"unknown action {action!r}"))
        if action not in ACTIONS_FOR.get(pod.status, []):
            return self._answer(request, _problem(409, "Conflict", f"cannot {action} a pod that is {pod.status}"))
        await asyncio.to_thread(self._kill_proc, pod)
        if action == "terminate":
            pod.status = "TERMINATED"
            return self._answer(request, web.Response(status=204))
        if action == "stop":
            pod.status = "EXITED"
        else:
            pod.status = "RUNNING"
            self._spawn(pod)
        return self._answer(request, web.json_response(pod.json(self.cost)))

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        guard = self._guard(request, "delete")
        if isinstance(guard, web.Response):
            return self._answer(request, guard)
        pod = self._pod(request)
        if pod is None:
            return self._answer(request, _problem(404, "Not Found", "The requested Pod does not exist."))
        await asyncio.to_thread(self._kill_proc, pod)
        pod.status = "TERMINATED"
        return self._answer(request, web.Response(status=204))

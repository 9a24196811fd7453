"""A test-only stand-in for the HTTP + websocket surface of a *current* ComfyUI (0.3.6x).

The real test server (scripts/setup_test_comfyui.sh) is an early-2024 ComfyUI; a current one cannot be
installed here. This aiohttp app on 127.0.0.1 reproduces the behaviours in which current servers differ, so
the client is tested against both:

* ``POST /prompt`` honours a client-chosen ``prompt_id`` and answers ``{prompt_id, number, node_errors}``;
* the websocket (``/ws?clientId=``) sends ``status`` on connect, then per prompt ``execution_start``,
  ``execution_cached``, ``executing``, ``progress``, ``progress_state``, ``executed``, and
  ``execution_success`` (then ``executing`` with ``node: null`` unless ``send_executing_null=False``);
  a node of class ``Fail`` sends ``execution_error`` with a timestamp, like 0.3.6x;
* ``GET /history/{id}`` answers ``{}`` for the first ``history_lag`` requests after completion
  (the window between ``execution_success`` and the history write; here the prompt has already left
  ``/queue``, the harder case for a client);
* ``GET /queue``, ``POST /interrupt`` with ``{"prompt_id"}``, ``GET /view``, ``GET /object_info``.

Simplified: prompts "run" instantly in submission order, no validation, every ``SaveVideo`` node yields one
``video/<id>.mp4`` listed under ``images`` with ``animated: [true]`` (core SaveVideo's shape).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42fake-video-bytes"


@dataclass
class CurrentComfyStandin:
    history_lag: int = 3
    send_executing_null: bool = True
    host: str = "127.0.0.1"
    sockets: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    history_reads: dict[str, int] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    base_url: str = ""
    _numbers: Any = field(default_factory=lambda: itertools.count(1))

    async def start(self) -> str:
        app = web.Application()
        app.add_routes(
            [
                web.get("/ws", self._ws),
                web.post("/prompt", self._prompt),
                web.get("/history/{pid}", self._history),
                web.get("/queue", self._queue),
                web.post("/interrupt", self._ok),
                web.get("/view", self._view),
                web.get("/object_info", self._object_info),
                web.get("/system_stats", self._stats),
            ]
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://{self.host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        for ws in list(self.sockets.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        self.sockets[sid] = ws
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
        async for _ in ws:
            pass
        self.sockets.pop(sid, None)
        return ws

    async def _send(self, sid: str, kind: str, data: dict[str, Any]) -> None:
        ws = self.sockets.get(sid)
        if ws is not None and not ws.closed:
            await ws.send_json({"type": kind, "data": data})

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        pid = str(body.get("prompt_id") or f"srv-{next(self._numbers)}")
        self.running.append(pid)
        asyncio.get_running_loop().create_task(self._run(pid, body.get("client_id", ""), body["prompt"]))
        return web.json_response({"prompt_id": pid, "number": len(self.received), "node_errors": {}})

    async def _run(self, pid: str, sid: str, prompt: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)
        ts = int(time.time() * 1000)
        await self._send(sid, "execution_start", {"prompt_id": pid, "timestamp": ts})
        await self._send(sid, "execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": ts})
        outputs: dict[str, Any] = {}
        messages: list[list[Any]] = [["execution_start", {"prompt_id": pid, "timestamp": ts}]]
        for node_id, node in prompt.items():
            await self._send(sid, "executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
            if node["class_type"] == "Fail":
                err = {
                    "prompt_id": pid,
                    "node_id": node_id,
                    "node_type": "Fail",
                    "executed": [],
                    "exception_message": "fail node",
                    "exception_type": "RuntimeError",
                    "traceback": ["Traceback...\n", "RuntimeError: fail node\n"],
                    "current_inputs": {},
                    "current_outputs": {},
                    "timestamp": ts,
                }
                await self._send(sid, "execution_error", err)
                messages.append(["execution_error", err])
                self._finish(pid, prompt, {}, "error", messages)
                await self._send(sid, "executing", {"node": None, "display_node": None, "prompt_id": pid})
                return
            await self._send(sid, "progress", {"value": 1, "max": 1, "prompt_id": pid, "node": node_id})
            await self._send(
                sid,
                "progress_state",
                {
                    "prompt_id": pid,
                    "nodes": {
                        node_id: {
                            "value": 1,
                            "max": 1,
                            "state": "finished",
                            "node_id": node_id,
                            "prompt_id": pid,
                        }
                    },
                },
            )
            if node["class_type"] == "SaveVideo":
                out = {
                    "images": [{"filename": f"{node_id}.mp4", "subfolder": "video", "type": "output"}],
                    "animated": [True],
                }
                outputs[node_id] = out
                await self._send(
                    sid,
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": out, "prompt_id": pid},
                )
        await self._send(sid, "execution_success", {"prompt_id": pid, "timestamp": ts})
        self._finish(pid, prompt, outputs, "success", messages)
        if self.send_executing_null:
            await self._send(sid, "executing", {"node": None, "display_node": None, "prompt_id": pid})

    def _finish(
        self,
        pid: str,
        prompt: dict[str, Any],
        outputs: dict[str, Any],
        status: str,
        messages: list[list[Any]],
    ) -> None:
        self.running.remove(pid)
        self.history_reads[pid] = 0
        self.history[pid] = {
            "prompt": [0, pid, prompt, {}, []],
            "outputs": outputs,
            "meta": {},
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
        }

    async def _history(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        if pid not in self.history:
            return web.json_response({})
        self.history_reads[pid] += 1
        if self.history_reads[pid] <= self.history_lag:
            return web.json_response({})
        return web.json_response({pid: self.history[pid]})

    async def _queue(self, _request: web.Request) -> web.Response:
        running = [[i, pid, {}, {}, []] for i, pid in enumerate(self.running)]
        return web.json_response({"queue_running": running[:1], "queue_pending": running[1:]})

    async def _ok(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.Response:
        return web.Response(body=VIDEO_BYTES, content_type="video/mp4")

    async def _object_info(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"system": {"comfyui_version": "0.3.64"}, "devices": []})

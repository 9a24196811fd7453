"""HTTP + websocket client for one ComfyUI server.

One ``httpx.AsyncClient`` and (lazily) one websocket per :class:`ComfyClient`. A single reader task routes
websocket events by ``prompt_id`` into per-prompt buffers, so a prompt queued while another runs (pipelining)
loses no events, and a dropped socket is reconnected and reconciled with ``/history`` and ``/queue``.
``on_disconnect`` (optional) is called when the socket drops, after each failed reopen, and when it cannot be opened
at all: for an attached server
the supervisor then finds out whether it went away (:meth:`ComfySupervisor.connection_lost`).
httpx / websockets exceptions are mapped here to :mod:`comfy_worker.errors`; nothing above sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from comfy_worker.engine import events as ev
from comfy_worker.engine.frames import is_handover_name
from comfy_worker.engine.history import History, failed, finished, outcome, summarise_node_errors
from comfy_worker.engine.outputs import OutputItem, OutputRef, download_outputs, safe_relpath
from comfy_worker.errors import (
    EngineUnavailable,
    ExecutionInterrupted,
    ExecutionTimeout,
    WorkflowInvalid,
)
from comfy_worker.logs import background_context, get_logger

log = get_logger(__name__)

EventCallback = Callable[[ev.Event], Awaitable[None] | None]
_DISCONNECTED = ev.UnknownEvent(type="_disconnected")
_RECONNECTED = ev.UnknownEvent(type="_reconnected")
MAX_BUFFERED_PROMPTS = 64
MAX_EVENTS_PER_PROMPT = 2000


class ComfyClient:
    """Talk to one ComfyUI server. Use ``async with ComfyClient(url) as c:`` or call :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 30.0,
        reconnect_grace_s: float = 15.0,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))
        self._object_info: dict[str, Any] | None = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._buffers: OrderedDict[str, asyncio.Queue[ev.Event]] = OrderedDict()
        self._waiters: set[asyncio.Queue[ev.Event]] = set()
        self.reconnect_grace_s = reconnect_grace_s
        self.poll_interval_s = poll_interval_s
        self.on_disconnect: Callable[[], None] | None = None
        self.output_dir: Path | None = None  # ComfyUI's output folder on this machine, when known (ComfyEngine)

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    # --- HTTP -------------------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, self._url(path), **kwargs)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(
                f"ComfyUI at {self.base_url} is not reachable ({type(exc).__name__}: {exc})",
                details={"url": self._url(path)},
            ) from exc
        if resp.status_code >= 500:
            raise EngineUnavailable(
                f"ComfyUI answered {resp.status_code} to {method} {path}",
                details={"status": resp.status_code, "body": resp.text[:2000]},
            )
        return resp

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = await self._request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise EngineUnavailable(
                f"ComfyUI answered {resp.status_code} to {method} {path}",
                details={"status": resp.status_code, "body": resp.text[:2000]},
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise EngineUnavailable(f"ComfyUI sent invalid JSON for {method} {path}") from exc

    async def system_stats(self) -> dict[str, Any]:
        return await self._json("GET", "/system_stats")

    async def object_info(self) -> dict[str, Any]:
        """``/object_info``, cached until :meth:`invalidate_object_info`."""
        if self._object_info is None:
            self._object_info = await self._json("GET", "/object_info")
        return self._object_info

    def invalidate_object_info(self) -> None:
        self._object_info = None

    async def upload_file(
        self, path: str | Path, *, subfolder: str = "", overwrite: bool = True, kind: str = "input"
    ) -> str:
        """Upload any file (image, video, audio, latent) to ComfyUI's ``kind`` directory; return the name a
        workflow uses for it (``subfolder/name`` when a subfolder is given)."""
        path = Path(path)
        data = {"subfolder": subfolder, "type": kind, "overwrite": "true" if overwrite else "false"}
        with path.open("rb") as fh:  # noqa: ASYNC230 (httpx reads it in chunks while sending)
            resp = await self._request(
                "POST",
                "/upload/image",
                data=data,
                files={"image": (path.name, fh, "application/octet-stream")},
            )
        if resp.status_code >= 400:
            raise EngineUnavailable(
                f"ComfyUI refused the upload of {path.name} ({resp.status_code}); "
                "is it larger than ComfyUI's --max-upload-size?",
                details={"status": resp.status_code, "body": resp.text[:500], "file": path.name},
            )
        body = resp.json()
        name, sub = body.get("name", path.name), body.get("subfolder") or ""
        return f"{sub}/{name}" if sub else name

    async def queue_prompt(self, workflow: dict[str, Any], *, prompt_id: str | None = None) -> str:
        """POST /prompt; return the prompt id the server uses. 400 → WorkflowInvalid with node_errors."""
        await self.connect()
        payload: dict[str, Any] = {"prompt": workflow, "client_id": self.client_id}
        if prompt_id:
            payload["prompt_id"] = prompt_id
        resp = await self._request("POST", "/prompt", json=payload)
        if resp.status_code == 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"error": resp.text[:2000]}
            error = body.get("error")
            error = error if isinstance(error, dict) else {"type": None, "message": str(error)}
            node_errors = body.get("node_errors") or {}
            summary = summarise_node_errors(node_errors)
            raise WorkflowInvalid(
                f"ComfyUI rejected the workflow: {error.get('message')}" + (f" ({summary})" if summary else ""),
                details={"error_type": error.get("type"), "error": error, "node_errors": node_errors},
            )
        if resp.status_code >= 400:
            raise EngineUnavailable(
                f"ComfyUI answered {resp.status_code} to POST /prompt",
                details={"status": resp.status_code, "body": resp.text[:2000]},
            )
        body = resp.json()
        pid = str(body["prompt_id"])
        self._buffer(pid)
        log.info("prompt_queued", prompt_id=pid, number=body.get("number"), requested_id=prompt_id)
        return pid

    async def history(self, prompt_id: str) -> History | None:
        """The prompt's history entry, or None while ComfyUI has none (still running, or just finished)."""
        body = await self._json("GET", f"/history/{prompt_id}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        if not isinstance(entry, dict):
            return None
        return History(prompt_id, dict(entry.get("outputs") or {}), dict(entry.get("status") or {}), entry)

    async def delete_history(self, prompt_ids: list[str]) -> None:
        """Forget finished prompts (``POST /history {"delete": [...]}``): ComfyUI keeps every entry in memory."""
        if prompt_ids:
            await self._request("POST", "/history", json={"delete": list(prompt_ids)})

    async def queue(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids)."""
        body = await self._json("GET", "/queue")

        def ids(items: Any) -> list[str]:
            return [str(i[1]) for i in items or [] if isinstance(i, list) and len(i) > 1]

        return ids(body.get("queue_running")), ids(body.get("queue_pending"))

    async def find_tagged(self, key: str, value: str, *, history_items: int = 1000) -> list[str]:
        """Ids of prompts (running, pending, or among the last ``history_items`` in history) whose graph has a node
        with ``_meta[key] == value``. ComfyUI keeps ``_meta`` and ignores it, so a client can tag a prompt before
        queueing it and find it again after a crash, also on servers that ignore client-chosen prompt ids."""
        queue = await self._json("GET", "/queue")
        history = await self._json("GET", "/history", params={"max_items": history_items})
        entries = [*(queue.get("queue_running") or []), *(queue.get("queue_pending") or [])]
        if isinstance(history, dict):
            entries += [e.get("prompt") for e in history.values() if isinstance(e, dict)]
        found: list[str] = []
        for entry in entries:
            if not (isinstance(entry, list | tuple) and len(entry) > 2 and isinstance(entry[2], dict)):
                continue
            for node in entry[2].values():
                if isinstance(node, dict) and (node.get("_meta") or {}).get(key) == value:
                    found.append(str(entry[1]))
                    break
        return found

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop a prompt: delete it from the queue if pending, interrupt it if running (only it: the
        older server's /interrupt stops whatever runs, so we check first). No id: interrupt what runs."""
        if prompt_id is None:
            await self._request("POST", "/interrupt", json={})
            return
        running, pending = await self.queue()
        if prompt_id in pending:
            await self._request("POST", "/queue", json={"delete": [prompt_id]})
            log.info("prompt_dequeued", prompt_id=prompt_id)
        if prompt_id in running:
            await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
            log.info("prompt_interrupt_sent", prompt_id=prompt_id)

    async def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        await self._request("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    async def download_outputs(
        self, history: History, dest_dir: str | Path, *, include_temp: bool = False
    ) -> list[OutputItem]:
        """Stream every output file of ``history`` into ``dest_dir`` (see engine/outputs.py); a video hand-over file
        is read where ComfyUI wrote it when ``output_dir`` (its output folder, as this machine sees it) holds it."""
        return await download_outputs(
            self._http, self.base_url, history.outputs, Path(dest_dir), include_temp=include_temp,
            in_place=self._handover_in_place,
        )  # fmt: skip

    def _handover_in_place(self, ref: OutputRef) -> Path | None:
        if self.output_dir is None or ref.type != "output" or not is_handover_name(ref.filename):
            return None
        root = self.output_dir.resolve()
        try:
            path = (root / safe_relpath(ref.subfolder, ref.filename)).resolve()
        except EngineUnavailable:
            return None
        return path if path.is_relative_to(root) and path.is_file() else None

    # --- websocket --------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the websocket (once) and start the reader; call before queueing so no event is missed. While the
        reader is reopening a dropped socket, wait for it (at most ``reconnect_grace_s``; a prompt queued without
        the socket is still followed, by polling ``/history``)."""
        if self._reader is None or self._reader.done():
            self._closing = False
            self._connected.clear()
            try:
                await self._open_ws()
            except EngineUnavailable:
                self._lost()  # as a reopen that fails: an attached server that went away is found out
                raise
            self._reader = asyncio.create_task(
                self._read_loop(), name=f"comfy-ws-{self.client_id[:8]}", context=background_context()
            )
        elif not self._connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), self.reconnect_grace_s)

    async def _open_ws(self) -> None:
        ws_url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        try:
            self._ws = await websockets.connect(
                f"{ws_url}/ws?clientId={self.client_id}", max_size=None, open_timeout=10, ping_interval=20
            )
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            raise EngineUnavailable(f"cannot open ComfyUI's websocket at {ws_url}/ws ({exc})") from exc
        self._connected.set()

    async def drop_connection(self) -> None:
        """Close the websocket as a network fault would (the reader reconnects). For tests and recovery."""
        if self._ws is not None:
            await self._ws.close()

    async def _read_loop(self) -> None:
        backoff = 0.2
        while not self._closing:
            try:
                async for message in self._ws:
                    event = ev.parse_message(message)
                    if event is not None:
                        self._route(event)
                        backoff = 0.2
            except websockets.WebSocketException:
                pass
            if self._closing:
                return
            self._connected.clear()
            self._broadcast(_DISCONNECTED)
            log.warning("comfy_ws_disconnected", client_id=self.client_id)
            self._lost()
            while not self._closing:
                await asyncio.sleep(backoff)
                try:
                    await self._open_ws()
                except EngineUnavailable:
                    backoff = min(backoff * 2, 5.0)
                    self._lost()
                    continue
                log.info("comfy_ws_reconnected", client_id=self.client_id)
                self._broadcast(_RECONNECTED)
                break

    def _lost(self) -> None:
        if self.on_disconnect is not None and not self._closing:
            try:
                self.on_disconnect()
            except Exception as exc:  # a hook must never stop the reader
                log.warning("comfy_disconnect_hook_failed", error=f"{type(exc).__name__}: {exc}")

    def _buffer(self, prompt_id: str) -> asyncio.Queue[ev.Event]:
        q = self._buffers.get(prompt_id)
        if q is None:
            q = asyncio.Queue()
            self._buffers[prompt_id] = q
            while len(self._buffers) > MAX_BUFFERED_PROMPTS:
                old_id, old_q = next(iter(self._buffers.items()))
                if old_q in self._waiters:
                    break
                self._buffers.pop(old_id)
        return q

    def _route(self, event: ev.Event) -> None:
        if event.prompt_id is None:
            self._broadcast(event)
            return
        q = self._buffer(event.prompt_id)
        if q.qsize() < MAX_EVENTS_PER_PROMPT or isinstance(event, ev.TERMINAL | ev.Executing):
            q.put_nowait(event)

    def _broadcast(self, event: ev.Event) -> None:
        for q in self._waiters:
            q.put_nowait(event)

    # --- waiting ----------------------------------------------------------------------------------------

    async def wait(
        self,
        prompt_id: str,
        *,
        on_event: EventCallback | None = None,
        deadline_s: float = 3600.0,
        stall_s: float = 600.0,
        cancel: asyncio.Event | None = None,
    ) -> History:
        """Follow ``prompt_id`` to its end and return its History.

        Raises ExecutionFailed (a node raised), ExecutionInterrupted (interrupted, or ``cancel`` set: we
        interrupt it), ExecutionTimeout (``deadline_s`` passed, or no event for ``stall_s`` while it ran: we
        interrupt it), EngineUnavailable (ComfyUI unreachable, or the prompt vanished: it restarted)."""
        await self.connect()
        q = self._buffer(prompt_id)
        self._waiters.add(q)
        start = time.monotonic()
        last_activity = start
        try:
            while True:
                now = time.monotonic()
                if cancel is not None and cancel.is_set():
                    await self._stop_prompt(prompt_id)
                    raise ExecutionInterrupted(f"prompt {prompt_id} was cancelled", details={"prompt_id": prompt_id})
                if now - start >= deadline_s:
                    await self._stop_prompt(prompt_id)
                    raise ExecutionTimeout(
                        f"prompt {prompt_id} exceeded its deadline of {deadline_s:.0f} s",
                        details={"prompt_id": prompt_id, "deadline_s": deadline_s},
                    )
                if now - last_activity >= stall_s:
                    _running, pending = await self.queue()
                    if prompt_id in pending:  # still waiting its turn: not a stall
                        last_activity = now
                    else:
                        await self._stop_prompt(prompt_id)
                        raise ExecutionTimeout(
                            f"prompt {prompt_id} made no progress for {stall_s:.0f} s",
                            details={"prompt_id": prompt_id, "stall_s": stall_s},
                        )
                timeout = min(self.poll_interval_s, deadline_s - (now - start), stall_s - (now - last_activity))
                event = await _next_event(q, cancel, max(timeout, 0.01))
                if (
                    event is None
                    or event is _RECONNECTED
                    or (isinstance(event, ev.Status) and event.queue_remaining == 0)
                ):
                    outcome = await self._reconcile(prompt_id)
                    if outcome is not None:
                        return outcome
                    continue
                if event is _DISCONNECTED:
                    await self._await_reconnect(prompt_id, cancel)
                    continue
                if event.prompt_id != prompt_id:
                    continue
                last_activity = time.monotonic()
                if on_event is not None:
                    result = on_event(event)
                    if inspect.isawaitable(result):
                        await result
                if isinstance(event, ev.ExecutionError):
                    raise failed(prompt_id, event.data)
                if isinstance(event, ev.ExecutionInterrupted):
                    raise ExecutionInterrupted(
                        f"prompt {prompt_id} was interrupted at node {event.node_id}",
                        details={"prompt_id": prompt_id, "node_id": event.node_id},
                    )
                if isinstance(event, ev.ExecutionSuccess) or (isinstance(event, ev.Executing) and event.node is None):
                    return await self._final_history(prompt_id)
        finally:
            self._waiters.discard(q)
            self._buffers.pop(prompt_id, None)

    async def _await_reconnect(self, prompt_id: str, cancel: asyncio.Event | None) -> None:
        """Until the socket is back, or ``cancel`` is set (the caller then stops: e.g. the server died and the
        daemon interrupts its tasks); EngineUnavailable after ``reconnect_grace_s``."""
        waits = {asyncio.ensure_future(self._connected.wait())}
        if cancel is not None:
            waits.add(asyncio.ensure_future(cancel.wait()))
        try:
            await asyncio.wait(waits, timeout=self.reconnect_grace_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if not (self._connected.is_set() or (cancel is not None and cancel.is_set())):
            raise EngineUnavailable(
                f"lost ComfyUI's websocket while prompt {prompt_id} ran and could not reconnect within "
                f"{self.reconnect_grace_s:.0f} s",
                details={"prompt_id": prompt_id},
            ) from None

    async def _reconcile(self, prompt_id: str) -> History | None:
        """Ask /history and /queue whether the prompt ended; raise its failure; None while it runs."""
        hist = await self.history(prompt_id)
        if hist is not None and finished(hist):
            return outcome(hist)
        running, pending = await self.queue()
        if prompt_id in running or prompt_id in pending:
            return None
        return await self._final_history(prompt_id)

    async def _final_history(self, prompt_id: str, grace_s: float = 5.0) -> History:
        """History after completion; it can be ``{}`` for a moment on current servers, so retry."""
        deadline = time.monotonic() + grace_s
        while True:
            hist = await self.history(prompt_id)
            if hist is not None and finished(hist):
                return outcome(hist)
            if time.monotonic() >= deadline:
                running, pending = await self.queue()
                if prompt_id in running or prompt_id in pending:
                    deadline = time.monotonic() + grace_s
                    continue
                raise EngineUnavailable(
                    f"prompt {prompt_id} is neither queued nor in ComfyUI's history (did ComfyUI restart?)",
                    details={"prompt_id": prompt_id},
                )
            await asyncio.sleep(0.1)

    async def _stop_prompt(self, prompt_id: str) -> None:
        with contextlib.suppress(EngineUnavailable):
            await self.interrupt(prompt_id)

    async def aclose(self) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._own_http:
            await self._http.aclose()


async def _next_event(q: asyncio.Queue[ev.Event], cancel: asyncio.Event | None, wait_s: float) -> ev.Event | None:
    """The next event, or None on timeout or when ``cancel`` is set (the caller re-checks)."""
    if cancel is None:
        try:
            return await asyncio.wait_for(q.get(), wait_s)
        except TimeoutError:
            return None
    get = asyncio.ensure_future(q.get())
    cancelled = asyncio.ensure_future(cancel.wait())
    done, _ = await asyncio.wait({get, cancelled}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    cancelled.cancel()
    if get in done:
        return get.result()
    get.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await get
    if get.done() and not get.cancelled():  # an item arrived while cancelling: keep it
        q.put_nowait(get.result())
    return None

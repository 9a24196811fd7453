"""Supabase store: supabase-py's async client calling the queue's SQL functions through PostgREST ``rpc()``.

Every method is one ``POST /rest/v1/rpc/<fn>`` with the function's named parameters (``p_…``) as JSON body,
authenticated with the service-role key (``apikey`` + ``Authorization: Bearer``). PostgREST answers a
``returns tasks`` function with a JSON object, ``returns setof tasks`` with an array, ``jsonb`` with the value
and ``void`` with 204. There is no LISTEN over HTTP, so :meth:`wait_for_work` polls ``fleet_snapshot`` every
``poll_interval`` seconds (with jitter, so a fleet does not poll in step) for ready tasks.

Errors are mapped here, at the library boundary: a ``RAISE`` in SQL comes back as HTTP 400 with
``{"code", "message", "details", "hint"}`` and supabase-py raises ``postgrest.APIError``; its ``code`` (our
CW00x SQLSTATEs, 22P02, …) picks the exception through :func:`~comfy_worker.errors.store_error_for`.
Network failures, timeouts and any 5xx / 408 / 429 (PostgREST's 503 when the database is down, a proxy's
502) are :class:`~comfy_worker.errors.StoreUnavailable`; 401 / 403 name the key to check; a function
PostgREST cannot find is :class:`~comfy_worker.errors.SchemaMissing` with the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from datetime import UTC, datetime
from typing import Any

import httpx
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, AsyncSupabaseException, acreate_client

from comfy_worker.errors import (
    ConfigError,
    InvalidArgument,
    SchemaMissing,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    is_transient_sqlstate,
    store_error_for,
)
from comfy_worker.logs import get_logger, register_secret
from comfy_worker.models import (
    ClaimPreference,
    HeartbeatReply,
    NewTask,
    StaleReport,
    Task,
    WebhookEvent,
    WorkerInfo,
)
from comfy_worker.store.base import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    WEBHOOK_BACKOFF_BASE_S,
    WEBHOOK_BACKOFF_CAP_S,
    WEBHOOK_RETRY_FOR_S,
)
from comfy_worker.store.migrations import postgres_migrations

log = get_logger(__name__)

# connection exception, insufficient resources, operator intervention
_SCHEMA_CODES = {"PGRST202", "PGRST205", "42883", "42P01"}  # function / table not found
_TRANSIENT_STATUS = {408, 429}
_PROBE_TASK_ID = "__comfy_worker_schema_probe__"


class _HttpStatus(Exception):
    """Raised from the httpx response hook for statuses decided by status alone (5xx, 408, 429, 401, 403)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _jsonable(value: Any) -> Any:
    """What the asyncpg store's jsonb codec would store: JSON, with unknown objects as their ``str``."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, default=str, allow_nan=False))
    except ValueError as exc:  # NaN / Infinity, circular references
        raise InvalidArgument(f"value cannot be stored as JSON: {exc}") from exc


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # asyncpg's rule for timestamptz: naive means UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _schema_fix(schema: str) -> str:
    files = ", ".join(f"{m.version}.sql" for m in postgres_migrations())
    return (
        f"the comfy-worker queue functions are not installed in schema {schema!r} of this Supabase project: "
        f"run the files in sql/ ({files}) in order in the Supabase SQL editor, or run `comfy-worker migrate` "
        "with DATABASE_URL set to the project's Postgres connection string (Project Settings → Database). "
        "If you just installed them, reload PostgREST's schema cache: NOTIFY pgrst, 'reload schema';"
    )


class SupabaseStore:
    """supabase-py-backed :class:`~comfy_worker.store.base.TaskStore`."""

    name = "supabase"

    def __init__(
        self,
        url: str,
        key: str,
        *,
        poll_interval: float = 2.0,
        schema: str = "public",
        task_types: list[str] | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("SUPABASE_URL", f"expected https://<project>.supabase.co, got {url!r}")
        if not key:
            raise ConfigError("SUPABASE_SERVICE_ROLE_KEY", "is empty: use the project's service_role key")
        if poll_interval <= 0:
            raise ConfigError("POLL_INTERVAL", f"must be a positive number of seconds, got {poll_interval}")
        register_secret(key)
        self._url = url.rstrip("/")
        self._key = key
        self._poll_interval = poll_interval
        self._schema = schema
        self._task_types = set(task_types or ())
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._http: httpx.AsyncClient | None = None
        self._client: AsyncClient | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the client and make one call, so a wrong URL or key fails here (the schema itself is
        checked by :meth:`check_schema` / :meth:`migrate`)."""
        self._http = httpx.AsyncClient(timeout=self._timeout, event_hooks={"response": [self._check_status]})
        options = AsyncClientOptions(
            schema=self._schema,
            httpx_client=self._http,
            auto_refresh_token=False,
            persist_session=False,
            postgrest_client_retry=False,
        )
        try:
            self._client = await acreate_client(self._url, self._key, options)
        except AsyncSupabaseException as exc:
            await self.close()
            raise ConfigError("SUPABASE_URL", f"the Supabase client rejected it: {exc.message}") from exc
        try:
            await self._rpc("get_task", {"p_task_id": _PROBE_TASK_ID})
        except (TaskNotFound, SchemaMissing):
            pass  # reachable and the key is accepted
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._client = None
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.aclose()
            self._http = None

    async def check_schema(self) -> None:
        """Raise :class:`SchemaMissing` (with the fix) unless the queue functions answer."""
        await self._rpc("fleet_snapshot", {})
        with contextlib.suppress(TaskNotFound):
            await self._rpc("get_task", {"p_task_id": _PROBE_TASK_ID})

    async def migrate(self) -> list[str]:
        """PostgREST cannot run DDL: check the functions exist and say how to install them if not."""
        await self.check_schema()
        return []

    # --- plumbing -------------------------------------------------------------------------------------------

    async def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status >= 500 or status in _TRANSIENT_STATUS or status in (401, 403):
            await response.aread()
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text[:500]
            raise _HttpStatus(status, body)

    async def _rpc(self, fn: str, params: dict[str, Any]) -> Any:
        if self._client is None:
            raise StoreUnavailable("the Supabase store is not connected: call connect() first")
        try:
            response = await self._client.rpc(fn, params).execute()
        except APIError as exc:
            raise self._map_api_error(fn, exc) from exc
        except _HttpStatus as exc:
            raise self._map_status(fn, exc) from exc
        except httpx.RequestError as exc:  # connect / read / timeout / protocol / decoding
            raise StoreUnavailable(
                f"Supabase unreachable at {self._url} ({fn}): {type(exc).__name__}: {exc}",
                details={"function": fn},
            ) from exc
        return response.data

    def _map_status(self, fn: str, exc: _HttpStatus) -> StoreError:
        body = exc.body if isinstance(exc.body, dict) else {"message": exc.body}
        code, message, hint = body.get("code"), body.get("message") or "", body.get("hint")
        details = {"function": fn, "http_status": exc.status, "code": code, "hint": hint}
        if exc.status in (401, 403):
            return StoreError(
                f"Supabase refused {fn} (HTTP {exc.status}{f', {code}' if code else ''}): {message}. "
                "Check that SUPABASE_SERVICE_ROLE_KEY is this project's service_role key (not the anon key)",
                details=details,
            )
        return StoreUnavailable(f"Supabase answered HTTP {exc.status} to {fn}: {message}".rstrip(": "), details=details)

    def _map_api_error(self, fn: str, exc: APIError) -> StoreError:
        code = exc.code or ""
        message = exc.message or f"{fn} failed"
        extra: dict[str, Any] = {"function": fn}
        if exc.hint:
            extra["hint"] = exc.hint
        if exc.details:
            extra["detail"] = exc.details
        if code in _SCHEMA_CODES:
            return SchemaMissing(
                f"{_schema_fix(self._schema)} (PostgREST said: {message})",
                details={"sqlstate": code, **extra},
            )
        if code == "PGRST106":
            return SchemaMissing(
                f"schema {self._schema!r} is not exposed by this project's Data API: add it under "
                "Project Settings → API → Exposed schemas, or use the public schema",
                details={"code": code, **extra},
            )
        if is_transient_sqlstate(code) or code.startswith("PGRST0"):
            return StoreUnavailable(f"{message} ({fn})", details={"sqlstate": code, **extra})
        # a body that was not PostgREST JSON: supabase-py puts the HTTP status in `code`
        if len(code) == 3 and code.isdigit():
            return StoreError(
                f"{self._url} answered HTTP {code} to rpc {fn} without a PostgREST error: is SUPABASE_URL "
                "the project URL (https://<project>.supabase.co)?",
                details={"http_status": int(code), **extra},
            )
        return store_error_for(code or None, message, **extra)

    # --- workers --------------------------------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._rpc(
            "register_worker",
            {
                "p_worker_id": info.worker_id,
                "p_host": info.host,
                "p_pid": info.pid,
                "p_version": info.version,
                "p_task_types": list(info.task_types),
                "p_metadata": _jsonable(info.metadata),
            },
        )

    async def deregister_worker(self, worker_id: str) -> None:
        await self._rpc("deregister_worker", {"p_worker_id": worker_id})

    async def set_worker_status(self, worker_id: str, status: str, metadata: dict[str, Any] | None = None) -> None:
        await self._rpc(
            "set_worker_status",
            {"p_worker_id": worker_id, "p_status": status, "p_metadata": _jsonable(metadata)},
        )

    async def heartbeat(
        self,
        worker_id: str,
        lease_seconds: float,
        metadata: dict[str, Any] | None = None,
        task_ids: list[str] | None = None,
    ) -> HeartbeatReply:
        raw = await self._rpc(
            "heartbeat",
            {
                "p_worker_id": worker_id,
                "p_lease_seconds": float(lease_seconds),
                "p_metadata": _jsonable(metadata or {}),
                "p_task_ids": list(task_ids) if task_ids is not None else None,
            },
        )
        return HeartbeatReply.from_json(raw)

    # --- tasks ----------------------------------------------------------------------------------------------

    def _task(self, fn: str, data: Any) -> Task:
        if not isinstance(data, dict) or data.get("task_id") is None:
            raise StoreError(f"{fn} returned no task (got {str(data)[:200]})", details={"function": fn})
        return Task.from_row(data)

    async def enqueue(self, task: NewTask) -> Task:
        args: dict[str, Any] = {
            "p_task_type": task.task_type,
            "p_params": _jsonable(task.params),
            "p_task_id": task.task_id,
            "p_priority": task.priority,
            "p_max_attempts": task.max_attempts,
            "p_depends_on": list(task.depends_on),
            "p_dedupe_key": task.dedupe_key,
            "p_run_at": _timestamp(task.run_at),
        }
        if task.callback_url is not None:  # only when given: a schema from before 008 has no p_callback_url
            args["p_callback_url"] = task.callback_url
        data = await self._rpc("enqueue_task", args)
        return self._task("enqueue_task", data)

    async def get_task(self, task_id: str) -> Task:
        return self._task("get_task", await self._rpc("get_task", {"p_task_id": task_id}))

    async def claim(
        self, worker_id: str, task_types: list[str] | None, n: int, lease_seconds: float,
        preference: ClaimPreference | None = None,
    ) -> list[Task]:
        args: dict[str, Any] = {
            "p_worker_id": worker_id,
            "p_task_types": list(task_types) if task_types else None,
            "p_n": n,
            "p_lease_seconds": float(lease_seconds),
        }
        if preference is not None:  # only when given: a schema from before 006 has no p_preference
            args["p_preference"] = preference.as_json()
        rows = await self._rpc("claim_tasks", args)
        if not isinstance(rows, list):
            raise StoreError(
                f"claim_tasks returned {str(rows)[:200]!r}, not a JSON array", details={"function": "claim_tasks"}
            )
        return [Task.from_row(r) for r in rows]

    async def update_progress(
        self,
        task_id: str,
        lease_token: str,
        progress: dict[str, Any] | None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            "update_progress",
            {
                "p_task_id": task_id,
                "p_lease_token": str(lease_token),
                "p_progress": _jsonable(progress),
                "p_checkpoint": _jsonable(checkpoint),
            },
        )

    async def complete(
        self, task_id: str, lease_token: str, result: dict[str, Any], output_url: str | None = None
    ) -> Task:
        data = await self._rpc(
            "complete_task",
            {
                "p_task_id": task_id,
                "p_lease_token": str(lease_token),
                "p_result": _jsonable(result),
                "p_output_url": output_url,
            },
        )
        return self._task("complete_task", data)

    async def fail(
        self,
        task_id: str,
        lease_token: str,
        error: str,
        details: dict[str, Any] | None = None,
        retryable: bool = True,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
    ) -> Task:
        data = await self._rpc(
            "fail_task",
            {
                "p_task_id": task_id,
                "p_lease_token": str(lease_token),
                "p_error": error,
                "p_error_details": _jsonable(details),
                "p_retryable": retryable,
                "p_backoff_base_s": float(backoff_base_s),
                "p_backoff_cap_s": float(backoff_cap_s),
            },
        )
        return self._task("fail_task", data)

    async def release(self, task_id: str, lease_token: str) -> Task:
        data = await self._rpc("release_task", {"p_task_id": task_id, "p_lease_token": str(lease_token)})
        return self._task("release_task", data)

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        return self._task("cancel_task", await self._rpc("cancel_task", {"p_task_id": task_id, "p_reason": reason}))

    async def requeue_stale(self, worker_timeout_s: float = 90.0) -> StaleReport:
        raw = await self._rpc("requeue_stale", {"p_worker_timeout_s": float(worker_timeout_s)})
        return StaleReport.from_json(raw)

    async def fleet_snapshot(self) -> dict[str, Any]:
        return dict(await self._rpc("fleet_snapshot", {}))

    # --- orchestrator (FleetStore) ----------------------------------------------------------------------------

    async def record_spawned_worker(self, worker_id: str, metadata: dict[str, Any]) -> None:
        await self._rpc("record_spawned_worker", {"p_worker_id": worker_id, "p_metadata": _jsonable(metadata)})

    async def cancel_spawn(self, worker_id: str, metadata: dict[str, Any] | None = None) -> bool:
        return bool(
            await self._rpc("cancel_spawn", {"p_worker_id": worker_id, "p_metadata": _jsonable(metadata or {})})
        )

    async def orchestrator_fleet(self) -> dict[str, Any]:
        return dict(await self._rpc("orchestrator_fleet", {}))

    # --- webhooks -------------------------------------------------------------------------------------------

    async def webhook_configure(self, default_url: bool, events: list[str] | None) -> None:
        await self._rpc("webhook_configure", {"p_default_url": default_url, "p_events": events})

    async def claim_webhooks(
        self, worker_id: str, n: int, lease_seconds: float, default_url: bool
    ) -> list[WebhookEvent]:
        rows = await self._rpc(
            "claim_webhook_events",
            {"p_worker_id": worker_id, "p_n": n, "p_lease_seconds": float(lease_seconds), "p_default_url": default_url},
        )
        if not isinstance(rows, list):
            raise StoreError(f"claim_webhook_events returned {str(rows)[:200]!r}, not a JSON array")
        return [WebhookEvent.from_row(r) for r in rows]

    async def report_webhook(
        self, event_id: int, lease_token: str, outcome: str, status: int | None = None, error: str | None = None,
        backoff_base_s: float = WEBHOOK_BACKOFF_BASE_S, backoff_cap_s: float = WEBHOOK_BACKOFF_CAP_S,
        retry_for_s: float = WEBHOOK_RETRY_FOR_S,
    ) -> WebhookEvent:
        row = await self._rpc(
            "report_webhook_event",
            {
                "p_id": event_id, "p_lease_token": str(lease_token), "p_outcome": outcome, "p_status": status,
                "p_error": error, "p_backoff_base_s": float(backoff_base_s), "p_backoff_cap_s": float(backoff_cap_s),
                "p_retry_for_s": float(retry_for_s),
            },
        )
        if not isinstance(row, dict):
            raise StoreError(f"report_webhook_event returned {str(row)[:200]!r}, not an object")
        return WebhookEvent.from_row(row)

    async def replay_webhooks(self, task_id: str) -> int:
        return int(await self._rpc("replay_webhook_events", {"p_task_id": task_id}))

    async def webhook_deliveries(self, task_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._rpc("list_webhook_deliveries", {"p_task_id": task_id, "p_limit": limit})
        return list(rows or [])

    # --- wake-ups -------------------------------------------------------------------------------------------

    async def work_ready(self, task_types: list[str] | None = None) -> bool:
        # work_ready() stops at the first due task; fleet_snapshot() would summarise the whole queue per poll
        types = sorted(task_types) if task_types else None
        return bool(await self._rpc("work_ready", {"p_task_types": types}))

    async def _work_ready(self) -> bool:
        return await self.work_ready(sorted(self._task_types) if self._task_types else None)

    async def wait_for_work(self, timeout: float) -> bool:
        """Poll for due queued tasks every ``poll_interval`` (times 0.8-1.2, jitter); True as soon as some are
        ready, False at ``timeout``. Each poll comes after a sleep, so a caller that found nothing claimable
        (e.g. only blocked dependents are ready) does not spin. A failed poll is logged and retried."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            remaining = deadline - loop.time()
            if remaining > 0:
                await asyncio.sleep(min(remaining, self._poll_interval * random.uniform(0.8, 1.2)))
            try:
                if await self._work_ready():
                    return True
            except StoreUnavailable as exc:
                log.warning("supabase_poll_failed", error=str(exc))
            if loop.time() >= deadline:
                return False

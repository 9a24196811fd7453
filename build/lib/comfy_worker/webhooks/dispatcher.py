"""The delivery loop: claims due deliveries from the outbox and POSTs them, beside the task work, never in it.

Started by the daemon as one more background task. It shares nothing with the claim loop but the store: each
delivery holds no database connection while it waits on the receiver, at most WEBHOOK_CONCURRENCY run at once,
each bounded by WEBHOOK_TIMEOUT_S, so a slow or dead receiver delays only other deliveries. Deliveries are
leased (2 x WEBHOOK_TIMEOUT_S + 30 s): a worker that dies mid-POST leaves its lease to run out, and any live
worker takes the event over, with the same webhook-id. The loop wakes at once after this worker ends a task
(:meth:`WebhookDispatcher.wake`) and otherwise polls every WEBHOOK_POLL_S for events other workers (or a
cancel from the CLI, or recovery of a dead worker's task) left.

A worker without WEBHOOK_SECRET delivers nothing (it cannot sign). Every worker tells the fleet at start
whether it has a WEBHOOK_URL (``webhook_configure``): with one, events of tasks without a callback_url are
recorded and sent there; without (WEBHOOK_URL cleared), new ones are not. The last worker to start decides.
"""

from __future__ import annotations

import asyncio

import httpx

from comfy_worker.config import Settings, webhook_secrets
from comfy_worker.errors import LeaseLost, SchemaMissing, StoreError, StoreUnavailable
from comfy_worker.logs import get_logger, register_secret
from comfy_worker.models import DEFAULT_WEBHOOK_EVENTS, WebhookEvent
from comfy_worker.store.base import TaskStore
from comfy_worker.urlpolicy import display_url
from comfy_worker.webhooks.delivery import Attempt, deliver

log = get_logger(__name__)


class WebhookDispatcher:
    def __init__(self, settings: Settings, store: TaskStore, worker_id: str) -> None:
        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        self._keys = webhook_secrets(settings.webhook_secret) if settings.webhook_secret else []
        for raw in settings.webhook_secret.replace(",", " ").split():
            register_secret(raw)
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()  # a claim found nothing due and nothing is in flight (claim number below)
        self._claims = 0
        self._quiet_at = 0
        self._running = False
        self.ready = asyncio.Event()  # configured and delivering
        self._inflight: set[asyncio.Task[None]] = set()
        self.lease_s = 2 * settings.webhook_timeout_s + 30
        # The operator's WEBHOOK_URL is trusted as configured (it may be on a private network). Callback URLs come
        # from task rows, written by whoever may enqueue: they must resolve to public addresses, unless their host
        # is in WEBHOOK_URL_ALLOWLIST (neither INPUT_URL_ALLOWLIST, ALLOW_PRIVATE_URLS nor WEBHOOK_URL's host
        # opens them: a GET of an input is not a signed POST, and WEBHOOK_URL's host may serve other ports/paths).
        self._allowlist = settings.webhook_url_allowlist

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def wake(self) -> None:
        """Something may have ended here: look for deliveries now rather than at the next poll."""
        self._wake.set()

    async def drain(self, timeout_s: float) -> bool:
        """At shutdown: send what is due now (this worker's last tasks' events), waiting at most ``timeout_s``.
        True when nothing was left; what is left stays in the outbox for the next worker."""
        if not self._running:
            return True
        target = self._claims + 1  # a claim that starts after this call
        self.wake()

        async def quiet() -> None:
            while self._quiet_at < target:
                self._quiet.clear()
                await self._quiet.wait()

        try:
            await asyncio.wait_for(quiet(), timeout_s)
            return True
        except TimeoutError:
            log.warning("webhooks_left_undelivered", in_flight=len(self._inflight), waited_s=timeout_s)
            return False

    async def run(self) -> None:
        """Deliver until cancelled. Deliveries in flight when cancelled are abandoned: their leases run out and
        another worker (or this one after a restart) sends them again."""
        if not self.enabled:
            await self._announce_quietly()
            log.info("webhooks_off", reason="no WEBHOOK_SECRET")
            return
        timeout = httpx.Timeout(self.settings.webhook_timeout_s)
        limits = httpx.Limits(max_connections=self.settings.webhook_concurrency * 2)
        client = httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False)
        async with client:
            try:
                try:
                    await self._configure()
                except SchemaMissing as exc:
                    self._schema_missing(exc)
                    return
                self._running = True
                self.ready.set()
                default = self.settings.webhook_url
                log.info(
                    "webhooks_on", webhook_url=display_url(default) if default else None, events=list(self._events),
                    concurrency=self.settings.webhook_concurrency, signing_keys=len(self._keys),
                )
                await self._loop(client)
            finally:
                self._running = False
                self.ready.clear()
                for t in self._inflight:
                    t.cancel()
                if self._inflight:
                    await asyncio.gather(*self._inflight, return_exceptions=True)

    def _schema_missing(self, exc: SchemaMissing) -> None:
        log.error(
            "webhooks_schema_missing", error=str(exc),
            fix="apply sql/008_webhooks.sql (comfy-worker migrate, or the Supabase SQL editor); no webhooks until then",
        )

    @property
    def _events(self) -> tuple[str, ...]:
        return self.settings.webhook_events or DEFAULT_WEBHOOK_EVENTS

    @property
    def _announced_events(self) -> list[str] | None:
        """The events this worker sets for the fleet: its WEBHOOK_EVENTS, or the defaults with a WEBHOOK_URL;
        None (keep the fleet's) for a worker with neither."""
        if self.settings.webhook_events or self.settings.webhook_url:
            return list(self._events)
        return None

    async def _announce_quietly(self) -> None:
        """A worker without WEBHOOK_SECRET has no WEBHOOK_URL either: it says so once (the fleet's default
        deliveries stop for new events, as when WEBHOOK_URL is cleared), and never fails for it."""
        try:
            await self.store.webhook_configure(False, None)
        except StoreError as exc:  # no 008 schema (webhooks never set up) or the store is away: nothing to stop
            log.debug("webhook_configure_skipped", error=str(exc))

    async def _configure(self) -> None:
        """Tell the fleet whether this worker has a WEBHOOK_URL (the trigger then records events of tasks without
        a callback_url, or stops: clearing WEBHOOK_URL turns default deliveries off for new events). Fleet-wide,
        like WEBHOOK_EVENTS: the last worker to start decides."""
        delay = 1.0
        while True:
            try:
                await self.store.webhook_configure(bool(self.settings.webhook_url), self._announced_events)
                return
            except StoreUnavailable as exc:
                log.warning("webhook_configure_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _loop(self, client: httpx.AsyncClient) -> None:
        backoff = self.settings.webhook_poll_s
        while True:
            free = self.settings.webhook_concurrency - len(self._inflight)
            claimed: list[WebhookEvent] = []
            if free > 0:
                self._wake.clear()
                self._claims += 1
                number = self._claims
                try:
                    claimed = await self.store.claim_webhooks(
                        self.worker_id, free, self.lease_s, bool(self.settings.webhook_url)
                    )
                    backoff = self.settings.webhook_poll_s
                except SchemaMissing as exc:
                    self._schema_missing(exc)
                    return
                except StoreError as exc:
                    log.warning("webhook_claim_failed", error=str(exc), retry_in_s=round(backoff, 2))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                for event in claimed:
                    t = asyncio.create_task(self._guarded(client, event), name=f"webhook-{event.id}")
                    self._inflight.add(t)
                    t.add_done_callback(self._inflight.discard)
                if not claimed and not self._inflight:
                    self._quiet_at = number
                    self._quiet.set()
            await self._idle()

    async def _idle(self) -> None:
        """Until woken, a delivery ends (its slot is free again), or WEBHOOK_POLL_S passes."""
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
        waits |= set(self._inflight)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, timeout=self.settings.webhook_poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if w not in self._inflight:
                    w.cancel()

    async def _guarded(self, client: httpx.AsyncClient, event: WebhookEvent) -> None:
        try:
            await self._deliver(client, event)
        except Exception:  # a bug must not end the loop's bookkeeping: the lease runs out, it is tried again
            log.exception("webhook_delivery_crashed", task_id=event.task_id, webhook_id=event.webhook_id)

    async def _deliver(self, client: httpx.AsyncClient, event: WebhookEvent) -> None:
        s = self.settings
        url = event.url or s.webhook_url
        if not url:  # claimed only with a WEBHOOK_URL; a config change in between
            attempt = Attempt("retry", None, "no callback_url and this worker has no WEBHOOK_URL")
        else:
            attempt = await deliver(
                client, event, url, self._keys, timeout_s=s.webhook_timeout_s, allowlist=self._allowlist,
                trusted=event.url is None or event.url == s.webhook_url,
            )
        fields = {
            "task_id": event.task_id, "event_type": event.event_type, "webhook_id": event.webhook_id,
            "attempt": event.attempts, "status": attempt.status,
            "url": display_url(url) if url else None,
        }
        if attempt.outcome == "delivered":
            log.info("webhook_delivered", **fields)
        else:
            log.warning("webhook_attempt_failed", outcome=attempt.outcome, error=attempt.error, **fields)
        await self._report(event, attempt)

    async def _report(self, event: WebhookEvent, attempt: Attempt) -> None:
        s = self.settings
        for n in range(6):
            try:
                row = await self.store.report_webhook(
                    event.id, event.lease_token or "", attempt.outcome, attempt.status, attempt.error,
                    s.webhook_backoff_base_s, s.webhook_backoff_cap_s, s.webhook_retry_for_s,
                )
            except LeaseLost as exc:
                log.info("webhook_report_rejected", task_id=event.task_id, error=str(exc))
                return
            except StoreUnavailable as exc:
                log.warning("webhook_report_failed", task_id=event.task_id, error=str(exc), attempt=n + 1)
                await asyncio.sleep(min(2**n * 0.5, 10))
                continue
            except StoreError as exc:
                log.error("webhook_report_refused", task_id=event.task_id, error=str(exc))
                return
            if row.state == "failed":
                log.error(
                    "webhook_gave_up", task_id=event.task_id, event_type=event.event_type, webhook_id=event.webhook_id,
                    attempts=row.attempts, last_status=row.last_status, error=row.last_error,
                )
            return
        # the lease runs out and the delivery is tried again (the receiver dedupes on webhook-id)
        log.error("webhook_report_lost", task_id=event.task_id, webhook_id=event.webhook_id)

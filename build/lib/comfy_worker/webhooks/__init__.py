"""Completion webhooks (README "Webhooks"): events from the database outbox (sql/008_webhooks.sql), signed the
Standard Webhooks way (:mod:`.signing`), POSTed by :mod:`.delivery`, driven by the loop in :mod:`.dispatcher`."""

from __future__ import annotations

from comfy_worker.webhooks.dispatcher import WebhookDispatcher
from comfy_worker.webhooks.signing import sign

__all__ = ["WebhookDispatcher", "sign"]

"""Provider errors: what a pod provider (RunPod, …) can answer, mapped once at the client boundary.

Built on :mod:`comfy_worker.errors` (Retryable vs Permanent). HTTP statuses map as RunPod v2 documents them:
401 → :class:`ProviderAuthError`; 403 → :class:`ProviderForbidden`; 402 → :class:`ProviderQuotaExceeded`;
400 → :class:`ProviderRejected` (for a create: also "no capacity for this GPU type", try the next one);
422 → :class:`ProviderRejected` (never retry); 404 → :class:`PodNotFound`; 409 → :class:`ProviderConflict`;
429 → :class:`ProviderRateLimited`; 5xx, network errors and malformed bodies → :class:`ProviderUnavailable`.
"""

from __future__ import annotations

from typing import Any

from comfy_worker.errors import ComfyWorkerError, Permanent, Retryable


class ProviderError(ComfyWorkerError):
    """The pod provider refused or could not do something. ``status``: the HTTP status, if there was one."""

    def __init__(self, message: str, *, status: int | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={"status": status, **(details or {})})
        self.status = status


class ProviderUnavailable(ProviderError, Retryable):
    """5xx, a network error, a timeout or a body that is not the JSON the API documents."""


class ProviderRateLimited(ProviderUnavailable):
    """429: wait ``retry_after`` seconds before calling again."""

    def __init__(self, message: str, *, retry_after: float | None = None, details: dict[str, Any] | None = None):
        super().__init__(message, status=429, details={"retry_after": retry_after, **(details or {})})
        self.retry_after = retry_after


class ProviderAuthError(ProviderError, Permanent):
    """401: the API key is missing, malformed, expired or wrong. Set RUNPOD_API_KEY."""


class ProviderForbidden(ProviderError, Permanent):
    """403: the key is valid but may not use this resource (e.g. this GPU pool)."""


class ProviderQuotaExceeded(ProviderError, Permanent):
    """402: insufficient balance; no other GPU type will succeed either."""


class ProviderRejected(ProviderError, Permanent):
    """400 / 422: the request was refused (a rule it breaks, or no capacity for that GPU type)."""


class ProviderNoCapacity(ProviderRejected):
    """Every GPU type in the preference list was refused for a create (RunPod answers 400 for no capacity)."""


class ProviderConflict(ProviderError, Permanent):
    """409: the action is not valid for the pod's current status (or the pod belongs to a cluster)."""


class PodNotFound(ProviderError, Permanent):
    """404: no pod has that id (already terminated)."""

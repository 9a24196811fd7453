"""The whole exception tree of comfy-worker, in one place.

Every error the project raises on purpose is a subclass of :class:`ComfyWorkerError`. Two questions decide
what the daemon does with one, and the tree answers both:

* **Can retrying help?**  :class:`Retryable` (network blips, ComfyUI restarting, a 5xx) goes back to the queue
  with backoff. :class:`Permanent` (a malformed workflow, a missing model, an oversize input) fails the task at
  once: the attempt budget is not spent on something that can never succeed.
* **Whose fault is it?**  The second base names the area: store, engine (ComfyUI), storage, input, config.

::

    ComfyWorkerError
    ├── ConfigError                      bad or missing setting; names the variable          (start-up)
    ├── Retryable                        mixin: transient, retry with backoff
    ├── Permanent                        mixin: can never succeed, fail at once
    ├── StoreError                       the task queue
    │   ├── StoreUnavailable (Retryable) database unreachable / connection lost
    │   ├── SchemaMissing                migrations not applied
    │   ├── LeaseLost                    our lease token no longer matches: the task was requeued,
    │   │                                cancelled or taken by another worker; stop working on it
    │   ├── TaskNotFound
    │   ├── WorkerNotFound
    │   └── InvalidArgument              a caller passed something the SQL functions reject
    ├── EngineError                      an engine (ComfyUI, Wan2GP)
    │   ├── EngineUnavailable (Retryable)   not reachable / restarting / died mid-task
    │   │   └── EngineGone                    an attached ComfyUI (COMFY_URL) went away: it refuses connections
    │   ├── EngineStartupError             could not be started; carries the log tail
    │   ├── WorkflowInvalid (Permanent)    rejected before or by /prompt; carries node_errors
    │   ├── ExecutionFailed                a node raised at run time (Permanent unless marked otherwise)
    │   ├── ExecutionInterrupted           we interrupted it (cancel, deadline, shutdown)
    │   ├── ExecutionTimeout (Retryable)   deadline or stall timer expired
    │   ├── EngineOutOfMemory (Retryable)  the GPU (or host) ran out of memory mid-task; memory was freed
    │   ├── EngineRejected (Permanent)     the engine refused the request's settings (Wan2GP validation)
    │   └── OutputMissing (Retryable)      an output file ComfyUI listed is gone (cleaned up, cached prompt)
    ├── StorageError                     output/input object storage
    │   ├── StorageUnavailable (Retryable)
    │   └── StorageRejected (Permanent)    bucket missing, forbidden, object too large
    ├── InputError                       task inputs
    │   ├── InputRejected (Permanent)      bad params, private URL, oversize file, 4xx
    │   └── InputUnavailable (Retryable)   network error or 5xx while downloading
    ├── DiskFull (Retryable)             a filesystem this worker writes is full or would cross
    │                                    MIN_FREE_DISK_GB: the task is released to run elsewhere
    ├── ModelsError                      model files and docker/models.yaml (`comfy-worker models`)
    │   ├── ManifestInvalid (Permanent)    the manifest cannot be read; names the entry and the field
    │   ├── ModelDownloadFailed (Retryable) network error, 5xx or a cut mid-file (the next try resumes)
    │   └── ModelRejected (Permanent)      sha256 or size mismatch, or the source refused (4xx)
    ├── TaskCancelled                    the task was cancelled by a user while we ran it
    └── ExploreError                     the exploration suite (run / analyze / batch / contact-sheet / video-analyze)
        ├── BatchConfigInvalid (Permanent) a batch config key is wrong; names the key and the fix
        └── ProviderFailed                 a video-analyze provider failed (Retryable unless it said 4xx)

Low-level exceptions (asyncpg, httpx, websockets, sqlite3) are mapped to these at the module boundary that
uses the library; nothing above that boundary catches a library exception. Classification never matches on
message text: SQL functions raise with our own SQLSTATE codes (see :data:`SQLSTATE_TO_ERROR`).
"""

from __future__ import annotations

from typing import Any


class ComfyWorkerError(Exception):
    """Base of every error comfy-worker raises on purpose.

    ``details`` is a JSON-serialisable dict stored with a failed task (``error_details``)."""

    retryable: bool = False

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return self.message


class Retryable(ComfyWorkerError):
    """Transient: the same attempt may succeed later. Retried with capped exponential backoff."""

    retryable = True


class Permanent(ComfyWorkerError):
    """Can never succeed as submitted: fail at once, spend no more attempts."""

    retryable = False


class ConfigError(Permanent):
    """A setting is missing or invalid. The message names the variable and what it expects."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}", details={"variable": variable})
        self.variable = variable


# --- store -----------------------------------------------------------------------------------------------


class StoreError(ComfyWorkerError):
    """The task queue refused or could not do something."""


class StoreUnavailable(StoreError, Retryable):
    """The database could not be reached, or the connection dropped mid-call."""


class SchemaMissing(StoreError, Permanent):
    """The queue's tables or functions are absent: run ``comfy-worker migrate`` (or the files in sql/)."""


class LeaseLost(StoreError, Permanent):
    """Our lease token no longer matches the task: it was requeued after expiry, cancelled, or finished.

    A worker that sees this must stop working on the task and report nothing more for it."""


class TaskNotFound(StoreError, Permanent):
    """No task has that id."""


class WorkerNotFound(StoreError, Permanent):
    """No worker has that id (register it first)."""


class WorkerIdInUse(StoreError, Permanent):
    """Another live process (on another host) is registered under this worker id: two workers sharing an id
    would requeue each other's tasks. Give each worker its own id."""


class InvalidArgument(StoreError, Permanent):
    """A value the queue functions reject: unknown status, negative lease, params not a JSON object, …"""


# SQLSTATE codes raised by the functions in sql/ (class "CW" is ours) → exception class.
SQLSTATE_TO_ERROR: dict[str, type[StoreError]] = {
    "CW001": LeaseLost,
    "CW002": TaskNotFound,
    "CW003": WorkerNotFound,
    "CW004": InvalidArgument,
    "CW005": WorkerIdInUse,
    "22023": InvalidArgument,  # invalid_parameter_value
    "23514": InvalidArgument,  # check_violation (e.g. an unknown status)
    "22P02": InvalidArgument,  # invalid_text_representation (e.g. a malformed uuid)
    "42883": SchemaMissing,  # undefined_function
    "42P01": SchemaMissing,  # undefined_table
}


# SQLSTATE classes after which the same call can simply be made again: connection exception, transaction
# rolled back (deadlock, serialization failure; nothing was committed), insufficient resources, operator
# intervention.
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


def is_transient_sqlstate(code: str | None) -> bool:
    """A five-character SQLSTATE in a transient class (an HTTP status such as 404 is not one)."""
    return code is not None and len(code) == 5 and code[:2] in TRANSIENT_SQLSTATE_CLASSES


def store_error_for(sqlstate: str | None, message: str, **details: Any) -> StoreError:
    """Build the StoreError subclass that a SQLSTATE stands for (unknown codes → plain StoreError)."""
    cls = SQLSTATE_TO_ERROR.get(sqlstate or "", StoreError)
    if cls is SchemaMissing:
        message = f"{message} (the queue schema is missing or old: run `comfy-worker migrate`)"
    return cls(message, details={"sqlstate": sqlstate, **details})


# --- engine (ComfyUI) ------------------------------------------------------------------------------------


class EngineError(ComfyWorkerError):
    """ComfyUI could not do what we asked."""


class EngineUnavailable(EngineError, Retryable):
    """ComfyUI is not reachable, is restarting, or died while running our prompt."""


class EngineGone(EngineUnavailable):
    """A ComfyUI we attached to (COMFY_URL: not our child, so not ours to restart) went away: its websocket
    dropped and it refuses connections (or cannot be connected to at all). ``details`` name the ``url`` and the
    ``reason``. The worker claims nothing for it until it answers again; raised when a task that had nothing in
    it yet waited for it in vain (the task is released, its attempt not spent)."""


class EngineStartupError(EngineError, Permanent):
    """ComfyUI could not be started; ``details['log_tail']`` holds the end of its output."""


class WorkflowInvalid(EngineError, Permanent):
    """The workflow can never run: UI format that cannot be converted, unknown node types, missing models,
    dangling links, or a 400 from /prompt (``details['node_errors']`` keeps ComfyUI's per-node errors)."""


class ExecutionFailed(EngineError):
    """A node raised while executing. Permanent by default (same graph, same inputs, same error)."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, retryable: bool = False) -> None:
        super().__init__(message, details=details)
        self.retryable = retryable


class ExecutionInterrupted(EngineError):
    """The prompt was interrupted (by us: cancel, deadline, shutdown)."""


class ExecutionTimeout(EngineError, Retryable):
    """The per-task deadline or the no-progress stall timer expired."""


class EngineOutOfMemory(EngineError, Retryable):
    """The engine ran out of GPU (or host) memory during the task; it released its model before reporting.

    Retryable, with the attempt budget as the bound: an OOM often comes from memory another engine had not
    yet handed back, from fragmentation, or from a smaller GPU than the next worker's (a retry may land on a
    bigger card); Headless-Wan2GP likewise treats OOMs as recoverable. ``details`` carry the memory figures."""


class EngineRejected(EngineError, Permanent):
    """The engine refused the settings as invalid before running them (Wan2GP's validation stage)."""


class OutputMissing(EngineError, Retryable):
    """ComfyUI listed an output file that is not there (``/view`` answers 404): deleted behind our back, or a
    cached prompt listing an earlier prompt's files. The prompt is re-run once with fresh output names."""


# --- storage ---------------------------------------------------------------------------------------------


class StorageError(ComfyWorkerError):
    """Object storage (Supabase Storage or the local directory) failed."""


class StorageUnavailable(StorageError, Retryable):
    """Network error or 5xx from storage."""


class StorageRejected(StorageError, Permanent):
    """Storage refused: bucket missing, forbidden, object too large."""


# --- inputs ----------------------------------------------------------------------------------------------


class InputError(ComfyWorkerError):
    """A task input could not be used."""


class InputRejected(InputError, Permanent):
    """Bad params, a URL to a private address, an oversize file, or a 4xx from the source."""


class InputUnavailable(InputError, Retryable):
    """Network error or 5xx while fetching an input."""


class DiskFull(Retryable):
    """No room: a write failed with ENOSPC, or an input's declared size would take a filesystem below
    MIN_FREE_DISK_GB. Not the task's fault: the daemon releases it (the attempt is not spent) to run elsewhere."""


# --- model files (comfy_worker.models_manifest) -----------------------------------------------------------


class ModelsError(ComfyWorkerError):
    """A model file could not be checked or fetched."""


class ManifestInvalid(ModelsError, Permanent):
    """The model manifest cannot be read or has a bad entry; the message names the entry and the field."""


class ModelDownloadFailed(ModelsError, Retryable):
    """Network error, 5xx or a connection cut mid-file; the partial file is kept and the next try resumes."""


class ModelRejected(ModelsError, Permanent):
    """The source refused (4xx), or the file does not match its sha256 / size: it is not installed."""


class TaskCancelled(ComfyWorkerError):
    """A user cancelled the task while it ran; nothing more is reported for it."""


# --- exploration suite -----------------------------------------------------------------------------------


class ExploreError(ComfyWorkerError):
    """The exploration suite (``comfy-worker run | analyze | batch | contact-sheet | video-analyze``) failed."""


class BatchConfigInvalid(ExploreError, Permanent):
    """A batch config (or workflow file) is wrong, found before anything is submitted. ``key`` names the
    config key (``parameters.cfg.max``); the message says what to change."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}", details={"key": key})
        self.key = key


class ProviderFailed(ExploreError):
    """A video-analyze provider failed. Retryable for network errors and 5xx, permanent for a 4xx answer."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, retryable: bool = True) -> None:
        super().__init__(message, details=details)
        self.retryable = retryable


def is_retryable(exc: BaseException) -> bool:
    """True when retrying the same attempt may help. Unknown exceptions count as retryable: a fault we did not
    foresee should not burn the user's task at once, and max_attempts bounds the cost."""
    if isinstance(exc, ComfyWorkerError):
        return exc.retryable
    return True


# --- webhooks --------------------------------------------------------------------------------------------


class WebhookError(ComfyWorkerError):
    """A webhook delivery could not be made."""


class WebhookRefused(WebhookError, Permanent):
    """The callback URL may not be reached (a private or metadata address, not http/https): never retried."""


class WebhookUnavailable(WebhookError, Retryable):
    """The receiver's host could not be resolved right now: retried on the delivery schedule."""

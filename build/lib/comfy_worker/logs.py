"""structlog set-up: JSON lines when not on a TTY (or LOG_FORMAT=json), console otherwise.

Context flows through contextvars: the daemon binds ``worker_id`` once, each task coroutine binds
``task_id`` and ``task_type`` with :func:`task_context`. Event names are snake_case, data goes in keys.
A last processor masks anything that looks like a secret, whatever a caller passed.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(key|token|secret|password|authorization|apikey)", re.I)
_SECRET_VALUES = [
    (re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+(@)"), r"\1***\2"),  # passwords in DSNs
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._\-]+"), r"\1***"),
    (re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+"), "***"),  # JWTs (Supabase keys)
]
_registered_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask this exact value wherever it would appear in a log line."""
    if value and len(value) >= 6:
        _registered_secrets.add(value)


def _mask(text: str) -> str:
    for secret in _registered_secrets:
        text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_VALUES:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEYS.search(str(k)) and v else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        value = event_dict[key]
        if _SECRET_KEYS.search(key) and value and key not in ("event",):
            event_dict[key] = "***"
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (libraries log through it). Idempotent."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer], foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level == "debug" else logging.getLevelName(level.upper()))
    for noisy in ("httpx", "httpcore", "hpack", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


@contextmanager
def task_context(task_id: str, task_type: str, **extra: Any) -> Iterator[None]:
    """Bind task_id / task_type (and extras) to every log line emitted inside, in this coroutine only."""
    with structlog.contextvars.bound_contextvars(task_id=task_id, task_type=task_type, **extra):
        yield


TASK_KEYS = ("task_id", "task_type", "attempt")


def background_context() -> contextvars.Context:
    """A copy of the current context without a task's keys, for background work a task happens to start (an
    engine launched lazily by its first task, a VRAM hand-over): ``asyncio.create_task(coro,
    context=background_context())``, so its log lines do not name that task."""
    ctx = contextvars.copy_context()
    ctx.run(structlog.contextvars.unbind_contextvars, *TASK_KEYS)
    return ctx


if not structlog.is_configured():
    # Before configure_logging() runs (library use, tests), log lines go to stderr, never stdout: stdout may
    # carry a program's own output (task ids from `submit`, JSON from test helpers).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

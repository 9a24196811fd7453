"""The JSON-lines protocol between the Wan2GP engine (parent, :mod:`worker_wgp.engine`) and its child
(:mod:`worker_wgp.child`, which runs inside Wan2GP's Python environment).

Transport: the parent writes requests to the child's stdin, the child writes events to its stdout, one JSON
object per line (UTF-8, ``\\n``-terminated). At start the child points its own file descriptor 1 at stderr, so
whatever it or Wan2GP prints goes to stderr (which the parent logs) and stdout carries protocol lines only.

Every message carries ``"v": 1`` (:data:`PROTOCOL_VERSION`); a request has ``op``, an event has ``type``.
Parsing is strict: an unknown ``op``/``type``, another version, a missing or unexpected key or a value of the
wrong type raises :class:`ProtocolError` naming the key. This module is stdlib-only: the child imports it
inside Wan2GP's environment, where comfy_worker is not installed.

Requests (parent → child); ``id`` is chosen by the parent and echoed by the reply::

    generate  {id, model, settings}           run one generation with Wan2GP model ``model``; ``settings`` are
                                              Wan2GP settings (prompt, resolution, video_length, ...) with local
                                              file paths. Switches model first when another one is loaded.
                                              Replies: progress*, then result or error.
    cancel    {id, target}                    interrupt generation ``target``; it ends with error kind
                                              "cancelled" (the cancel itself gets no reply).
    free      {id}                            release the loaded model and empty the caches.  Reply: freed
                                              (error kind "busy" while a generation runs).
    status    {id}                            Reply: status.
    lora_dir  {id, model}                     Reply: lora_dir, Wan2GP's LoRA folder for that model.
    shutdown  {id}                            cancel what runs, release the model.  Reply: bye, then exit 0.

Events (child → parent)::

    ready     {pid, protocol, wan2gp_version, model, memory}      first line, once: the child can take requests
    progress  {id, phase, step, total, percent, status}           during a generate
    result    {id, model, files, switched, load_s, run_s, memory} generate done; ``files``: absolute paths
    error     {id, kind, message, details}                        a request failed (``id`` null: not tied to one)
    freed     {id, model, memory}                                 ``model``: what was released (null: nothing)
    status    {id, model, busy, memory}
    lora_dir  {id, model, path}
    bye       {id}

Error kinds (:data:`ERROR_KINDS`): ``oom`` (GPU or host memory ran out), ``invalid`` (Wan2GP refused the
settings), ``failed`` (generation raised), ``unavailable`` (a transient fault, e.g. a weights download),
``cancelled``, ``busy`` (free while generating, or a second generate), ``bad_request`` (a request that does not
parse), ``internal`` (a bug in the child).

``memory`` is a :class:`Memory`: what the child holds (process RSS) and, where torch sees a GPU, the GPU
figures. Every field may be null when the child cannot measure it.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, Union

PROTOCOL_VERSION = 1
ERROR_KINDS = frozenset(
    {"oom", "invalid", "failed", "unavailable", "cancelled", "busy", "bad_request", "internal"}
)
PHASES = ("loading_model", "encoding_text", "inference", "decoding", "saving", "cancelled", "other")
MAX_LINE_BYTES = 4 * 1024 * 1024  # a request or event is small; a longer line is a bug or garbage


class ProtocolError(ValueError):
    """A line that is not a valid message of this protocol version. ``key`` names the offending key."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Memory:
    """Memory the child holds. Bytes; None where it cannot be measured (no torch, no GPU)."""

    rss_bytes: int | None = None
    gpu_allocated_bytes: int | None = None
    gpu_reserved_bytes: int | None = None
    gpu_peak_bytes: int | None = None
    gpu_free_bytes: int | None = None
    gpu_total_bytes: int | None = None


# --- requests (parent → child) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generate:
    op: ClassVar[str] = "generate"
    id: str
    model: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class Cancel:
    op: ClassVar[str] = "cancel"
    id: str
    target: str


@dataclass(frozen=True)
class Free:
    op: ClassVar[str] = "free"
    id: str


@dataclass(frozen=True)
class Status:
    op: ClassVar[str] = "status"
    id: str


@dataclass(frozen=True)
class LoraDir:
    op: ClassVar[str] = "lora_dir"
    id: str
    model: str


@dataclass(frozen=True)
class Shutdown:
    op: ClassVar[str] = "shutdown"
    id: str


Request = Generate | Cancel | Free | Status | LoraDir | Shutdown
REQUESTS: dict[str, type[Any]] = {c.op: c for c in (Generate, Cancel, Free, Status, LoraDir, Shutdown)}


# --- events (child → parent) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    type: ClassVar[str] = "ready"
    pid: int
    protocol: int
    wan2gp_version: str | None
    model: str | None
    memory: Memory = field(default_factory=Memory)


@dataclass(frozen=True)
class Progress:
    type: ClassVar[str] = "progress"
    id: str
    phase: str
    step: int | None = None
    total: int | None = None
    percent: float | None = None
    status: str = ""


@dataclass(frozen=True)
class Result:
    type: ClassVar[str] = "result"
    id: str
    model: str
    files: list[str]
    switched: bool
    load_s: float
    run_s: float
    memory: Memory = field(default_factory=Memory)


@dataclass(frozen=True)
class Error:
    type: ClassVar[str] = "error"
    id: str | None
    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ERROR_KINDS:
            raise ProtocolError(f"error.kind must be one of {sorted(ERROR_KINDS)}, got {self.kind!r}", "kind")


@dataclass(frozen=True)
class Freed:
    type: ClassVar[str] = "freed"
    id: str
    model: str | None
    memory: Memory = field(default_factory=Memory)


@dataclass(frozen=True)
class StatusReply:
    type: ClassVar[str] = "status"
    id: str
    model: str | None
    busy: bool
    memory: Memory = field(default_factory=Memory)


@dataclass(frozen=True)
class LoraDirReply:
    type: ClassVar[str] = "lora_dir"
    id: str
    model: str
    path: str


@dataclass(frozen=True)
class Bye:
    type: ClassVar[str] = "bye"
    id: str


Event = Ready | Progress | Result | Error | Freed | StatusReply | LoraDirReply | Bye
EVENTS: dict[str, type[Any]] = {
    c.type: c for c in (Ready, Progress, Result, Error, Freed, StatusReply, LoraDirReply, Bye)
}


# --- encoding / decoding --------------------------------------------------------------------------------------


def encode(message: Request | Event) -> str:
    """One protocol line (with the trailing newline)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION}
    kind = getattr(message, "op", None)
    body["op" if kind is not None else "type"] = kind if kind is not None else message.type  # type: ignore[union-attr]
    body.update(asdict(message))
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"


def parse_request(line: str | bytes) -> Request:
    """A request line → its message; ProtocolError otherwise."""
    return _parse(line, "op", REQUESTS)  # type: ignore[return-value]


def parse_event(line: str | bytes) -> Event:
    """An event line → its message; ProtocolError otherwise."""
    return _parse(line, "type", EVENTS)  # type: ignore[return-value]


def request_id_of(line: str | bytes) -> str | None:
    """The ``id`` of a line that failed to parse, when it has a string one (so the error can answer it)."""
    try:
        raw = json.loads(line)
    except (ValueError, TypeError):
        return None
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _parse(line: str | bytes, tag: str, table: dict[str, type[Any]]) -> Any:
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes is over the {MAX_LINE_BYTES}-byte limit")
    try:
        raw = json.loads(line)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(raw).__name__}")
    version = raw.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version must be {PROTOCOL_VERSION}, got {version!r}", "v")
    name = raw.pop(tag, None)
    cls = table.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"{tag} must be one of {sorted(table)}, got {name!r}", tag)
    return _build(cls, raw, name)


def _build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    extra = sorted(set(raw) - names)
    if extra:
        raise ProtocolError(f"{where}: unexpected key {extra[0]!r} (accepted: {', '.join(sorted(names))})", extra[0])
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = f"{where}.{f.name}"
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError(f"{key} is missing", f.name)
            continue
        values[f.name] = _value(raw[f.name], hints[f.name], key)
    try:
        return cls(**values)
    except ProtocolError as exc:
        raise ProtocolError(f"{where}: {exc}", exc.key) from None


def _value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _value(value, option, key)
            except ProtocolError as exc:
                problems.append(str(exc))
        raise ProtocolError(problems[0] if problems else f"{key} must not be null", key.rsplit(".", 1)[-1])
    if hint is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise _wrong(key, "a list", value)
        return [_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _wrong(key, "an object", value)
        return value
    if hint is Memory:
        if not isinstance(value, dict):
            raise _wrong(key, "an object", value)
        return _build(Memory, dict(value), key)
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(key, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(key, "an integer", value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(key, "a number", value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(key, "a string", value)
        return value
    raise ProtocolError(f"{key}: no rule for type {hint!r}")  # a bug in this module, not in the peer


def _wrong(key: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(f"{key} must be {expected}, got {json.dumps(value)[:80]}", key.rsplit(".", 1)[-1])

"""Settings: one frozen object, read once from the environment (and ``.env``), validated at start-up.

Every setting is declared once in :data:`FIELDS` with its type, default and a one-line help text;
``.env.example`` is checked against this list by the tests. A bad or missing value raises
:class:`~comfy_worker.errors.ConfigError` naming the variable and what it expects.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from comfy_worker.errors import ConfigError

SECRET_FIELDS = frozenset({"database_url", "supabase_service_role_key", "runpod_api_key", "webhook_secret"})


def _bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def parse_number(name: str, raw: str, kind: Callable[[str], Any], minimum: float | None = None) -> Any:
    """``kind(raw)`` checked against ``minimum``; ConfigError naming the variable otherwise."""
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected a {kind.__name__} number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")
    return value


def _number(kind: Callable[[str], Any], minimum: float | None = None) -> Callable[[str, str], Any]:
    return lambda name, raw: parse_number(name, raw, kind, minimum)


def _csv(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _str(_name: str, raw: str) -> str:
    return raw.strip()


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        v = raw.strip().lower()
        if v not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}, got {raw!r}")
        return v

    return parse


@dataclass(frozen=True)
class Settings:
    """All settings. Attribute ``foo_bar`` is read from environment variable ``FOO_BAR``."""

    # identity and logging
    worker_id: str = ""
    log_format: str = "auto"
    log_level: str = "info"
    # queue
    database_url: str = ""
    supabase_url: str = ""
    supabase_service_role_key: str = ""
    auto_migrate: bool = True
    task_types: tuple[str, ...] = ()
    # Recovery of a dead worker's task: on Postgres its presence lock frees at once, found by the next
    # requeue_stale (every STALE_CHECK_INTERVAL, on every worker) plus a 2 s grace: ~2-4 s. On Supabase and
    # SQLite its lease runs out: at most LEASE_SECONDS after its last heartbeat + STALE_CHECK_INTERVAL +
    # POLL_INTERVAL, ~34 s. A heartbeat every 5 s lets a lease survive 5 missed ones (a database blip).
    lease_seconds: float = 30.0
    heartbeat_interval: float = 5.0
    poll_interval: float = 2.0
    stale_check_interval: float = 2.0
    worker_timeout_s: float = 90.0
    prefetch: int = 1
    shutdown_grace_s: float = 30.0
    task_timeout_s: float = 3600.0
    stall_timeout_s: float = 600.0
    progress_interval_s: float = 1.0
    # ComfyUI
    comfy_url: str = ""
    comfy_path: str = ""
    comfy_python: str = ""
    comfy_listen: str = "127.0.0.1"
    comfy_port: int = 8188
    comfy_args: str = ""
    comfy_startup_timeout: float = 180.0
    comfy_restart_max: int = 5
    comfy_output_dir: str = ""
    # "worker": a task's SaveVideo becomes ComfyWorkerSaveVideo and the worker encodes the frames with ffmpeg while
    # ComfyUI runs the next prompt (engine/frames.py); "comfyui": SaveVideo encodes on ComfyUI's path
    video_encode: str = "worker"
    # gc.freeze() in the ComfyUI we launch after a slow full collection (comfy_nodes/comfy_worker_nodes/gc_freeze.py)
    comfy_gc_freeze: bool = False
    # long runs: cleanup of what tasks leave in ComfyUI, orphan sweeps, the disk floor (README "Running for weeks")
    comfy_input_dir: str = ""
    comfy_temp_dir: str = ""
    keep_comfy_files: bool = False
    min_free_disk_gb: float = 2.0
    orphan_sweep_interval_s: float = 600.0
    # storage: STORAGE_URL (s3:// gs:// az:// file:// supabase://) selects the store; else Supabase, else local
    storage_url: str = ""
    public_base_url: str = ""
    storage_bucket: str = "outputs"
    storage_public: bool = False
    signed_url_ttl_s: int = 60 * 60 * 24 * 365
    local_storage_dir: str = "outputs"
    # inputs
    input_max_bytes: int = 4 * 1024**3
    input_timeout_s: float = 300.0
    input_url_allowlist: tuple[str, ...] = ()
    allow_private_urls: bool = False
    work_dir: str = ""
    # webhooks (README "Webhooks"): task ends POSTed to the task's callback_url, else WEBHOOK_URL
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_events: tuple[str, ...] = ()
    webhook_timeout_s: float = 10.0
    webhook_concurrency: int = 4
    webhook_poll_s: float = 2.0
    webhook_retry_for_s: float = 86400.0
    webhook_backoff_base_s: float = 5.0
    webhook_backoff_cap_s: float = 3600.0
    webhook_url_allowlist: tuple[str, ...] = ()
    # Wan2GP (worker_wgp)
    wan2gp_path: str = ""
    wan2gp_python: str = ""
    wan2gp_args: str = ""
    wan2gp_startup_timeout: float = 300.0
    wan2gp_restart_max: int = 5
    wan2gp_lora_max_bytes: int = 2 * 1024**3
    engine_switch_max_wait_s: float = 300.0
    engine_free_timeout_s: float = 60.0
    # orchestrator / RunPod
    runpod_api_key: str = ""
    runpod_pod_id: str = ""
    runpod_api_url: str = "https://api.runpod.io/v2"
    # model files (comfy-worker models check | sync; start-up report in the heartbeat)
    models_dir: str = ""
    models_manifest: str = ""
    models_groups: tuple[str, ...] = ()
    # warm start (daemon/warm.py; README "Performance")
    warm_prefetch: bool = False
    warm_models: tuple[str, ...] = ()
    warm_prefetch_streams: int = 8
    warm_prefetch_start: str = "launch"
    warm_prefetch_ram_fraction: float = 0.8
    warm_up: bool = False
    # prompt runner
    dry_run: bool = False
    dry_run_temp_dir: str = ""
    profiles_dir: str = ""

    @property
    def queue_backend(self) -> str:
        """``postgres``, ``supabase`` or ``sqlite`` — which store this configuration selects."""
        if self.database_url.startswith(("postgresql://", "postgres://")):
            return "postgres"
        if self.database_url.startswith("sqlite:"):
            return "sqlite"
        if self.supabase_url:
            return "supabase"
        return "sqlite"

    @property
    def sqlite_path(self) -> Path:
        if self.database_url.startswith("sqlite:"):
            raw = self.database_url.removeprefix("sqlite:").removeprefix("///").removeprefix("//")
            if self.database_url.startswith("sqlite:////"):
                raw = "/" + raw.lstrip("/")
            return Path(raw or "comfy_worker.db")
        return Path("comfy_worker.db")

    @property
    def comfy_output_path(self) -> Path | None:
        """Where ComfyUI writes outputs and where nodes that read by absolute path find them: COMFY_OUTPUT_DIR,
        else COMFY_PATH/output when we launch ComfyUI; None when attached without COMFY_OUTPUT_DIR."""
        if self.comfy_output_dir:
            return Path(self.comfy_output_dir).expanduser().resolve()
        if self.comfy_path and not self.comfy_url:
            return (Path(self.comfy_path).expanduser() / "output").resolve()
        return None

    @property
    def profiles_path(self) -> Path | None:
        """PROFILES_DIR resolved: where prompt_runner tasks may name profiles besides the shipped ones."""
        return Path(self.profiles_dir).expanduser().resolve() if self.profiles_dir else None

    @property
    def models_path(self) -> Path | None:
        """Where the model folders (diffusion_models/, vae/, …) are: MODELS_DIR, else COMFY_PATH/models."""
        if self.models_dir:
            return Path(self.models_dir).expanduser()
        if self.comfy_path:
            return Path(self.comfy_path).expanduser() / "models"
        return None

    @property
    def storage_backend(self) -> str:
        """``object`` (s3/gs/az through obstore), ``supabase`` or ``local`` — which store keeps outputs."""
        scheme = storage_url_scheme(self.storage_url)
        if scheme in OBJECT_STORE_SCHEMES:
            return "object"
        if scheme == "file":
            return "local"
        if scheme == "supabase" or (self.supabase_url and self.supabase_service_role_key):
            return "supabase"
        return "local"

    @property
    def local_storage_path(self) -> Path:
        """The directory of the local store: STORAGE_URL=file:///abs/dir, else LOCAL_STORAGE_DIR."""
        if storage_url_scheme(self.storage_url) == "file":
            return Path(unquote(urlsplit(self.storage_url).path))
        return Path(self.local_storage_dir)

    @property
    def supabase_bucket(self) -> str:
        """The Supabase Storage bucket: STORAGE_URL=supabase://bucket, else STORAGE_BUCKET."""
        if storage_url_scheme(self.storage_url) == "supabase":
            return urlsplit(self.storage_url).netloc
        return self.storage_bucket

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked: the only form in which settings are ever logged."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = _redact_url(value) if f.name == "database_url" else "***"
            out[f.name] = value
        return out


# What a task input may name as a URL: fetched over HTTP, or from an object store with the store's credentials.
INPUT_URL_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "azure://")


def is_input_url(value: object) -> bool:
    """Whether ``value`` is a URL an input may be fetched from; the scheme is matched case-insensitively
    (``HTTPS://`` and ``S3://`` are the same URLs, as in ``engine.workflow``)."""
    return isinstance(value, str) and value[:9].lower().startswith(INPUT_URL_PREFIXES)

# STORAGE_URL schemes served by obstore (Rust object_store); ``azure`` is an alias of ``az``.
OBJECT_STORE_SCHEMES = frozenset({"s3", "gs", "az", "azure"})
STORAGE_URL_SCHEMES = (*sorted(OBJECT_STORE_SCHEMES), "file", "supabase")
_STORAGE_URL_HINT = (
    "expected s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///abs/dir or supabase://bucket"
)


def storage_url_scheme(url: str) -> str:
    """The scheme of a STORAGE_URL (lower case), or "" when none is set."""
    return url.split("://", 1)[0].lower() if "://" in url else ("" if not url else "?")


def check_storage_url(url: str) -> None:
    """ConfigError naming STORAGE_URL when it is not one of the forms the workers understand."""
    scheme = storage_url_scheme(url)
    if scheme not in STORAGE_URL_SCHEMES:
        raise ConfigError("STORAGE_URL", f"{_STORAGE_URL_HINT}, got {url!r} (unknown scheme {scheme!r})")
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            "STORAGE_URL",
            "takes no query, fragment or credentials: credentials come from the cloud's own environment "
            "(AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY, ...)",
        )
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise ConfigError("STORAGE_URL", f"the path may not contain '.' or '..' segments, got {url!r}")
    if scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError("STORAGE_URL", f"expected file:///absolute/dir, got {url!r}")
    elif not parts.netloc:
        raise ConfigError("STORAGE_URL", f"{_STORAGE_URL_HINT}: {url!r} names no bucket")
    elif scheme == "supabase" and segments:
        raise ConfigError("STORAGE_URL", f"supabase://bucket takes no prefix, got {url!r}")


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


# How each field is parsed from its environment variable (fields not listed are plain strings).
_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "log_format": _choice("auto", "json", "console"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "video_encode": _choice("worker", "comfyui"),
    "comfy_gc_freeze": _bool,
    "auto_migrate": _bool,
    "task_types": _csv,
    "lease_seconds": _number(float, 1),
    "heartbeat_interval": _number(float, 0.05),
    "poll_interval": _number(float, 0.01),
    "stale_check_interval": _number(float, 0.05),
    "worker_timeout_s": _number(float, 1),
    "prefetch": _number(int, 0),
    "shutdown_grace_s": _number(float, 0),
    "task_timeout_s": _number(float, 1),
    "stall_timeout_s": _number(float, 1),
    "progress_interval_s": _number(float, 0),
    "comfy_port": _number(int, 1),
    "comfy_startup_timeout": _number(float, 1),
    "comfy_restart_max": _number(int, 0),
    "wan2gp_startup_timeout": _number(float, 1),
    "wan2gp_restart_max": _number(int, 0),
    "wan2gp_lora_max_bytes": _number(int, 1),
    "engine_switch_max_wait_s": _number(float, 0),
    "engine_free_timeout_s": _number(float, 0.1),
    "keep_comfy_files": _bool,
    "min_free_disk_gb": _number(float, 0),
    "orphan_sweep_interval_s": _number(float, 1),
    "storage_public": _bool,
    "signed_url_ttl_s": _number(int, 1),
    "input_max_bytes": _number(int, 1),
    "input_timeout_s": _number(float, 0.1),
    "input_url_allowlist": _csv,
    "allow_private_urls": _bool,
    "models_groups": _csv,
    "webhook_events": _csv,
    "webhook_timeout_s": _number(float, 0.1),
    "webhook_concurrency": _number(int, 1),
    "webhook_poll_s": _number(float, 0.01),
    "webhook_retry_for_s": _number(float, 0),
    "webhook_backoff_base_s": _number(float, 0),
    "webhook_backoff_cap_s": _number(float, 0),
    "webhook_url_allowlist": _csv,
    "warm_prefetch": _bool,
    "warm_models": _csv,
    "warm_prefetch_streams": _number(int, 1),
    "warm_prefetch_start": _choice("launch", "torch"),
    "warm_prefetch_ram_fraction": _number(float, 0.01),
    "warm_up": _bool,
    "dry_run": _bool,
}


def read_environment(
    env: Mapping[str, str] | None = None, dotenv: str | os.PathLike[str] | None = ".env"
) -> dict[str, str]:
    """``env`` as given, or ``.env`` overlaid by ``os.environ`` (the environment wins)."""
    if env is not None:
        return dict(env)
    source: dict[str, str] = {}
    if dotenv is not None and Path(dotenv).is_file():
        from dotenv import dotenv_values

        source.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    source.update(os.environ)
    return source


def load_settings(
    env: Mapping[str, str] | None = None, *, dotenv: str | os.PathLike[str] | None = ".env", **overrides: Any
) -> Settings:
    """Read settings from ``env`` (default: ``os.environ`` plus ``.env``, the environment winning), apply
    keyword overrides (command-line flags), validate, and return the frozen object."""
    source = read_environment(env, dotenv)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = source.get(f.name.upper())
        if raw is None or (raw.strip() == "" and f.name not in ("comfy_args",)):
            continue
        values[f.name] = _PARSERS.get(f.name, _str)(f.name.upper(), raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if s.database_url and not s.database_url.startswith(("postgresql://", "postgres://", "sqlite:")):
        raise ConfigError("DATABASE_URL", "expected postgresql://user@host:port/db or sqlite:///path/to/file.db")
    if bool(s.supabase_url) != bool(s.supabase_service_role_key):
        missing = "SUPABASE_SERVICE_ROLE_KEY" if s.supabase_url else "SUPABASE_URL"
        raise ConfigError(missing, "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set together")
    if s.supabase_url and not s.supabase_url.startswith(("http://", "https://")):
        raise ConfigError("SUPABASE_URL", f"expected https://<project>.supabase.co, got {s.supabase_url!r}")
    if s.storage_url:
        check_storage_url(s.storage_url)
        if storage_url_scheme(s.storage_url) == "supabase" and not s.supabase_url:
            raise ConfigError(
                "STORAGE_URL", "supabase://bucket needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
            )
    if s.public_base_url and not s.public_base_url.startswith(("http://", "https://")):
        raise ConfigError("PUBLIC_BASE_URL", f"expected https://cdn.example.com/..., got {s.public_base_url!r}")
    if s.comfy_url and not s.comfy_url.startswith(("http://", "https://")):
        raise ConfigError("COMFY_URL", f"expected http://host:port, got {s.comfy_url!r}")
    _validate_webhooks(s)
    _validate_warm(s)
    if s.heartbeat_interval >= s.lease_seconds:
        raise ConfigError(
            "HEARTBEAT_INTERVAL",
            f"must be shorter than LEASE_SECONDS ({s.lease_seconds}) or leases expire between heartbeats",
        )


WEBHOOK_EVENT_NAMES = ("task.completed", "task.failed", "task.cancelled", "task.progress")


def webhook_secrets(raw: str) -> list[bytes]:
    """The signing keys of WEBHOOK_SECRET: one or more ``whsec_<base64>`` separated by spaces or commas (all
    sign each delivery, so a receiver can rotate: add the new secret, switch the receiver, drop the old one).
    The message never repeats a secret, only its position."""
    keys: list[bytes] = []
    for i, token in enumerate(raw.replace(",", " ").split(), start=1):
        where = f"secret {i}" if " " in raw.strip() or "," in raw else "the secret"
        if not token.startswith("whsec_"):
            raise ConfigError(
                "WEBHOOK_SECRET",
                f"{where} must have the Standard Webhooks form whsec_<base64 of 24-64 random bytes>; generate one "
                "with: python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"",
            )
        try:
            key = base64.b64decode(token.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("WEBHOOK_SECRET", f"{where}: the part after whsec_ is not valid base64") from None
        if not 24 <= len(key) <= 64:
            raise ConfigError(
                "WEBHOOK_SECRET", f"{where} decodes to {len(key)} bytes; Standard Webhooks secrets are 24 to 64 bytes"
            )
        keys.append(key)
    return keys


def _validate_webhooks(s: Settings) -> None:
    if s.webhook_url and not s.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("WEBHOOK_URL", "expected an http:// or https:// URL of the receiver")
    if s.webhook_secret:
        webhook_secrets(s.webhook_secret)
    elif s.webhook_url:
        raise ConfigError("WEBHOOK_SECRET", "is required with WEBHOOK_URL: every delivery is signed (whsec_…)")
    for event in s.webhook_events:
        if event not in WEBHOOK_EVENT_NAMES:
            raise ConfigError("WEBHOOK_EVENTS", f"unknown event {event!r}; known: {', '.join(WEBHOOK_EVENT_NAMES)}")


def _validate_warm(s: Settings) -> None:
    if s.warm_prefetch_ram_fraction > 1:
        raise ConfigError(
            "WARM_PREFETCH_RAM_FRACTION", f"a fraction of MemAvailable in (0, 1], got {s.warm_prefetch_ram_fraction}"
        )
    for name in s.warm_models:
        p = Path(name)
        if ".." in p.parts:
            raise ConfigError("WARM_MODELS", f"{name!r}: give folder/file under MODELS_DIR or an absolute path, not ..")
        if not p.is_absolute() and s.models_path is None:
            raise ConfigError(
                "WARM_MODELS", f"{name!r} is relative to MODELS_DIR, which is unset (set MODELS_DIR or COMFY_PATH)"
            )
    if s.warm_models and not s.warm_prefetch:
        raise ConfigError("WARM_MODELS", "names files for WARM_PREFETCH, which is off: set WARM_PREFETCH=true")
    if s.warm_prefetch and not s.warm_models and s.models_path is None:
        raise ConfigError(
            "WARM_PREFETCH",
            "needs to know where the models are: set MODELS_DIR (or COMFY_PATH), or list absolute paths in WARM_MODELS",
        )
    if s.warm_up and not (s.comfy_path or s.comfy_url):
        raise ConfigError("WARM_UP", "loads models into ComfyUI: set COMFY_PATH or COMFY_URL, or WARM_UP=false")


def default_worker_id() -> str:
    return f"comfy-worker-{socket.gethostname()}-{os.getpid()}"


# Help text per variable, used to check .env.example covers every setting.
ENV_VARS = tuple(f.name.upper() for f in fields(Settings))
_ = field  # keep dataclasses.field importable for subclasses in tests

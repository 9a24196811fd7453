from __future__ import annotations

import io
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import structlog

from comfy_worker.config import Settings, load_settings
from comfy_worker.errors import ConfigError
from comfy_worker.logs import configure_logging, get_logger, register_secret, task_context

REPO = Path(__file__).resolve().parents[2]


def test_env_example_lists_every_setting() -> None:
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), re.M))
    assert {f.name.upper() for f in fields(Settings)} <= listed


@pytest.mark.parametrize(
    ("env", "variable", "text"),
    [
        ({"LEASE_SECONDS": "-1"}, "LEASE_SECONDS", "must be >= 1"),
        ({"PREFETCH": "two"}, "PREFETCH", "expected a int number"),
        ({"STORAGE_PUBLIC": "maybe"}, "STORAGE_PUBLIC", "expected true or false"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL", "postgresql://"),
        ({"SUPABASE_URL": "https://x.supabase.co"}, "SUPABASE_SERVICE_ROLE_KEY", "set together"),
        ({"HEARTBEAT_INTERVAL": "90"}, "HEARTBEAT_INTERVAL", "shorter than LEASE_SECONDS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT", "one of auto, json, console"),
        ({"WEBHOOK_URL": "https://example.com/hook"}, "WEBHOOK_SECRET", "required with WEBHOOK_URL"),
        ({"WEBHOOK_SECRET": "hunter2hunter2"}, "WEBHOOK_SECRET", "whsec_"),
        ({"WEBHOOK_SECRET": "whsec_not*base64"}, "WEBHOOK_SECRET", "not valid base64"),
        ({"WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "WEBHOOK_SECRET", "24 to 64 bytes"),
        ({"WEBHOOK_URL": "ftp://x/hook"}, "WEBHOOK_URL", "http:// or https://"),
        ({"WEBHOOK_EVENTS": "task.done"}, "WEBHOOK_EVENTS", "unknown event"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.variable == variable and text in str(info.value)


def test_backend_selection() -> None:
    assert load_settings({}).queue_backend == "sqlite"
    assert load_settings({"DATABASE_URL": "postgresql://u@h/db"}).queue_backend == "postgres"
    assert load_settings({"DATABASE_URL": "sqlite:////tmp/q.db"}).sqlite_path == Path("/tmp/q.db")
    s = load_settings({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k" * 40})
    assert s.queue_backend == "supabase" and s.storage_backend == "supabase"


def test_dotenv_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PREFETCH=3\nCOMFY_PORT=9999\n")
    monkeypatch.setenv("COMFY_PORT", "8190")
    s = load_settings(dotenv=tmp_path / ".env")
    assert s.prefetch == 3 and s.comfy_port == 8190


def test_redacted_settings_hide_secrets() -> None:
    s = load_settings(
        {
            "DATABASE_URL": "postgresql://svc:hunter2@db:5432/q",
            "SUPABASE_URL": "https://x.supabase.co",
            "SUPABASE_SERVICE_ROLE_KEY": "eyJhbGciOi.secret.key",
            "RUNPOD_API_KEY": "rp_secret",
        }
    )
    text = json.dumps(s.redacted())
    assert "hunter2" not in text and "secret.key" not in text and "rp_secret" not in text
    assert "postgresql://svc:***@db:5432/q" in text


def test_log_lines_carry_context_and_never_secrets() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    register_secret("sb-very-secret-key")
    log = get_logger("t")
    with structlog.contextvars.bound_contextvars(worker_id="comfy-worker-1"):
        log.info("worker_started", note="key is sb-very-secret-key")
        with task_context("t-1", "comfy"):
            log.info(
                "task_claimed",
                headers={"Authorization": "Bearer abc.def.ghi"},
                dsn="postgresql://u:pw@h/db",
                api_key="rp_x",
            )
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [ln["event"] for ln in lines] == ["worker_started", "task_claimed"]
    assert all(ln["worker_id"] == "comfy-worker-1" for ln in lines)
    assert lines[1]["task_id"] == "t-1" and lines[1]["task_type"] == "comfy" and "task_id" not in lines[0]
    text = out.getvalue()
    for secret in ("sb-very-secret-key", "abc.def.ghi", ":pw@", "rp_x"):
        assert secret not in text, secret


def test_a_bad_webhook_secret_is_not_repeated_in_the_error() -> None:
    for bad in ("hunter2hunter2", "whsec_not*base64", "whsec_c2hvcnQ="):
        with pytest.raises(ConfigError) as info:
            load_settings({"WEBHOOK_SECRET": bad})
        assert bad not in str(info.value) and bad.removeprefix("whsec_") not in str(info.value)
    assert "webhook_secret" in Settings.__dataclass_fields__
    assert load_settings({"WEBHOOK_SECRET": "whsec_" + "a" * 44}).redacted()["webhook_secret"] == "***"

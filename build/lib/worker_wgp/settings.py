"""The Wan2GP engine's configuration, from comfy_worker's settings (WAN2GP_*), checked at start-up."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings
from comfy_worker.errors import ConfigError


def check_wan2gp_path(raw: str) -> Path:
    """The Wan2GP checkout WAN2GP_PATH names; ConfigError (one line, naming the variable) when it holds none."""
    if not raw:
        raise ConfigError("WAN2GP_PATH", "not set: point it at a Wan2GP checkout (git clone of deepbeepmeep/Wan2GP)")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError("WAN2GP_PATH", f"{path} is not a directory: point it at a Wan2GP checkout")
    if not (path / "wgp.py").is_file():
        raise ConfigError("WAN2GP_PATH", f"{path} holds no Wan2GP (no wgp.py): point it at a Wan2GP checkout")
    if not (path / "shared" / "api.py").is_file():
        raise ConfigError(
            "WAN2GP_PATH", f"{path} holds a Wan2GP without its Python API (shared/api.py, March 2026 and later): "
            "update the checkout (git pull)"
        )
    return path.resolve()


@dataclass(frozen=True)
class WanEngineConfig:
    wan2gp_path: Path
    output_dir: Path
    python: str = sys.executable
    args: str = ""
    startup_timeout_s: float = 300.0
    restart_max: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    min_uptime_s: float = 60.0  # a child that ran this long resets the failed-start count
    cancel_grace_s: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, output_dir: Path, **overrides: Any) -> WanEngineConfig:
        python = sys.executable
        if settings.wan2gp_python:
            python = os.path.abspath(os.path.expanduser(settings.wan2gp_python))
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise ConfigError("WAN2GP_PYTHON", f"{python} is not an executable file: set it to Wan2GP's python")
        return cls(
            wan2gp_path=check_wan2gp_path(settings.wan2gp_path), output_dir=Path(output_dir), python=python,
            args=settings.wan2gp_args, startup_timeout_s=settings.wan2gp_startup_timeout,
            restart_max=settings.wan2gp_restart_max, **overrides,
        )

"""The shared test ComfyUI for the loop tests whose stand-in pods run the real worker daemon."""

from __future__ import annotations

from tests.integration.engine.conftest import comfyui_server  # noqa: F401 - fixture re-export

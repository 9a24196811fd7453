"""Reading what the exploration commands start from: a workflow file (API format, or a UI export converted with
``engine.ui_to_api``) and ComfyUI's ``/object_info`` (from a server, or a saved JSON file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comfy_worker.engine import ComfyClient, is_ui_format, ui_to_api
from comfy_worker.errors import InputRejected, WorkflowInvalid


def read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputRejected(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InputRejected(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputRejected(
            f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc


def to_api(raw: Any, object_info: dict[str, Any] | None, *, where: str) -> tuple[dict[str, Any], bool]:
    """(API-format workflow, whether it was converted from a UI export)."""
    if is_ui_format(raw):
        if object_info is None:
            raise WorkflowInvalid(
                f"{where} is a UI export; converting it needs the server's node definitions: pass --server URL "
                "(a running ComfyUI) or --object-info FILE (a saved /object_info), or export it with "
                "'Save (API Format)'"
            )
        return ui_to_api(raw, object_info), True
    if not isinstance(raw, dict) or not raw or not all(
        isinstance(n, dict) and isinstance(n.get("class_type"), str) for n in raw.values()
    ):
        raise WorkflowInvalid(
            f"{where} is neither an API-format workflow ({{node_id: {{class_type, inputs}}}}) nor a UI export "
            "(nodes + links)"
        )
    return raw, False


def load_workflow(path: Path, object_info: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
    return to_api(read_json(path, "workflow file"), object_info, where=str(path))


async def fetch_object_info(server: str | None, file: Path | None) -> dict[str, Any] | None:
    """``/object_info`` from ``file`` if given, else from the server, else None."""
    if file is not None:
        info = read_json(file, "object_info file")
        if not isinstance(info, dict):
            raise InputRejected(f"object_info file {file} must be a JSON object of node types")
        return info
    if server:
        async with ComfyClient(server) as client:
            return await client.object_info()
    return None

"""Pure functions on ComfyUI graphs: format detection, UI → API conversion, validation, media inputs.

No I/O here: ``object_info`` is the parsed ``GET /object_info`` of the server the graph will run on. Both its
shapes are understood: the older ``[["a", "b"], {...}]`` enum form and the current ``["COMBO", {"options":
[...]}]`` form, and ``input_order`` when present.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from comfy_worker.errors import WorkflowInvalid

API_FORMAT_ADVICE = (
    "export the workflow with 'Save (API Format)' in ComfyUI (enable Dev mode options in the settings "
    "on older versions) and submit that JSON"
)
PRIMITIVE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "upload")
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft", ".pt2")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
UI_ONLY_NODES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
# Loader inputs that name a file in ComfyUI's input directory, for graphs on servers whose object_info
# does not flag them (or when the node is unknown to the given object_info).
KNOWN_FILE_INPUTS: frozenset[tuple[str, str]] = frozenset(
    {
        ("LoadImage", "image"),
        ("LoadImageMask", "image"),
        ("LoadImageOutput", "image"),
        ("LoadVideo", "file"),
        ("LoadAudio", "audio"),
        ("LoadLatent", "latent"),
        ("VHS_LoadVideo", "video"),
        ("VHS_LoadVideoFFmpeg", "video"),
        ("VHS_LoadAudioUpload", "audio"),
        ("VHS_LoadAudio", "audio_file"),
        ("CWLoadVideo", "video"),
    }
)
_URL = re.compile(r"^https?://", re.I)


class MediaInput(NamedTuple):
    node_id: str
    field: str
    value: str


# --- object_info helpers ---------------------------------------------------------------------------------


def _spec(object_info: Mapping[str, Any], class_type: str) -> dict[str, Any] | None:
    spec = object_info.get(class_type)
    return spec if isinstance(spec, dict) else None


def input_specs(node_spec: Mapping[str, Any]) -> list[tuple[str, Any, dict[str, Any], bool]]:
    """(name, type, options, required) for every declared input, in the server's order."""
    inputs = node_spec.get("input") or {}
    order = node_spec.get("input_order") or {}
    out: list[tuple[str, Any, dict[str, Any], bool]] = []
    for section in ("required", "optional"):
        declared = inputs.get(section) or {}
        names = list(order.get(section) or declared.keys())
        names += [n for n in declared if n not in names]
        for name in names:
            if name not in declared:
                continue
            raw = declared[name]
            kind = raw[0] if isinstance(raw, list | tuple) and raw else raw
            opts = raw[1] if isinstance(raw, list | tuple) and len(raw) > 1 and isinstance(raw[1], dict) else {}
            out.append((name, kind, opts, section == "required"))
    return out


def enum_values(kind: Any, opts: Mapping[str, Any]) -> list[Any] | None:
    """The allowed values of an enum input, or None when the input is not an enum."""
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(opts.get("options") or [])
    return None


def is_widget(kind: Any, opts: Mapping[str, Any]) -> bool:
    """True for inputs the UI shows as a widget (their value sits in ``widgets_values``)."""
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in PRIMITIVE_TYPES


def is_file_input(class_type: str, name: str, opts: Mapping[str, Any]) -> bool:
    return (class_type, name) in KNOWN_FILE_INPUTS or any(opts.get(flag) for flag in UPLOAD_FLAGS)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


# --- format detection and UI → API ----------------------------------------------------------------------


def is_ui_format(wf: Any) -> bool:
    """True for a UI export (``{"nodes": [...], "links": [...]}``) rather than the API format."""
    return isinstance(wf, dict) and isinstance(wf.get("nodes"), list) and isinstance(wf.get("links"), list)


def ui_to_api(wf: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a UI export to the API format, using ``object_info`` to map ``widgets_values`` to names.

    Supports Reroute and PrimitiveNode (resolved away), Note nodes (dropped) and muted nodes (dropped).
    Raises WorkflowInvalid with export advice for what cannot be converted safely (unknown node types,
    bypassed nodes, subgraphs)."""
    if wf.get("definitions", {}).get("subgraphs") if isinstance(wf.get("definitions"), dict) else False:
        raise WorkflowInvalid(f"workflow uses subgraphs, which cannot be converted here: {API_FORMAT_ADVICE}")
    nodes = {str(n["id"]): n for n in wf["nodes"] if isinstance(n, dict) and "id" in n}
    links: dict[int, tuple[str, int]] = {}
    for link in wf["links"]:
        if isinstance(link, list) and len(link) >= 5:
            links[int(link[0])] = (str(link[1]), int(link[2]))
        elif isinstance(link, dict) and "id" in link:
            links[int(link["id"])] = (str(link["origin_id"]), int(link["origin_slot"]))
    problems: list[str] = []

    def resolve(link_id: int | None) -> Any:
        """Follow a link through Reroutes; a PrimitiveNode source yields its value; None if unconnected."""
        seen: set[int] = set()
        while link_id is not None and link_id in links and link_id not in seen:
            seen.add(link_id)
            src_id, slot = links[link_id]
            src = nodes.get(src_id)
            if src is None:
                return None
            if src.get("type") == "Reroute":
                ins = src.get("inputs") or [{}]
                link_id = ins[0].get("link")
                continue
            if src.get("type") == "PrimitiveNode":
                values = src.get("widgets_values") or [None]
                return ("value", values[0])
            if src.get("mode") in (2, 4):
                return None
            return ("link", [src_id, slot])
        return None

    out: dict[str, Any] = {}
    for node_id, node in nodes.items():
        class_type = node.get("type")
        if class_type in UI_ONLY_NODES or node.get("mode") == 2:
            continue
        if node.get("mode") == 4:
            problems.append(f"node {node_id} ({class_type}) is bypassed, which cannot be converted")
            continue
        spec = _spec(object_info, str(class_type))
        if spec is None:
            problems.append(f"node {node_id}: node type {class_type} is not installed")
            continue
        connected = {i.get("name"): i.get("link") for i in node.get("inputs") or [] if isinstance(i, dict)}
        widgets = node.get("widgets_values")
        inputs: dict[str, Any] = {}
        queue = list(widgets) if isinstance(widgets, list) else []
        for name, kind, opts, _required in input_specs(spec):
            value_set = False
            if is_widget(kind, opts):
                if isinstance(widgets, dict):
                    if name in widgets:
                        inputs[name], value_set = widgets[name], True
                elif queue:
                    inputs[name], value_set = queue.pop(0), True
                    if (
                        kind == "INT"
                        and queue
                        and (opts.get("control_after_generate") or name in ("seed", "noise_seed"))
                        and queue[0] in CONTROL_VALUES
                    ):
                        queue.pop(0)
                    if opts.get("image_upload") and queue and queue[0] == "image":
                        queue.pop(0)
            resolved = resolve(connected.get(name)) if connected.get(name) is not None else None
            if resolved is not None:
                inputs[name] = resolved[1]
            elif not value_set:
                inputs.pop(name, None)
        out[node_id] = {
            "class_type": class_type,
            "inputs": inputs,
            "_meta": {"title": node.get("title") or class_type},
        }
    if problems:
        raise WorkflowInvalid(
            "cannot convert this UI-format workflow: " + "; ".join(problems) + f". {API_FORMAT_ADVICE}",
            details={"problems": problems},
        )
    return out


# --- validation ------------------------------------------------------------------------------------------


def _looks_like_model(name: str, value: Any, allowed: list[Any]) -> bool:
    exts = tuple(e for e in MODEL_EXTENSIONS)
    if isinstance(value, str) and value.lower().endswith(exts):
        return True
    if any(isinstance(a, str) and a.lower().endswith(exts) for a in allowed):
        return True
    return name.endswith(("_name", "ckpt", "model"))


def _check_value(node_id: str, class_type: str, name: str, kind: Any, opts: dict[str, Any], value: Any) -> str | None:
    where = f"node {node_id} ({class_type}) input '{name}'"
    allowed = enum_values(kind, opts)
    if allowed is not None:
        if not allowed or is_file_input(class_type, name, opts) or value in allowed:
            return None
        if _looks_like_model(name, value, allowed):
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3, cutoff=0.4)
            hint = ", ".join(close) if close else "none"
            return f"{where}: model {value} is not installed; close matches: {hint}; fetch it: comfy-worker models sync"
        shown = ", ".join(str(a) for a in allowed[:12]) + (", …" if len(allowed) > 12 else "")
        return f"{where}: value {value!r} is not allowed; allowed: {shown}"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    return f"{where}: expected a number, got {value!r}"
            else:
                return f"{where}: expected a number, got {value!r}"
        if kind == "INT" and isinstance(value, float) and not value.is_integer():
            return f"{where}: expected an integer, got {value!r}"
        lo, hi = opts.get("min"), opts.get("max")
        if isinstance(lo, int | float) and value < lo:
            return f"{where}: {value} is below the minimum {lo}"
        if isinstance(hi, int | float) and value > hi:
            return f"{where}: {value} is above the maximum {hi}"
    return None


def problems(workflow: Any, object_info: Mapping[str, Any], *, unknown_nodes: str = "error") -> list[dict[str, Any]]:
    """Every problem of an API-format workflow, as ``{"node_id", "class_type", "input", "message"}``.

    ``unknown_nodes="skip"`` is for offline checks against an object_info that only knows core nodes (e.g. the
    shared 0.3.64 fixture): node types it does not list are taken on trust instead of reported."""
    if not isinstance(workflow, dict) or not workflow:
        return [
            {
                "node_id": None,
                "class_type": None,
                "input": None,
                "message": "workflow must be a non-empty JSON object {node_id: {class_type, inputs}}",
            }
        ]
    found: list[dict[str, Any]] = []

    def add(node_id: str | None, class_type: Any, name: str | None, message: str) -> None:
        found.append({"node_id": node_id, "class_type": class_type, "input": name, "message": message})

    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            add(node_id, None, None, f"node {node_id}: expected {{'class_type': str, 'inputs': {{...}}}}")
            continue
        class_type = node["class_type"]
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            add(node_id, class_type, None, f"node {node_id} ({class_type}): 'inputs' must be an object")
            continue
        spec = _spec(object_info, class_type)
        if spec is None and unknown_nodes == "skip":
            for name, value in inputs.items():  # still: links must point at nodes that exist
                if _is_link(value) and not isinstance(workflow.get(str(value[0])), dict):
                    add(
                        node_id,
                        class_type,
                        name,
                        f"node {node_id} ({class_type}) input '{name}' links to node {value[0]}, which does not exist",
                    )
            continue
        if spec is None:
            add(
                node_id,
                class_type,
                None,
                f"node {node_id}: node type {class_type} is not installed (custom node pack missing?)",
            )
            continue
        declared = {name: (kind, opts, req) for name, kind, opts, req in input_specs(spec)}
        for name, (_kind, _opts, req) in declared.items():
            if req and name not in inputs:
                add(
                    node_id,
                    class_type,
                    name,
                    f"node {node_id} ({class_type}): required input '{name}' is missing",
                )
        for name, value in inputs.items():
            if _is_link(value):
                src_id, slot = str(value[0]), value[1]
                src = workflow.get(src_id)
                if not isinstance(src, dict):
                    add(
                        node_id,
                        class_type,
                        name,
                        f"node {node_id} ({class_type}) input '{name}' links to node {src_id}, which does not exist",
                    )
                    continue
                src_spec = _spec(object_info, str(src.get("class_type")))
                if src_spec is not None:
                    n_out = len(src_spec.get("output") or [])
                    if slot < 0 or slot >= n_out:
                        add(
                            node_id,
                            class_type,
                            name,
                            f"node {node_id} ({class_type}) input '{name}' links to output {slot} of node "
                            f"{src_id} ({src['class_type']}), which has {n_out} output(s)",
                        )
                continue
            if name in declared:
                kind, opts, _ = declared[name]
                msg = _check_value(node_id, class_type, name, kind, opts, value)
                if msg:
                    add(node_id, class_type, name, msg)
    return found


def validate(workflow: Any, object_info: Mapping[str, Any]) -> None:
    """Raise WorkflowInvalid listing every problem (see :func:`problems`); return None when it can run."""
    found = problems(workflow, object_info)
    if found:
        listed = "; ".join(p["message"] for p in found)
        raise WorkflowInvalid(f"workflow is invalid ({len(found)} problem(s)): {listed}", details={"problems": found})


# --- media inputs ----------------------------------------------------------------------------------------


def find_media_inputs(workflow: Mapping[str, Any], object_info: Mapping[str, Any] | None = None) -> list[MediaInput]:
    """Loader-node file inputs whose value is an http(s) URL: ``[(node_id, field, url), …]``."""
    found: list[MediaInput] = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            continue
        class_type = str(node.get("class_type"))
        spec = _spec(object_info or {}, class_type)
        opts_by_name = {n: o for n, _k, o, _r in input_specs(spec)} if spec else {}
        for name, value in (node.get("inputs") or {}).items():
            if (
                isinstance(value, str)
                and _URL.match(value.strip())
                and is_file_input(class_type, name, opts_by_name.get(name, {}))
            ):
                found.append(MediaInput(str(node_id), name, value.strip()))
    return found


def set_input(workflow: dict[str, Any], node_id: str, field: str, value: Any) -> None:
    """Set ``workflow[node_id].inputs[field]``; WorkflowInvalid naming the node when it does not exist."""
    node = workflow.get(str(node_id))
    if not isinstance(node, dict):
        raise WorkflowInvalid(
            f"node {node_id} does not exist in the workflow (nodes: {', '.join(list(workflow)[:20])})"
        )
    node.setdefault("inputs", {})[field] = value

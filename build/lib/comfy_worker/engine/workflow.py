"""Pure functions on ComfyUI graphs: format detection, UI → API conversion, validation, media inputs.

No I/O here: ``object_info`` is the parsed ``GET /object_info`` of the server the graph will run on. Both its
shapes are understood: the older ``[["a", "b"], {...}]`` enum form and the current ``["COMBO", {"options":
[...]}]`` form, and ``input_order`` when present.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, NamedTuple

from comfy_worker.config import is_input_url
from comfy_worker.engine.nodespec import (  # noqa: F401 - re-exported: the public names of engine.workflow
    API_FORMAT_ADVICE,
    PRIMITIVE_TYPES,
    enum_values,
    input_specs,
    is_widget,
)
from comfy_worker.engine.ui_convert import convert
from comfy_worker.errors import WorkflowInvalid

UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "upload")
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft", ".pt2")
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
# Loader inputs that name a model file → the folder under ComfyUI's models/ where that file belongs.
MODEL_FOLDERS: dict[tuple[str, str], str] = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("AudioEncoderLoader", "audio_encoder_name"): "audio_encoders",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("StyleModelLoader", "style_model_name"): "style_models",
}


class MediaInput(NamedTuple):
    node_id: str
    field: str
    value: str


# --- object_info helpers ---------------------------------------------------------------------------------


def _spec(object_info: Mapping[str, Any], class_type: str) -> dict[str, Any] | None:
    spec = object_info.get(class_type)
    return spec if isinstance(spec, dict) else None


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


def ui_to_api(
    wf: Mapping[str, Any], object_info: Mapping[str, Any], *, server: str = "this ComfyUI"
) -> dict[str, Any]:
    """Convert a UI export to the API format, using ``object_info`` to map ``widgets_values`` to input names.

    Subgraphs are flattened, primitives and reroutes resolved, muted nodes dropped, bypassed nodes passed
    through; what cannot be converted raises WorkflowInvalid naming each node and the reason (``server`` names
    the target in those messages, e.g. "ComfyUI 0.3.64"). See :mod:`comfy_worker.engine.ui_convert`."""
    return convert(wf, object_info, server=server)


# --- validation ------------------------------------------------------------------------------------------


def _looks_like_model(name: str, value: Any, allowed: list[Any]) -> bool:
    if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
        return True
    if any(isinstance(a, str) and a.lower().endswith(MODEL_EXTENSIONS) for a in allowed):
        return True
    # by name only when the list says nothing: a filled list without model files is not of models
    # (KSampler's sampler_name ends in "_name" too: a typo there is not "model eulr is not installed")
    return not allowed and name.endswith(("_name", "ckpt", "model"))


def model_folder(class_type: str, name: str) -> str | None:
    """The folder under ComfyUI's ``models/`` where the file a loader input names belongs (None if unknown)."""
    return MODEL_FOLDERS.get((class_type, name))


def _check_value(
    node_id: str,
    class_type: str,
    name: str,
    kind: Any,
    opts: dict[str, Any],
    value: Any,
    empty_model_lists: str = "unknown",
) -> str | None:
    where = f"node {node_id} ({class_type}) input '{name}'"
    allowed = enum_values(kind, opts)
    if allowed is not None:
        if is_file_input(class_type, name, opts) or value in allowed:
            return None
        folder = model_folder(class_type, name)
        where_to = f"put it in ComfyUI's models/{folder}/" if folder else "install it in ComfyUI's models folder"
        files = [a for a in allowed if str(a).lower().endswith(MODEL_EXTENSIONS)]
        if not files and (not allowed or folder):
            # No model file listed (VAELoader still lists built-ins such as "pixel_space"): on the live server none
            # of that kind is installed; in an offline fixture (no models anywhere) it says nothing.
            if empty_model_lists != "missing":
                return None
            if folder is not None or _looks_like_model(name, value, []):
                return f"{where}: model {value} is not installed (none is); {where_to}"
        if folder is not None or _looks_like_model(name, value, allowed):
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3, cutoff=0.4)
            hint = ", ".join(close) if close else "none"
            return (
                f"{where}: model {value} is not installed; close matches: {hint}; "
                f"{where_to}; fetch it: comfy-worker models sync"
            )
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


def problems(
    workflow: Any,
    object_info: Mapping[str, Any],
    *,
    unknown_nodes: str = "error",
    empty_model_lists: str = "unknown",
) -> list[dict[str, Any]]:
    """Every problem of an API-format workflow, as ``{"node_id", "class_type", "input", "message"}``.

    ``unknown_nodes="skip"`` is for offline checks against an object_info that only knows core nodes (e.g. the
    shared 0.3.64 fixture): node types it does not list are taken on trust instead of reported.
    ``empty_model_lists="missing"`` is for the live server's object_info: a model input whose list of files is
    empty means nothing of that kind is installed, so the model named is missing (offline, "unknown": the fixture
    has no models at all). Model problems name the ``models/`` folder the file belongs in."""
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
                msg = _check_value(node_id, class_type, name, kind, opts, value, empty_model_lists)
                if msg:
                    add(node_id, class_type, name, msg)
    return found


def validate(workflow: Any, object_info: Mapping[str, Any], *, empty_model_lists: str = "unknown") -> None:
    """Raise WorkflowInvalid listing every problem (see :func:`problems`); return None when it can run.

    Against a live server pass ``empty_model_lists="missing"``: a model no file of its kind is installed for then
    fails at once instead of in ComfyUI."""
    found = problems(workflow, object_info, empty_model_lists=empty_model_lists)
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
                and is_input_url(value.strip())
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

"""Workflow values that name files on the ComfyUI machine, and which of them a task may use.

ComfyUI trusts these values: ``LoadImage`` joins its ``image`` to the input folder without a check, so
``"/etc/passwd"`` or ``"../../x"`` is read and can come back as an output; path-loading custom nodes open any
path they are given. Three kinds of inputs are checked, before anything is uploaded or queued:

* **input-folder names**: loader inputs whose value is a file in ComfyUI's input folder (``LoadImage.image``,
  ``VHS_LoadVideo.video``, ``LoadAudio.audio``, …, and every input object_info flags for upload). Allowed: a
  relative name that stays in the input folder (symlinks followed when the folder is known), not under
  ``comfy_worker/`` (other tasks' uploads) and not annotated ``[output]`` / ``[temp]`` (the shared output
  folders, where other tasks' results are). URLs are allowed where the caller fetches them itself.
* **path inputs**: custom nodes that read or write any path (``VHS_LoadVideoPath.video``,
  ``LoadLastLatent.folder_path``, ``SaveLatentWithPath.folder_path``, …). Allowed only under ``roots``: the
  prompt_runner chain passes its own folder; a ``comfy`` task passes none, so it may not use them.
* **output names**: ``filename_prefix`` (every save node) and the like: relative, no ``..``.

With ``roots`` (the chain's own folder), an absolute input-folder name or output name is allowed under them
too: the stock-node chain saves its latent with an absolute ``SaveLatent`` prefix and loads it and the next
chunk's reference frame by absolute path (ComfyUI joins an absolute name as is).

``trusted`` is a workflow whose values came from the operator (a chain profile): an input still holding its
value from there is not checked. ``replaced`` lists (node, input) pairs the caller overwrites with its own
value (the upload of a task input). Pure apart from resolving symlinks under the given folders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from comfy_worker.engine.workflow import KNOWN_FILE_INPUTS, input_specs, is_file_input
from comfy_worker.errors import InputRejected
from comfy_worker.pathsafe import contained, relative_problem

UPLOAD_SUBFOLDER = "comfy_worker"  # inputs the worker uploads live in comfy_worker/<task key>/
# Input-folder names besides KNOWN_FILE_INPUTS and upload-flagged inputs (core nodes with their own
# VALIDATE_INPUTS or STRING paths, and VHS's folder loader).
INPUT_FOLDER_INPUTS: frozenset[tuple[str, str]] = KNOWN_FILE_INPUTS | frozenset(
    {
        ("Load3D", "model_file"),
        ("Load3DAnimation", "model_file"),
        ("Preview3D", "model_file"),
        ("Preview3DAnimation", "model_file"),
        ("LoadImageSetFromFolderNode", "folder"),
        ("LoadImageTextSetFromFolderNode", "folder"),
        ("OpenAIInputFiles", "file"),
        ("GeminiInputFiles", "file"),
        ("VHS_LoadImages", "directory"),
    }
)
# Inputs that take any path on the ComfyUI machine (VideoHelperSuite, the Wan chain's packs, and the test
# pack's stand-ins of those in tests/comfy_nodes).
PATH_INPUTS: frozenset[tuple[str, str]] = frozenset(
    {
        ("VHS_LoadVideoPath", "video"),
        ("VHS_LoadVideoFFmpegPath", "video"),
        ("VHS_LoadImagePath", "image"),
        ("VHS_LoadImagesPath", "directory"),
        ("VHS_LoadAudio", "audio_file"),
        ("VHS_SelectLatest", "filename_prefix"),
        ("Load Image From Path [DVB]", "image_path"),
        ("LoadLastLatent", "folder_path"),
        ("SaveLatentWithPath", "folder_path"),
        ("CWLoadImageFromPath", "image_path"),
        ("CWLoadVideoFromPath", "video"),
        ("CWLoadLastLatent", "folder_path"),
        ("CWSaveLatentWithPath", "folder_path"),
    }
)
# Names of files a node writes under ComfyUI's output folder (or under a path input above).
OUTPUT_NAME_INPUTS: frozenset[tuple[str, str]] = frozenset(
    {
        ("SaveLoRANode", "prefix"),
        ("SaveLatentWithPath", "subfolder_name"),
        ("SaveLatentWithPath", "filename"),
        ("CWSaveLatentWithPath", "subfolder_name"),
        ("CWSaveLatentWithPath", "filename"),
    }
)
OUTPUT_NAME_ANY_NODE = frozenset({"filename_prefix"})
_ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}
_URL_PREFIXES = ("http://", "https://")
_SOURCE_FIX = "pass the file as a URL or a params.inputs entry (url, storage_path or base64) and the worker uploads it"


def kind_of_input(class_type: str, name: str, opts: Mapping[str, Any] | None = None) -> str | None:
    """``"input_folder"``, ``"path"``, ``"output_name"`` or None (not a file-naming input)."""
    key = (class_type, name)
    if key in PATH_INPUTS:
        return "path"
    if key in INPUT_FOLDER_INPUTS or is_file_input(class_type, name, opts or {}):
        return "input_folder"
    if key in OUTPUT_NAME_INPUTS or name in OUTPUT_NAME_ANY_NODE:
        return "output_name"
    return None


def split_annotation(value: str) -> tuple[str, str]:
    """(name, folder) as ComfyUI reads an annotated file name: ``"a.png [output]"`` → ``("a.png", "output")``."""
    for suffix, folder in _ANNOTATIONS.items():
        if value.endswith(suffix):
            return value[: -len(suffix)], folder
    return value, "input"


def _input_folder_problem(value: str, input_dir: Path | None, fetched_urls: bool) -> str | None:
    if value.strip().lower().startswith(_URL_PREFIXES):
        if fetched_urls:
            return None
        return "is a URL, which the worker does not fetch for this input; name a file in ComfyUI's input folder"
    name, folder = split_annotation(value)
    if folder != "input":
        return (
            f"reads ComfyUI's shared {folder} folder, where other tasks' results are; {_SOURCE_FIX}"
        )
    problem = relative_problem(name)
    if problem:
        return f"{problem}: only files inside ComfyUI's input folder may be named (e.g. 'photo.png'); {_SOURCE_FIX}"
    if name.split("/", 1)[0] == UPLOAD_SUBFOLDER:
        return f"names a file under {UPLOAD_SUBFOLDER}/, where other tasks' uploads are; {_SOURCE_FIX}"
    if input_dir is not None and contained(input_dir / name, [input_dir]) is None:
        return f"leads out of ComfyUI's input folder through a symlink; {_SOURCE_FIX}"
    return None


def _path_problem(value: str, roots: list[Path]) -> str | None:
    if value.strip().lower().startswith(_URL_PREFIXES):
        return (
            "is a URL, which this node would fetch itself, past the worker's private-address checks; use an "
            f"upload loader (e.g. VHS_LoadVideo) with the URL, or {_SOURCE_FIX}"
        )
    if not roots:
        return (
            "names a file on the worker by path, which a task may not do; use an upload loader (e.g. "
            f"VHS_LoadVideo, LoadImage) and {_SOURCE_FIX}"
        )
    shown = ", ".join(str(r) for r in roots)
    path = Path(value)
    if not path.is_absolute() or ".." in path.parts or relative_problem(value.lstrip("/")) is not None:
        return f"must be an absolute path without '..' under {shown}"
    if contained(path, roots) is None:
        return f"is outside the folders this task may use ({shown})"
    return None


def path_problems(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any] | None = None,
    *,
    roots: Iterable[str | Path] = (),
    input_dir: str | Path | None = None,
    trusted: Mapping[str, Any] | None = None,
    replaced: Iterable[tuple[str, str]] = (),
    fetched_urls: bool = True,
) -> list[dict[str, Any]]:
    """Every file-naming value of ``workflow`` a task may not use: ``{node_id, class_type, input, value,
    message}`` each, the message naming node, input, value and the fix. See the module docstring."""
    root_list = [Path(r) for r in roots]
    in_dir = Path(input_dir) if input_dir else None
    skip = {(str(n), str(i)) for n, i in replaced}
    found: list[dict[str, Any]] = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            continue
        class_type = node["class_type"]
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        spec = (object_info or {}).get(class_type)
        opts = {n: o for n, _k, o, _r in input_specs(spec)} if isinstance(spec, dict) else {}
        trusted_inputs = ((trusted or {}).get(node_id) or {}).get("inputs") or {}
        for name, value in inputs.items():
            if not isinstance(value, str) or (str(node_id), name) in skip:
                continue
            kind = kind_of_input(class_type, name, opts.get(name))
            if kind is None or (name in trusted_inputs and trusted_inputs[name] == value):
                continue
            if kind == "input_folder" and root_list and Path(value).is_absolute():
                # a chain loads its own latents and reference frames by absolute path (ComfyUI's loaders join
                # an absolute name as is): allowed only under the chain's folder
                problem = _path_problem(value, root_list)
            elif kind == "input_folder":
                # URLs are fetched (and replaced) only where find_media_inputs looks: the KNOWN/flagged loaders
                fetched = fetched_urls and is_file_input(class_type, name, opts.get(name) or {})
                problem = _input_folder_problem(value, in_dir, fetched)
            elif kind == "path":
                problem = _path_problem(value, root_list)
            else:
                problem = relative_problem(value)
                if problem and root_list and Path(value).is_absolute():
                    # a chain names its own outputs by absolute path under its folder (SaveLatent's prefix):
                    # ComfyUI accepts an absolute prefix inside its output folder, and the root confines it
                    problem = _path_problem(value, root_list)
                elif problem:
                    problem += ": output names are relative to ComfyUI's output folder (e.g. 'video/clip')"
            if problem:
                found.append(
                    {
                        "node_id": str(node_id),
                        "class_type": class_type,
                        "input": name,
                        "value": value[:300],
                        "message": f"node {node_id} ({class_type}) input '{name}': {value[:300]!r} {problem}",
                    }
                )
    return found


def refuse_unsafe_paths(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any] | None = None, **kw: Any
) -> None:
    """Raise InputRejected listing every problem :func:`path_problems` finds; return None when there is none."""
    found = path_problems(workflow, object_info, **kw)
    if found:
        listed = "; ".join(p["message"] for p in found)
        raise InputRejected(
            f"workflow names files it may not use ({len(found)} problem(s)): {listed}",
            details={"problems": found},
        )

"""The ``comfy`` task: run one ComfyUI workflow.

Params (all but ``workflow`` optional)::

    {"workflow": {...API format...} | "<json text>" | {...UI export: nodes/links...},
     "video_url": "https://…", "video_node_id": "12", "video_input_field": "video",   # the documented contract
     "inputs": [{"url" | "storage_path" | "base64": "…", "node_id": "12", "field": "image", "filename": "a.png"}],
     "timeout_s": 900, "stall_timeout_s": 300, "include_temp": false}

URLs written directly into loader nodes' file inputs (LoadImage ``image``, VHS_LoadVideo ``video``, …) are
fetched the same way. Every input is uploaded to ComfyUI's input folder under a per-task subfolder.

Stages: ``prepare`` converts, fetches, uploads and validates (no GPU); ``submit`` queues the prompt (under the
daemon's GPU grant); ``execute`` follows it; ``finish`` stores the outputs.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_worker.engine import (
    History,
    events,
    find_media_inputs,
    is_ui_format,
    ui_to_api,
    validate,
)
from comfy_worker.engine.base import COMFYUI
from comfy_worker.engine.frames import STOCK as STOCK_SAVE_VIDEO
from comfy_worker.engine.frames import encode_handovers, is_handover_name, swap_save_video
from comfy_worker.engine.housekeeping import comfy_folders
from comfy_worker.engine.node_timing import NodeClock
from comfy_worker.engine.paths import UPLOAD_SUBFOLDER, refuse_unsafe_paths
from comfy_worker.engine.workflow import set_input
from comfy_worker.errors import ComfyWorkerError, InputRejected, WorkflowInvalid
from comfy_worker.handlers.base import HandlerResult, TaskContext
from comfy_worker.handlers.outputs import pick_output_url, stop_when_dropped, upload_outputs
from comfy_worker.inputs import fetch_source, filename_from_url, safe_filename
from comfy_worker.logs import get_logger

log = get_logger(__name__)
NODE_TIMING_MIN_S = 0.05  # result.node_timings lists the nodes that took at least this long
PROMPT_NAMESPACE = uuid.UUID("6f2b7c1e-4a53-4d8e-9a35-2f1f3c5b8e11")


@dataclass
class Prepared:
    workflow: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # extra keys for the task's result
    prompt_id: str = ""  # set by submit
    queued_at: float = 0.0


@dataclass
class Executed:
    history: History
    prompt_id: str
    run_s: float
    info: dict[str, Any] = field(default_factory=dict)
    node_timings: list[dict[str, Any]] = field(default_factory=list)


def prompt_id_for(task_id: str, attempt: int) -> str:
    """A stable prompt id per (task, attempt): a retried attempt never collides with a previous one."""
    return str(uuid.uuid5(PROMPT_NAMESPACE, f"{task_id}:{attempt}"))


def parse_workflow(raw: Any) -> dict[str, Any]:
    """params.workflow as a dict; clear errors for the ways it goes wrong."""
    if raw is None:
        raise InputRejected(
            "params.workflow is missing: put the workflow (API format JSON) under params.workflow"
        )
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputRejected(
                f"params.workflow is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from exc
    if not isinstance(raw, dict) or not raw:
        raise InputRejected(
            f"params.workflow must be a JSON object of nodes, got {type(raw).__name__}"
            " (export it with ComfyUI's 'Save (API Format)')"
        )
    return raw


def input_specs(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The explicit inputs: the documented video_url contract plus params.inputs."""
    specs: list[dict[str, Any]] = []
    if params.get("video_url") is not None:
        missing = [k for k in ("video_node_id", "video_input_field") if not params.get(k)]
        if missing:
            raise InputRejected(
                f"params.video_url is set but params.{missing[0]} is missing: name the node id and input field "
                "that take the video (e.g. video_node_id='12', video_input_field='video')"
            )
        specs.append(
            {
                "url": params["video_url"],
                "node_id": str(params["video_node_id"]),
                "field": str(params["video_input_field"]),
            }
        )
    extra = params.get("inputs") or []
    if not isinstance(extra, list):
        raise InputRejected("params.inputs must be a list of {url | storage_path | base64, node_id, field}")
    for i, spec in enumerate(extra):
        if not isinstance(spec, dict):
            raise InputRejected(f"params.inputs[{i}] must be an object, got {type(spec).__name__}")
        sources = [k for k in ("url", "storage_path", "base64") if spec.get(k)]
        if len(sources) != 1:
            raise InputRejected(f"params.inputs[{i}] needs exactly one of url, storage_path or base64")
        for k in ("node_id", "field"):
            if not spec.get(k):
                raise InputRejected(f"params.inputs[{i}].{k} is missing: name the node and input to set")
        specs.append({**spec, "node_id": str(spec["node_id"])})
    return specs


class ComfyHandler:
    task_type = "comfy"
    engine = COMFYUI

    async def prepare(self, ctx: TaskContext) -> Prepared:
        params = ctx.task.params
        object_info = await ctx.client.object_info()
        workflow = await to_api_format(ctx, parse_workflow(params.get("workflow")), object_info)
        specs = collect_input_specs(workflow, params, object_info)
        refuse_unsafe_paths(  # before anything is fetched or queued: no task param names the worker's files
            workflow,
            object_info,
            input_dir=comfy_folders(ctx.settings).input,  # as cleanup sees it (COMFY_ARGS too)
            replaced=[(s["node_id"], s["field"]) for s in specs],
        )
        await upload_inputs(ctx, workflow, specs)
        return validated(workflow, object_info, video_encode(ctx, workflow, object_info))

    async def submit(self, ctx: TaskContext, prepared: Prepared) -> Prepared:
        return await submit_prompt(ctx, prepared)

    async def execute(self, ctx: TaskContext, prepared: Prepared) -> Executed:
        return await run_prompt(ctx, prepared)

    async def finish(self, ctx: TaskContext, executed: Executed) -> HandlerResult:
        return await store_outputs(ctx, executed)


# --- the stages every ComfyUI task shares (the comfyui_* handlers in wan.py use them too) ------------------


async def to_api_format(ctx: TaskContext, workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The workflow in API format: a UI export is converted (see engine.ui_convert); what cannot be converted is
    named against the server's version ("node type X is not on ComfyUI 0.3.64: update ComfyUI")."""
    if is_ui_format(workflow):
        workflow = ui_to_api(workflow, object_info, server=await server_name(ctx))
        log.info("workflow_converted_from_ui_format", nodes=len(workflow))
    return workflow


async def server_name(ctx: TaskContext) -> str:
    """ "ComfyUI <version>" from /system_stats, or "this ComfyUI" when the server does not say."""
    try:
        stats = await ctx.client.system_stats()
    except ComfyWorkerError:
        return "this ComfyUI"
    version = (stats.get("system") or {}).get("comfyui_version") if isinstance(stats, dict) else None
    return f"ComfyUI {version}" if version else "this ComfyUI"


def collect_input_specs(
    workflow: dict[str, Any], params: dict[str, Any], object_info: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every input to fetch: the explicit ones (params) plus URLs written into loader nodes; each must target a
    node of the workflow."""
    specs = input_specs(params)
    for node_id, field_name, url in find_media_inputs(workflow, object_info):
        if not any(s["node_id"] == node_id and s["field"] == field_name for s in specs):
            specs.append({"url": url, "node_id": node_id, "field": field_name})
    for spec in specs:
        if spec["node_id"] not in workflow:
            raise WorkflowInvalid(
                f"input for node {spec['node_id']}.{spec['field']}: node {spec['node_id']} is not in the "
                "workflow; check the node id in params"
            )
    return specs


async def fetch_input(ctx: TaskContext, spec: dict[str, Any], dest: Path) -> Path:
    """One input ({url | storage_path | base64}, optional filename) as a local file under ``dest``."""
    return await fetch_source(
        spec, dest, fetch=ctx.fetch, storage=ctx.storage, max_bytes=ctx.settings.input_max_bytes
    )


def input_name(spec: dict[str, Any]) -> str:
    """The file name an input spec is saved under (``fetch_source`` without a stem)."""
    if spec.get("filename"):
        return safe_filename(spec["filename"])
    if spec.get("url"):
        return filename_from_url(spec["url"])
    if spec.get("storage_path"):
        return safe_filename(posixpath.basename(spec["storage_path"]))
    return safe_filename(None, "input.bin")


def input_subfolder(ctx: TaskContext) -> str:
    """Where a task's inputs go in ComfyUI's input folder."""
    return f"{UPLOAD_SUBFOLDER}/{ctx.task_key}"


async def upload_input(ctx: TaskContext, path: Path) -> str:
    """Upload a local file to ComfyUI's input folder; the name loader nodes take."""
    return await ctx.client.upload_file(path, subfolder=input_subfolder(ctx), overwrite=True)


async def upload_inputs(ctx: TaskContext, workflow: dict[str, Any], specs: list[dict[str, Any]]) -> None:
    """Fetch every input, upload it to ComfyUI and point its node's input at the uploaded file. Inputs whose
    names would collide (two URLs ending in ``image.png``) get the node and field in front of the name, so each
    node gets its own file."""
    taken: set[str] = set()
    for spec in specs:
        name = input_name(spec)
        if name in taken:
            spec = {**spec, "filename": safe_filename(f"{spec['node_id']}.{spec['field']}-{name}")}
        taken.add(input_name(spec))
        path = await fetch_input(ctx, spec, ctx.work_dir / "inputs")
        name = await upload_input(ctx, path)
        set_input(workflow, spec["node_id"], spec["field"], name)
        log.info("input_uploaded", node_id=spec["node_id"], field=spec["field"], name=name, bytes=path.stat().st_size)


def video_encode(
    ctx: TaskContext, workflow: dict[str, Any], object_info: dict[str, Any], info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """With VIDEO_ENCODE=worker, the graph's SaveVideo nodes hand their frames to the worker, which encodes them
    after the prompt while ComfyUI runs the next one (engine/frames.py); ``info`` with ``video_encode`` added
    ("worker", or "comfyui" when nothing was swapped) when the graph saves a video."""
    info = dict(info or {})
    swapped = swap_save_video(workflow, object_info) if ctx.settings.video_encode == "worker" else []
    if swapped:
        info["video_encode"] = "worker"
        log.info("video_encode_in_worker", nodes=swapped)
    elif any(isinstance(n, dict) and n.get("class_type") == STOCK_SAVE_VIDEO for n in workflow.values()):
        info["video_encode"] = "comfyui"
    return info


def validated(
    workflow: dict[str, Any], object_info: dict[str, Any], info: dict[str, Any] | None = None
) -> Prepared:
    """Validate against the live server's nodes (a model nothing of its kind is installed for counts as
    missing); the prompt, ready to queue."""
    validate(workflow, object_info, empty_model_lists="missing")
    return Prepared(workflow, dict(info or {}))


async def submit_prompt(ctx: TaskContext, prepared: Prepared) -> Prepared:
    """Queue the prompt under this attempt's prompt id (the ``submit`` stage: under the GPU grant)."""
    prepared.prompt_id = await ctx.client.submit(
        prepared.workflow, prompt_id=prompt_id_for(ctx.task.task_id, ctx.attempt)
    )
    prepared.queued_at = time.monotonic()
    return prepared


async def run_prompt(ctx: TaskContext, prepared: Prepared) -> Executed:
    """Wait for the prompt, reporting progress; deadlines from params (timeout_s, stall_timeout_s) or settings."""
    params = ctx.task.params
    t0 = time.monotonic()
    clock = NodeClock()

    async def on_event(event: events.Event) -> None:
        clock.feed(event)
        if isinstance(event, (events.ExecutionStart, events.Executing, events.ExecutionCached)):
            ctx.started.set()
        if isinstance(event, events.Progress):
            ctx.started.set()
            pct = round(100.0 * event.value / event.max, 1) if event.max else None
            await ctx.progress(
                {
                    "node": event.node,
                    "value": event.value,
                    "max": event.max,
                    "percent": pct,
                    "prompt_id": prepared.prompt_id,
                }
            )
        elif isinstance(event, events.Executing) and event.node is not None:
            await ctx.progress({"node": event.node, "prompt_id": prepared.prompt_id})

    history = await ctx.client.follow(
        prepared.prompt_id,
        on_progress=on_event,
        deadline_s=float(params.get("timeout_s") or ctx.settings.task_timeout_s),
        stall_s=float(params.get("stall_timeout_s") or ctx.settings.stall_timeout_s),
        cancel=ctx.cancel,
    )
    timings = clock.report(prepared.workflow, min_seconds=NODE_TIMING_MIN_S)
    return Executed(history, prepared.prompt_id, time.monotonic() - t0, prepared.info, timings)


async def store_outputs(ctx: TaskContext, executed: Executed) -> HandlerResult:
    """Download the prompt's outputs and upload them to storage; the task's result."""
    include_temp = bool(ctx.task.params.get("include_temp"))
    dest = ctx.work_dir / "outputs"
    items = await ctx.client.outputs(executed.history, dest, include_temp=include_temp)
    if any(is_handover_name(i.filename) for i in items):  # ComfyUI handed a video's frames over: encode them here
        items = await stop_when_dropped(ctx, encode_handovers(items, dest), "encoding the video")
    outputs = await upload_outputs(ctx, items)
    return HandlerResult(
        result={
            **executed.info,
            "outputs": outputs,
            "prompt_id": executed.prompt_id,
            "execution_s": round(executed.run_s, 3),
            "node_timings": executed.node_timings,
        },
        output_url=pick_output_url(outputs),
    )

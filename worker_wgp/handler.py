"""The Wan2GP task types as handlers: the same three stages as every task (see comfy_worker.handlers.base).

* ``prepare`` — check params (:func:`worker_wgp.tasks.parse_params`), fetch media into the task's work
  directory and LoRAs into Wan2GP's LoRA folder; nothing touches the GPU (asking Wan2GP for its LoRA folder
  starts the child when it is not running, which allocates no model memory).
* ``execute`` — run the generation on the engine, reporting Wan2GP's steps as task progress; cancellation and
  the deadline (``params.timeout_s``, else TASK_TIMEOUT_S) interrupt it in the child.
* ``finish`` — move the files Wan2GP wrote into the work directory and upload them like every other output.

Phase 1: the engine is given to the handler's constructor; once the daemon hands engines to handlers through
the task context (engine registry), ``WanHandler`` reads it from there instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_worker.engine.outputs import OutputItem, content_type_of, kind_of
from comfy_worker.errors import ExecutionFailed, ExecutionTimeout
from comfy_worker.handlers.base import HandlerResult, TaskContext
from comfy_worker.handlers.comfy import pick_output_url, upload_outputs
from comfy_worker.logs import get_logger
from worker_wgp import protocol as p
from worker_wgp.engine import GenerationOutput, WanEngine
from worker_wgp.tasks import TASK_TYPES, GenerationRequest, WanJob, build_request, parse_params

log = get_logger(__name__)


@dataclass
class Prepared:
    job: WanJob
    request: GenerationRequest


@dataclass
class Executed:
    output: GenerationOutput


class WanHandler:
    """One Wan2GP task type."""

    def __init__(self, task_type: str, engine: WanEngine) -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(f"{task_type!r} is not a Wan2GP task type")
        self.task_type = task_type
        self.engine = engine

    async def prepare(self, ctx: TaskContext) -> Prepared:
        job = parse_params(self.task_type, ctx.task.params)
        lora_dir = await self.engine.lora_dir(job.model) if job.loras else None
        request = await build_request(
            job, fetch=ctx.fetch, storage=ctx.storage, inputs_dir=ctx.work_dir / "inputs", lora_dir=lora_dir,
            input_max_bytes=ctx.settings.input_max_bytes, lora_max_bytes=ctx.settings.wan2gp_lora_max_bytes,
        )
        log.info("wan2gp_task_prepared", model=job.model, media=len(job.media), loras=len(job.loras))
        return Prepared(job, request)

    async def execute(self, ctx: TaskContext, prepared: Prepared) -> Executed:
        deadline = prepared.job.timeout_s or ctx.settings.task_timeout_s

        async def on_progress(event: p.Progress) -> None:
            ctx.started.set()
            await ctx.progress({"engine": "wan2gp", "phase": event.phase, "step": event.step,
                                "total": event.total, "percent": event.percent})

        try:
            async with asyncio.timeout(deadline):
                output = await self.engine.generate(
                    prepared.request.model, prepared.request.settings, on_progress=on_progress, cancel=ctx.cancel,
                    label=ctx.task.task_id,
                )
        except TimeoutError:
            raise ExecutionTimeout(f"Wan2GP did not finish within {deadline:g} s (params.timeout_s / TASK_TIMEOUT_S)",
                                   details={"engine": "wan2gp", "timeout_s": deadline}) from None
        return Executed(output)

    async def finish(self, ctx: TaskContext, executed: Executed) -> HandlerResult:
        out_dir = ctx.work_dir / "outputs"
        out_dir.mkdir(parents=True, exist_ok=True)
        items: list[OutputItem] = []
        for source in executed.output.files:
            if not source.is_file():
                raise ExecutionFailed(f"Wan2GP reported {source} but the file is not there",
                                      details={"engine": "wan2gp", "file": str(source)})
            dest = out_dir / source.name
            await asyncio.to_thread(shutil.move, source, dest)  # out of Wan2GP's folder: nothing accumulates there
            items.append(await asyncio.to_thread(_item, dest))
        outputs = await upload_outputs(ctx, items)
        out = executed.output
        return HandlerResult(
            result={
                "outputs": outputs, "engine": "wan2gp", "model": out.model, "model_switched": out.switched,
                "load_s": out.load_s, "execution_s": out.run_s, "peak_gpu_bytes": out.memory.gpu_peak_bytes,
            },
            output_url=pick_output_url(outputs),
        )


def _item(path: Path) -> OutputItem:
    """An output file as the comfy handler's upload_outputs takes it (with its size and SHA-256, which storage
    may trust instead of reading the file again)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return OutputItem(node_id="wan2gp", kind=kind_of("", path.name), filename=path.name, subfolder="",
                      type="output", path=path, bytes=size, sha256=digest.hexdigest(),
                      content_type=content_type_of(path.name))


def handlers(engine: WanEngine, task_types: list[str] | None = None) -> dict[str, Any]:
    """One handler per Wan2GP task type (all, or those listed), sharing ``engine``."""
    return {t: WanHandler(t, engine) for t in (task_types or list(TASK_TYPES)) if t in TASK_TYPES}

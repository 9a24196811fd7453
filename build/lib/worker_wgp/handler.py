"""The Wan2GP task types as handlers: the same stages as every task (see comfy_worker.handlers.base).

* ``prepare`` — check params (:func:`worker_wgp.tasks.parse_params`), fetch media into the task's work
  directory and LoRAs into Wan2GP's LoRA folder; nothing touches the GPU (asking Wan2GP for its LoRA folder
  needs the child running, which allocates no model memory).
* ``submit`` — under the daemon's GPU grant for Wan2GP: hand the request to the engine.
* ``execute`` — run the generation on the engine, reporting Wan2GP's steps as task progress; cancellation and
  the deadline (``params.timeout_s``, else TASK_TIMEOUT_S) interrupt it in the child.
* ``finish`` — move the files Wan2GP wrote into the work directory and upload them like every other output.

The engine is the one the daemon hands the task (``ctx.engine``: the :class:`~worker_wgp.engine.WanEngine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_worker.engine.base import WAN2GP
from comfy_worker.handlers.base import HandlerResult, TaskContext
from comfy_worker.handlers.outputs import pick_output_url, upload_outputs
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
    """One Wan2GP task type; ``model`` is the Wan2GP model it runs unless ``params.model`` says otherwise."""

    engine = WAN2GP

    def __init__(self, task_type: str) -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(f"{task_type!r} is not a Wan2GP task type")
        self.task_type = task_type
        self.model = TASK_TYPES[task_type].model

    async def prepare(self, ctx: TaskContext) -> Prepared:
        job = parse_params(self.task_type, ctx.task.params)
        engine: WanEngine = ctx.engine
        lora_dir = await engine.lora_dir(job.model) if job.loras else None
        request = await build_request(
            job, fetch=ctx.fetch, storage=ctx.storage, inputs_dir=ctx.work_dir / "inputs", lora_dir=lora_dir,
            input_max_bytes=ctx.settings.input_max_bytes, lora_max_bytes=ctx.settings.wan2gp_lora_max_bytes,
        )
        log.info("wan2gp_task_prepared", model=job.model, media=len(job.media), loras=len(job.loras))
        return Prepared(job, request)

    async def submit(self, ctx: TaskContext, prepared: Prepared) -> Prepared:
        await ctx.engine.submit(prepared.request)
        return prepared

    async def execute(self, ctx: TaskContext, prepared: Prepared) -> Executed:
        async def on_progress(event: p.Progress) -> None:
            ctx.started.set()
            await ctx.progress({"engine": "wan2gp", "phase": event.phase, "step": event.step,
                                "total": event.total, "percent": event.percent})

        output = await ctx.engine.follow(
            prepared.request, on_progress=on_progress, cancel=ctx.cancel,
            deadline_s=prepared.job.timeout_s or ctx.settings.task_timeout_s, label=ctx.task.task_id,
        )
        return Executed(output)

    async def finish(self, ctx: TaskContext, executed: Executed) -> HandlerResult:
        items = await ctx.engine.outputs(executed.output, ctx.work_dir / "outputs")
        outputs = await upload_outputs(ctx, items)
        out = executed.output
        return HandlerResult(
            result={
                "outputs": outputs, "engine": "wan2gp", "model": out.model, "model_switched": out.switched,
                "load_s": out.load_s, "execution_s": out.run_s, "peak_gpu_bytes": out.memory.gpu_peak_bytes,
            },
            output_url=pick_output_url(outputs),
        )


def handlers(task_types: list[str] | None = None) -> dict[str, Any]:
    """One handler per Wan2GP task type (all, or those listed)."""
    return {t: WanHandler(t) for t in (task_types or list(TASK_TYPES)) if t in TASK_TYPES}

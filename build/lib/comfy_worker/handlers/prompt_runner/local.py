"""``comfy-worker prompt-runner`` real runs without a database, and ``--submit`` to the queue.

Local runs use the same :class:`~.executor.ChainRunner` as the daemon. Artifacts go under ``--output-dir``
in the documented layout (``{video}/latents|videos|references|combined|final/``); the run's state is
``{output-dir}/state/{video}.json``, rewritten after every step, so ``--resume VIDEO_NAME`` continues after a
crash or Ctrl-C (the first Ctrl-C interrupts the running prompt and saves; the state file already holds
every completed step). Unless ``--no-upload``, the final video is also uploaded to the configured storage
under ``prompt_runner/local/{video}/final/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from comfy_worker.errors import ComfyWorkerError, ConfigError, ExecutionInterrupted
from comfy_worker.handlers.prompt_runner.executor import ChainEnv, ChainOptions, ChainRunner
from comfy_worker.handlers.prompt_runner.handler import DEFAULT_PROFILE, prepare_chain
from comfy_worker.handlers.prompt_runner.prompt_file import PromptFileError, PromptSpec
from comfy_worker.logs import get_logger

log = get_logger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def state_path(output_dir: Path, video_name: str) -> Path:
    return output_dir / "state" / f"{video_name}.json"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_resume(output_dir: Path, video_name: str) -> dict[str, Any]:
    path = state_path(output_dir, video_name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptFileError(str(path), f"no saved run for {video_name!r} (check --output-dir)") from None
    except (OSError, ValueError) as exc:
        raise PromptFileError(str(path), f"cannot read the saved run: {exc}") from None
    if not isinstance(data, dict) or "spec" not in data:
        raise PromptFileError(str(path), "not a prompt-runner state file (no 'spec')")
    return data


def task_params(spec: PromptSpec, args: argparse.Namespace) -> dict[str, Any]:
    """``prompt_runner`` task params for ``spec`` and the command-line options."""
    params: dict[str, Any] = {
        "video_name": spec.video_name,
        "total_frames": spec.total_frames,
        "positive_prompt": spec.positive_prompt,
        "negative_prompt": spec.negative_prompt,
        "keep_intermediate": bool(args.keep_intermediate),
    }
    if args.max_retries is not None:  # else the worker's profile decides
        params["max_retries"] = args.max_retries
    fpc = args.frames_per_chunk or spec.frames_per_chunk  # flag > prompt file; neither: the worker's profile
    if fpc is not None:
        params["frames_per_chunk"] = fpc
    for key in ("input_video", "seed"):
        if getattr(spec, key) is not None:
            params[key] = getattr(spec, key)
    if args.profile or spec.profile:
        params["profile"] = args.profile or spec.profile
    overrides = dict(spec.overrides)
    for key in ("overlap", "reference_offset"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if overrides:
        params["overrides"] = overrides
    return params


async def submit_specs(specs: list[PromptSpec], args: argparse.Namespace, settings: Any, out: Any = None) -> int:
    """Enqueue one prompt_runner task per spec (each checked first: profile, plan); print the task ids."""
    from comfy_worker.models import NewTask
    from comfy_worker.store import open_store

    out = out or sys.stdout
    params_list = []
    for spec in specs:
        params = task_params(spec, args)
        spec_with_profile = PromptSpec(**{**spec.to_dict(), "profile": params.get("profile"),
                                          "frames_per_chunk": params.get("frames_per_chunk"),
                                          "overrides": params.get("overrides", {})})  # fmt: skip
        try:
            # a bad profile or override fails here, not on a worker; checked as a worker will (a name, not a path)
            prepare_chain(spec_with_profile, None, task=True, profiles_dir=settings.profiles_path)
        except ComfyWorkerError as exc:
            print(f"ERROR {spec.source}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        params_list.append(params)
    store = open_store(settings, pool_max=2)
    try:
        await store.connect()
        if store.name == "sqlite":
            await store.migrate()
        for params in params_list:
            task = await store.enqueue(NewTask("prompt_runner", params, max_attempts=3))
            print(f"{task.task_id} {params['video_name']}", file=out)
    finally:
        await store.close()
    return EXIT_OK


async def run_specs(
    items: list[tuple[PromptSpec, dict[str, Any] | None]], args: argparse.Namespace, settings: Any, out: Any = None
) -> int:
    """Render each (spec, saved state or None) here, one after another. 0 when all finished."""
    from comfy_worker.engine import ComfyClient, ComfySupervisor
    from comfy_worker.storage import LocalStorage, open_storage

    out = out or sys.stdout
    root = settings.comfy_output_path
    if root is None:
        problem = "set it to ComfyUI's output directory as this machine sees it (or launch ComfyUI with COMFY_PATH)"
        print(f"ERROR {ConfigError('COMFY_OUTPUT_DIR', problem)}", file=sys.stderr)
        return EXIT_FAILED
    output_dir = Path(args.output_dir).resolve()
    artifacts = LocalStorage(output_dir)
    remote = None if args.no_upload else open_storage(settings)
    supervisor = ComfySupervisor(settings)
    client = ComfyClient(supervisor.base_url, client_id=f"prompt-runner-{uuid.uuid4().hex[:8]}")
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, cancel.set)
        loop.add_signal_handler(signal.SIGTERM, cancel.set)
    failures = 0
    try:
        await supervisor.start()
        for spec, saved in items:
            if cancel.is_set():
                break
            code = await _run_one(spec, saved, args, settings, client, artifacts, remote, root, output_dir, cancel, out)
            if code == EXIT_INTERRUPTED:
                return code
            failures += code != EXIT_OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await client.aclose()
        await supervisor.stop()
        if remote is not None:
            await remote.aclose()
    return EXIT_FAILED if failures else EXIT_OK


async def _run_one(
    spec: PromptSpec,
    saved: dict[str, Any] | None,
    args: argparse.Namespace,
    settings: Any,
    client: Any,
    artifacts: Any,
    remote: Any,
    root: Path,
    output_dir: Path,
    cancel: asyncio.Event,
    out: Any,
) -> int:
    name = spec.video_name
    record: dict[str, Any] = {
        "spec": spec.to_dict(),
        "options": {"max_retries": args.max_retries, "keep_intermediate": bool(args.keep_intermediate)},
        "status": "running",
        "checkpoint": (saved or {}).get("checkpoint"),
    }
    if saved:
        record["options"] = {**record["options"], **(saved.get("options") or {})}
    spath = state_path(output_dir, name)

    async def save_state(checkpoint: dict[str, Any]) -> None:
        record["checkpoint"] = checkpoint
        _write_json(spath, record)

    async def progress(p: dict[str, Any]) -> None:
        if "node" not in p:
            print(f"{name}: {p['step']} (chunk {p['chunk']}/{p['of']})", file=out, flush=True)

    try:
        profile, state, overrides = prepare_chain(spec, record["checkpoint"])
        opts = record["options"]
        env = ChainEnv(
            client=client,
            storage=artifacts,
            storage_prefix="",
            comfy_root=root,
            work_dir=output_dir / ".work" / name,
            save_state=save_state,
            progress=progress,
            cancel=cancel,
            step_timeout_s=settings.task_timeout_s,
            stall_timeout_s=settings.stall_timeout_s,
            run_key=f"local:{name}:{time.time_ns()}",
            confine_paths=False,  # the operator's own run: profiles and inputs may name any path
        )
        runner = ChainRunner(
            env,
            spec,
            profile,
            state,
            ChainOptions.from_profile(
                profile,
                max_retries=opts["max_retries"],
                keep_intermediate=opts["keep_intermediate"],
                node_overrides=overrides["nodes"],
            ),
            await client.object_info(),
        )
        await save_state(state.to_dict())
        if state.completed:
            print(f"{name}: resuming after {len(state.completed)} completed steps", file=out)
        await runner.render()
        final = await runner.join()
        await runner.cleanup()
        local_final = output_dir / state.plan.final_output_path
        if remote is not None:
            stored = await remote.upload(local_final, f"prompt_runner/local/{state.plan.final_output_path}")
            final = {**final, "uploaded": stored.path, "uploaded_url": stored.url}
        record["status"] = "complete"
        record["final"] = final
        await save_state(state.to_dict())
        print(f"OK {name}: {local_final} ({final['frames']} frames)", file=out)
        return EXIT_OK
    except ComfyWorkerError as exc:
        interrupted = cancel.is_set() or isinstance(exc, ExecutionInterrupted)
        record["status"] = "interrupted" if interrupted else "failed"
        record["error"] = str(exc)
        if spath.parent.is_dir():
            _write_json(spath, record)
        if interrupted:
            print(f"INTERRUPTED {name}: continue with --resume {name} --output-dir {args.output_dir}", file=out)
            return EXIT_INTERRUPTED
        print(f"ERROR {name}: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def maybe_stop_pod(args: argparse.Namespace, settings: Any, ok: bool) -> None:
    """--force-shutdown: always; default: after success; --no-shutdown: never. Only on a RunPod pod."""
    mode = getattr(args, "shutdown", None)
    if not settings.runpod_pod_id or mode == "never" or (mode is None and not ok):
        return
    from comfy_worker.pod import stop_own_pod

    await stop_own_pod(settings)


def default_profile(spec: PromptSpec, args: argparse.Namespace) -> PromptSpec:
    """``spec`` with --profile / --frames-per-chunk / overlap flags applied (what a local run uses and saves
    for --resume): a flag beats the prompt file; what neither sets comes from the profile's defaults."""
    fpc = args.frames_per_chunk or spec.frames_per_chunk
    overrides = dict(spec.overrides)
    for key in ("overlap", "reference_offset"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    profile = args.profile or spec.profile or DEFAULT_PROFILE
    if Path(profile).suffix in (".yaml", ".yml", ".json") or Path(profile).is_file():
        profile = str(Path(profile).resolve())  # --resume may run from another directory
    return PromptSpec(**{**spec.to_dict(), "profile": profile, "frames_per_chunk": fpc, "overrides": overrides})

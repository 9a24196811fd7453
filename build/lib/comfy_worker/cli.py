"""``comfy-worker`` / ``python -m comfy_worker``: the daemon (default), migrate, submit, status, cancel,
prompt-runner, models, and the exploration suite (run, analyze, batch, contact-sheet, video-analyze).
The only module that picks concrete backends; start-up errors end here as one clear line."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from comfy_worker import __version__
from comfy_worker.config import Settings, default_worker_id, load_settings
from comfy_worker.errors import ComfyWorkerError, ConfigError, InputRejected, StoreError
from comfy_worker.explore.cli import EXPLORE_COMMANDS, add_explore_parsers
from comfy_worker.logs import configure_logging, get_logger, register_secret
from comfy_worker.models import NewTask, Task, TaskStatus
from comfy_worker.pod import stop_own_pod
from comfy_worker.store import TaskStore, open_store

log = get_logger(__name__)
COMMANDS = ("worker", "migrate", "submit", "status", "cancel", "webhooks", "prompt-runner", "build", "models")
COMMANDS += EXPLORE_COMMANDS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comfy-worker", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command")

    w = sub.add_parser("worker", help="run the worker daemon (the default command)")
    w.add_argument("--worker-id", help="unique id of this worker (default: WORKER_ID, else host and pid)")
    w.add_argument("--exit-when-idle", action="store_true", help="exit once no task is queued or running")
    w.add_argument(
        "--terminate-pod-on-exit",
        action="store_true",
        help="stop this RunPod pod (RUNPOD_POD_ID) when the daemon exits after draining",
    )
    w.add_argument("--log-level")
    w.add_argument(
        "--engine",
        action="append",
        choices=("comfyui", "wan2gp"),
        help="run only this engine's task types (repeatable; default: every configured engine); "
        "python -m worker_wgp is --engine wan2gp",
    )

    sub.add_parser("migrate", help="create or update the queue schema in DATABASE_URL (or the SQLite file)")

    s = sub.add_parser("submit", help="queue a `comfy` task for a workflow file and print its task_id")
    s.add_argument("workflow", type=Path, help="workflow JSON (API format, or a UI export to convert)")
    s.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NODE.FIELD=URL|PATH",
        help="set a loader node's input from a URL or a local file (repeatable)",
    )
    s.add_argument("--wait", action="store_true", help="show progress until the task ends")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--max-attempts", type=int, default=3)
    s.add_argument("--task-id", help="choose the task id (idempotent re-submits)")
    s.add_argument("--callback-url", help="POST the task's end here (README: Webhooks); default: WEBHOOK_URL")
    s.add_argument("--timeout", type=float, default=0, help="with --wait: give up waiting after N seconds")

    sub.add_parser("status", help="print the queue and worker summary")
    c = sub.add_parser("cancel", help="cancel a queued or running task")
    c.add_argument("task_id")
    wh = sub.add_parser("webhooks", help="see or re-send task webhooks (README: Webhooks)")
    wh_sub = wh.add_subparsers(dest="webhooks_command", required=True)
    wh_sub.add_parser("replay", help="send a task's events again, with the same webhook-id").add_argument("task_id")
    wl = wh_sub.add_parser("list", help="the webhook_deliveries view, newest first")
    wl.add_argument("task_id", nargs="?")
    wl.add_argument("--limit", type=int, default=50)

    from comfy_worker.cli_build import add_arguments as add_build_arguments

    add_build_arguments(
        sub.add_parser("build", help="print a Wan 2.2 graph built from parameters, or --submit it as a task")
    )

    pr = sub.add_parser("prompt-runner", help="render long videos as Wan 2.2 HIGH/LOW chunk chains")
    try:
        from comfy_worker.handlers.prompt_runner.cli import add_arguments
    except ImportError:  # pragma: no cover - the prompt runner ships with the package
        add_arguments = None
    if add_arguments is not None:
        add_arguments(pr)
    add_explore_parsers(sub)
    from comfy_worker.models_manifest.cli import add_arguments as add_models_arguments

    add_models_arguments(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["worker", *argv]
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            **({"log_level": args.log_level} if getattr(args, "log_level", None) else {})
        )
    except ConfigError as exc:
        print(f"comfy-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    for secret in (settings.supabase_service_role_key, settings.runpod_api_key, settings.database_url,
                   *settings.webhook_secret.replace(",", " ").split()):
        register_secret(secret)
    if args.command == "models":  # blocking downloads: no event loop, so Ctrl-C / SIGTERM stop them at once
        from comfy_worker.models_manifest.cli import run as run_models

        return run_models(args, settings)
    try:
        code = asyncio.run(_dispatch(args, settings))
        # The work is over (a worker has stopped in order and deregistered) and the event loop, with its signal
        # handlers, is gone: a SIGTERM now (its pod being terminated) must not turn exit 0 into death by signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code
    except KeyboardInterrupt:
        return 130
    except ComfyWorkerError as exc:
        print(f"comfy-worker: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _alias(command: str) -> int:
    """The ``cr-*`` console scripts: ``cr-run ARGS`` is ``comfy-worker run ARGS``."""
    return main([command, *sys.argv[1:]])


cr_run = functools.partial(_alias, "run")
cr_analyze = functools.partial(_alias, "analyze")
cr_batch = functools.partial(_alias, "batch")
cr_contact_sheet = functools.partial(_alias, "contact-sheet")
cr_video_analyze = functools.partial(_alias, "video-analyze")


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        return await run_worker(
            settings,
            worker_id=args.worker_id or settings.worker_id or default_worker_id(),
            exit_when_idle=args.exit_when_idle,
            terminate_pod=args.terminate_pod_on_exit,
            only=tuple(args.engine or ()),
        )
    if args.command == "prompt-runner":
        from comfy_worker.handlers.prompt_runner.cli import run_cli

        return int(await run_cli(args, settings))
    if args.command == "build":
        from comfy_worker.cli_build import run_build

        return await run_build(args, settings, lambda: open_store(settings, pool_max=2), wait_for)
    if args.command in EXPLORE_COMMANDS:
        from comfy_worker.explore.cli import run_explore

        return await run_explore(args, settings)
    store = open_store(settings, pool_max=2)
    try:
        await store.connect()
        if args.command == "migrate":
            applied = await store.migrate()
            print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
            return 0
        if store.name == "sqlite":
            await store.migrate()  # the embedded file is created on first use
        if args.command == "submit":
            return await submit(store, settings, args)
        if args.command == "cancel":
            task = await store.cancel(args.task_id, "cancelled from the command line")
            print(f"{task.task_id}: {task.status}")
            return 0
        if args.command == "webhooks":
            return await webhooks_command(store, args)
        return await status(store)
    finally:
        await store.close()


async def webhooks_command(store: TaskStore, args: argparse.Namespace) -> int:
    if args.webhooks_command == "replay":
        n = await store.replay_webhooks(args.task_id)
        print(f"{args.task_id}: {n} event(s) queued for delivery again")
        return 0
    rows = await store.webhook_deliveries(args.task_id, args.limit)
    if not rows:
        print("no webhook events")
    for r in rows:
        status = r["last_status"] if r["last_status"] is not None else "-"
        line = (f"{r['created_at']}  {r['task_id']}  {r['event']:<15} {r['state']:<10} attempts={r['attempts']}"
                f" last={status}")
        if r.get("next_try"):
            line += f" next_try={r['next_try']}"
        if r.get("last_error"):
            line += f"  {r['last_error'][:160]}"
        print(line)
    return 0


def build_handlers() -> dict[str, Any]:
    from comfy_worker.handlers.comfy import ComfyHandler

    handlers: dict[str, Any] = {"comfy": ComfyHandler()}
    from comfy_worker.builders.params import TASK_TYPES
    from comfy_worker.handlers.wan import WanHandler

    handlers.update({task_type: WanHandler(task_type) for task_type in TASK_TYPES})
    try:
        from comfy_worker.handlers.prompt_runner.handler import PromptRunnerHandler
    except ImportError:
        pass
    else:
        handlers["prompt_runner"] = PromptRunnerHandler()
    try:
        from worker_wgp.handler import handlers as wan2gp_handlers
    except ImportError:  # an install without worker_wgp: no Wan2GP task types
        pass
    else:
        handlers.update(wan2gp_handlers())
    return handlers


def build_engines(settings: Settings, *, worker_id: str, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """The engines these settings configure: ComfyUI with COMFY_PATH or COMFY_URL, Wan2GP with WAN2GP_PATH
    (ConfigError naming WAN2GP_PATH when it holds no Wan2GP). ``only``: just these (``--engine``)."""
    from comfy_worker.daemon import work_root
    from comfy_worker.engine.comfyui import ComfyEngine

    engines: dict[str, Any] = {}
    if (settings.comfy_path or settings.comfy_url) and (not only or "comfyui" in only):
        engines["comfyui"] = ComfyEngine.from_settings(settings, worker_id=worker_id)
    if not only or "wan2gp" in only:
        if "wan2gp" in only and not settings.wan2gp_path:
            raise ConfigError("WAN2GP_PATH", "not set: the Wan2GP worker needs a Wan2GP checkout (with wgp.py)")
        if settings.wan2gp_path:
            from worker_wgp.engine import engine_from_settings

            engines["wan2gp"] = engine_from_settings(settings, work_root(settings, worker_id) / "_wan2gp")
    return engines


def build_registry(settings: Settings, *, worker_id: str, only: tuple[str, ...] = ()) -> Any:
    """Engines from settings, every handler, narrowed by TASK_TYPES (see comfy_worker.handlers.registry)."""
    from comfy_worker.handlers.registry import build_registry as registry_of

    return registry_of(build_engines(settings, worker_id=worker_id, only=only), build_handlers(), settings.task_types)


async def run_worker(
    settings: Settings,
    *,
    worker_id: str,
    exit_when_idle: bool = False,
    terminate_pod: bool = False,
    only: tuple[str, ...] = (),
) -> int:
    import structlog

    from comfy_worker.daemon import Daemon
    from comfy_worker.storage import open_storage

    structlog.contextvars.bind_contextvars(worker_id=worker_id)
    registry = build_registry(settings, worker_id=worker_id, only=only)
    store = open_store(settings)
    storage = open_storage(settings)
    daemon = Daemon(
        settings,
        store=store,
        storage=storage,
        registry=registry,
        worker_id=worker_id,
        exit_when_idle=exit_when_idle,
    )
    log.info(
        "worker_starting",
        version=__version__,
        queue=store.name,
        storage=settings.storage_backend,
        settings=settings.redacted(),
    )
    try:
        await daemon.start()
    except BaseException:
        await daemon._close()
        raise
    code = await daemon.run()
    if terminate_pod and daemon.exit_reason in ("drained", "idle") and settings.runpod_pod_id:
        await stop_own_pod(settings)
    return code


def parse_input_flag(flag: str) -> tuple[str, str, str]:
    target, sep, source = flag.partition("=")
    node, dot, field_name = target.partition(".")
    if not sep or not dot or not node or not field_name or not source:
        raise InputRejected(
            f"--input {flag!r}: expected NODE.FIELD=URL or NODE.FIELD=PATH, e.g. 12.video=clip.mp4"
        )
    return node, field_name, source


async def submit(store: TaskStore, settings: Settings, args: argparse.Namespace) -> int:
    from comfy_worker.cli_build import LocalInputs

    try:
        text = args.workflow.read_text()
    except OSError as exc:
        raise InputRejected(f"cannot read workflow file {args.workflow}: {exc.strerror}") from exc
    try:
        workflow = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputRejected(
            f"{args.workflow} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    task_id = args.task_id or str(uuid.uuid4())
    inputs: list[dict[str, Any]] = []
    async with LocalInputs(settings, task_id) as staged:
        for flag in args.input:
            node, field_name, source = parse_input_flag(flag)
            source_spec = await staged.stage(source, f"--input {flag!r}: {source} is")
            inputs.append({**source_spec, "node_id": node, "field": field_name})
    params: dict[str, Any] = {"workflow": workflow}
    if inputs:
        params["inputs"] = inputs
    task = await store.enqueue(
        NewTask("comfy", params, task_id=task_id, priority=args.priority, max_attempts=args.max_attempts,
                callback_url=getattr(args, "callback_url", None))
    )
    print(task.task_id, flush=True)
    if not args.wait:
        return 0
    return await wait_for(store, task.task_id, timeout=args.timeout)


async def wait_for(store: TaskStore, task_id: str, *, timeout: float = 0) -> int:
    """Show a progress line until the task ends; 0 when complete, 1 otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    tty = sys.stderr.isatty()
    last = ""
    while True:
        task = await store.get_task(task_id)
        line = _progress_line(task)
        if line != last:
            print(("\r" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last = line
        if task.status.terminal:
            if tty:
                print(file=sys.stderr)
            if task.status is TaskStatus.COMPLETE:
                print(task.output_url or "(no output file)")
                return 0
            print(f"{task.status}: {task.error}", file=sys.stderr)
            return 1
        if deadline is not None and loop.time() > deadline:
            print(f"still {task.status} after {timeout:.0f} s; stopped waiting", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)


def _progress_line(task: Task) -> str:
    p = task.progress or {}
    pct = p.get("percent")
    bar = ""
    if isinstance(pct, (int, float)):
        filled = int(pct / 5)
        bar = f"[{'#' * filled}{'.' * (20 - filled)}] {pct:5.1f}% "
    step = p.get("step") or (f"node {p['node']}" if p.get("node") else "")
    return f"{task.task_id} {task.status:<9} {bar}{step}".rstrip()


async def status(store: TaskStore) -> int:
    try:
        snap = await store.fleet_snapshot()
    except StoreError as exc:
        print(f"comfy-worker: error: {exc}", file=sys.stderr)
        return 1
    print(
        _table(
            "queue",
            snap["queue"],
            [
                "task_type",
                "queued",
                "ready",
                "running",
                "oldest_queued_age_s",
                "wait_p50_s_1h",
                "wait_p95_s_1h",
            ],
        )
    )
    print(
        _table(
            "workers",
            snap["workers"],
            ["id", "status", "current_task_id", "seconds_since_heartbeat", "tasks_completed", "tasks_failed"],
        )
    )
    print(
        _table(
            "last hour",
            snap["throughput"],
            ["task_type", "completed", "failed", "duration_p50_s", "duration_p95_s"],
        )
    )
    print(_table("recent failures", snap["failures"][:10], ["task_id", "task_type", "attempts", "error"]))
    return 0


def _table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.1f}"
        text = "" if v is None else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = [f"== {title} ==", "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells] or ["(none)"]
    return "\n".join(lines) + "\n"

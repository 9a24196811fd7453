"""Arguments and dispatch of the exploration commands; ``comfy_worker.cli`` registers them (and the ``cr-*``
console scripts call them under the names people already type)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from comfy_worker.config import Settings

EXPLORE_COMMANDS = ("run", "analyze", "batch", "contact-sheet", "video-analyze")
DEFAULT_SERVER = "http://127.0.0.1:8188"


def add_explore_parsers(sub: Any) -> None:
    """Add the five subcommands to ``comfy-worker``'s subparsers."""
    r = sub.add_parser("run", help="run one workflow on a ComfyUI (or as a queue task) and fetch its outputs")
    r.add_argument("workflow", type=Path, help="workflow JSON (API format, or a UI export to convert)")
    r.add_argument("--server", default=DEFAULT_SERVER, help=f"ComfyUI to run it on (default {DEFAULT_SERVER})")
    r.add_argument("-o", "--output", type=Path, default=Path("output"), help="outputs go to OUTPUT/<id>/")
    r.add_argument("--submit", action="store_true", help="queue it as a `comfy` task instead (prints the task id)")
    r.add_argument("--wait", action="store_true", help="with --submit: follow the task and fetch its outputs")
    r.add_argument("--priority", type=int, default=0)
    r.add_argument("--max-attempts", type=int, default=3)
    r.add_argument("--timeout", type=float, default=0, help="give up waiting after N seconds (0: no limit)")

    a = sub.add_parser("analyze", help="list a workflow's inputs by category and write a batch config template")
    a.add_argument("workflow", type=Path)
    a.add_argument("-o", "--output", type=Path, help="write the YAML template here (default: standard output)")
    _object_info_args(a)
    a.add_argument("--json", action="store_true", help="print the findings as JSON instead")

    b = sub.add_parser("batch", help="render many variations of a workflow (sobol / lhs / grid / random / linear)")
    b.add_argument("config", type=Path, help="batch config YAML (see `comfy-worker analyze`)")
    b.add_argument("--server", help=f"local mode: this ComfyUI, one run at a time (default {DEFAULT_SERVER})")
    b.add_argument("--fleet", action="store_true", help="fleet mode: every run a `comfy` task on the queue")
    b.add_argument("--object-info", type=Path, help="a saved /object_info to check values against (fleet mode)")
    b.add_argument("--fresh", action="store_true", help="start a new batch directory even if one can be resumed")
    b.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    b.add_argument("--priority", type=int, default=0, help="fleet mode: task priority")
    b.add_argument("--max-attempts", type=int, default=3, help="fleet mode: attempts per task")
    b.add_argument("--timeout", type=float, default=3600.0, help="local mode: seconds one run may take")

    c = sub.add_parser("contact-sheet", help="write a batch's HTML contact sheet (thumbnails, sort, filter)")
    c.add_argument("batch_dir", type=Path, help="an output/batch_<timestamp> directory")
    c.add_argument("--inline", action="store_true", help="embed the thumbnails in the HTML file")

    v = sub.add_parser("video-analyze", help="ffprobe metadata and sampled frames of a video, optionally to an API")
    v.add_argument("video", type=Path)
    v.add_argument("--provider", choices=("noop", "http"), default="noop")
    v.add_argument("--api-base", help="http provider: the URL frames are POSTed to")
    v.add_argument("--api-key-env", metavar="VAR", help="http provider: environment variable holding the API key")
    v.add_argument("--frames", type=int, default=8, help="how many evenly spaced frames (default 8)")
    v.add_argument("--keep-frames", action="store_true", help="keep the JPEG frames in <video>_frames/")
    v.add_argument("-o", "--output", type=Path, help="default: <video>_analysis.json beside the video")


def _object_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="a running ComfyUI to read node definitions (/object_info) from")
    p.add_argument("--object-info", type=Path, help="or a saved /object_info JSON file")


async def run_explore(args: argparse.Namespace, settings: Settings) -> int:
    if "LOG_LEVEL" not in os.environ:  # the progress bar is the output; logs only for problems
        from comfy_worker.logs import configure_logging

        configure_logging("warning", settings.log_format)
    handler = {
        "run": _run, "analyze": _analyze, "batch": _batch, "contact-sheet": _sheet, "video-analyze": _video,
    }[args.command]
    return int(await handler(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.explore import run

    if args.wait and not args.submit:
        print("comfy-worker run: --wait goes with --submit (a local run always waits)", file=sys.stderr)
        return 2
    if not args.submit:
        await run.run_local(args.workflow, args.server, args.output, timeout_s=args.timeout or 3600.0)
        return 0
    store, storage = await _queue(settings)
    try:
        task_id = await run.submit(store, args.workflow, priority=args.priority, max_attempts=args.max_attempts)
        print(task_id, flush=True)
        if not args.wait:
            return 0
        return await run.wait_and_fetch(store, storage, task_id, args.output, timeout_s=args.timeout)
    finally:
        await store.close()
        await storage.aclose()


async def _analyze(args: argparse.Namespace, _settings: Settings) -> int:
    import json

    from comfy_worker.explore import analyze
    from comfy_worker.explore.source import fetch_object_info, load_workflow

    object_info = await fetch_object_info(args.server, args.object_info)
    workflow, converted = load_workflow(args.workflow, object_info)
    findings = analyze.analyze(workflow, object_info)
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=1, ensure_ascii=False, default=str))
        return 0
    note = "Ranges from /object_info." if object_info else "No /object_info given: default ranges per category."
    if args.output is None:
        sys.stderr.write(analyze.table(findings))
        wf_ref = str(args.workflow)
        if converted:
            note += " workflow_file is a UI export: pass --server or --object-info to `batch` too."
        sys.stdout.write(analyze.template(findings, wf_ref, source_note=note))
        return 0
    wf_path = args.workflow
    if converted:  # the batch should not need the server's node definitions again
        wf_path = args.output.parent / f"{args.workflow.stem}.api.json"
        wf_path.write_text(json.dumps(workflow, indent=1, ensure_ascii=False))
        note += f" Converted from the UI export {args.workflow.name}."
    sys.stdout.write(analyze.table(findings))
    args.output.write_text(analyze.template(findings, analyze.relative_to(wf_path, args.output.parent),
                                            source_note=note))
    print(f"wrote {args.output}" + (f" and {wf_path}" if converted else ""), file=sys.stderr)
    return 0


async def _batch(args: argparse.Namespace, settings: Settings) -> int:
    from comfy_worker.explore.batch import run_batch
    from comfy_worker.explore.batch_config import load_config
    from comfy_worker.explore.source import fetch_object_info

    if args.fleet and args.server is None and args.object_info is None:
        object_info = None
    else:
        object_info = await fetch_object_info(args.server or DEFAULT_SERVER, args.object_info)
    cfg = load_config(args.config, object_info=object_info)
    if args.dry_run:
        plan = cfg.plan()
        for note in plan.notes:
            print(note, file=sys.stderr)
        names = [p.name for p in cfg.parameters]
        print("\t".join(["run_id", "name", *names]))
        for r in plan.runs:
            print("\t".join([str(r.run_id), r.name, *(str(r.values[n]) for n in names)]))
        print(f"{len(plan.runs)} runs", file=sys.stderr)
        return 0
    if not args.fleet:
        from comfy_worker.explore.runners import LocalRunner

        result = await run_batch(cfg, LocalRunner(args.server or DEFAULT_SERVER, timeout_s=args.timeout),
                                 fresh=args.fresh)
    else:
        from comfy_worker.explore.runners import FleetRunner

        store, storage = await _queue(settings)
        try:
            runner = FleetRunner(store, storage, priority=args.priority, max_attempts=args.max_attempts)
            result = await run_batch(cfg, runner, fresh=args.fresh)
        finally:
            await store.close()
            await storage.aclose()
    print(result.directory, flush=True)
    return result.exit_code


async def _queue(settings: Settings) -> tuple[Any, Any]:
    from comfy_worker.storage import open_storage
    from comfy_worker.store import open_store

    store = open_store(settings, pool_max=2)
    await store.connect()
    if store.name == "sqlite":
        await store.migrate()  # the embedded file is created on first use
    return store, open_storage(settings)


async def _sheet(args: argparse.Namespace, _settings: Settings) -> int:
    from comfy_worker.explore.sheet import make_sheet

    path = await make_sheet(args.batch_dir, inline=args.inline)
    print(path)
    return 0


async def _video(args: argparse.Namespace, _settings: Settings) -> int:
    from comfy_worker.explore.bar import Bar
    from comfy_worker.explore.video import analyze_video, provider_from_args

    provider = provider_from_args(args.provider, args.api_base, args.api_key_env)
    bar = Bar(args.frames, "frames")
    try:
        path = await analyze_video(args.video, provider, frames=args.frames, keep_frames=args.keep_frames,
                                   output=args.output, on_frame=lambda _i: bar.advance())
    finally:
        bar.close()
    print(path)
    return 0

"""``comfy-worker prompt-runner``: render long videos as HIGH/LOW chunk chains from prompt files.

``--dry-run`` (also ``DRY_RUN=true``) and ``--validate-only`` need nothing but files. Real local runs and
``--resume`` (:func:`run_local`) and ``--submit`` (:func:`submit`) are in :mod:`.local`.

Runnable on its own: ``python -m comfy_worker.handlers.prompt_runner.cli --dry-run --prompt-file FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfy_worker.errors import ComfyWorkerError
from comfy_worker.handlers.prompt_runner.build import build_job_workflow
from comfy_worker.handlers.prompt_runner.dryrun import dry_run, plan_for, summary
from comfy_worker.handlers.prompt_runner.planner import COMBINE
from comfy_worker.handlers.prompt_runner.profile import Profile, load_profile
from comfy_worker.handlers.prompt_runner.prompt_file import PromptSpec, find_prompt_files, parse_file

EXIT_OK, EXIT_FAILED, EXIT_NOT_IMPLEMENTED = 0, 1, 2
DEFAULT_PROFILE = "wan22_vace_v2v"

PLAN_HELP = """\
settings: each plan setting comes from the first of: the flag (--frames-per-chunk, --overlap,
--reference-offset) > the prompt file ('frames_per_chunk: N' on the line after the total) or the task's
params (frames_per_chunk, overrides.overlap / overrides.reference_offset) > the profile's defaults
(defaults.frames_per_chunk, ...) > built-in (frames_per_chunk 101, overlap 0, reference_offset 10).

frames: Wan renders 4k+1 frames per chunk, so a chunk covering n frames renders the next 4k+1 >= n
and keeps n; its first OVERLAP frames (chunks after the first) repeat the previous chunk and are
dropped too. The join trims every chunk to the frames it keeps, so the video has exactly the total
asked for (500 frames in chunks of 101: 101, 101, 101, 101, then 97 rendered and 96 kept).
--dry-run prints per chunk the frames rendered and kept."""


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with the message naming what was expected."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``prompt-runner`` subcommand's flags (and, after them in --help, how plan settings are chosen)."""
    parser.epilog = PLAN_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    src = parser.add_argument_group("input")
    src.add_argument(
        "--prompt-file",
        action="append",
        type=Path,
        metavar="FILE",
        help="a prompt file (repeatable); default: every *.txt in --prompt-dir",
    )
    src.add_argument(
        "--prompt-dir",
        type=Path,
        default=Path("prompt_files"),
        metavar="DIR",
        help="directory of prompt files (default: prompt_files)",
    )
    src.add_argument("--resume", metavar="VIDEO_NAME", help="continue the chain recorded in state/VIDEO_NAME.json")
    src.add_argument(
        "--profile",
        default=None,
        metavar="NAME|PATH",
        help=f"chain profile: a shipped name or a .yaml/.json path (default: {DEFAULT_PROFILE})",
    )
    plan_g = parser.add_argument_group("plan (flag > prompt file / task params > profile defaults > built-in)")
    plan_g.add_argument(
        "--frames-per-chunk",
        type=_positive,
        metavar="N",
        help="video frames per chunk; beats the prompt file's and the profile's (built-in 101). Wan renders 4k+1: "
        "other counts render the next 4k+1 and trim the surplus at the join",
    )
    plan_g.add_argument(
        "--overlap",
        type=_non_negative,
        metavar="N",
        help="frames shared by adjacent chunks, dropped from each later chunk at the join (default: profile's, else 0)",
    )
    plan_g.add_argument(
        "--reference-offset",
        type=_non_negative,
        metavar="N",
        help="reference frame = last kept frame + 1 - N (default: profile's, else 10)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--max-retries",
        type=_non_negative,
        default=None,
        metavar="N",
        help="retries per step (default: the profile's defaults.max_retries, else 3)",
    )
    run.add_argument("--output-dir", type=Path, default=Path("output"), metavar="DIR", help="local output root")
    run.add_argument("--no-upload", action="store_true", help="keep results local, do not upload to storage")
    run.add_argument("--keep-intermediate", action="store_true", help="keep latents, segments and references")
    stop = run.add_mutually_exclusive_group()
    stop.add_argument(
        "--no-shutdown",
        dest="shutdown",
        action="store_const",
        const="never",
        help="never stop this RunPod pod when done",
    )
    stop.add_argument(
        "--force-shutdown",
        dest="shutdown",
        action="store_const",
        const="always",
        help="stop this RunPod pod (RUNPOD_POD_ID) when done, even after failures",
    )
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    mode = parser.add_argument_group("mode")
    mode.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="plan and write workflows only: no network, ComfyUI, ffmpeg or uploads (or DRY_RUN=true)",
    )
    mode.add_argument("--validate-only", action="store_true", help="check prompt files and the profile; exit 0/1")
    mode.add_argument("--submit", action="store_true", help="enqueue prompt_runner tasks instead of running here")
    mode.add_argument(
        "--object-info",
        type=Path,
        metavar="FILE",
        help="validate generated workflows offline against this /object_info JSON",
    )


def _collect_prompt_files(args: argparse.Namespace) -> list[Path]:
    if args.prompt_file:
        return list(args.prompt_file)
    return find_prompt_files(args.prompt_dir)


def _load_specs(args: argparse.Namespace, out: Any) -> tuple[list[PromptSpec], list[str]]:
    specs, errors = [], []
    try:
        files = _collect_prompt_files(args)
    except ComfyWorkerError as exc:
        return [], [str(exc)]
    if not files:
        return [], [f"{args.prompt_dir}: no *.txt prompt files found"]
    for path in files:
        try:
            spec = parse_file(path)
        except ComfyWorkerError as exc:
            errors.append(str(exc))
            continue
        specs.append(spec)  # --frames-per-chunk is applied when planning (it beats the file's value)
    names = [s.video_name for s in specs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"video name {name!r} is used by more than one prompt file; names must be unique")
    return specs, errors


def _object_info(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.object_info:
        return None
    return json.loads(Path(args.object_info).read_text(encoding="utf-8"))


def _plan_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that beat every other source of a plan setting (see PLAN_HELP)."""
    return {
        "frames_per_chunk": args.frames_per_chunk,
        "overlap": args.overlap,
        "reference_offset": args.reference_offset,
        "override_source": "command line",
    }


def validate_only(args: argparse.Namespace, out: Any = None) -> int:
    """Parse every prompt file, load the profile, plan and build every workflow. 0 when all are fine."""
    out = out or sys.stdout
    specs, errors = _load_specs(args, out)
    profile: Profile | None = None
    try:
        profile = load_profile(args.profile or DEFAULT_PROFILE)
        print(f"OK profile {profile.name} ({profile.source}, join: {profile.join_mode})", file=out)
    except ComfyWorkerError as exc:
        errors.append(str(exc))
    object_info = _object_info(args)
    for spec in specs:
        if profile is None:
            break
        try:
            p = plan_for(spec, profile, **_plan_overrides(args))
            count = 0
            for job in p.jobs:
                if job.job_type == COMBINE and profile.combine_workflow is None:
                    continue
                build_job_workflow(profile, job, input_video=spec.input_video, seed=spec.seed, object_info=object_info)
                count += 1
            print(
                f"OK {spec.source}: {spec.video_name}, {spec.total_frames} frames, {p.chunks} chunks, "
                f"{count} workflows",
                file=out,
            )
        except ComfyWorkerError as exc:
            errors.append(f"{spec.source}: {exc}")
    for err in errors:
        print(f"ERROR {err}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def run_dry(args: argparse.Namespace, settings: Any, out: Any = None) -> int:
    out = out or sys.stdout
    specs, errors = _load_specs(args, out)
    if errors:
        for err in errors:
            print(f"ERROR {err}", file=sys.stderr)
        return EXIT_FAILED
    try:
        profile = load_profile(args.profile or specs[0].profile or DEFAULT_PROFILE)
        result = dry_run(
            specs,
            profile,
            temp_dir=getattr(settings, "dry_run_temp_dir", "") or os.environ.get("DRY_RUN_TEMP_DIR"),
            object_info=_object_info(args),
            plan_overrides=_plan_overrides(args),
        )
    except ComfyWorkerError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summary(result), file=out)
    return EXIT_OK


async def run_local(args: argparse.Namespace, settings: Any) -> int:
    """Run the chains on this machine (see :mod:`.local`): ComfyUI via COMFY_URL or COMFY_PATH, artifacts
    and ``state/{video}.json`` under --output-dir; ``--resume VIDEO_NAME`` continues a saved run."""
    from comfy_worker.handlers.prompt_runner import local

    out = sys.stdout
    items: list[tuple[PromptSpec, dict[str, Any] | None]] = []
    if args.resume:
        try:
            saved = local.load_resume(Path(args.output_dir), args.resume)
            items.append((PromptSpec(**saved["spec"]), saved))
        except (ComfyWorkerError, TypeError) as exc:
            print(f"ERROR {exc}", file=sys.stderr)
            return EXIT_FAILED
    else:
        specs, errors = _load_specs(args, out)
        if errors:
            for err in errors:
                print(f"ERROR {err}", file=sys.stderr)
            return EXIT_FAILED
        items = [(local.default_profile(s, args), None) for s in specs]
    code = EXIT_FAILED
    try:
        code = await local.run_specs(items, args, settings, out)
    finally:
        await local.maybe_stop_pod(args, settings, code == EXIT_OK)
    return code


async def submit(args: argparse.Namespace, settings: Any) -> int:
    """Enqueue one prompt_runner task per prompt file (QUEUE per DATABASE_URL / SUPABASE_URL); print ids."""
    from comfy_worker.handlers.prompt_runner import local

    specs, errors = _load_specs(args, sys.stdout)
    if errors:
        for err in errors:
            print(f"ERROR {err}", file=sys.stderr)
        return EXIT_FAILED
    return await local.submit_specs(specs, args, settings)


async def run_cli(args: argparse.Namespace, settings: Any) -> int:
    """Entry point of the subcommand; returns the process exit status."""
    if args.validate_only:
        return validate_only(args)
    dry = args.dry_run if args.dry_run is not None else bool(getattr(settings, "dry_run", False))
    if dry:
        return run_dry(args, settings)
    try:
        return await (submit(args, settings) if args.submit else run_local(args, settings))
    except NotImplementedError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED


def main(argv: list[str] | None = None) -> int:
    from comfy_worker.config import load_settings
    from comfy_worker.logs import configure_logging

    parser = argparse.ArgumentParser(prog="comfy-worker prompt-runner", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ComfyWorkerError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return EXIT_FAILED
    configure_logging(args.log_level or settings.log_level, settings.log_format)
    return asyncio.run(run_cli(args, settings))


if __name__ == "__main__":
    sys.exit(main())

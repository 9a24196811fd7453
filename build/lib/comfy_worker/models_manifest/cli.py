"""``comfy-worker models check | sync [--manifest docker/models.yaml] [--models-dir DIR] [--group G]``.

check: one line per file (ok / missing / corrupt / unverified); exit 1 when anything is missing or corrupt.
sync: downloads what is missing (a bar on a terminal, a progress line every few seconds in logs); exit 1 when
anything could not be installed, with the reason per file.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from comfy_worker.config import Settings
from comfy_worker.errors import ModelsError
from comfy_worker.models_manifest.manifest import Manifest, load_manifest
from comfy_worker.models_manifest.sync import check_models, sync_models

DEFAULT_MANIFEST = Path("docker/models.yaml")


def add_arguments(sub: Any) -> None:
    m = sub.add_parser("models", help="check or download the model files in the manifest (docker/models.yaml)")
    actions = m.add_subparsers(dest="models_command", required=True)
    for name, text in (
        ("check", "list what is missing or corrupt (exit 1 if anything is)"),
        ("sync", "download what is missing: resumable, sha256-verified, one download per file at a time"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument(
            "--manifest", type=Path, help="model manifest (default: MODELS_MANIFEST, else docker/models.yaml)"
        )
        a.add_argument(
            "--models-dir", type=Path, help="model folders root (default: MODELS_DIR, else COMFY_PATH/models)"
        )
        a.add_argument(
            "--group",
            action="append",
            default=[],
            help="only files of this group (repeatable; default: MODELS_GROUPS, else all)",
        )
        if name == "check":
            mode = a.add_mutually_exclusive_group()
            mode.add_argument("--quick", action="store_true", help="sizes only, no hashing")
            mode.add_argument("--rehash", action="store_true", help="hash every file again, ignoring recorded hashes")
        else:
            a.add_argument(
                "--retries", type=int, default=5, help="resumed retries per file after a failure (default 5)"
            )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point from comfy_worker.cli (synchronous: downloads are blocking I/O in this process)."""
    signal.signal(signal.SIGTERM, _sigterm)  # unwind: locks released, partial files kept for resuming
    try:
        manifest, models_dir, groups = _inputs(args, settings)
        progress = TerminalProgress(sys.stderr)
        if args.models_command == "check":
            verify = "quick" if args.quick else "full" if args.rehash else "cached"
            statuses = check_models(manifest, models_dir, groups=groups, verify=verify, progress=progress)
            for s in statuses:
                print(f"{s.state:<10} {s.entry.relpath:<70} {_size(s.entry.size):>9}  {s.detail}".rstrip())
            bad = [s for s in statuses if s.needs_sync]
            print(
                f"{len(statuses) - len(bad)} of {len(statuses)} present"
                + (f"; {len(bad)} to fetch: comfy-worker models sync" if bad else ""),
                file=sys.stderr,
            )
            return 1 if bad else 0
        outcomes = sync_models(manifest, models_dir, groups=groups, progress=progress, retries=max(args.retries, 0))
        for o in outcomes:
            print(f"{o.outcome:<14} {o.entry.relpath:<70} {o.detail}".rstrip())
        failed = [o for o in outcomes if not o.ok]
        if failed:
            print(f"{len(failed)} of {len(outcomes)} file(s) not installed (see above)", file=sys.stderr)
        return 1 if failed else 0
    except ModelsError as exc:
        print(f"comfy-worker models: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("comfy-worker models: interrupted; partial downloads are kept and resume next time", file=sys.stderr)
        return 130


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _inputs(args: argparse.Namespace, settings: Settings) -> tuple[Manifest, Path, tuple[str, ...]]:
    manifest_path = args.manifest or (Path(settings.models_manifest) if settings.models_manifest else None)
    if manifest_path is None:
        if not DEFAULT_MANIFEST.is_file():
            raise ModelsError("no manifest: pass --manifest FILE or set MODELS_MANIFEST (e.g. docker/models.yaml)")
        manifest_path = DEFAULT_MANIFEST
    models_dir = args.models_dir or settings.models_path
    if models_dir is None:
        raise ModelsError("no models directory: pass --models-dir DIR or set MODELS_DIR (or COMFY_PATH)")
    groups = tuple(args.group) or settings.models_groups
    return load_manifest(manifest_path), Path(models_dir), groups


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class TerminalProgress:
    """A tqdm bar on a terminal; without one (container logs), a line every ``every_s`` seconds."""

    def __init__(self, stream: TextIO, every_s: float = 10.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s
        self._bar: Any = None
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._t0 = self._last = 0.0
        self._start_done = 0

    def start(self, label: str, total: int | None, done: int = 0) -> None:
        self._label, self._total, self._done, self._start_done = label, total, done, done
        self._t0 = self._last = time.monotonic()
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label[-40:],
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(now)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._done > self._start_done:
            self._line(time.monotonic())

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _line(self, now: float) -> None:
        rate = (self._done - self._start_done) / max(now - self._t0, 1e-6)
        pct = f" {100 * self._done / self._total:5.1f}%" if self._total else ""
        of = f" of {_size(self._total)}" if self._total else ""
        print(
            f"{self._label}:{pct} {_size(self._done)}{of} at {rate / 1e6:.1f} MB/s",
            file=self.stream,
            flush=True,
        )

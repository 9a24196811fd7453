"""A long run on one worker: does anything grow with the number of tasks processed?

    .venv/bin/python bench/bench_soak.py [--tasks 1000] [--every 50] [--modes cleanup,keep]
                                        [--png docs/benchmarks-soak.png] [--md docs/benchmarks-soak.md]
                                        [--tracemalloc --snapshot-at 1000] [--size 600]

For each mode (``cleanup``: the defaults; ``keep``: KEEP_COMFY_FILES=true, i.e. no cleanup at all; ``notrim``:
the defaults but freed memory is not given back after each task, the baseline of issue 20's fix, needs
``--malloc-stats`` or ``--tracemalloc``) one fresh run,
the modes side by side (at the same time, so both see the same load from whatever else runs on the machine):

* a fresh PostgreSQL database (migrated, dropped at the end), an HTTP server serving a small PNG input,
  and ``python -m comfy_worker`` as a subprocess that launches the test ComfyUI as its own child (COMFY_PATH,
  ``--cpu``, tests/comfy_nodes; ComfyUI's folders come from COMFY_ARGS), PREFETCH=1, local storage;
* ``--tasks`` comfy tasks inserted at once, each: a downloaded input (``inputs[].url``) -> CWLoadImage ->
  CWNoiseImage 600x600 -> SaveImage, a ~1 MB PNG output;
* every ``--every`` completed tasks: bytes in ComfyUI's input / output / temp folders and in the work dir,
  files there that belong to a finished task, the daemon's RSS and ComfyUI's RSS (psutil), and the number of
  entries in ComfyUI's history (GET /history).

Prints the table as it goes, then per mode the growth of every series from task 100 on and the throughput, and
the cleanup / keep throughput ratio over the window in which both ran (from the later run's task 100 to the
earlier run's last task). Writes a plot (PNG) and the tables (markdown).
Goals (issue 16): growth <= 10 % from task 100 on, 0 files of finished tasks, cleanup/keep throughput >= 0.97.

``--tracemalloc`` (issue 20) runs the daemon through bench/soak_daemon.py (tracemalloc on, the normal entry
point): every sample also reads the daemon's Python heap (bytes traced by tracemalloc), glibc malloc's bytes in
use and held, and its live objects; at ``--snapshot-at`` and after the last task a tracemalloc snapshot is
taken, and the growth between the first and the last snapshot is printed by allocation site (top 25 lines).
``--malloc-stats``: the same wrapper without tracemalloc (no snapshots, no Python heap figure; no tracemalloc
overhead in time or RSS), for the RSS figures themselves.
Goal (issue 20): daemon RSS at the last task within 3 % of its RSS at ``--snapshot-at``.
Needs the test ComfyUI (scripts/setup_test_comfyui.sh) and PostgreSQL on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import drop_database, fresh_database  # noqa: E402

from comfy_worker.diskspace import tree_bytes  # noqa: E402
from tests.comfy_server import comfy_args, comfy_test_paths, free_port  # noqa: E402

ADMIN_DSN = os.environ.get("TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MiB = 1024 * 1024


def graph(size: int = 600) -> dict[str, Any]:
    return {
        "1": {"class_type": "CWLoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {"class_type": "CWNoiseImage", "inputs": {"images": ["1", 0], "width": size, "height": size, "seed": 7}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "soak"}},
    }


def input_png() -> bytes:
    """A 96 x 96 PNG of noise (about 28 KB): the task's downloaded input."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Sample:
    done: int
    at_s: float
    input_b: int
    output_b: int
    temp_b: int
    work_b: int
    finished_files: int
    daemon_rss: int
    comfy_rss: int
    history: int
    traced: int = 0  # with --tracemalloc: bytes the daemon's Python allocations hold (tracemalloc)
    malloc_used: int = 0  # glibc malloc: bytes in use (mallinfo2 uordblks + hblkhd)
    malloc_held: int = 0  # glibc malloc: bytes it holds from the OS (arena + hblkhd)
    objects: int = 0  # live objects tracked by the gc
    asyncio_tasks: int = 0


@dataclass
class Run:
    mode: str
    samples: list[Sample] = field(default_factory=list)
    completed_at: list[float] = field(default_factory=list)  # epoch seconds, in completion order
    failed: int = 0
    cleanup_s: list[float] = field(default_factory=list)  # per task, from the worker's task_files_removed events
    trim: list[tuple[float, int]] = field(default_factory=list)  # per task: malloc_trim's seconds and bytes given back
    snapshots: list[tuple[int, Path]] = field(default_factory=list)  # (tasks done, tracemalloc snapshot file)


async def serve_input(data: bytes) -> tuple[Any, str]:
    from aiohttp import web

    async def png(_request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/in.png", png)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/in.png"


def comfy_child(daemon: psutil.Process) -> psutil.Process | None:
    for child in daemon.children(recursive=True):
        try:
            if "main.py" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def finished_files(folders: list[Path], finished: set[str]) -> int:
    """Files under comfy_worker/<task_id>/ of any folder whose task has finished (should be 0 with cleanup)."""
    n = 0
    for folder in folders:
        base = folder / "comfy_worker"
        if base.is_dir():
            for entry in base.iterdir():
                if entry.name in finished:
                    n += sum(1 for p in entry.rglob("*") if p.is_file())
    return n


class Probe:
    """The daemon run through bench/soak_daemon.py: ask it (a signal) for its memory figures, or a snapshot."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out

    async def ask(self, snapshot: bool) -> tuple[dict[str, Any], Path | None]:
        """Signal the daemon and read the figures it writes. Files numbered past the ones seen before are the
        answer (a snapshot asked for by hand, ``kill -USR2 <pid>``, adds a number and is harmless)."""
        seen = set(self.out.glob("stats-*.json"))
        os.kill(self.pid, signal.SIGUSR2 if snapshot else signal.SIGUSR1)
        for _ in range(1200):  # the handler runs between the daemon's callbacks: normally within milliseconds
            new = sorted(set(self.out.glob("stats-*.json")) - seen, key=lambda p: int(p.stem.split("-")[1]))
            if new:
                n = new[-1].stem.split("-")[1]
                return json.loads(new[-1].read_text()), (self.out / f"snap-{n}.tracemalloc" if snapshot else None)
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the daemon wrote no stats file in {self.out} within 60 s")


async def one_run(
    mode: str, tasks: int, every: int, url: str, logs_dir: Path, *, size: int = 600,
    tracemalloc: bool = False, malloc_stats: bool = False, snapshot_at: tuple[int, ...] = (),
) -> Run:  # fmt: skip
    run = Run(mode)
    db, dsn = await fresh_database(ADMIN_DSN, "cw_soak")
    workdir = Path(tempfile.mkdtemp(prefix=f"cw-soak-{mode}-"))
    python, tree = comfy_test_paths()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "COMFY_PATH": str(tree),
        "COMFY_PYTHON": str(python),
        "COMFY_PORT": str(port),
        "COMFY_ARGS": shlex.join(comfy_args(workdir)),
        "LOCAL_STORAGE_DIR": str(workdir / "storage"),
        "WORK_DIR": str(workdir / "work"),
        "ALLOW_PRIVATE_URLS": "true",
        "LOG_FORMAT": "json",
        "KEEP_COMFY_FILES": "true" if mode == "keep" else "false",
        **({"CW_SOAK_NO_TRIM": "1"} if mode == "notrim" else {}),
        "PYTHONPATH": str(REPO),
    }
    folders = [workdir / "input", workdir / "output", workdir / "temp"]
    log_file = (logs_dir / f"worker-{mode}.log").open("wb")
    trace_dir = logs_dir / f"tracemalloc-{mode}"
    wrapped = tracemalloc or malloc_stats
    entry = [str(REPO / "bench" / "soak_daemon.py"), str(trace_dir)] if wrapped else ["-m", "comfy_worker"]
    if wrapped:
        env["CW_TRACEMALLOC_FRAMES"] = "1" if tracemalloc else "0"
    proc = subprocess.Popen(
        [sys.executable, *entry, "--worker-id", f"soak-{mode}"],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir,
    )  # fmt: skip
    daemon = psutil.Process(proc.pid)
    probe = Probe(proc.pid, trace_dir) if wrapped else None
    snap_marks = sorted(snapshot_at)
    conn = await asyncpg.connect(dsn)
    http = httpx.AsyncClient(timeout=60)
    try:
        for _ in range(600):  # registered: ComfyUI is up
            if await conn.fetchval("select count(*) from workers where status in ('idle', 'busy')"):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log_file.name}")
            await asyncio.sleep(0.2)
        params = {"workflow": graph(size), "inputs": [{"url": url, "node_id": "1", "field": "image"}]}
        await conn.execute(
            "insert into tasks (task_type, params, status) select 'comfy', $1::jsonb, 'queued'"
            " from generate_series(1, $2)",
            json.dumps(params), tasks,
        )  # fmt: skip
        t0 = time.monotonic()
        next_mark = every
        while True:
            done = await conn.fetchval("select count(*) from tasks where status in ('complete', 'failed')")
            if done >= next_mark:
                # finished: ended over 2 s ago (cleanup runs right after the end is recorded)
                rows = await conn.fetch(
                    "select task_id from tasks where status in ('complete', 'failed')"
                    " and completed_at < now() - interval '2 seconds'"
                )
                finished = {r["task_id"] for r in rows}
                comfy = comfy_child(daemon)
                hist = (await http.get(f"http://127.0.0.1:{port}/history", params={"max_items": 100000})).json()
                s = Sample(
                    done=done,
                    at_s=time.monotonic() - t0,
                    input_b=tree_bytes(folders[0]),
                    output_b=tree_bytes(folders[1]),
                    temp_b=tree_bytes(folders[2]),
                    work_b=tree_bytes(workdir / "work"),
                    finished_files=finished_files(folders, finished),
                    daemon_rss=daemon.memory_info().rss,
                    comfy_rss=comfy.memory_info().rss if comfy else 0,
                    history=len(hist),
                )
                if probe is not None:
                    take = tracemalloc and (bool(snap_marks and done >= snap_marks[0]) or done >= tasks)
                    while snap_marks and done >= snap_marks[0]:
                        snap_marks.pop(0)
                    figures, snap = await probe.ask(snapshot=take)
                    mi = figures["mallinfo"]
                    s.traced, s.objects = figures["traced"], figures["objects"]
                    s.asyncio_tasks = figures["asyncio_tasks"]
                    s.malloc_used = mi.get("uordblks", 0) + mi.get("hblkhd", 0)
                    s.malloc_held = mi.get("arena", 0) + mi.get("hblkhd", 0)
                    s.daemon_rss = daemon.memory_info().rss  # after the handler's gc.collect, as the figures are
                    if snap is not None:
                        run.snapshots.append((done, snap))
                run.samples.append(s)
                print(f"{mode:>8} {row_text(s)}", flush=True)
                next_mark = (done // every + 1) * every
            if done >= tasks:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log_file.name}")
            await asyncio.sleep(0.25)
        run.failed = await conn.fetchval("select count(*) from tasks where status = 'failed'")
        run.completed_at = [
            r["t"] for r in await conn.fetch(
                "select extract(epoch from completed_at)::float8 as t from tasks where status = 'complete'"
                " order by completed_at"
            )
        ]  # fmt: skip
    finally:
        await http.aclose()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        for line in (logs_dir / f"worker-{mode}.log").read_text(errors="replace").splitlines():
            if '"task_files_removed"' in line:
                event = json.loads(line)
                run.cleanup_s.append(float(event.get("seconds", 0.0)))
                if "trim_s" in event:
                    run.trim.append((float(event["trim_s"]), int(event["memory_released_bytes"])))
        await conn.close()
        await drop_database(ADMIN_DSN, db)
        shutil.rmtree(workdir, ignore_errors=True)
    return run


HEADER = (
    f"{'tasks':>6} {'t s':>7} {'input MiB':>9} {'output MiB':>10} {'temp MiB':>8} {'work MiB':>8} "
    f"{'finished files':>14} {'daemon RSS MiB':>14} {'ComfyUI RSS MiB':>15} {'history':>7}"
)


TRACE_HEADER = f" {'py heap MiB':>11} {'malloc used MiB':>15} {'malloc held MiB':>15} {'objects':>8} {'tasks':>5}"


def row_text(s: Sample) -> str:
    text = (
        f"{s.done:>6} {s.at_s:>7.1f} {s.input_b / MiB:>9.2f} {s.output_b / MiB:>10.2f} {s.temp_b / MiB:>8.2f} "
        f"{s.work_b / MiB:>8.2f} {s.finished_files:>14} {s.daemon_rss / MiB:>14.1f} {s.comfy_rss / MiB:>15.1f} "
        f"{s.history:>7}"
    )
    if s.objects:
        text += (f" {s.traced / MiB:>11.2f} {s.malloc_used / MiB:>15.2f} {s.malloc_held / MiB:>15.2f} "
                 f"{s.objects:>8} {s.asyncio_tasks:>5}")  # fmt: skip
    return text


def header(tracemalloc: bool) -> str:
    return HEADER + (TRACE_HEADER if tracemalloc else "")


def throughput(run: Run, start: int) -> float:
    """Tasks per second from the ``start``-th completion to the last."""
    times = run.completed_at
    if len(times) <= start:
        return float("nan")
    return (len(times) - start) / (times[-1] - times[start - 1])


SERIES = {
    "ComfyUI folders + work dir (bytes)": lambda s: s.input_b + s.output_b + s.temp_b + s.work_b,
    "daemon RSS (bytes)": lambda s: s.daemon_rss,
    "ComfyUI RSS (bytes)": lambda s: s.comfy_rss,
    "ComfyUI history entries": lambda s: s.history,
}
TRACE_SERIES = {
    "daemon Python heap, tracemalloc (bytes)": lambda s: s.traced,
    "daemon malloc in use (bytes)": lambda s: s.malloc_used,
    "daemon malloc held from the OS (bytes)": lambda s: s.malloc_held,
    "daemon live objects": lambda s: s.objects,
}


def growth(run: Run, start: int, tasks: int) -> list[str]:
    """Per series, over the samples from task ``start`` while tasks were still running: the value at the first,
    the largest, and the growth of a least-squares line from the first to the last of them, relative to the
    mean (so one noisy sample does not decide it). The drained state after the last task is shown apart."""
    window = [s for s in run.samples if start <= s.done < tasks] or [s for s in run.samples if s.done >= start]
    out: list[str] = []
    if len(window) < 2:
        return out
    xs = [s.done for s in window]
    mx = sum(xs) / len(xs)
    series = {**SERIES, **(TRACE_SERIES if window[0].objects else {})}
    for name, fn in series.items():
        ys = [fn(s) for s in window]
        my = sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        fitted = slope * (xs[-1] - xs[0]) / my * 100 if my else 0.0
        drained = fn(run.samples[-1]) if run.samples[-1].done >= tasks else None
        out.append(
            f"{name}: {ys[0]:,} at task {xs[0]}, max {max(ys):,}, fitted growth to task {xs[-1]}: {fitted:+.1f} %"
            + (f"; after the last task: {drained:,}" if drained is not None else "")
        )
    most = max(s.finished_files for s in run.samples)
    out.append(f"files of tasks finished over 2 s earlier, largest count seen: {most}")
    return out


def rss_ratio(run: Run, base: int) -> str | None:
    """Issue 20's figure: the daemon's RSS at the last sample over its RSS at the first sample from ``base`` on."""
    first = next((s for s in run.samples if s.done >= base), None)
    last = run.samples[-1] if run.samples else None
    if first is None or last is None or last is first:
        return None
    ratio = last.daemon_rss / first.daemon_rss
    text = (f"daemon RSS at task {first.done}: {first.daemon_rss / MiB:.1f} MiB, at task {last.done}: "
            f"{last.daemon_rss / MiB:.1f} MiB, ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; goal: within 3 %)")
    if first.traced:
        text += f"; Python heap {first.traced / MiB:.2f} -> {last.traced / MiB:.2f} MiB"
    if first.objects:
        text += (f"; malloc in use "
                 f"{first.malloc_used / MiB:.2f} -> {last.malloc_used / MiB:.2f} MiB, held "
                 f"{first.malloc_held / MiB:.2f} -> {last.malloc_held / MiB:.2f} MiB")  # fmt: skip
    return text


def snapshot_diff(run: Run, top: int = 25) -> list[str]:
    """The growth between the run's first and last tracemalloc snapshot, by allocation site (file:line)."""
    import tracemalloc

    if len(run.snapshots) < 2:
        return []
    (n0, p0), (n1, p1) = run.snapshots[0], run.snapshots[-1]
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old = tracemalloc.Snapshot.load(str(p0)).filter_traces(filters)
    new = tracemalloc.Snapshot.load(str(p1)).filter_traces(filters)
    stats = new.compare_to(old, "lineno")
    total = sum(s.size_diff for s in stats)
    out = [f"tracemalloc, task {n0} -> task {n1}: {sum(s.size for s in stats) / MiB:.2f} MiB traced "
           f"({total / 1024:+.1f} KiB), top {top} sites by growth:"]  # fmt: skip
    root = str(REPO) + os.sep
    for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:top]:
        frame = s.traceback[0]
        where = frame.filename.replace(root, "").split("site-packages" + os.sep)[-1]
        out.append(f"{s.size_diff / 1024:>+9.1f} KiB {s.count_diff:>+7} blocks  ({s.size / 1024:>8.1f} KiB now)  "
                   f"{where}:{frame.lineno}")  # fmt: skip
    return out


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [
        ("ComfyUI input+output+temp and work dir (MiB)",
         lambda s: (s.input_b + s.output_b + s.temp_b + s.work_b) / MiB),
        ("daemon RSS (MiB)", lambda s: s.daemon_rss / MiB),
        ("ComfyUI RSS (MiB)", lambda s: s.comfy_rss / MiB),
        ("ComfyUI history entries", lambda s: s.history),
    ]  # fmt: skip
    styles = {"cleanup": {"color": "tab:blue", "marker": "o"}, "keep": {"color": "tab:red", "marker": "x"},
              "notrim": {"color": "tab:green", "marker": "+"}}  # fmt: skip
    for ax, (title, fn) in zip(axes.flat, panels, strict=True):
        for run in runs:
            label = {"cleanup": "cleanup (default)", "keep": "KEEP_COMFY_FILES=true",
                     "notrim": "no malloc_trim after each task"}.get(run.mode, run.mode)  # fmt: skip
            ax.plot([s.done for s in run.samples], [fn(s) for s in run.samples], label=label, markersize=3,
                    linewidth=1.2, **styles.get(run.mode, {}))  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("tasks completed")
        ax.axvline(100, color="grey", linewidth=0.6, linestyle=":")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"bench_soak: {len(runs[0].completed_at) if runs else 0} tasks on one worker "
                 "(test ComfyUI on the CPU, one ~1 MB PNG per task)", fontsize=11)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(runs: list[Run], all_runs: list[Run], tasks: int, start: int, base: int | None = None) -> str:
    lines = [
        f"Run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()} "
        f"({os.cpu_count()} CPUs), {tasks} tasks per mode.",
        "",
    ]
    for run in runs:
        lines += [f"### {run.mode}" + (" (KEEP_COMFY_FILES=true)" if run.mode == "keep" else ""), "", "```",
                  header(bool(run.samples and run.samples[0].objects)), *(row_text(s) for s in run.samples), "```",
                  ""]  # fmt: skip
        lines += [f"- {line}" for line in growth(run, start, tasks)]
        ratio = rss_ratio(run, base) if base is not None else None
        if ratio:
            lines.append(f"- **{ratio}**")
        lines += [f"- throughput from task {start} to the last: {throughput(run, start):.3f} tasks/s"
                  f" ({run.failed} failed)"]  # fmt: skip
        if run.cleanup_s:
            c = sorted(run.cleanup_s)
            lines += [f"- cleanup per task (after `complete`, while the next prompt runs): mean "
                      f"{sum(c) / len(c) * 1000:.1f} ms, p95 {c[int(0.95 * (len(c) - 1))] * 1000:.1f} ms, "
                      f"max {c[-1] * 1000:.1f} ms over {len(c)} tasks"]  # fmt: skip
        if run.trim:
            t = sorted(x[0] for x in run.trim)
            given = [x[1] for x in run.trim]
            lines += [f"- freed memory given back after each task (malloc_trim): mean {sum(t) / len(t) * 1000:.2f} ms, "
                      f"p95 {t[int(0.95 * (len(t) - 1))] * 1000:.2f} ms, max {t[-1] * 1000:.2f} ms; RSS given back "
                      f"mean {sum(given) / len(given) / 1024:.0f} KiB, max {max(given) / MiB:.1f} MiB"]  # fmt: skip
        diff = snapshot_diff(run)
        if diff:
            lines += ["", "```", *diff, "```"]
        lines.append("")
    ratios = []
    for i in range(0, len(all_runs), 2):
        pair = {r.mode: r for r in all_runs[i : i + 2]}
        if {"cleanup", "keep"} <= pair.keys():
            rates, window = side_by_side(pair["cleanup"], pair["keep"], start)
            ratios.append(rates[0] / rates[1])
            lines.append(f"- round {i // 2 + 1}: over the {window:.0f} s both ran (from the later one's task {start} "
                         f"to the earlier one's last), cleanup {rates[0]:.3f} tasks/s, keep {rates[1]:.3f} tasks/s, "
                         f"ratio {ratios[-1]:.3f}")  # fmt: skip
    if ratios:
        lines += ["", f"**cleanup / keep throughput, side by side: {sum(ratios) / len(ratios):.3f}** "
                  f"(mean of {len(ratios)} round(s); goal >= 0.97)", ""]  # fmt: skip
    return "\n".join(lines)


def side_by_side(a: Run, b: Run, start: int) -> tuple[tuple[float, float], float]:
    """Both runs' completion rates over the window in which both ran in their steady state: from the later of
    their ``start``-th completions to the earlier of their last ones (the same machine load for both)."""
    lo = max(a.completed_at[start - 1], b.completed_at[start - 1])
    hi = min(a.completed_at[-1], b.completed_at[-1])
    rate = tuple(sum(1 for t in r.completed_at if lo < t <= hi) / (hi - lo) for r in (a, b))
    return (rate[0], rate[1]), hi - lo


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--modes", default="cleanup,keep")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each runs every mode side by side); tables and "
                    "plot are from the first, the throughput ratio is the mean over rounds")
    ap.add_argument("--from-task", type=int, default=100, help="growth and throughput are measured from here")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "benchmarks-soak.png")
    ap.add_argument("--md", type=Path, default=REPO / "docs" / "benchmarks-soak.md")
    ap.add_argument("--size", type=int, default=600, help="the noise image's width and height (a smaller one: "
                    "faster tasks, for runs of many thousand)")
    ap.add_argument("--tracemalloc", action="store_true", help="run the daemon with tracemalloc (bench/soak_daemon.py):"
                    " its Python heap and malloc figures per sample, snapshots diffed by allocation site")
    ap.add_argument("--malloc-stats", action="store_true", help="the daemon through bench/soak_daemon.py without "
                    "tracemalloc: glibc malloc's figures per sample, no tracemalloc overhead")
    ap.add_argument("--snapshot-at", type=int, default=None, help="with --tracemalloc: the task count of the first "
                    "snapshot (the last is after the last task); also the base of the RSS ratio (default: --from-task)")
    args = ap.parse_args()
    snapshot_at = args.snapshot_at if args.snapshot_at is not None else args.from_task
    runner, url = await serve_input(input_png())
    logs_dir = Path(tempfile.mkdtemp(prefix="cw-soak-logs-"))
    modes = args.modes.split(",")
    if "notrim" in modes and not (args.tracemalloc or args.malloc_stats):
        ap.error("--modes notrim needs --malloc-stats or --tracemalloc (bench/soak_daemon.py turns the trim off)")
    all_runs: list[Run] = []
    try:
        for i in range(args.repeat):
            # side by side: both modes see the same load from whatever else runs on the machine
            print(f"--- round {i + 1}: {', '.join(modes)} side by side, {args.tasks} tasks each "
                  f"(worker logs in {logs_dir})")  # fmt: skip
            print(f"{'mode':>8} {header(args.tracemalloc or args.malloc_stats)}")
            all_runs += await asyncio.gather(*(
                one_run(m, args.tasks, args.every, url, logs_dir, size=args.size, tracemalloc=args.tracemalloc,
                        malloc_stats=args.malloc_stats, snapshot_at=(snapshot_at,))
                for m in modes
            ))  # fmt: skip
    finally:
        await runner.cleanup()
    runs = [next(r for r in all_runs if r.mode == m) for m in modes]
    text = markdown(runs, all_runs, args.tasks, args.from_task, snapshot_at)
    print(text)
    plot(runs, args.png)
    args.md.write_text("# Soak: one worker, many tasks (bench/bench_soak.py)\n\n"
                       f"![soak plot]({args.png.name})\n\n{text}\n")  # fmt: skip
    print(f"wrote {args.png} and {args.md}")


if __name__ == "__main__":
    asyncio.run(main())

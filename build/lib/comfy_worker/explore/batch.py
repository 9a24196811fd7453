"""A batch: its directory, its journal, and the loop that hands runs to a runner and records what comes back.

``output/batch_<timestamp>/``::

    config.yaml      the config as given          workflow.json   the API-format workflow the runs start from
    progress.json    the journal (every run's state, written atomically before and after each step)
    metadata.csv     run id, every parameter, seed, status, seconds, output paths, error (rewritten per run)
    runs/<name>/     the run's outputs + params.json            thumbnails/<name>.jpg     contact_sheet.html

Resuming: the same config (same :attr:`BatchConfig.key`) finds its latest batch directory again. Finished runs
are skipped; a run the journal says is in flight is picked up where it is (the runner reattaches to the prompt
or task), never submitted again; failed runs are tried once more.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml

from comfy_worker.explore import media
from comfy_worker.explore.bar import Bar, fmt_seconds
from comfy_worker.explore.batch_config import BatchConfig
from comfy_worker.explore.fs import write_atomic
from comfy_worker.explore.space import Plan, PlannedRun

DONE = "complete"
FAILED = "failed"


class Journal:
    """``progress.json``: the batch's state, one entry per run. Every ``update`` is on disk when it returns,
    so a kill at any point leaves a journal that says what was submitted."""

    def __init__(self, path: Path, state: dict[str, Any]) -> None:
        self.path = path
        self.state = state

    @classmethod
    def open(cls, directory: Path, cfg: BatchConfig, plan: Plan, mode: str) -> Journal:
        path = directory / "progress.json"
        if path.is_file():
            state = json.loads(path.read_text())
        else:
            state = {"batch_key": cfg.key, "batch_id": f"{cfg.key}-{directory.name.removeprefix('batch_')}",
                     "created_at": _now(), "runs": {}}
        state.update(mode=mode, strategy=plan.strategy, total=len(plan.runs), notes=plan.notes,
                     parameters=[p.name for p in cfg.parameters], state="running", updated_at=_now())
        runs = state.setdefault("runs", {})
        for run in plan.runs:
            entry = runs.setdefault(str(run.run_id), {"status": "pending", "attempt": 1})
            entry.update(name=run.name, sample_id=run.sample_id, values=run.values)
        journal = cls(path, state)
        journal.save()
        return journal

    @property
    def batch_id(self) -> str:
        return str(self.state["batch_id"])

    def run(self, run_id: int) -> dict[str, Any]:
        return self.state["runs"][str(run_id)]

    def update(self, run_id: int, **fields: Any) -> None:
        self.run(run_id).update(fields)
        self.save()

    def update_many(self, changes: dict[int, dict[str, Any]]) -> None:
        """Several runs' entries in one write (the whole file is rewritten per write)."""
        for run_id, fields in changes.items():
            self.run(run_id).update(fields)
        self.save()

    def set_state(self, value: str) -> None:
        self.state["state"] = value
        self.save()

    def save(self) -> None:
        self.state["updated_at"] = _now()
        write_atomic(self.path, json.dumps(self.state, indent=1, default=str))


@dataclass
class RunJob:
    """One run handed to a runner: its values, the workflow with them filled in, where its files go."""

    run: PlannedRun
    workflow: dict[str, Any]
    dest: Path
    batch_id: str

    @property
    def marker(self) -> str:
        """Written into the first node's ``_meta`` (ComfyUI ignores it): finds the run in ComfyUI's history."""
        return f"{self.batch_id}:{self.run.run_id}"


@dataclass
class RunOutcome:
    run_id: int
    status: str  # complete | failed
    seconds: float | None = None
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    handle: dict[str, Any] = field(default_factory=dict)  # prompt_id / task_id / worker_id


class Runner(Protocol):
    """Runs jobs and yields an outcome per job as each ends (any order). Writes the job's files into
    ``job.dest``, and records in the journal, before each step that cannot be undone, what it is about to do."""

    mode: str

    def execute(self, jobs: list[RunJob], journal: Journal, bar: Bar) -> AsyncIterator[RunOutcome]: ...

    def in_flight_note(self, journal: Journal) -> str | None:
        """What keeps running elsewhere when the batch is interrupted (said to the user), or None."""
        ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def find_batch_dir(cfg: BatchConfig) -> Path | None:
    """The latest batch directory of this config (same key), or None."""
    if not cfg.output_dir.is_dir():
        return None
    for d in sorted(cfg.output_dir.glob("batch_*"), reverse=True):
        try:
            state = json.loads((d / "progress.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("batch_key") == cfg.key:
            return d
    return None


def new_batch_dir(cfg: BatchConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        d = cfg.output_dir / (f"batch_{stamp}" + (f"-{i}" if i else ""))
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a batch directory under {cfg.output_dir}")


def metadata_columns(journal: Journal) -> list[str]:
    params = list(journal.state["parameters"])
    cols = ["run_id", "name", "sample_id", *params]
    if "seed" not in params:
        cols.append("seed")
    return [*cols, "status", "attempt", "seconds", "outputs", "error"]


def write_metadata(directory: Path, journal: Journal) -> None:
    cols = metadata_columns(journal)
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    for run_id, entry in sorted(journal.state["runs"].items(), key=lambda kv: int(kv[0])):
        values = entry.get("values") or {}
        seeds = [v for k, v in values.items() if "seed" in k]
        w.writerow({
            "run_id": run_id, "name": entry.get("name"), "sample_id": entry.get("sample_id"), **values,
            "seed": values.get("seed", seeds[0] if seeds else ""), "status": entry.get("status"),
            "attempt": entry.get("attempt"),
            "seconds": f"{entry['seconds']:.2f}" if isinstance(entry.get("seconds"), int | float) else "",
            "outputs": ";".join(entry.get("outputs") or []), "error": entry.get("error") or "",
        })
    write_atomic(directory / "metadata.csv", buf.getvalue())


@dataclass
class BatchResult:
    directory: Path
    total: int
    complete: int
    failed: int
    ran: int

    @property
    def exit_code(self) -> int:
        return 0 if self.complete == self.total else 1


async def run_batch(cfg: BatchConfig, runner: Runner, *, out: TextIO | None = None,
                    fresh: bool = False, make_sheet: bool = True) -> BatchResult:
    """Plan, find or create the batch directory, run what is left, record every outcome."""
    out = out or sys.stderr
    plan = cfg.plan()
    directory = None if (fresh or not cfg.resume) else find_batch_dir(cfg)
    resumed = directory is not None
    directory = directory or new_batch_dir(cfg)
    (directory / "runs").mkdir(exist_ok=True)
    (directory / "thumbnails").mkdir(exist_ok=True)
    if not (directory / "config.yaml").exists():
        write_atomic(directory / "config.yaml", yaml.safe_dump(cfg.raw, sort_keys=False))
        write_atomic(directory / "workflow.json", json.dumps(cfg.workflow, indent=1))
    journal = Journal.open(directory, cfg, plan, runner.mode)
    jobs: list[RunJob] = []
    already = 0
    for run in plan.runs:
        entry = journal.run(run.run_id)
        if entry["status"] == DONE and cfg.skip_existing:
            already += 1
            continue
        if entry["status"] == FAILED or (entry["status"] == DONE and not cfg.skip_existing):
            entry.update(status="pending", attempt=int(entry.get("attempt", 1)) + 1, error=None,
                         prompt_id=None, requested_prompt_id=None, task_id=None)
        jobs.append(RunJob(run, cfg.workflow_for(run.values), directory / "runs" / run.name, journal.batch_id))
    journal.save()
    write_metadata(directory, journal)
    for note in plan.notes:
        print(note, file=out)
    print(f"{'resuming' if resumed else 'batch'} {directory}: {len(plan.runs)} runs ({plan.strategy}), "
          f"{already} already done, {len(jobs)} to run {'on the fleet' if runner.mode == 'fleet' else 'here'}",
          file=out, flush=True)
    bar = Bar(len(plan.runs), "runs", done=already, stream=out)
    recorder = Recorder(directory, journal, make_sheet=make_sheet)
    ran = 0
    try:
        async for outcome in runner.execute(jobs, journal, bar):
            job = next(j for j in jobs if j.run.run_id == outcome.run_id)
            recorder.record(job, outcome)
            ran += 1
            bar.advance(ok=outcome.status == DONE)
        await recorder.drain()
        journal.set_state("finished")
    except (asyncio.CancelledError, KeyboardInterrupt):
        recorder.cancel()
        journal.set_state("interrupted")
        bar.close()
        note = runner.in_flight_note(journal)
        print(f"\ninterrupted; run the same command again to resume {directory}" + (f" ({note})" if note else ""),
              file=out, flush=True)
        raise
    finally:
        bar.close()
    recorder.sheet(force=True)
    runs = journal.state["runs"].values()
    complete = sum(1 for r in runs if r["status"] == DONE)
    failed = sum(1 for r in runs if r["status"] == FAILED)
    elapsed = time.monotonic() - bar._t0
    print(f"{complete}/{len(plan.runs)} complete, {failed} failed in {fmt_seconds(elapsed)}; "
          f"{directory / 'metadata.csv'}; contact sheet: {directory / 'contact_sheet.html'}", file=out, flush=True)
    return BatchResult(directory, len(plan.runs), complete, failed, ran)


class Recorder:
    """Writes what a finished run leaves: params.json, the journal entry, metadata.csv, the contact sheet, and a
    thumbnail. Thumbnails are made in the background, two ffmpeg at a time, so noticing the next finished run
    never waits for ffmpeg; the sheet is rewritten at most once a second (and at the end)."""

    def __init__(self, directory: Path, journal: Journal, *, make_sheet: bool = True) -> None:
        self.directory = directory
        self.journal = journal
        self.make_sheet = make_sheet
        self._thumbs: set[asyncio.Task[None]] = set()
        self._ffmpeg = asyncio.Semaphore(2)
        self._sheet_at = 0.0

    def record(self, job: RunJob, outcome: RunOutcome) -> None:
        job.dest.mkdir(parents=True, exist_ok=True)
        rel = [str(p.relative_to(self.directory)) for p in outcome.outputs]
        entry = self.journal.run(job.run.run_id)
        params = {"run_id": job.run.run_id, "name": job.run.name, "sample_id": job.run.sample_id,
                  "values": job.run.values, "status": outcome.status, "attempt": entry.get("attempt"),
                  "seconds": outcome.seconds, "outputs": [Path(r).name for r in rel], "error": outcome.error,
                  **outcome.handle}
        write_atomic(job.dest / "params.json", json.dumps(params, indent=1, default=str))
        self.journal.update(job.run.run_id, status=outcome.status, seconds=outcome.seconds, outputs=rel,
                            error=outcome.error, thumbnail=None, finished_at=_now(), **outcome.handle)
        write_metadata(self.directory, self.journal)
        src = media.thumbnail_source(outcome.outputs)
        if src is not None and media.shows_as_is(src):  # a small web image is its own thumbnail
            self.journal.update(job.run.run_id, thumbnail=str(src.relative_to(self.directory)))
        elif src is not None:
            task = asyncio.create_task(self._thumbnail(job, src))
            self._thumbs.add(task)
            task.add_done_callback(self._thumbs.discard)
        self.sheet()

    async def _thumbnail(self, job: RunJob, src: Path) -> None:
        async with self._ffmpeg:
            made = await media.thumbnail(src, self.directory / "thumbnails" / f"{job.run.name}.jpg")
        if made is not None:
            self.journal.update(job.run.run_id, thumbnail=str(made.relative_to(self.directory)))
            self.sheet()

    def sheet(self, *, force: bool = False) -> None:
        if self.make_sheet and (force or time.monotonic() - self._sheet_at >= 1.0):
            from comfy_worker.explore.sheet import write_sheet

            write_sheet(self.directory, state=self.journal.state)
            self._sheet_at = time.monotonic()

    async def drain(self) -> None:
        """Wait for the thumbnails still being made."""
        while self._thumbs:
            await asyncio.gather(*list(self._thumbs))

    def cancel(self) -> None:
        for task in self._thumbs:
            task.cancel()

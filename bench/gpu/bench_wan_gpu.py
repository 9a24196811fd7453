"""Wan 2.2 at real size through the daemon, on the GPU machine (random weights; see make_models.py).

Each phase is one device call: it writes the models it needs, starts ``python -m comfy_worker`` (ComfyUI 0.3.64
as its supervised child, the embedded SQLite queue, local storage), inserts tasks and prints what it measured.

* ``ti2v``  — cold start (page cache dropped, one task queued before the daemon starts: process start → task
  claimed → its first sampling step), then ``comfyui_ti2v`` 5B at 1280x704x121, 20 steps: s/step, total, peak VRAM.
* ``i2v``   — ``comfyui_i2v`` 14B HIGH/LOW at 832x480x81 with ``use_lora`` (4 steps) and without (20 steps):
  per-pass sampling time, the HIGH→LOW switch, peak VRAM; then a 3-chunk ``prompt_runner`` chain on the
  stock-node profile: total time vs the sum of its ComfyUI prompts.
* ``warm`` — issue 24's warm start, 5B ti2v at 1280x704 x 121 frames (4 steps: the cold overhead is model reading
  and loading, not sampling), page cache dropped before each daemon start, baseline and warm start in one run:
  a task queued before the daemon starts (``WARM_PREFETCH`` reads the models while ComfyUI boots; the warm-up
  gives way to the waiting task), and a task inserted once the worker is up (without warm start: when it
  registered; with ``WARM_UP``: when its warm-up finished). Cold overhead = first task's insert-to-complete
  minus the next (warm) task's, same daemon. ``warm14`` does the same for the 14B HIGH/LOW ``comfyui_i2v``
  (832x480x81, 4-step LoRA).
* ``speed`` — issue 24's sampling options (compile, EasyCache / LazyCache, ``--fast``) on the 5B at 1280x704x121:
  s/step and fidelity (final latent against the default's, same seed); ``goal`` — the 20-step 5B task, default
  against ``speed: "fast"``, through the daemon; ``goal14`` the same for the 14B ``comfyui_i2v`` 4-step LoRA task.
* ``coverage`` — every Wan 2.2 task type (t2v with and without the LoRA, i2v with a user LoRA, flf2v, ti2v
  with and without an image, s2v over two audio windows) executed by the real nodes through the daemon, with
  models 2 blocks deep at full width (the same types to ComfyUI): each output probed with ffprobe.
* ``efficiency`` — the same 6 i2v jobs (4-step LoRA) queued straight into the daemon's ComfyUI, then as 6 tasks
  through the daemon: ComfyUI-alone ÷ daemon wall time, and ComfyUI's idle time while work waited.

Figures come from each task's ``result.node_timings`` (per node: start, seconds, time to its first sampling
step, from the websocket events the daemon follows), the daemon's JSON log, ComfyUI's ``/history``
(``execution_start`` / ``execution_success`` time stamps), the task rows, and ``nvidia-smi`` sampled every 100 ms.

Run on the GPU machine from the repo root: ``bash bench/gpu/run.sh PHASE`` (setup included).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from gpu_common import REPO, DaemonProcess, VramSampler, fresh_sqlite, say, stamp
from gpu_common import enqueue as enqueue_tasks

WORK = Path(os.environ.get("GPU_WORK", "/root/cwgpu"))
COMFY = Path(os.environ.get("COMFY_DIR", WORK / "comfyui"))
MODELS = COMFY / "models"
OUT = Path(os.environ.get("OUT", WORK / "out"))
PORT = 8288
BASE = f"http://127.0.0.1:{PORT}"

I2V_MODELS = ["i2v_14b_high", "i2v_14b_low", "vae21", "umt5", "loras_i2v"]
TI2V_MODELS = ["ti2v_5b", "vae22", "umt5"]
# coverage: every Wan model 2 blocks deep at full width (the same model types to ComfyUI, a fraction of the disk)
COVERAGE_SHALLOW = [
    "t2v_14b_high",
    "t2v_14b_low",
    "loras_t2v",
    "i2v_14b_high",
    "i2v_14b_low",
    "loras_i2v",
    "s2v_14b",
    "ti2v_5b",
]
COVERAGE_FULL = ["vae21", "vae22", "umt5", "wav2vec2"]
COVERAGE_SIZE = (480, 288)  # multiples of 32, as ti2v needs


# --- machine ----------------------------------------------------------------------------------------------------


def drop_page_cache() -> str:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError as exc:
        return f"not dropped ({exc.strerror})"


def ensure_models(names: list[str], remove: list[str], layers: int | None = None) -> None:
    from make_models import FILES, GROUPS

    for name in remove:
        for n in GROUPS.get(name, [name]):
            p = MODELS / FILES[n][0] / FILES[n][1]
            if p.exists():
                p.unlink()
                say(f"removed {p.name} (disk)")
    todo = [n for n in names if any(not (MODELS / FILES[m][0] / FILES[m][1]).exists() for m in GROUPS.get(n, [n]))]
    if todo:
        cmd = [sys.executable, str(REPO / "bench/gpu/make_models.py"), "--check", "--comfy", str(COMFY)]
        if layers:
            cmd += ["--layers", str(layers)]
        subprocess.run([*cmd, "--models-dir", str(MODELS), *todo], check=True)


def wav_b64(seconds: float, rate: int = 16000) -> str:
    """A mono 16-bit WAV of a rising tone (the S2V audio)."""
    import math
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(
            int(12000 * math.sin(2 * math.pi * (220 + 40 * i / rate) * i / rate)).to_bytes(2, "little", signed=True)
            for i in range(int(seconds * rate))
        ))  # fmt: skip
    return base64.b64encode(buf.getvalue()).decode()


def probe(path: Path) -> dict[str, Any]:
    """ffprobe's view of an output: streams (codec, frames, size) and duration."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,width,height,nb_read_frames:format=duration",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    return {
        "duration_s": round(float(info["format"].get("duration") or 0), 3),
        "streams": [{k: v for k, v in st.items() if k != "disposition"} for st in info["streams"]],
    }


def image_b64(width: int, height: int) -> str:
    from PIL import Image

    img = Image.new("RGB", (width, height))
    px = img.load()
    for y in range(0, height, 4):
        for x in range(0, width, 4):
            c = ((x * 255) // width, (y * 255) // height, 128)
            for dy in range(4):
                for dx in range(4):
                    px[x + dx, y + dy] = c
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


# --- the daemon ------------------------------------------------------------------------------------------------


STARTED: list[Daemon] = []


def kill_leftovers() -> None:
    """A daemon or ComfyUI left by an earlier call on a machine that stayed warm (it would hold the port)."""
    for pattern in ("comfy_worker --worker-id gpu-", f"main.py --listen 127.0.0.1 --port {PORT}"):
        subprocess.run(["pkill", "-9", "-f", pattern], check=False)


class Daemon(DaemonProcess):
    """``python -m comfy_worker`` on the phase's SQLite queue, with its JSON log parsed as it is written."""

    def __init__(self, name: str, env_extra: dict[str, str] | None = None, db: str = "queue.db") -> None:
        self.name = name
        self.db = WORK / db
        env = {
            **os.environ,
            "COMFY_PATH": str(COMFY),
            "COMFY_PYTHON": sys.executable,
            "COMFY_PORT": str(PORT),
            "COMFY_STARTUP_TIMEOUT": "300",
            "DATABASE_URL": f"sqlite:///{self.db}",
            "LOCAL_STORAGE_DIR": str(WORK / "storage"),
            "WORK_DIR": str(WORK / "work"),
            "LOG_FORMAT": "json",
            "PROGRESS_INTERVAL_S": "0.2",
            "PYTHONUNBUFFERED": "1",
            "TASK_TIMEOUT_S": "1800",
            "KEEP_COMFY_FILES": "true",  # the figures read ComfyUI's /history, which cleanup would empty
            **(env_extra or {}),
        }
        super().__init__(f"gpu-{name}", env, OUT / f"daemon_{name}.log", stop_wait_s=120)

    def start(self) -> float:
        STARTED.append(self)
        return super().start()

    def first(self, event: str, after: float = 0.0, **match: Any) -> dict[str, Any] | None:
        for ev in list(self.events):
            if ev.get("event") == event and ev["_t"] >= after and all(ev.get(k) == v for k, v in match.items()):
                return ev
        return None

    def wait_event(self, event: str, timeout: float, **match: Any) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            ev = self.first(event, **match)
            if ev:
                return ev
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited ({self.proc.returncode}) before {event}; see {self.log_path}")
            time.sleep(0.05)
        raise SystemExit(f"no {event} within {timeout} s; see {self.log_path}")


def registered_daemon(name: str, env_extra: dict[str, str] | None = None, db: str = "queue.db") -> Daemon:
    """A daemon on a fresh queue, started, once it has registered. ``GC_PROBE=1``: ComfyUI runs under
    bench/gpu/comfy_gc_probe (its slow garbage collections in the daemon's log as ``gc_probe:`` lines)."""
    if os.environ.get("GC_PROBE") == "1":
        probe = Path(__file__).resolve().parent / "comfy_gc_probe" / "python"
        env_extra = {**(env_extra or {}), "COMFY_PYTHON": str(probe)}
    d = Daemon(name, env_extra, db)
    fresh_sqlite(d.db)
    d.migrate()
    d.start()
    d.wait_event("worker_registered", 300)
    return d


def enqueue(daemon: Daemon, task_type: str, params: dict[str, Any]) -> str:
    return enqueue_tasks(daemon.db, [(task_type, params)])[0]


def task_row(daemon: Daemon, task_id: str) -> dict[str, Any]:
    con = sqlite3.connect(daemon.db, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        row = con.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return dict(row)
    finally:
        con.close()


def wait_task(daemon: Daemon, task_id: str, timeout: float, on_progress: Any = None) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = task_row(daemon, task_id)
        if on_progress and row.get("progress"):
            on_progress(json.loads(row["progress"]))
        if row["status"] in ("complete", "failed", "cancelled"):
            if row["status"] != "complete":
                raise SystemExit(f"task {task_id} {row['status']}: {row['error']}\n{row.get('error_details')}")
            return row
        if daemon.proc.poll() is not None:
            raise SystemExit(f"daemon exited ({daemon.proc.returncode}); see {daemon.log_path}")
        time.sleep(0.1)
    raise SystemExit(f"task {task_id} not done within {timeout} s")


def ts(row: dict[str, Any], col: str) -> float:
    return stamp(row[col])


# --- ComfyUI's own view -----------------------------------------------------------------------------------------


def http(path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def history_window(prompt_id: str) -> tuple[float, float]:
    """(execution_start, execution_success) of a prompt, unix seconds."""
    h = http(f"/history/{prompt_id}")[prompt_id]
    msgs = {m[0]: m[1] for m in h["status"]["messages"]}
    return msgs["execution_start"]["timestamp"] / 1000, msgs["execution_success"]["timestamp"] / 1000


def all_history() -> dict[str, Any]:
    return http("/history?max_items=1000")


# --- phases -------------------------------------------------------------------------------------------------------


def sampler_passes(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The sampler nodes of a task's ``result.node_timings``: steps, s/step and what came before the first step
    (model load, or the HIGH -> LOW switch: a node's first progress arrives after its first step)."""
    out = []
    for t in result.get("node_timings") or []:
        n = t.get("steps")
        if not n or "first_step_s" not in t:
            continue
        per = (t["seconds"] - t["first_step_s"]) / (n - 1) if n > 1 else t["first_step_s"]
        out.append({
            "node": t.get("title") or t.get("class_type"), "steps": n, "s_per_step": round(per, 3),
            "sampling_s": round(per * n, 2), "before_first_step_s": round(max(0.0, t["first_step_s"] - per), 2),
            "node_s": t["seconds"],
        })  # fmt: skip
    return out


def summarize_task(daemon: Daemon, vram: VramSampler, task_id: str, label: str) -> dict[str, Any]:
    row = task_row(daemon, task_id)
    result = json.loads(row["result"] or "{}")
    t_claim, t_done = ts(row, "started_at"), ts(row, "completed_at")
    prompt_id = result.get("prompt_id")
    ex0, ex1 = history_window(prompt_id) if prompt_id else (t_claim, t_done)
    passes = sampler_passes(result)
    out: dict[str, Any] = {
        "label": label,
        "claim_to_complete_s": round(t_done - t_claim, 2),
        "comfyui_execution_s": round(ex1 - ex0, 2),
        "after_execution_s": round(t_done - ex1, 2),  # outputs downloaded, stored, task recorded
        "peak_vram_mib": vram.peak(t_claim, t_done),
        "passes": passes,
        "slowest_nodes": sorted(result.get("node_timings") or [], key=lambda t: -t["seconds"])[:6],
    }
    if len(passes) >= 2:  # HIGH -> LOW: what the LOW sampler spent before its first step
        out["high_to_low_switch_s"] = passes[1]["before_first_step_s"]
    say(label, json.dumps(out))
    return out


def phase_ti2v(results: dict[str, Any]) -> None:
    ensure_models(TI2V_MODELS, remove=["i2v_14b_high", "i2v_14b_low"])
    vram = VramSampler()
    d = Daemon("ti2v")
    fresh_sqlite(d.db)
    d.migrate()
    params = {"prompt": "a street musician in a subway station", "width": 1280, "height": 704, "num_frames": 121,
              "steps": 20, "image": {"base64": image_b64(1280, 704), "filename": "start.png"}}  # fmt: skip
    task1 = enqueue(d, "comfyui_ti2v", {**params, "seed": 1})
    cache = drop_page_cache()
    first_step: list[float] = []

    def progress(p: dict[str, Any]) -> None:
        if not first_step and p.get("max") == 20 and (p.get("value") or 0) >= 1:
            first_step.append(time.time())

    t0 = d.start()
    ready = d.wait_event("comfyui_ready", 300)
    claimed = d.wait_event("task_claimed", 300)
    wait_task(d, task1, 900, progress)
    cold = {
        "page_cache": cache,
        "comfyui_ready_s": round(ready["_t"] - t0, 2),
        "task_claimed_s": round(claimed["_t"] - t0, 2),
        "first_step_s": round(first_step[0] - t0, 2) if first_step else None,
        "task_complete_s": round(ts(task_row(d, task1), "completed_at") - t0, 2),
    }
    say("cold_start", json.dumps(cold))
    results["cold_start"] = cold
    results["ti2v_first"] = summarize_task(d, vram, task1, "ti2v 1280x704x121 20 steps (first: loads the models)")
    t_ins = time.time()
    task2 = enqueue(d, "comfyui_ti2v", {**params, "seed": 2})
    row = wait_task(d, task2, 900)
    results["ti2v"] = summarize_task(d, vram, task2, "ti2v 1280x704x121 20 steps (warm)")
    results["ti2v"]["insert_to_complete_s"] = round(ts(row, "completed_at") - t_ins, 2)
    code = d.stop()
    say("daemon stopped with", code)
    results["ti2v_daemon_exit"] = code
    vram.stop()


def cold_case(name: str, task_type: str, params: dict[str, Any], *, warm: bool, arrive: str,
              extra: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One daemon start with the page cache dropped: the first task (queued ``before`` the start, or inserted
    ``after`` the worker is up) and a second, warm one; the cold overhead is the difference. ``extra``: more of
    the daemon's environment (the prefetch's settings)."""
    env = {"WARM_PREFETCH": "true", "WARM_UP": "true", "TASK_TYPES": task_type} if warm else {"TASK_TYPES": task_type}
    env.update(extra or {})
    d = Daemon(name, env)
    fresh_sqlite(d.db)
    d.migrate()
    tid = ""
    t_ins = 0.0
    if arrive == "before":
        t_ins = time.time()
        tid = enqueue(d, task_type, {**params, "seed": 1})
    cache = drop_page_cache()
    t0 = d.start()
    ready = d.wait_event("comfyui_ready", 300)
    if arrive == "after":
        d.wait_event("warm_up_finished" if warm else "worker_registered", 600)
        t_ins = time.time()
        tid = enqueue(d, task_type, {**params, "seed": 1})
    row = wait_task(d, tid, 900)
    first_s = ts(row, "completed_at") - t_ins
    t2 = time.time()
    tid2 = enqueue(d, task_type, {**params, "seed": 2})
    row2 = wait_task(d, tid2, 900)
    warm_s = ts(row2, "completed_at") - t2
    pre, wup = d.first("warm_prefetch_done"), d.first("warm_up_finished")
    from comfy_worker.daemon.warm import TORCH_LINE  # what WARM_PREFETCH_START=torch waits for

    launched = d.first("comfyui_starting")
    vram_line = next((e for e in d.named("comfyui_output") if str(e.get("line", "")).startswith(TORCH_LINE)), None)
    out = {
        "case": name, "warm_start": warm, "task_arrives": arrive, "page_cache": cache,
        "comfyui_launched_s": round(launched["_t"] - t0, 2) if launched else None,
        "torch_imported_s": round(vram_line["_t"] - t0, 2) if vram_line else None,
        "comfyui_ready_s": round(ready["_t"] - t0, 2),
        "task_inserted_s": round(t_ins - t0, 2),
        "first_insert_to_complete_s": round(first_s, 2),
        "warm_insert_to_complete_s": round(warm_s, 2),
        "cold_overhead_s": round(first_s - warm_s, 2),
        "daemon_start_to_first_complete_s": round(ts(row, "completed_at") - t0, 2),
        "env": extra or {},
        "prefetch": {k: pre.get(k) for k in ("gb", "seconds", "gb_per_s", "waited_s")} if pre else None,
        "prefetch_done_s": round(pre["_t"] - t0, 2) if pre else None,
        "warm_up": {"outcome": wup.get("outcome"), "seconds": wup.get("seconds"),
                    "at_s": round(wup["_t"] - t0, 2)} if wup else None,
    }  # fmt: skip
    say("cold_case", json.dumps(out))
    out["daemon_exit"] = d.stop()
    return out


def warm_ti2v() -> dict[str, Any]:
    """The 5B models on disk (the 14B pair removed) and the cold cases' task: 1280x704x121, 4 steps."""
    ensure_models(TI2V_MODELS, remove=["i2v_14b_high", "i2v_14b_low"])
    return {"prompt": "a street musician in a subway station", "width": 1280, "height": 704, "num_frames": 121,
            "steps": 4, "image": {"base64": image_b64(1280, 704), "filename": "start.png"}}  # fmt: skip


def pick_cases(cases: list[Any], knob: str) -> list[Any]:
    """The cases a phase runs, to fit a short call: ``<knob>_ONLY`` names them (comma-separated), else
    ``<knob>_CASES`` takes the first N, else all."""
    only = [c for c in os.environ.get(f"{knob}_ONLY", "").split(",") if c]
    if only:
        unknown = sorted(set(only) - {c[0] for c in cases})
        if unknown:
            raise SystemExit(f"{knob}_ONLY: no case {unknown}; the cases: {[c[0] for c in cases]}")
        return [c for c in cases if c[0] in only]
    return cases[: int(os.environ.get(f"{knob}_CASES", len(cases)))]


def phase_warm(results: dict[str, Any]) -> None:
    params = warm_ti2v()
    cases = [("ti2v_before_cold", False, "before"), ("ti2v_before_warm", True, "before"),
             ("ti2v_after_warm", True, "after"), ("ti2v_after_cold", False, "after")]  # fmt: skip
    results.setdefault("warm", [])
    for name, warm, arrive in pick_cases(cases, "WARM"):
        results["warm"].append(cold_case(name, "comfyui_ti2v", params, warm=warm, arrive=arrive))
        (OUT / "results_warm.json").write_text(json.dumps(results, indent=2))


def phase_warmstart(results: dict[str, Any]) -> None:
    """A task already waiting when a pod starts (5B, page cache dropped): no warm start; the prefetch from the
    daemon's start (``WARM_PREFETCH_START=launch``, what session 8 and 10 measured: it starved ComfyUI's import of
    torch); the prefetch once ComfyUI has imported torch (``=torch``); the same with ``--disable-api-nodes``
    (a shorter boot for graphs without paid-API nodes). WARMSTART_CASES / WARMSTART_ONLY pick cases
    (:func:`pick_cases`)."""
    params = warm_ti2v()
    cases: list[tuple[str, bool, dict[str, str]]] = [
        ("before_cold", False, {}),
        ("before_warm_prefetch_at_launch", True, {"WARM_PREFETCH_START": "launch"}),
        ("before_warm_prefetch_after_torch", True, {"WARM_PREFETCH_START": "torch"}),
        ("before_warm_prefetch_after_torch_no_api_nodes", True,
         {"WARM_PREFETCH_START": "torch", "COMFY_ARGS": "--disable-api-nodes"}),
    ]  # fmt: skip
    results.setdefault("warmstart", [])
    for name, warm, extra in pick_cases(cases, "WARMSTART"):
        results["warmstart"].append(cold_case(name, "comfyui_ti2v", params, warm=warm, arrive="before", extra=extra))
        (OUT / "results_warmstart.json").write_text(json.dumps(results, indent=2))


def phase_warm14(results: dict[str, Any]) -> None:
    ensure_models(I2V_MODELS, remove=["ti2v_5b", "vae22"])
    params = i2v_params(0, True, image_b64(832, 480))
    params.pop("seed")
    results.setdefault("warm14", [])
    cases = [("i2v_before_cold", False, "before"), ("i2v_before_warm", True, "before"),
             ("i2v_after_warm", True, "after")]  # fmt: skip
    for name, warm, arrive in pick_cases(cases, "WARM14"):
        results["warm14"].append(cold_case(name, "comfyui_i2v", params, warm=warm, arrive=arrive))
        (OUT / "results_warm14.json").write_text(json.dumps(results, indent=2))


SPEED_STEPS = int(os.environ.get("SPEED_STEPS", "8"))
# (label, builder params, seed): same seed = same inputs, so the latents compare (fidelity); another seed for the
# timing-only repeats, because ComfyUI would answer an identical prompt from its cache in 0 s
SPEED_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("default (first: loads)", {}, 7), ("default", {}, 8),
    ("compile (first: compiles)", {"compile": True}, 7), ("compile (second, same shape)", {"compile": True}, 8),
    ("easycache (core defaults)", {"cache": "easycache"}, 7),
    ("easycache (reuse_threshold 3.0: skips all it may)", {"cache": {"kind": "easycache", "reuse_threshold": 3.0}}, 7),
] + ([("lazycache (core defaults)", {"cache": "lazycache"}, 7)] if os.environ.get("SPEED_LAZY", "1") == "1"
      else [])  # fmt: skip
FAST_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("--fast: default (first: loads)", {}, 7), ("--fast: default", {}, 8)]  # fmt: skip


def latent_graph(params: dict[str, Any], seed: int, tag: str) -> dict[str, Any]:
    """The ``comfyui_ti2v`` graph the builder makes for ``params`` (text only, no start image), plus a SaveLatent of
    the sampler's output beside the decode and SaveVideo: the run is timed as a task and gives the final latent."""
    from comfy_worker.builders import build

    graph = build("comfyui_ti2v", {**params, "seed": seed, "filename_prefix": f"video/speed_{tag}"}, {})
    sampler = next(k for k, n in graph.items() if n["class_type"] == "KSampler")
    graph["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": f"fid/{tag}"},
                    "_meta": {"title": "Final latent (fidelity)"}}  # fmt: skip
    return graph


def task_latent(result: dict[str, Any]) -> Any:
    import safetensors.torch

    h = http(f"/history/{result['prompt_id']}")[result["prompt_id"]]
    item = h["outputs"]["900"]["latents"][0]
    path = COMFY / "output" / item["subfolder"] / item["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"].float()


def fidelity(ref: Any, other: Any) -> dict[str, float]:
    import torch

    ref, other = ref.double(), other.double()  # float32 sums over millions of values put the cosine above 1
    rel = float((other - ref).norm() / ref.norm())
    cos = float(torch.nn.functional.cosine_similarity(other.flatten(), ref.flatten(), dim=0))
    return {"relative_l2": round(rel, 6), "cosine": round(cos, 7)}


def cache_lines(d: Daemon, after: float) -> list[str]:
    """ComfyUI's own EasyCache / LazyCache summary lines ("skipped N/M steps") logged after ``after``."""
    return [ev["line"] for ev in list(d.events) if ev.get("event") == "comfyui_output" and ev["_t"] >= after
            and "Cache - skipped" in str(ev.get("line"))]  # fmt: skip


def run_speed_cases(d: Daemon, vram: VramSampler, cases: list[tuple[str, dict[str, Any], int]], base: dict[str, Any],
                    rows: list[dict[str, Any]], latents: dict[str, Any]) -> None:  # fmt: skip
    for label, extra, seed in cases:
        tag = f"{len(rows)}_{seed}"
        t_ins = time.time()
        tid = enqueue(d, "comfy", {"workflow": latent_graph({**base, **extra}, seed, tag)})
        row = wait_task(d, tid, 900)
        s = summarize_task(d, vram, tid, f"speed {label}")
        s.update(insert_to_complete_s=round(ts(row, "completed_at") - t_ins, 2), params=extra, seed=seed,
                 cache_log=cache_lines(d, t_ins))  # fmt: skip
        if seed == 7:  # fidelity at once, so that a call cut short still has it for the cases it ran
            latents[label] = task_latent(json.loads(row["result"]))
            ref = latents.get("default (first: loads)")
            if ref is not None and label != "default (first: loads)":
                s["fidelity_vs_default"] = fidelity(ref, latents[label])
        rows.append(s)
        (OUT / "results_speed.json").write_text(json.dumps({"speed": rows}, indent=2))


def phase_speed(results: dict[str, Any]) -> None:
    """Issue 24's sampling options on the 5B ti2v graph at 1280x704x121, SPEED_STEPS (8) steps uni_pc cfg 5, as
    ``comfy`` tasks through the daemon: the default path, ``compile: true`` (first run compiles; a second of the
    same shape shows whether it recompiles), core EasyCache / LazyCache at their default settings, and, after a
    ComfyUI restart with ``COMFY_ARGS=--fast``, the default graph again. s/step comes from each sampler's node
    timing; fidelity is each option's final latent against the default's, same seed and inputs (relative L2,
    cosine). With random weights the caches' skip decisions mean nothing: the skipped steps are reported as
    ComfyUI logged them, and the speed is the speed at that skip ratio."""
    ensure_models(TI2V_MODELS, remove=["i2v_14b_high", "i2v_14b_low"])
    vram = VramSampler()
    base = {"prompt": "a street musician in a subway station", "width": 1280, "height": 704, "num_frames": 121,
            "steps": SPEED_STEPS}  # fmt: skip
    rows: list[dict[str, Any]] = results.setdefault("speed", [])
    latents: dict[str, Any] = {}
    d = registered_daemon("speed")
    only = [x for x in os.environ.get("SPEED_ONLY", "").split(",") if x]  # label prefixes, to fit a short call
    run_speed_cases(d, vram, [c for c in SPEED_CASES if not only or c[0].startswith(tuple(only))], base, rows, latents)
    results["speed_daemon_exit"] = d.stop()
    if os.environ.get("SPEED_FAST", "1") == "1":
        d = registered_daemon("speed_fast", {"COMFY_ARGS": "--fast"})
        run_speed_cases(d, vram, FAST_CASES, base, rows, latents)
        results["speed_fast_daemon_exit"] = d.stop()
    ref = latents.pop("default (first: loads)")
    fid = {label: fidelity(ref, lat) for label, lat in latents.items()}
    say("fidelity", json.dumps(fid))
    results["fidelity_vs_default_final_latent"] = fid
    vram.stop()


def phase_goal(results: dict[str, Any]) -> None:
    """The goal runs: ``comfyui_ti2v`` 5B 1280x704x121 at its 20 template steps, default against ``speed: "fast"``
    (and the default again under COMFY_ARGS=GOAL_COMFY_ARGS when set), each twice (the first loads / compiles),
    through the daemon with a start image, as a user sends it."""
    ensure_models(TI2V_MODELS, remove=["i2v_14b_high", "i2v_14b_low"])
    vram = VramSampler()
    params = {"prompt": "a street musician in a subway station", "width": 1280, "height": 704, "num_frames": 121,
              "image": {"base64": image_b64(1280, 704), "filename": "start.png"}}  # fmt: skip
    rows = results.setdefault("goal", [])
    daemons = [("goal", {}, [("default", {})] * 2 + [("speed: fast", {"speed": "fast"})] * 2)]
    if os.environ.get("GOAL_COMFY_ARGS"):
        args = os.environ["GOAL_COMFY_ARGS"]
        fast = [(f"COMFY_ARGS={args} + speed: fast", {"speed": "fast"})] * 2
        daemons.append(("goal_args", {"COMFY_ARGS": args}, fast))
    for name, env, cases in daemons:
        d = registered_daemon(name, env)
        for i, (label, extra) in enumerate(cases):
            t_ins = time.time()
            tid = enqueue(d, "comfyui_ti2v", {**params, **extra, "seed": 60 + i})
            row = wait_task(d, tid, 900)
            s = summarize_task(d, vram, tid, f"goal {label} #{i}")
            s["insert_to_complete_s"] = round(ts(row, "completed_at") - t_ins, 2)
            rows.append(s)
            (OUT / "results_goal.json").write_text(json.dumps(results, indent=2))
        results[f"{name}_daemon_exit"] = d.stop()
    vram.stop()


def phase_goal14(results: dict[str, Any]) -> None:
    """The 14B goal runs: ``comfyui_i2v`` HIGH/LOW at 832x480x81 with the 4-step LoRA (``use_lora``), default against
    ``speed: "fast"`` (compile on both models + the LoRA), each twice (the first loads / compiles), one daemon."""
    ensure_models(I2V_MODELS, remove=["ti2v_5b", "vae22"])
    vram = VramSampler()
    b64 = image_b64(832, 480)
    rows = results.setdefault("goal14", [])
    d = registered_daemon("goal14")
    cases = [("default (use_lora)", {})] * 2 + [("speed: fast", {"speed": "fast"})] * 2
    for i, (label, extra) in enumerate(cases):
        t_ins = time.time()
        tid = enqueue(d, "comfyui_i2v", {**i2v_params(70 + i, True, b64), **extra})
        row = wait_task(d, tid, 900)
        s = summarize_task(d, vram, tid, f"goal14 {label} #{i}")
        s["insert_to_complete_s"] = round(ts(row, "completed_at") - t_ins, 2)
        rows.append(s)
        (OUT / "results_goal14.json").write_text(json.dumps(results, indent=2))
    results["goal14_daemon_exit"] = d.stop()
    vram.stop()


def i2v_params(seed: int, lora: bool, b64: str) -> dict[str, Any]:
    p: dict[str, Any] = {"prompt": "a sunset over the beach, waves", "width": 832, "height": 480, "num_frames": 81,
                         "seed": seed, "image": {"base64": b64, "filename": "start.png"}}  # fmt: skip
    if lora:
        p["use_lora"] = True
    return p


def phase_i2v(results: dict[str, Any]) -> None:
    ensure_models(I2V_MODELS, remove=["ti2v_5b", "vae22"])
    vram = VramSampler()
    b64 = image_b64(832, 480)
    d = registered_daemon("i2v")
    for key, label, lora, seed in [
        ("i2v_lora_first", "i2v 832x480x81 4-step LoRA (first: loads HIGH+LOW)", True, 11),
        ("i2v_lora", "i2v 832x480x81 4-step LoRA (warm)", True, 12),
        ("i2v_20", "i2v 832x480x81 20 steps cfg 3.5 (no LoRA)", False, 13),
    ]:
        t_ins = time.time()
        tid = enqueue(d, "comfyui_i2v", i2v_params(seed, lora, b64))
        row = wait_task(d, tid, 1200)
        results[key] = summarize_task(d, vram, tid, label)
        results[key]["insert_to_complete_s"] = round(ts(row, "completed_at") - t_ins, 2)
    results["i2v_daemon_exit"] = d.stop()
    vram.stop()


def phase_chain(results: dict[str, Any]) -> None:
    ensure_models(I2V_MODELS, remove=["ti2v_5b", "vae22"])
    vram = VramSampler()
    profiles = WORK / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    shipped = (REPO / "comfy_worker/profiles/wan22_i2v_chain.yaml").read_text()
    turbo = shipped.replace("name: wan22_i2v_chain", "name: wan22_i2v_chain_turbo", 1).replace(
        "params: {width: 832, height: 480, steps: 20, boundary_step: 10, cfg_scale: 3.5, shift: 5.0, fps: 16}",
        "params: {width: 832, height: 480, use_lora: true, shift: 5.0, fps: 16}",
    )
    (profiles / "wan22_i2v_chain_turbo.yaml").write_text(turbo)
    d = registered_daemon("chain", {"PROFILES_DIR": str(profiles)})
    # 3 chunks of 81 frames on core nodes, 4-step LoRA passes
    before = set(all_history())
    t_ins = time.time()
    tid = enqueue(d, "prompt_runner", {
        "video_name": "gpu_chain", "total_frames": 3 * 81, "frames_per_chunk": 81,
        "positive_prompt": "a sunset over the beach, waves", "profile": "wan22_i2v_chain_turbo", "seed": 5,
    })  # fmt: skip
    row = wait_task(d, tid, 1500)
    hist = all_history()
    windows = sorted(history_window(pid) for pid in hist if pid not in before)
    step_sum = sum(b - a for a, b in windows)
    total = ts(row, "completed_at") - ts(row, "started_at")
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(windows)]
    chain = {
        "prompts": len(windows),
        "total_s": round(total, 2),
        "sum_of_steps_s": round(step_sum, 2),
        "overhead_s": round(total - step_sum, 2),
        "ratio_steps_over_total": round(step_sum / total, 4),
        "gap_between_prompts_median_s": round(statistics.median(gaps), 3) if gaps else None,
        "after_last_prompt_s": round(ts(row, "completed_at") - windows[-1][1], 2) if windows else None,
        "insert_to_complete_s": round(ts(row, "completed_at") - t_ins, 2),
        "peak_vram_mib": vram.peak(ts(row, "started_at"), ts(row, "completed_at")),
    }
    say("chain", json.dumps(chain))
    results["chain"] = chain
    results["chain_daemon_exit"] = d.stop()
    vram.stop()


def coverage_cases(w: int, h: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, task type, params): every Wan 2.2 task type and its main switches, at a small size."""
    img = {"base64": image_b64(w, h), "filename": "first.png"}
    last = {"base64": image_b64(h, w), "filename": "last.png"}  # another picture: the builder scales it
    size = {"width": w, "height": h, "num_frames": 33, "seed": 3, "prompt": "a paper boat on a pond"}
    unsized = {k: v for k, v in size.items() if k != "num_frames"}
    return [
        ("t2v 4-step LoRA", "comfyui_t2v", {**size, "use_lora": True}),
        ("t2v cfg 3.5, 6 steps split 3/3", "comfyui_t2v", {**size, "steps": 6, "boundary_step": 3}),
        ("i2v 4-step LoRA + a user LoRA", "comfyui_i2v", {**size, "image": img, "use_lora": True, "loras": [
            {"name": "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors", "strength": 0.5}]}),
        ("flf2v 4-step LoRA", "comfyui_flf2v", {**size, "image": img, "last_image": last, "use_lora": True}),
        ("flf2v cfg 4, 4 steps split 2/2", "comfyui_flf2v", {**size, "image": img, "last_image": last, "steps": 4,
                                                             "boundary_step": 2}),
        ("ti2v 5B with image", "comfyui_ti2v", {**size, "image": img, "steps": 4}),
        ("ti2v 5B text only", "comfyui_ti2v", {**size, "steps": 4}),
        ("s2v 6.5 s audio (2 windows, frames from the audio)", "comfyui_s2v", {**unsized, "image": img, "audio": {
            "base64": wav_b64(6.5), "filename": "voice.wav"}}),
    ]  # fmt: skip


def phase_coverage(results: dict[str, Any]) -> None:
    """Every Wan 2.2 task type the builders emit, executed by ComfyUI 0.3.64's real nodes through the daemon.

    The models are their real types at full width but 2 blocks deep (``make_models.py --layers 2``): ComfyUI
    counts the blocks, so it detects and runs the same classes (WAN21_T2V / I2V layout, WAN22_S2V, the 5B
    WAN22), and the whole set fits the machine's disk with room to spare. Figures here are not timings of the
    real models; what counts is that each graph runs to a video ffprobe can read, with the frames asked for
    (and, for s2v, the audio track). The shallow files are removed afterwards, so no later phase times them."""
    from make_models import FILES, GROUPS

    shallow = [MODELS / FILES[m][0] / FILES[m][1] for n in COVERAGE_SHALLOW for m in GROUPS.get(n, [n])]
    for f in shallow:  # a full-size file from an earlier phase would be timed here as if it were shallow
        f.unlink(missing_ok=True)
    ensure_models(COVERAGE_SHALLOW, remove=[], layers=2)
    ensure_models(COVERAGE_FULL, remove=[])
    vram = VramSampler()
    d = registered_daemon("coverage")
    rows: list[dict[str, Any]] = []
    try:
        for label, task_type, params in coverage_cases(*COVERAGE_SIZE):
            tid = enqueue(d, task_type, params)
            try:
                row = wait_task(d, tid, 900)
            except SystemExit as e:  # one broken graph must not hide the others
                rows.append({"label": label, "task_type": task_type, "ok": False, "error": str(e)[:2000]})
                say("coverage", label, "FAILED:", str(e)[:2000])
                continue
            result = json.loads(row["result"] or "{}")
            videos = [o for o in result.get("outputs", []) if str(o.get("storage_path", "")).endswith(".mp4")]
            probes = [probe(WORK / "storage" / o["storage_path"]) for o in videos]
            nodes = sorted({t.get("class_type") for t in result.get("node_timings") or []} - {None})
            frames = [int(st["nb_read_frames"]) for p in probes for st in p["streams"] if st["codec_type"] == "video"]
            asked = result.get("num_frames")
            entry = {
                "label": label,
                "task_type": task_type,
                "ok": bool(probes) and frames == [asked],
                "frames_asked": asked,
                "videos": probes,
                "notes": result.get("notes"),
                "seed": result.get("seed"),
                "nodes_executed": nodes,
                "claim_to_complete_s": round(ts(row, "completed_at") - ts(row, "started_at"), 2),
                "peak_vram_mib": vram.peak(ts(row, "started_at"), ts(row, "completed_at")),
            }
            rows.append(entry)
            say("coverage", json.dumps(entry))
    finally:
        results["coverage"] = rows
        results["coverage_daemon_exit"] = d.stop()
        vram.stop()
        for f in shallow:
            f.unlink(missing_ok=True)
    bad = [r["label"] for r in rows if not r["ok"]]
    say("coverage:", f"{len(rows) - len(bad)}/{len(rows)} graphs ran to a video", f"failed: {bad}" if bad else "")


def phase_efficiency(results: dict[str, Any], n: int = 6) -> None:
    from comfy_worker.builders.wan22 import build_i2v

    ensure_models(I2V_MODELS, remove=["ti2v_5b", "vae22"])
    b64 = image_b64(832, 480)
    d = registered_daemon("eff")
    warm = enqueue(d, "comfyui_i2v", i2v_params(100, True, b64))  # loads both models; not measured
    wait_task(d, warm, 1200)

    # ComfyUI alone: the same graphs (one uploaded image per job, as the daemon does), queued all at once
    png = base64.b64decode(b64)
    ids = []
    t0 = time.time()
    for i in range(n):
        name = f"alone_{i}.png"
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + png
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = urllib.request.Request(
            BASE + "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        urllib.request.urlopen(req, timeout=60).read()
        graph = build_i2v(name, prompt="a sunset over the beach, waves", width=832, height=480, num_frames=81,
                          use_lora=True, seed=200 + i, filename_prefix=f"alone/{i}")  # fmt: skip
        ids.append(http("/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})["prompt_id"])
    while True:
        h = http("/history?max_items=1000")
        if all(pid in h and h[pid]["status"].get("completed") is not None for pid in ids):
            break
        time.sleep(0.1)
    windows = sorted(history_window(pid) for pid in ids)
    alone = windows[-1][1] - t0
    alone_idle = sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(windows))

    # through the daemon: the same 6 jobs as tasks, inserted at once
    before = set(all_history())
    t1 = time.time()
    tids = [enqueue(d, "comfyui_i2v", i2v_params(300 + i, True, b64)) for i in range(n)]
    rows = [wait_task(d, t, 1200) for t in tids]
    done = max(ts(r, "completed_at") for r in rows)
    via = done - t1
    hist = all_history()
    dwin = sorted(history_window(pid) for pid in hist if pid not in before)
    idle_between = sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(dwin))
    busy = sum(b - a for a, b in dwin)
    eff = {
        "jobs": n,
        "comfyui_alone_s": round(alone, 2),
        "daemon_s": round(via, 2),
        "efficiency_alone_over_daemon": round(alone / via, 4),
        "comfyui_alone_idle_between_prompts_s": round(alone_idle, 3),
        "daemon_idle_between_prompts_s": round(idle_between, 3),
        "daemon_idle_pct_while_work_waited": round(100 * idle_between / (dwin[-1][1] - dwin[0][0]), 3),
        "insert_to_first_execution_s": round(dwin[0][0] - t1, 3),
        "last_execution_to_last_complete_s": round(done - dwin[-1][1], 3),
        "comfyui_busy_s": round(busy, 2),
    }
    say("efficiency", json.dumps(eff))
    results["efficiency"] = eff
    results["eff_daemon_exit"] = d.stop()


def encode_batch(d: Daemon, vram: VramSampler, task_type: str, params: list[dict[str, Any]], label: str
                 ) -> dict[str, Any]:  # fmt: skip
    """``params`` inserted at once into ``d``'s queue: per task its ComfyUI execution, the save node's time and the
    worker's encode; over the batch the GPU's time per video (first execution start to last execution end, ÷ n)."""
    t_ins = time.time()
    tids = [enqueue(d, task_type, p) for p in params]
    rows = [wait_task(d, t, 1200) for t in tids]
    tasks, windows = [], []
    for tid, row in zip(tids, rows, strict=True):
        s = summarize_task(d, vram, tid, f"{label} task")
        result = json.loads(row["result"] or "{}")
        windows.append(history_window(result["prompt_id"]))
        saves = ("SaveVideo", "ComfyWorkerSaveVideo")
        save = [t for t in result.get("node_timings") or [] if t.get("class_type") in saves]
        enc = [e for e in d.named("video_encoded") if e.get("task_id") == tid]
        s.update(video_encode=result.get("video_encode"), save_node_s=save[0]["seconds"] if save else None,
                 worker_encode_s=enc[0]["seconds"] if enc else None,
                 insert_to_complete_s=round(ts(row, "completed_at") - t_ins, 2))  # fmt: skip
        tasks.append(s)
    windows.sort()
    out = {
        "label": label,
        "tasks": len(tids),
        "gpu_s_per_video": round((windows[-1][1] - windows[0][0]) / len(tids), 2),
        "comfyui_execution_s": [round(b - a, 2) for a, b in windows],
        "gap_between_prompts_s": [round(b[0] - a[1], 3) for a, b in itertools.pairwise(windows)],
        "save_node_s": [t["save_node_s"] for t in tasks],
        "worker_encode_s": [t["worker_encode_s"] for t in tasks],
        "s_per_step": [[p["s_per_step"] for p in t["passes"]] for t in tasks],
        "insert_to_complete_s": [t["insert_to_complete_s"] for t in tasks],
        "last_execution_end_to_last_complete_s": round(max(ts(r, "completed_at") for r in rows) - windows[-1][1], 2),
    }
    say(f"encode {label}", json.dumps(out))
    return out


def goal_task(fourteen: bool, extra: dict[str, Any]) -> tuple[str, Any]:
    """The goal's models on disk (the other size's removed) and its task: (task type, seed -> params), the 14B
    ``comfyui_i2v`` 832x480x81 4-step LoRA or the 5B ``comfyui_ti2v`` 1280x704x121 20 steps, plus ``extra``."""
    if fourteen:
        ensure_models(I2V_MODELS, remove=["ti2v_5b", "vae22"])
        b64 = image_b64(832, 480)
        return "comfyui_i2v", lambda seed: {**i2v_params(seed, True, b64), **extra}
    ensure_models(TI2V_MODELS, remove=["i2v_14b_high", "i2v_14b_low"])
    b64 = image_b64(1280, 704)
    return "comfyui_ti2v", lambda seed: {"prompt": "a street musician in a subway station", "width": 1280,
                                         "height": 704, "num_frames": 121, "seed": seed,
                                         "image": {"base64": b64, "filename": "start.png"}, **extra}  # fmt: skip


def phase_encode(results: dict[str, Any], fourteen: bool = False) -> None:
    """VIDEO_ENCODE=comfyui (SaveVideo on ComfyUI's path) against =worker (ComfyWorkerSaveVideo hands the frames
    over, the worker encodes while the next prompt runs) on one ComfyUI, so the models (and, with ``speed: "fast"``,
    the compiled graphs) are loaded once: the worker-mode daemon launches ComfyUI, the comfyui-mode daemon attaches
    to it with its own queue. One warm-up task, then ENCODE_TASKS (2) tasks inserted at once per mode (comfyui
    first). 5B ti2v 1280x704x121 20 steps, or (``encode14``) the 14B
    i2v 832x480x81 4-step LoRA; ``speed: "fast"`` unless ENCODE_SPEED=default."""
    extra = {"speed": "fast"} if os.environ.get("ENCODE_SPEED", "fast") == "fast" else {}
    task_type, params = goal_task(fourteen, extra)
    vram = VramSampler()
    n = int(os.environ.get("ENCODE_TASKS", "2"))
    name = "encode14" if fourteen else "encode"
    rows = results.setdefault(name, [])
    w = registered_daemon(f"{name}_worker", {"VIDEO_ENCODE": "worker"}, db="queue_worker.db")
    t0 = time.time()
    warm = enqueue(w, task_type, params(500))
    wait_task(w, warm, 1200)
    rows.append({"warm_up_task_s": round(time.time() - t0, 2)})
    say(f"{name} warm-up (loads{', compiles' if extra else ''})", json.dumps(rows[-1]))
    c = registered_daemon(f"{name}_comfyui", {"VIDEO_ENCODE": "comfyui", "COMFY_URL": BASE}, db="queue_comfyui.db")
    rows.append(encode_batch(c, vram, task_type, [params(600 + i) for i in range(n)], f"{name} VIDEO_ENCODE=comfyui"))
    results[f"{name}_comfyui_daemon_exit"] = c.stop()
    rows.append(encode_batch(w, vram, task_type, [params(700 + i) for i in range(n)], f"{name} VIDEO_ENCODE=worker"))
    results[f"{name}_worker_daemon_exit"] = w.stop()
    (OUT / f"results_{name}.json").write_text(json.dumps(results, indent=2))
    vram.stop()


def phase_gcfreeze(results: dict[str, Any], fourteen: bool = True) -> None:
    """Whether ComfyUI's post-prompt full garbage collection is the idle gap between compiled prompts, and what
    COMFY_GC_FREEZE buys: ``speed: "fast"`` tasks (VIDEO_ENCODE=worker) with ComfyUI under the gc probe, then the
    same with gc.freeze() after a slow full collection (COMFY_GC_FREEZE=true); per run a warm-up task (loads,
    compiles) and ENCODE_TASKS (2) tasks inserted at once: gap between prompts and GPU seconds per video. The 14B
    ``comfyui_i2v`` 4-step LoRA (``gcfreeze14``) or the 5B ``comfyui_ti2v`` 1280x704x121 20 steps (``gcfreeze``)."""
    task_type, params = goal_task(fourteen, {"speed": "fast"})
    vram = VramSampler()
    n = int(os.environ.get("ENCODE_TASKS", "2"))
    name = "gcfreeze14" if fourteen else "gcfreeze"
    probe = Path(__file__).resolve().parent / "comfy_gc_probe" / "python"
    rows = results.setdefault(name, [])
    # the second run: COMFY_GC_FREEZE=true (the shipped freezer); GCFREEZE_PROBE=1: the probe's own gc.freeze(), which
    # is what session 9 measured (the same trigger, a timer thread instead of the freezer's queue, no refresh)
    shipped = os.environ.get("GCFREEZE_PROBE") != "1"
    for label, freeze in (("probe only", "0"), ("gc.freeze after a slow full collection", "1")):
        env = {"COMFY_PYTHON": str(probe), "VIDEO_ENCODE": "worker"}
        if freeze == "1":
            env.update({"COMFY_GC_FREEZE": "true"} if shipped else {"GC_PROBE_FREEZE": "1"})
        d = registered_daemon(f"{name}_{freeze}", env)
        wait_task(d, enqueue(d, task_type, params(800)), 1200)
        row = encode_batch(d, vram, task_type, [params(810 + i) for i in range(n)], f"{name} {label}")
        row["gc_lines"] = [ev["line"] for ev in d.named("comfyui_output") if "gc_probe:" in str(ev.get("line"))][-8:]
        row["freezer_lines"] = [ev["line"] for ev in d.named("comfyui_output")
                                if "comfy_worker_gc:" in str(ev.get("line"))][-6:]  # fmt: skip
        say(f"{name} {label} gc", json.dumps({"gc_lines": row["gc_lines"], "freezer_lines": row["freezer_lines"]}))
        rows.append(row)
        results[f"{name}_{freeze}_daemon_exit"] = d.stop()
        (OUT / f"results_{name}.json").write_text(json.dumps(results, indent=2))
    vram.stop()


def main() -> int:
    phases = sys.argv[1:] or ["ti2v"]
    sys.path.insert(0, str(Path(__file__).parent))
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"phases": phases}
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    import torch

    results["device"] = {"gpu": smi, "torch": torch.__version__, "python": sys.version.split()[0]}
    say("device", json.dumps(results["device"]))
    table = {
        "ti2v": phase_ti2v,
        "i2v": phase_i2v,
        "chain": phase_chain,
        "efficiency": phase_efficiency,
        "coverage": phase_coverage,
        "warm": phase_warm,
        "warm14": phase_warm14,
        "speed": phase_speed,
        "goal": phase_goal,
        "goal14": phase_goal14,
        "encode": phase_encode,
        "encode14": lambda r: phase_encode(r, fourteen=True),
        "gcfreeze14": phase_gcfreeze,
        "gcfreeze": lambda r: phase_gcfreeze(r, fourteen=False),
        "warmstart": phase_warmstart,
    }
    kill_leftovers()
    try:
        for phase in phases:
            table[phase](results)
            (OUT / f"results_{'_'.join(phases)}.json").write_text(json.dumps(results, indent=2))
    finally:
        for d in STARTED:
            if d.proc.poll() is None:
                say(f"stopping daemon {d.name} (exit {d.stop()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

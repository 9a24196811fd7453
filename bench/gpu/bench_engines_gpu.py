"""ComfyUI <-> Wan2GP on one GPU, through the daemon (issue 11): Wan2GP's load time, seconds per step and peak
VRAM, and the time of each engine switch (free + memory back), with the GPU's memory sampled all along.

One ``python -m comfy_worker`` (embedded SQLite queue, local storage) runs both engines: ComfyUI 0.3.64 as its
supervised child (``bench/gpu/setup_env.sh`` unpacks it; the 5B TI2V model, UMT5 and the 2.2 VAE written with
random weights by ``bench/gpu/make_models.py``) and Wan2GP through the real ``worker_wgp`` child. Tasks alternate
``comfyui_ti2v`` (or, ``--comfy i2v``, the 14B ``comfyui_i2v`` HIGH/LOW pair with its 4-step LoRA) and ``t2v``
(``ENGINE_SWITCH_MAX_WAIT_S=0``: no preference for the loaded engine); ``--rounds`` pairs. With prefetch on, two
ComfyUI tasks can share one turn (the first ``t2v`` runs while ComfyUI is still starting).

Wan2GP, two ways (``--wan2gp``):

* ``holder`` (default) — ``bench/gpu/wan2gp_holder/wgp.py``: a checkout that holds and releases GPU memory the
  way Wan2GP does (weights copied from pinned RAM to the GPU block by block, bf16 matmul steps, release =
  drop + gc + ``torch.cuda.empty_cache()``), driven by the real child through Wan2GP's API shape. Real Wan2GP
  could not run on the GPU machine before bench/gpu/wan2gp_real (its environment in one carried batch, random
  weights written from Wan2GP's own classes): docs/engines.md ("The GPU benchmark").
* ``real`` — ``--wan2gp-path`` / ``--wan2gp-python``: a real Wan2GP checkout whose environment imports, with its
  model files present (a pod with network, or bench/gpu/wan2gp_real/setup.sh on the GPU machine). A preflight
  names every module Wan2GP imports at start that the python lacks, and stops. ``--wan2gp-model`` picks the
  model (default ``t2v_1.3B``, the smallest video one).

Figures: each Wan2GP task's ``holder_stats`` line (load, s/step, torch's peak) or, for real Wan2GP, its result
(``load_s``, ``execution_s``, ``peak_gpu_bytes``) and progress; each ``engine_switch`` event of the daemon's JSON
log (seconds, bytes freed, how it was measured: nvidia-smi / NVML); ``gpu_granted`` (how long a task waited for
the GPU); ``nvidia-smi`` every 100 ms for peak VRAM per task. Output: ``$OUT/engines.json``, the daemon's log,
and ``$OUT/engines_vram.svg`` (memory over time, tasks and switches marked).

``--dry-run`` builds everything that needs no GPU and stops before CUDA: the plan, the task params checked
against their contracts, the holder checkout, the daemon's environment, and (with a python that has torch, e.g.
the test ComfyUI's) the holder run on the CPU through the real child: load, steps, free.

    bash bench/gpu/run_engines.sh              # on the GPU machine (device call), from the repo root
    python bench/gpu/bench_engines_gpu.py --dry-run [--holder-python .test-env/venv/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from gpu_common import REPO, DaemonProcess, VramSampler, enqueue, fresh_sqlite, say, stamp

sys.path.insert(0, str(REPO))
WORK = Path(os.environ.get("GPU_WORK", "/root/cwgpu"))
OUT = Path(os.environ.get("OUT", WORK / "out"))
DB = WORK / "engines.db"
COMFY = Path(os.environ.get("COMFY_DIR", WORK / "comfyui"))
PORT = 8289
HOLDER = REPO / "bench" / "gpu" / "wan2gp_holder"
API_STANDIN = REPO / "tests" / "standins" / "wan2gp" / "shared" / "api.py"
# the ComfyUI side (--comfy): task type and its models (make_models.py names)
COMFY_SIDE = {
    "ti2v": ("comfyui_ti2v", ["ti2v_5b", "vae22", "umt5"]),  # 5B: 10 GB + UMT5 on the GPU
    "i2v": ("comfyui_i2v", ["i2v_14b_high", "i2v_14b_low", "vae21", "umt5", "lora_i2v_high", "lora_i2v_low"]),
}
# what importing wgp.py loads (Wan2GP 8681e9f, measured by bench/gpu/wan2gp_real/import_closure.py): a real Wan2GP
# needs all of them (gradio may be bench/gpu/wan2gp_real/standins' stand-in); moviepy and decord are not among them
WAN2GP_IMPORTS = ["torch", "mmgp", "optimum", "gradio", "cv2", "diffusers", "transformers", "accelerate", "einops",
                  "safetensors", "numpy", "PIL", "imageio", "ffmpeg", "librosa", "soundfile", "matplotlib",
                  "huggingface_hub", "requests", "tqdm", "omegaconf", "psutil", "rembg", "whisper", "smplfitter",
                  "ftfy", "easydict", "git", "skimage", "onnxruntime", "loguru", "pydub"]


def png_b64(width: int, height: int) -> str:
    """A grey-gradient RGB PNG of this size (zlib, no imaging library): the TI2V start image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + bytes(x * 255 // max(1, width - 1) for x in range(width) for _rgb in range(3))
    rows = row * height
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return base64.b64encode(raw).decode()


# --- the plan (no GPU) --------------------------------------------------------------------------------------------


def comfy_params(seed: int, a: argparse.Namespace) -> dict[str, Any]:
    params = {"prompt": "a street musician in a subway station", "width": a.width, "height": a.height,
              "num_frames": a.frames, "steps": a.steps, "seed": seed,
              "image": {"base64": png_b64(a.width, a.height), "filename": "start.png"}}
    if a.comfy == "i2v":  # the 14B HIGH/LOW pair with the 4-step LoRA: both experts stay loaded between tasks
        params.update(use_lora=True, steps=4)
    return params


def wan_params(seed: int, a: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": "a paper boat on a pond", "resolution": f"{a.width}x{a.height}",
                              "video_length": a.frames, "num_inference_steps": a.steps, "seed": seed}
    if a.wan2gp == "real":
        params["model"] = a.wan2gp_model
    return params


def plan(a: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The tasks in queue order, each checked against its contract (InputRejected names a bad key)."""
    from comfy_worker.builders import build_resolved, resolve
    from worker_wgp.tasks import parse_params

    tasks: list[tuple[str, dict[str, Any]]] = []
    for r in range(a.rounds):
        tasks += [(COMFY_SIDE[a.comfy][0], comfy_params(r + 1, a)), ("t2v", wan_params(r + 1, a))]
    for task_type, params in tasks:
        if task_type == "t2v":
            parse_params(task_type, params)
        else:
            build_resolved(resolve(task_type, params), {"image": "start.png"})
    return tasks


def holder_checkout(root: Path) -> Path:
    """A Wan2GP-shaped checkout: the holder's wgp.py and the API stand-in's shared/api.py."""
    if root.exists():
        shutil.rmtree(root)
    (root / "shared").mkdir(parents=True)
    shutil.copy(HOLDER / "wgp.py", root / "wgp.py")
    shutil.copy(API_STANDIN, root / "shared" / "api.py")
    (root / "shared" / "__init__.py").write_text("")
    return root


def preflight_real(path: Path, python: str) -> list[str]:
    """Modules Wan2GP imports at start that ``python`` cannot find (empty: it may start)."""
    from worker_wgp.settings import check_wan2gp_path

    check_wan2gp_path(str(path))
    probe = ("import importlib.util, json, sys; "
             f"print(json.dumps([m for m in {WAN2GP_IMPORTS!r} if importlib.util.find_spec(m) is None]))")
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, cwd=path)
    return json.loads(out.stdout)


def daemon_env(a: argparse.Namespace, wan2gp_path: Path, wan2gp_python: str) -> dict[str, str]:
    return {
        **os.environ,
        "COMFY_PATH": str(COMFY), "COMFY_PYTHON": sys.executable, "COMFY_PORT": str(PORT),
        "COMFY_STARTUP_TIMEOUT": "300", "WAN2GP_PATH": str(wan2gp_path), "WAN2GP_PYTHON": wan2gp_python,
        "WAN2GP_STARTUP_TIMEOUT": "600", "DATABASE_URL": f"sqlite:///{DB}",
        "LOCAL_STORAGE_DIR": str(WORK / "storage"), "WORK_DIR": str(WORK / "work"), "LOG_FORMAT": "json",
        "PROGRESS_INTERVAL_S": "0.2", "PYTHONUNBUFFERED": "1", "TASK_TIMEOUT_S": "1800", "PREFETCH": "1",
        "ENGINE_SWITCH_MAX_WAIT_S": "0", "ENGINE_FREE_TIMEOUT_S": "120",
        "HOLDER_MODEL_MB": str(a.holder_model_mb), "HOLDER_TEXT_MB": str(a.holder_text_mb),
    }  # fmt: skip


def holder_cpu_check(python: str, root: Path) -> dict[str, Any]:
    """The holder on the CPU through the real child and engine: start, one generation, free (no GPU)."""
    from worker_wgp import protocol as p
    from worker_wgp.engine import WanEngine, WanEngineConfig

    async def run() -> dict[str, Any]:
        env = {"HOLDER_DEVICE": "cpu", "HOLDER_MODEL_MB": "64", "HOLDER_TEXT_MB": "64", "HOLDER_ACT_MB": "16",
               "HOLDER_DIM": "256", "HOLDER_STEP_MATMULS": "2"}
        engine = WanEngine(WanEngineConfig(wan2gp_path=root, output_dir=WORK / "dry-out", python=python,
                                           startup_timeout_s=120, env=env))
        steps: list[int] = []
        try:
            out = await engine.generate("t2v", {"prompt": "dry", "resolution": "32x32", "video_length": 5,
                                                "num_inference_steps": 3},
                                        on_progress=lambda e: steps.append(e.step or 0) if e.phase == "inference"
                                        else None)
            freed: p.Memory = await engine.free_memory()
            stats = next(json.loads(line.split(" ", 1)[1]) for line in engine.tail if line.startswith("holder_stats"))
            return {"files": [f.name for f in out.files], "steps": steps, "load_s": out.load_s, "stats": stats,
                    "model_after_free": engine.loaded_model, "rss_after_free": freed.rss_bytes}
        finally:
            await engine.stop(5)

    return asyncio.run(run())


# --- the run (GPU) ------------------------------------------------------------------------------------------------


def db_rows(ids: list[str]) -> dict[str, dict[str, Any]]:
    con = sqlite3.connect(DB, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        marks = ",".join("?" * len(ids))
        return {r["task_id"]: dict(r) for r in con.execute(f"SELECT * FROM tasks WHERE task_id IN ({marks})", ids)}
    finally:
        con.close()


def ensure_models(make_models: Path, models: list[str]) -> None:
    """The ComfyUI side's models (random weights, real architectures), written once (make_models.py's names)."""
    sys.path.insert(0, str(make_models.parent))
    from make_models import FILES  # type: ignore[import-not-found]

    todo = [n for n in models if not (COMFY / "models" / FILES[n][0] / FILES[n][1]).exists()]
    if todo:
        subprocess.run([sys.executable, str(make_models), "--check", "--comfy", str(COMFY), "--models-dir",
                        str(COMFY / "models"), *todo], check=True)


def gpu_run(a: argparse.Namespace, tasks: list[tuple[str, dict[str, Any]]], env: dict[str, str]) -> dict[str, Any]:
    fresh_sqlite(DB)
    vram = VramSampler()
    daemon = DaemonProcess("gpu-engines", env, OUT / "daemon_engines.log", stop_wait_s=180)
    daemon.migrate()
    daemon.start()
    ids = enqueue(DB, tasks)
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        rows = db_rows(ids)
        if all(r["status"] in ("complete", "failed", "cancelled") for r in rows.values()):
            break
        if daemon.proc.poll() is not None:
            raise SystemExit(f"daemon exited ({daemon.proc.returncode}); see {daemon.log_path}")
        time.sleep(0.2)
    code = daemon.stop()
    vram.stop()
    rows = db_rows(ids)
    failed = {i: r["error"] for i, r in rows.items() if r["status"] != "complete"}
    if failed:
        raise SystemExit(f"tasks did not complete: {failed}; see {daemon.log_path}")
    holder = [json.loads(e["line"].split(" ", 1)[1]) for e in daemon.named("wan2gp_output")
              if str(e.get("line", "")).startswith("holder_stats ")]
    per_task = []
    granted = {e.get("task_id"): e["_t"] for e in daemon.named("gpu_granted")}
    for (task_type, _params), tid in zip(tasks, ids, strict=True):
        row = rows[tid]
        result = json.loads(row["result"] or "{}")
        t0, t1 = stamp(row["started_at"]), stamp(row["completed_at"])
        # peak VRAM from the GPU grant on: with prefetch the claim comes while the task before still runs
        t_gpu = granted.get(tid, t0)
        per_task.append({"task_type": task_type, "task_id": tid, "claim_to_complete_s": round(t1 - t0, 2),
                         "grant_to_complete_s": round(t1 - t_gpu, 2),
                         "peak_vram_mib": vram.peak(t_gpu, t1), "load_s": result.get("load_s"),
                         "execution_s": result.get("execution_s"), "peak_gpu_bytes": result.get("peak_gpu_bytes")})
    switches = [{k: v for k, v in e.items() if not k.startswith("_") and k not in ("timestamp", "level", "logger")}
                for e in daemon.named("engine_switch")]
    waits = [e.get("waited_s") for e in daemon.named("gpu_granted")]
    out = {"daemon_exit": code, "tasks": per_task, "wan2gp_holder_stats": holder, "switches": switches,
           "gpu_waits_s": waits, "vram_samples": len(vram.samples)}
    write_svg(vram.samples, daemon, OUT / "engines_vram.svg")
    return out


def write_svg(samples: list[tuple[float, int]], daemon: DaemonProcess, path: Path) -> None:
    """GPU memory over time; grey bands are engine switches, ticks mark tasks granted the GPU."""
    if not samples:
        return
    t0, t1 = samples[0][0], samples[-1][0]
    top = max(m for _t, m in samples) or 1
    w, h = 1000, 300

    def x(t: float) -> float:
        return 40 + (t - t0) / max(1e-6, t1 - t0) * (w - 60)

    def y(m: float) -> float:
        return h - 30 - m / top * (h - 60)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             'font-size="11">', f'<text x="40" y="15">GPU memory used (MiB, peak {top}); grey: engine switches</text>']
    for e in daemon.named("engine_switch"):
        end, start = e["_t"], e["_t"] - float(e.get("seconds") or 0)
        parts.append(f'<rect x="{x(start):.1f}" y="20" width="{max(1.0, x(end) - x(start)):.1f}" height="{h - 50}" '
                     f'fill="#ddd"><title>{e.get("from_engine")} → {e.get("to_engine")}: {e.get("seconds")} s'
                     '</title></rect>')
    for e in daemon.named("gpu_granted"):
        colour = "#c33" if e.get("engine") == "wan2gp" else "#36c"
        parts.append(f'<line x1="{x(e["_t"]):.1f}" x2="{x(e["_t"]):.1f}" y1="{h - 30}" y2="{h - 20}" '
                     f'stroke="{colour}" stroke-width="2"/>')
    points = " ".join(f"{x(t):.1f},{y(m):.1f}" for t, m in samples)
    parts += [f'<polyline points="{points}" fill="none" stroke="#222" stroke-width="1.2"/>', "</svg>"]
    path.write_text("\n".join(parts))


# --- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wan2gp", choices=("holder", "real"), default="holder")
    ap.add_argument("--wan2gp-path", type=Path)
    ap.add_argument("--wan2gp-python", default=sys.executable)
    ap.add_argument("--wan2gp-model", default="t2v_1.3B")
    ap.add_argument("--holder-python", default=os.environ.get("HOLDER_PYTHON", sys.executable),
                    help="python (with torch) that runs the holder child")
    ap.add_argument("--holder-model-mb", type=int, default=2600)
    ap.add_argument("--holder-text-mb", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--comfy", choices=sorted(COMFY_SIDE), default="ti2v",
                    help="ComfyUI's side: the 5B ti2v (default) or the 14B i2v HIGH/LOW pair with its 4-step LoRA")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=3000)
    ap.add_argument("--dry-run", action="store_true", help="build everything, stop before CUDA")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"wan2gp": a.wan2gp, "comfy": a.comfy, "rounds": a.rounds,
                              "size": f"{a.width}x{a.height}x{a.frames}", "steps": a.steps}
    tasks = plan(a)
    say("plan:", " ".join(t for t, _ in tasks), f"({len(tasks)} tasks alternating, ENGINE_SWITCH_MAX_WAIT_S=0)")
    if a.wan2gp == "holder":
        wan2gp_path, wan2gp_python = holder_checkout(WORK / "wan2gp-holder"), a.holder_python
    else:
        if a.wan2gp_path is None:
            raise SystemExit("--wan2gp real needs --wan2gp-path (a Wan2GP checkout) and --wan2gp-python")
        wan2gp_path, wan2gp_python = a.wan2gp_path.resolve(), a.wan2gp_python
        missing = preflight_real(wan2gp_path, wan2gp_python)
        report["wan2gp_missing_modules"] = missing
        if missing:
            raise SystemExit(f"Wan2GP cannot start with {wan2gp_python}: it lacks {', '.join(missing)} "
                             "(Wan2GP's requirements.txt); see docs/engines.md, 'The GPU benchmark'")
    env = daemon_env(a, wan2gp_path, wan2gp_python)
    comfy_ok = (COMFY / "main.py").is_file()
    make_models = REPO / "bench" / "gpu" / "make_models.py"
    report["comfyui"] = {"path": str(COMFY), "present": comfy_ok, "make_models": make_models.is_file()}
    if a.dry_run:
        say("wan2gp checkout:", wan2gp_path, "python:", wan2gp_python)
        say("daemon env:", json.dumps({k: v for k, v in env.items() if k.startswith(("COMFY_", "WAN2GP_", "ENGINE_",
                                                                                    "HOLDER_", "DATABASE_"))}))
        say("comfyui:", json.dumps(report["comfyui"]), "(setup_env.sh unpacks it; make_models.py writes",
            " ".join(COMFY_SIDE[a.comfy][1]) + ")")
        if a.wan2gp == "holder":
            has_torch = subprocess.run([a.holder_python, "-c", "import torch"], capture_output=True).returncode == 0
            if has_torch:
                report["holder_cpu_check"] = check = holder_cpu_check(a.holder_python, wan2gp_path)
                say("holder on the CPU through the real child:", json.dumps(check))
            else:
                say(f"holder not run: {a.holder_python} has no torch (give --holder-python)")
        (OUT / "engines_plan.json").write_text(json.dumps({**report, "tasks": tasks}, indent=2))
        say("dry run: stopped before CUDA; plan in", OUT / "engines_plan.json")
        return
    if not comfy_ok or not make_models.is_file():
        raise SystemExit(f"ComfyUI missing at {COMFY} or bench/gpu/make_models.py absent: run bench/gpu/run_engines.sh")
    ensure_models(make_models, COMFY_SIDE[a.comfy][1])
    report.update(gpu_run(a, tasks, env))
    (OUT / "engines.json").write_text(json.dumps(report, indent=2))
    for s in report["switches"]:
        say(f"switch {s.get('from_engine')} -> {s.get('to_engine')}: {s.get('seconds')} s, freed "
            f"{(s.get('freed_bytes') or 0) / 2**30:.2f} GiB ({s.get('measured_by')})")
    for st in report["wan2gp_holder_stats"]:
        say(f"wan2gp load {st['load_s']} s, {st['s_per_step']} s/step, peak {(st['peak_bytes'] or 0) / 2**30:.2f} GiB")
    for t in report["tasks"]:
        say(json.dumps(t))


if __name__ == "__main__":
    main()

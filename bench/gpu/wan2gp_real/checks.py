"""The issue-23 checks of a real Wan2GP through the worker, on the GPU machine (after setup.sh):

    python3 bench/gpu/wan2gp_real/checks.py [--model t2v_1.3B] [--steps 10]

One ``python -m comfy_worker`` (embedded SQLite queue, local storage) with ComfyUI (COMFY_PATH, started on its
first task) and Wan2GP (WAN2GP_PATH = the pinned snapshot, WAN2GP_PYTHON = setup.sh's wrapper) configured:

1. ``t2v`` (``params.model`` = the random-weight 1.3B) completes: the stored video has the asked frames (ffprobe
   ``nb_read_frames``), 16 fps (Wan's) and the asked size; the result's ``load_s`` is the first load;
2. a second ``t2v`` runs on the loaded model: ``model_switched`` false, its ``load_s`` (warm);
3. progress reached the row while it ran (the ``progress`` column, polled: phases and steps seen);
4. cancel: a long ``t2v`` is cancelled once its progress shows denoising (``store.cancel``); it ends
   ``cancelled`` and a following ``t2v`` completes (the child survived);
5. out of range: ``video_length`` 10 and ``resolution`` 830x480 fail at once naming the key (the child's check
   against Wan2GP's model definition), ``num_inference_steps`` 500 fails naming the key (the task contract);
6. VRAM: NVML's used memory after a Wan2GP task and after the daemon's ``free`` (the worker row's
   ``metadata.engines.wan2gp.memory`` and ``nvidia-smi``).

The engine switch both ways (ComfyUI <-> Wan2GP, NVML) is bench/gpu/bench_engines_gpu.py ``--wan2gp real``
(run.sh runs it after these checks). Output: $OUT/wan2gp_checks.json and the daemon's log; one ``check:`` line
per check (PASS/FAIL) and exit 1 when any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from gpu_common import REPO, DaemonProcess, enqueue, fresh_sqlite, say  # noqa: E402

WORK = Path(os.environ.get("GPU_WORK", "/root/cwgpu"))
OUT = Path(os.environ.get("OUT", WORK / "out"))
DB = WORK / "wan2gp_checks.db"
results: list[dict[str, Any]] = []
DAEMON: list[DaemonProcess] = []  # the running daemon: waits stop when it has died


def check(name: str, ok: bool, **data: Any) -> bool:
    results.append({"check": name, "ok": bool(ok), **data})
    say(f"check: {'PASS' if ok else 'FAIL'} {name}", json.dumps(data, default=str)[:600])
    return ok


def row(task_id: str) -> dict[str, Any]:
    con = sqlite3.connect(DB)
    con.row_factory = sqlite3.Row
    try:
        r = con.execute("select status, error, result, progress from tasks where task_id = ?", (task_id,)).fetchone()
    finally:
        con.close()
    out = dict(r)
    for key in ("result", "progress"):
        out[key] = json.loads(out[key]) if out[key] else None
    return out


def wait(task_id: str, timeout: float, seen: list[dict[str, Any]] | None = None, until: Any = None) -> dict[str, Any]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = row(task_id)
        if seen is not None and r["progress"] and (not seen or seen[-1] != r["progress"]):
            seen.append(r["progress"])
        if until is not None and until(r):
            return r
        if r["status"] in ("complete", "failed", "cancelled"):
            return r
        if DAEMON and DAEMON[0].proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({DAEMON[0].proc.returncode}) with task {task_id} "
                               f"{r['status']}: see {DAEMON[0].log_path}")
        time.sleep(0.2)
    raise TimeoutError(f"task {task_id} still {row(task_id)['status']} after {timeout} s")


def probe(path: Path) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames,width,height,r_frame_rate", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True)
    s = json.loads(out.stdout)["streams"][0]
    num, den = (int(x) for x in s["r_frame_rate"].split("/"))
    return {"frames": int(s["nb_read_frames"]), "width": s["width"], "height": s["height"], "fps": num / den}


def nvml_used() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0]) * 1024 * 1024
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def cancel(task_id: str) -> None:
    from comfy_worker.store.sqlite import SqliteStore

    async def go() -> None:
        store = SqliteStore(DB)
        await store.connect()
        try:
            await store.cancel(task_id, "cancelled by the wan2gp_real checks")
        finally:
            await store.close()

    asyncio.run(go())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="t2v_1.3B")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=1500)
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    fresh_sqlite(DB)
    env = {
        **os.environ,
        "COMFY_PATH": os.environ.get("COMFY_DIR", str(WORK / "comfyui")), "COMFY_PYTHON": sys.executable,
        "COMFY_PORT": "8290", "WAN2GP_PATH": os.environ["WAN2GP_PATH"], "WAN2GP_PYTHON": os.environ["WAN2GP_PYTHON"],
        "WAN2GP_STARTUP_TIMEOUT": "900", "DATABASE_URL": f"sqlite:///{DB}",
        "LOCAL_STORAGE_DIR": str(WORK / "wgp-storage"), "WORK_DIR": str(WORK / "wgp-work"), "LOG_FORMAT": "json",
        "PROGRESS_INTERVAL_S": "0.2", "PYTHONUNBUFFERED": "1", "TASK_TIMEOUT_S": str(int(a.timeout)),
        "HEARTBEAT_INTERVAL": "2",
    }  # fmt: skip
    daemon = DaemonProcess("wan2gp-real-checks", env, OUT / "daemon_wan2gp_checks.log", stop_wait_s=120)
    daemon.migrate()
    daemon.start()
    DAEMON.append(daemon)
    params = {"prompt": "a red fox runs through the snow", "model": a.model, "resolution": f"{a.width}x{a.height}",
              "video_length": a.frames, "num_inference_steps": a.steps, "seed": 1}
    try:
        [first] = enqueue(DB, [("t2v", params)])
        seen: list[dict[str, Any]] = []
        r = wait(first, a.timeout, seen)
        ok = r["status"] == "complete"
        media: dict[str, Any] = {}
        if ok:
            out = r["result"]["outputs"][0]
            media = probe(WORK / "wgp-storage" / out["storage_path"])
        check("t2v completes with the asked frames, fps and size",
              ok and media == {"frames": a.frames, "width": a.width, "height": a.height, "fps": 16.0},
              status=r["status"], error=r["error"], media=media, result=r["result"])
        first_load = (r["result"] or {}).get("load_s")
        steps = sorted({p.get("step") for p in seen if p.get("phase") == "inference" and p.get("step") is not None})
        check("progress reached the row", bool(steps) and any(p.get("phase") == "loading_model" for p in seen),
              phases=sorted({str(p.get("phase")) for p in seen}), steps=steps, updates=len(seen))
        used_after_task = nvml_used()

        [second] = enqueue(DB, [("t2v", {**params, "seed": 2})])
        r2 = wait(second, a.timeout)
        res2 = r2["result"] or {}
        check("a second t2v runs on the loaded model (warm)", r2["status"] == "complete" and not res2.get(
            "model_switched"), first_load_s=first_load, warm_load_s=res2.get("load_s"),
              execution_s=res2.get("execution_s"), peak_gpu_bytes=res2.get("peak_gpu_bytes"))

        [long] = enqueue(DB, [("t2v", {**params, "num_inference_steps": 200, "seed": 3})])
        wait(long, a.timeout, until=lambda x: (x["progress"] or {}).get("phase") == "inference"
             and ((x["progress"] or {}).get("step") or 0) >= 2)
        t0 = time.time()
        cancel(long)
        r3 = wait(long, 300)
        cancelled_s = time.time() - t0
        [after] = enqueue(DB, [("t2v", {**params, "seed": 4})])
        r4 = wait(after, a.timeout)
        check("cancel interrupts it and the next task runs", r3["status"] == "cancelled" and r4["status"] ==
              "complete", status=r3["status"], seconds_to_cancelled=round(cancelled_s, 2), next=r4["status"])

        bad = enqueue(DB, [("t2v", {**params, "video_length": 10}), ("t2v", {**params, "resolution": "830x480"}),
                           ("t2v", {**params, "num_inference_steps": 500})])
        rows = [wait(t, 600) for t in bad]
        named = [(x["status"], (x["error"] or "")[:200]) for x in rows]
        check("out-of-range settings refused naming the key", all(
            s == "failed" and f"params.{k}" in e for (s, e), k in zip(named, ("video_length", "resolution",
                                                                            "num_inference_steps"), strict=True)),
              errors=named)
        check("VRAM read from NVML after a Wan2GP task", used_after_task is not None, used_bytes=used_after_task)
    finally:
        code = daemon.stop()
        (OUT / "wan2gp_checks.json").write_text(json.dumps({"results": results, "daemon_exit": code}, indent=1))
    failed = [x["check"] for x in results if not x["ok"]]
    say(f"checks: {len(results) - len(failed)} passed, {len(failed)} failed", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

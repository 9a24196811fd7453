"""What the GPU benches (``bench_wan_gpu.py``, ``bench_engines_gpu.py``) share: their output line, the
``nvidia-smi`` sampler, ``python -m comfy_worker`` with its JSON log parsed as it is written, and the SQLite queue
they fill. Imported by name: a script run by path has ``bench/gpu`` first on ``sys.path``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def say(*parts: Any) -> None:
    print("bench:", *parts, flush=True)


def stamp(value: Any) -> float:
    """An ISO time stamp (the log's, a task row's) as unix seconds."""
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class VramSampler:
    """``nvidia-smi`` every 100 ms: (unix time, MiB used)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                       "-lms", "100"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append((time.time(), int(line.strip())))

    def peak(self, t0: float, t1: float) -> int:
        return max((m for t, m in self.samples if t0 <= t <= t1), default=0)

    def stop(self) -> None:
        self._proc.terminate()


class DaemonProcess:
    """``python -m comfy_worker --worker-id ID``: its output written to ``log_path``, each JSON log line kept in
    ``events`` with ``_t`` (unix seconds) added."""

    def __init__(self, worker_id: str, env: dict[str, str], log_path: Path, *, stop_wait_s: float) -> None:
        self.worker_id = worker_id
        self.env = env
        self.log_path = log_path
        self.stop_wait_s = stop_wait_s
        self.events: list[dict[str, Any]] = []

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "comfy_worker", "migrate"], env=self.env, check=True, cwd=REPO)

    def start(self) -> float:
        """Start it; the unix time it was started."""
        self.started = time.time()
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "comfy_worker", "--worker-id", self.worker_id],
                                     env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        threading.Thread(target=self._pump, daemon=True).start()
        return self.started

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            try:
                ev = json.loads(line)
                ev["_t"] = stamp(ev["timestamp"])
            except (ValueError, KeyError):
                continue
            self.events.append(ev)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("event") == event]

    def stop(self) -> int:
        """SIGTERM, SIGKILL after ``stop_wait_s``; its exit code (-9 when killed)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.stop_wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def fresh_sqlite(db: Path) -> None:
    """Remove the SQLite queue file and its WAL / shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def enqueue(db: Path, tasks: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Insert the tasks (one attempt each) into the SQLite queue ``db``; their ids, in order."""
    from comfy_worker.models import NewTask
    from comfy_worker.store.sqlite import SqliteStore

    async def go() -> list[str]:
        store = SqliteStore(db)
        await store.connect()
        try:
            return [(await store.enqueue(NewTask(t, p, max_attempts=1))).task_id for t, p in tasks]
        finally:
            await store.close()

    return asyncio.run(go())

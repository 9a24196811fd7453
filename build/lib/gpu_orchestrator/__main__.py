"""``python -m gpu_orchestrator [--dry-run] [--once]``: keep the GPU fleet sized to the queue."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys

from comfy_worker.config import Settings, load_settings
from comfy_worker.errors import ComfyWorkerError
from comfy_worker.logs import configure_logging, get_logger, register_secret
from comfy_worker.store import open_store
from gpu_orchestrator.fleet import fleet_store
from gpu_orchestrator.loop import Orchestrator
from gpu_orchestrator.provider import Provider
from gpu_orchestrator.settings import OrchestratorSettings, load_orchestrator_settings

log = get_logger("gpu_orchestrator")


def queue_env(settings: Settings) -> dict[str, str]:
    """How a pod's worker reaches the same queue (and storage) as we do."""
    env: dict[str, str] = {}
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    if settings.supabase_url:
        env["SUPABASE_URL"] = settings.supabase_url
        env["SUPABASE_SERVICE_ROLE_KEY"] = settings.supabase_service_role_key
    return env


async def run(args: argparse.Namespace, settings: Settings, orch: OrchestratorSettings) -> int:
    store = open_store(settings)
    fleet_store(store)  # Postgres or Supabase; the embedded SQLite store is refused naming DATABASE_URL
    provider: Provider | None = None
    await store.connect()
    try:
        if not args.dry_run:
            orch.check_provider()
            from gpu_orchestrator.runpod import RunPodClient

            provider = RunPodClient(orch.runpod_api_key, orch.runpod_api_url)
        o = Orchestrator(
            store,
            provider,
            orch,
            queue_env=queue_env(settings),
            worker_timeout_s=settings.worker_timeout_s,
            dry_run=args.dry_run,
        )
        log.info(
            "orchestrator_started",
            dry_run=args.dry_run,
            interval_s=orch.interval_s,
            min_workers=orch.min_workers,
            max_workers=orch.max_workers,
            max_hourly_spend=orch.max_hourly_spend if math.isfinite(orch.max_hourly_spend) else None,
            idle_timeout_s=orch.idle_timeout_s,
            spawn_timeout_s=orch.spawn_timeout_s,
            gpu_types=orch.gpu_types,
        )
        if args.once:
            await o.run_once()
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await o.run_forever(stop)
        log.info("orchestrator_stopped")
        return 0
    finally:
        if provider is not None:
            await provider.close()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpu_orchestrator", description=__doc__)
    ap.add_argument("--dry-run", action="store_true", help="log each decision; no provider calls, no writes")
    ap.add_argument("--once", action="store_true", help="run one cycle and exit")
    args = ap.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        orch = load_orchestrator_settings()
        register_secret(orch.runpod_api_key)
        return asyncio.run(run(args, settings, orch))
    except ComfyWorkerError as exc:
        log.error("orchestrator_failed", error=str(exc), error_type=type(exc).__name__)
        return 2


if __name__ == "__main__":
    sys.exit(main())

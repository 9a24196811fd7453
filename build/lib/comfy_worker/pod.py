"""This worker's own RunPod pod: stop it once the work is done (``--terminate-pod-on-exit``, prompt-runner runs).

Used by the daemon's CLI and the local prompt-runner alike, so it lives below both (it was in ``cli.py``, which
made ``cli`` and ``handlers/prompt_runner/local.py`` import each other).
"""

from __future__ import annotations

from comfy_worker.config import Settings
from comfy_worker.logs import get_logger

log = get_logger(__name__)


async def stop_own_pod(settings: Settings) -> None:
    """Stop (not terminate, not restart) this pod once the worker drained: RunPod would otherwise restart
    the container's CMD and the pod would keep billing."""
    from gpu_orchestrator.errors import ProviderError
    from gpu_orchestrator.runpod import RunPodClient

    client = RunPodClient(settings.runpod_api_key, settings.runpod_api_url)
    try:
        await client.stop_pod(settings.runpod_pod_id)
        log.info("pod_stopped", pod_id=settings.runpod_pod_id)
    except ProviderError as exc:
        log.error("pod_stop_failed", pod_id=settings.runpod_pod_id, error=str(exc))
    finally:
        await client.close()

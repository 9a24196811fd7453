"""Model files: the manifest (``docker/models.yaml``), ``comfy-worker models check | sync``, and the start-up
report a worker puts in its heartbeat metadata.

* ``manifest.py`` — reading and validating the manifest
* ``sync.py``     — check (missing / corrupt / unverified) and sync (download what is missing)
* ``fetch.py``    — one file: hub or URL, resumable streaming download, sha256 verification
* ``lock.py``     — a lease lock file that works on a volume shared by several pods
* ``state.py``    — ``MODELS_DIR/.comfy-worker/``: recorded hashes, partial downloads, locks
* ``cli.py``      — the ``models`` subcommand
"""

from __future__ import annotations

from typing import Any

from comfy_worker.config import Settings
from comfy_worker.errors import ModelsError
from comfy_worker.models_manifest.manifest import HubSource, Manifest, ModelEntry, UrlSource, load_manifest
from comfy_worker.models_manifest.sync import FileStatus, SyncOutcome, check_models, sync_models

__all__ = [
    "FileStatus",
    "HubSource",
    "Manifest",
    "ModelEntry",
    "SyncOutcome",
    "UrlSource",
    "check_models",
    "load_manifest",
    "startup_report",
    "sync_models",
]


def startup_report(settings: Settings) -> dict[str, Any]:
    """Heartbeat metadata about model files: ``models_missing`` / ``models_corrupt`` (``folder/name`` lists) for
    the MODELS_GROUPS of MODELS_MANIFEST, sizes only (no hashing at start-up). Empty without a manifest."""
    if not settings.models_manifest:
        return {}
    models_dir = settings.models_path
    if models_dir is None:
        return {"models_error": "MODELS_MANIFEST is set but neither MODELS_DIR nor COMFY_PATH is"}
    try:
        manifest = load_manifest(settings.models_manifest)
        found = check_models(manifest, models_dir, groups=settings.models_groups, verify="quick")
    except (ModelsError, OSError) as exc:
        return {"models_error": str(exc)}
    return {
        "models_missing": [s.entry.relpath for s in found if s.state == "missing"],
        "models_corrupt": [s.entry.relpath for s in found if s.state == "corrupt"],
    }

"""Output storage: Supabase Storage when SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set, else a local
directory (LOCAL_STORAGE_DIR). See :mod:`comfy_worker.storage.base` for the interface."""

from __future__ import annotations

from pathlib import Path

import httpx

from comfy_worker.config import Settings
from comfy_worker.storage.base import Storage, StoredObject, UploadJournal, guess_content_type, validate_path
from comfy_worker.storage.local import LocalStorage
from comfy_worker.storage.supabase import SupabaseStorage

__all__ = [
    "LocalStorage",
    "Storage",
    "StoredObject",
    "SupabaseStorage",
    "UploadJournal",
    "guess_content_type",
    "open_storage",
    "validate_path",
]


def open_storage(settings: Settings, *, http: httpx.AsyncClient | None = None) -> Storage:
    """The storage backend the settings select (call ``await storage.check()`` at start-up)."""
    if settings.storage_backend == "supabase":
        return SupabaseStorage(
            settings.supabase_url,
            settings.supabase_service_role_key,
            settings.storage_bucket,
            public=settings.storage_public,
            signed_url_ttl_s=settings.signed_url_ttl_s,
            http=http,
        )
    return LocalStorage(Path(settings.local_storage_dir))

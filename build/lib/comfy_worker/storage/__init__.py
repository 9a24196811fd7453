"""Output storage, selected by one setting: ``STORAGE_URL`` = ``s3://`` / ``gs://`` / ``az://`` (an object store
through obstore), ``file:///dir`` or ``supabase://bucket``; without it Supabase Storage when SUPABASE_URL and
SUPABASE_SERVICE_ROLE_KEY are set, else a local directory (LOCAL_STORAGE_DIR). See
:mod:`comfy_worker.storage.base` for the interface."""

from __future__ import annotations

import httpx

from comfy_worker.config import Settings
from comfy_worker.storage.base import Storage, StoredObject, UploadJournal, guess_content_type, validate_path
from comfy_worker.storage.local import LocalStorage
from comfy_worker.storage.objectstore import ObjectStorage
from comfy_worker.storage.supabase import SupabaseStorage

__all__ = [
    "LocalStorage",
    "ObjectStorage",
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
    if settings.storage_backend == "object":
        return ObjectStorage(
            settings.storage_url,
            signed_url_ttl_s=settings.signed_url_ttl_s,
            public_base_url=settings.public_base_url,
            # an upload open longer than any attempt can last was left by a worker that died
            abandon_after_s=max(24 * 3600.0, 2 * settings.task_timeout_s),
        )
    if settings.storage_backend == "supabase":
        return SupabaseStorage(
            settings.supabase_url,
            settings.supabase_service_role_key,
            settings.supabase_bucket,
            public=settings.storage_public,
            signed_url_ttl_s=settings.signed_url_ttl_s,
            http=http,
        )
    return LocalStorage(settings.local_storage_path, base_url=settings.public_base_url or None)

"""Queue stores. :func:`open_store` picks the backend the settings select; drivers are imported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comfy_worker.store.base import TaskStore

if TYPE_CHECKING:
    from comfy_worker.config import Settings

__all__ = ["TaskStore", "open_store"]


def open_store(settings: Settings, *, pool_max: int = 4) -> TaskStore:
    """An unconnected store for ``settings``: Postgres for DATABASE_URL=postgresql://…, Supabase for
    SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY, otherwise the embedded SQLite file."""
    backend = settings.queue_backend
    task_types = list(settings.task_types) or None
    if backend == "postgres":
        from comfy_worker.store.postgres import PostgresStore

        # presence: a worker registered through this store holds its presence lock (inert for other callers)
        return PostgresStore(settings.database_url, pool_max=pool_max, task_types=task_types, presence=True)
    if backend == "supabase":
        from comfy_worker.store.supabase import SupabaseStore

        return SupabaseStore(settings.supabase_url, settings.supabase_service_role_key,
                             poll_interval=settings.poll_interval, task_types=task_types)
    from comfy_worker.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path, poll_interval=settings.poll_interval, task_types=task_types)

-- comfy-worker queue: tables, indexes, row-level security, wake-up notifications.
-- Idempotent: safe to run again (comfy-worker migrate, psql -f, or Supabase's SQL editor).
-- Requires PostgreSQL 15+ (Supabase's current majors).

-- Supabase has these roles; plain Postgres gets them so the same grants apply everywhere.
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;

create table if not exists tasks (
  task_id          text primary key default gen_random_uuid()::text,
  task_type        text not null check (length(task_type) between 1 and 100),
  params           jsonb not null default '{}'::jsonb
                   constraint tasks_params_is_object check (jsonb_typeof(params) = 'object'),
  status           text not null default 'queued'
                   constraint tasks_status_known
                   check (status in ('queued', 'running', 'complete', 'failed', 'cancelled')),
  priority         integer not null default 0,          -- higher runs first
  run_at           timestamptz not null default now(),  -- not claimable before (retries back off here)
  attempts         integer not null default 0 check (attempts >= 0),
  max_attempts     integer not null default 3 check (max_attempts >= 1),
  worker_id        text,                                -- who holds (or last held) it
  lease_token      uuid,                                -- proves the holder; reports must carry it
  lease_expires_at timestamptz,
  depends_on       text[] not null default '{}',        -- task ids that must be complete first
  dedupe_key       text,                                -- unique among queued and running tasks
  progress         jsonb,
  checkpoint       jsonb,                               -- resumable state of multi-step tasks
  result           jsonb,
  output_url       text,
  error            text,
  error_details    jsonb,
  created_at       timestamptz not null default now(),
  started_at       timestamptz,
  completed_at     timestamptz,
  updated_at       timestamptz not null default now()
);

-- The claim query walks this index in claim order, skipping locked rows.
create index if not exists tasks_claim_idx on tasks (priority desc, run_at, created_at) where status = 'queued';
create index if not exists tasks_type_created_idx on tasks (task_type, created_at desc);
-- no index on lease_expires_at: requeue_stale() reads the running tasks (a few per worker) through
-- tasks_worker_running_idx, and without one every heartbeat can be a HOT update and a claim writes one index
-- entry fewer
drop index if exists tasks_running_lease_idx;
create index if not exists tasks_worker_running_idx on tasks (worker_id) where status = 'running';
create index if not exists tasks_depends_on_idx on tasks using gin (depends_on) where cardinality(depends_on) > 0;
-- requeue_stale()'s dependency backstop (every worker, every few seconds) walks only queued tasks that wait on others
create index if not exists tasks_queued_deps_idx on tasks (task_id) where status = 'queued' and cardinality(depends_on) > 0;
create index if not exists tasks_completed_idx on tasks (completed_at desc) where completed_at is not null;
create unique index if not exists tasks_dedupe_active_idx on tasks (dedupe_key)
  where dedupe_key is not null and status in ('queued', 'running');

create table if not exists workers (
  id              text primary key check (length(id) between 1 and 200),
  status          text not null default 'starting'
                  constraint workers_status_known
                  check (status in ('starting', 'idle', 'busy', 'draining', 'stopped', 'lost')),
  host            text,
  pid             integer,
  version         text,
  task_types      text[] not null default '{}',
  metadata        jsonb not null default '{}'::jsonb
                  constraint workers_metadata_is_object check (jsonb_typeof(metadata) = 'object'),
  current_task_id text,
  last_heartbeat  timestamptz,
  tasks_completed integer not null default 0,
  tasks_failed    integer not null default 0,
  started_at      timestamptz,
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now()
);
-- Presence (the asyncpg store): a live worker process holds a session-level advisory lock named by its id
-- (_cw_presence_key) on one dedicated connection. presence_lock says it does; requeue_stale() reads a lock it
-- can take itself as a process that is gone, and stamps presence_lost_at to give a reconnect time.
alter table workers add column if not exists presence_lock boolean not null default false;
alter table workers add column if not exists presence_lost_at timestamptz;
-- no index on workers.status: the row is updated on every claim and completion, and an indexed column would
-- make each of those updates non-HOT on a table of a few dozen rows
drop index if exists workers_status_idx;

-- Only the service role (and the owner) touch the queue; the public API roles see nothing.
alter table tasks enable row level security;
alter table workers enable row level security;
revoke all on tasks, workers from public, anon, authenticated;
grant select, insert, update, delete on tasks, workers to service_role;

-- Wake direct-Postgres workers at once when a task becomes claimable (payload: its task_type).
create or replace function tasks_notify() returns trigger
language plpgsql security invoker set search_path = public, pg_temp
as $$
begin
  perform pg_notify('comfy_worker_tasks', new.task_type);
  return null;
end
$$;

create or replace trigger tasks_notify_insert
  after insert on tasks for each row when (new.status = 'queued')
  execute function tasks_notify();
create or replace trigger tasks_notify_requeue
  after update of status on tasks for each row
  when (new.status = 'queued' and old.status is distinct from 'queued')
  execute function tasks_notify();

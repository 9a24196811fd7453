-- comfy-worker queue, embedded SQLite edition: the same tables, columns and statuses as sql/001_tables.sql.
-- Applied by `comfy-worker migrate` (or `sqlite3 comfy_worker.db < 001_tables.sql`); safe to run again.
--
-- SQLite has no timestamptz, jsonb, uuid or text[]: here
--   * timestamps are ISO-8601 UTC text of one fixed width, 'YYYY-MM-DDTHH:MM:SS.ffffffZ', so that text
--     comparison is time order (the store writes microseconds; SQLite's own clock gives milliseconds, which
--     the defaults pad with 000);
--   * jsonb columns are JSON text, checked with json_valid / json_type;
--   * task_id and lease_token are UUID text; depends_on and task_types are JSON arrays of strings.
-- The claim / lease / retry rules live in comfy_worker/store/_sqlite_ops.py and mirror sql/002_functions.sql.

create table if not exists tasks (
  task_id          text not null primary key
                   default (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
                            || substr(hex(randomblob(2)), 2) || '-'
                            || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
                            || '-' || hex(randomblob(6)))),
  task_type        text not null check (length(task_type) between 1 and 100),
  params           text not null default '{}'
                   constraint tasks_params_is_object
                   check (case when json_valid(params) then json_type(params) = 'object' else 0 end),
  status           text not null default 'queued'
                   constraint tasks_status_known
                   check (status in ('queued', 'running', 'complete', 'failed', 'cancelled')),
  priority         integer not null default 0,          -- higher runs first
  run_at           text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),  -- not claimable before
  attempts         integer not null default 0 check (attempts >= 0),
  max_attempts     integer not null default 3 check (max_attempts >= 1),
  worker_id        text,                                -- who holds (or last held) it
  lease_token      text,                                -- proves the holder; reports must carry it
  lease_expires_at text,
  depends_on       text not null default '[]'           -- task ids that must be complete first
                   constraint tasks_depends_on_is_array
                   check (case when json_valid(depends_on) then json_type(depends_on) = 'array' else 0 end),
  dedupe_key       text,                                -- unique among queued and running tasks
  progress         text check (progress is null or json_valid(progress)),
  checkpoint       text check (checkpoint is null or json_valid(checkpoint)),
  result           text check (result is null or json_valid(result)),
  output_url       text,
  error            text,
  error_details    text check (error_details is null or json_valid(error_details)),
  created_at       text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
  started_at       text,
  completed_at     text,
  updated_at       text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

-- The claim query walks this index in claim order.
create index if not exists tasks_claim_idx on tasks (priority desc, run_at, created_at) where status = 'queued';
-- a preferred type's claim candidates (claim preference, sql/006_claim_affinity.sql) without walking the queue
create index if not exists tasks_claim_type_idx on tasks (task_type, priority desc, run_at, created_at)
  where status = 'queued';
create index if not exists tasks_type_created_idx on tasks (task_type, created_at desc);
create index if not exists tasks_running_lease_idx on tasks (lease_expires_at) where status = 'running';
create index if not exists tasks_worker_running_idx on tasks (worker_id) where status = 'running';
create index if not exists tasks_worker_cancelled_idx on tasks (worker_id)
  where status = 'cancelled' and lease_token is not null;
create index if not exists tasks_has_deps_idx on tasks (status) where depends_on <> '[]';
create index if not exists tasks_completed_idx on tasks (completed_at desc) where completed_at is not null;
create unique index if not exists tasks_dedupe_active_idx on tasks (dedupe_key)
  where dedupe_key is not null and status in ('queued', 'running');

-- A run_at written by hand in another form ('2030-01-01 09:00', '...+02:00') is rewritten to the canonical
-- UTC form so that it compares correctly; one SQLite cannot read fails the insert (NOT NULL).
drop trigger if exists tasks_run_at_canonical_insert;
create trigger tasks_run_at_canonical_insert after insert on tasks
  when new.run_at not glob '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'
begin
  update tasks set run_at = strftime('%Y-%m-%dT%H:%M:%f000Z', new.run_at) where rowid = new.rowid;
end;
drop trigger if exists tasks_run_at_canonical_update;
create trigger tasks_run_at_canonical_update after update of run_at on tasks
  when new.run_at not glob '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'
begin
  update tasks set run_at = strftime('%Y-%m-%dT%H:%M:%f000Z', new.run_at) where rowid = new.rowid;
end;

create table if not exists workers (
  id              text not null primary key check (length(id) between 1 and 200),
  status          text not null default 'starting'
                  constraint workers_status_known
                  check (status in ('starting', 'idle', 'busy', 'draining', 'stopped', 'lost')),
  host            text,
  pid             integer,
  version         text,
  task_types      text not null default '[]'
                  constraint workers_task_types_is_array
                  check (case when json_valid(task_types) then json_type(task_types) = 'array' else 0 end),
  metadata        text not null default '{}'
                  constraint workers_metadata_is_object
                  check (case when json_valid(metadata) then json_type(metadata) = 'object' else 0 end),
  current_task_id text,
  last_heartbeat  text,
  tasks_completed integer not null default 0,
  tasks_failed    integer not null default 0,
  started_at      text,
  created_at      text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
  updated_at      text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
create index if not exists workers_status_idx on workers (status);

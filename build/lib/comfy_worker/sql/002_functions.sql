-- comfy-worker queue: the functions. All claim / lease / retry / recovery rules live here, and only here.
-- Python stores (asyncpg, supabase-py rpc()) call these; the embedded SQLite store mirrors them.
--
-- Errors are raised with our own SQLSTATE codes so callers never parse messages:
--   CW001 lease lost (stale token, task cancelled or finished)   CW002 unknown task
--   CW003 unknown worker                                          CW004 invalid argument
-- Every function is VOLATILE, SECURITY INVOKER, with a fixed search_path; only service_role may execute.
-- jit = off everywhere: these statements touch a few rows, but an estimate inflated by an unknown LIMIT can pass
-- jit_above_cost and make PostgreSQL compile the claim on every call (~30 ms for 0.5 ms of work).
-- plan_cache_mode = force_generic_plan on the hot path (claim, heartbeat, progress, complete, fail, release
-- and their helpers): PL/pgSQL would otherwise keep choosing custom plans and re-plan the claim query (~1 ms)
-- on every call. Only where every statement is an index lookup whatever the parameters; measured in
-- docs/benchmarks.md, and tests/integration/test_queue_plans.py checks the plans on a large table.

-- ---------------------------------------------------------------------------------------------------------
-- internal helpers

create or replace function _cw_check_lease_seconds(p_fn text, p_lease_seconds double precision)
returns void language plpgsql immutable set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
begin
  if p_lease_seconds is null or p_lease_seconds <= 0 or p_lease_seconds > 86400 then
    raise exception using errcode = 'CW004',
      message = format('%s: lease_seconds must be between 0 and 86400 (got %s)', p_fn, coalesce(p_lease_seconds::text, 'null')),
      hint = 'pass the lease length in seconds, e.g. 60';
  end if;
end
$$;

create or replace function _cw_check_object(p_fn text, p_field text, p_value jsonb)
returns void language plpgsql immutable set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
begin
  if p_value is not null and jsonb_typeof(p_value) <> 'object' then
    raise exception using errcode = 'CW004',
      message = format('%s: %s must be a JSON object, got a JSON %s', p_fn, p_field, jsonb_typeof(p_value)),
      hint = format('wrap the value in an object, e.g. {"value": ...}');
  end if;
end
$$;

-- Presence: the advisory lock key of a worker id (64 bits of md5, so two ids never share a lock in practice,
-- and a namespace prefix keeps clear of other applications' advisory locks) ...
create or replace function _cw_presence_key(p_worker_id text)
returns bigint language sql immutable parallel safe set search_path = public, pg_temp
as $$
  select ('x' || left(md5('comfy_worker.presence:' || p_worker_id), 16))::bit(64)::bigint;
$$;

-- ... and how long a lock must be seen free before the worker counts as gone: a live process whose connection
-- dropped (a server restart, a killed backend) re-takes its lock well within this (it reconnects at once).
create or replace function _cw_presence_grace()
returns interval language sql immutable parallel safe set search_path = public, pg_temp
as $$
  select interval '2 seconds';
$$;

-- Lock the task and prove the caller still holds it; raise CW001/CW002 otherwise.
create or replace function _cw_held_task(p_fn text, p_task_id text, p_lease_token uuid)
returns tasks language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
declare
  v tasks;
begin
  select * into v from tasks where task_id = p_task_id for update;
  if not found then
    raise exception using errcode = 'CW002', message = format('%s: no task has id %L', p_fn, p_task_id);
  end if;
  if v.status = 'running' and v.lease_token = p_lease_token then
    return v;
  end if;
  raise exception using errcode = 'CW001',
    message = format('%s: report for task %s rejected: %s', p_fn, p_task_id,
      case
        when v.status = 'cancelled' then 'the task was cancelled'
        when v.status = 'running' then format('its lease is now held by worker %s (ours expired and the task was requeued)', v.worker_id)
        when v.status = 'queued' then 'our lease expired and the task was requeued'
        else format('the task is already %s', v.status)
      end),
    detail = json_build_object('task_id', p_task_id, 'status', v.status, 'worker_id', v.worker_id)::text,
    hint = 'stop working on this task; nothing more is recorded for it by this worker';
end
$$;

drop function if exists _cw_refresh_worker(text);  -- superseded by the 3-argument form below
-- Recompute a worker's busy/idle status and current task after its set of running tasks changed, bumping
-- its completed/failed counters in the same UPDATE (one write of the worker row per report).
create or replace function _cw_refresh_worker(p_worker_id text, p_completed integer default 0, p_failed integer default 0)
returns void language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
begin
  update workers w set
    current_task_id = r.task_id,
    status = case when w.status in ('idle', 'busy', 'lost', 'starting')
                  then case when r.task_id is null then 'idle' else 'busy' end
                  else w.status end,
    tasks_completed = w.tasks_completed + p_completed,
    tasks_failed = w.tasks_failed + p_failed,
    updated_at = now()
  from (select (select t.task_id from tasks t
                where t.worker_id = p_worker_id and t.status = 'running'
                order by t.started_at desc limit 1) as task_id) r
  where w.id = p_worker_id;
end
$$;

-- Queued tasks that can never run because a dependency ended without completing: end them too, with the
-- reason, recursively. A failed dependency fails its dependents; a cancelled one cancels them.
create or replace function _cw_end_dependents(p_task_id text)
returns integer language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v_status text;
  v_count integer;
begin
  select status into v_status from tasks where task_id = p_task_id;
  if v_status not in ('failed', 'cancelled') then
    return 0;
  end if;
  with recursive dep(task_id, cause) as (
    select t.task_id, p_task_id from tasks t
    where t.depends_on @> array[p_task_id] and t.status = 'queued'
    union
    select t.task_id, dep.task_id from tasks t join dep on t.depends_on @> array[dep.task_id]
    where t.status = 'queued'
  )
  update tasks t set
    status = v_status,
    error = format('dependency %s was %s, so this task cannot run', dep.cause, v_status),
    error_details = jsonb_build_object('reason', 'dependency_' || v_status, 'dependency', dep.cause),
    completed_at = now(), updated_at = now()
  from dep where t.task_id = dep.task_id;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

-- ---------------------------------------------------------------------------------------------------------
-- workers

create or replace function register_worker(
  p_worker_id text, p_host text default null, p_pid integer default null, p_version text default null,
  p_task_types text[] default '{}', p_metadata jsonb default '{}'
) returns workers
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v workers;
  v_old workers;
  v_task record;
begin
  if p_worker_id is null or length(p_worker_id) = 0 then
    raise exception using errcode = 'CW004', message = 'register_worker: worker_id must be a non-empty string';
  end if;
  perform _cw_check_object('register_worker', 'metadata', p_metadata);
  -- The same id from the same host is a restart (below: what it held is requeued). From another host while
  -- the registered process is alive (a heartbeat in the last 30 s, or a task under a live lease) it is a
  -- second worker sharing the id: refuse, or each would requeue the other's tasks.
  select * into v_old from workers where id = p_worker_id for update;
  if found and v_old.host is distinct from p_host and v_old.status in ('idle', 'busy', 'draining')
     and (v_old.last_heartbeat > now() - interval '30 seconds'
          or exists (select 1 from tasks t where t.worker_id = p_worker_id and t.status = 'running'
                     and t.lease_expires_at > now())) then
    raise exception using errcode = 'CW005', message = format(
      'register_worker: worker id %L is in use by host %s (pid %s, last heartbeat %s s ago): give every worker its '
      'own WORKER_ID / --worker-id; if that worker is gone, start again once it has been silent for 30 s and '
      'its leases have run out',
      p_worker_id, coalesce(v_old.host, '?'), coalesce(v_old.pid::text, '?'),
      coalesce(round(extract(epoch from now() - v_old.last_heartbeat)::numeric, 1)::text, '?'));
  end if;
  insert into workers as w (id, status, host, pid, version, task_types, metadata, started_at, last_heartbeat)
  values (p_worker_id, 'idle', p_host, p_pid, p_version, coalesce(p_task_types, '{}'),
          coalesce(p_metadata, '{}'), now(), now())
  on conflict (id) do update set
    status = case when w.status = 'draining' then 'draining' else 'idle' end,
    host = excluded.host, pid = excluded.pid, version = excluded.version, task_types = excluded.task_types,
    metadata = w.metadata || excluded.metadata, current_task_id = null,
    started_at = now(), last_heartbeat = now(), updated_at = now(),
    presence_lock = false, presence_lost_at = null  -- the new process takes it (presence_acquire), if it can
  returning * into v;
  -- A worker id re-registering means its previous process is gone: what it held goes back to the queue
  -- now rather than after lease expiry (the attempt counts, as it would have on expiry).
  for v_task in
    select task_id from tasks where worker_id = p_worker_id and status = 'running' order by task_id for update
  loop
    update tasks set
      status = case when attempts < max_attempts then 'queued' else 'failed' end,
      completed_at = case when attempts < max_attempts then null else now() end,
      run_at = now(), worker_id = null, lease_token = null, lease_expires_at = null,
      error = format('worker %s restarted while running this task (attempt %s of %s)', p_worker_id, attempts, max_attempts),
      error_details = jsonb_build_object('reason', 'worker_restarted', 'worker_id', p_worker_id, 'attempt', attempts),
      updated_at = now()
    where task_id = v_task.task_id;
    perform _cw_end_dependents(v_task.task_id);
  end loop;
  return v;
end
$$;

create or replace function deregister_worker(p_worker_id text)
returns workers
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v workers;
begin
  -- Anything still held goes back without spending an attempt (a graceful stop is not the task's fault).
  update tasks set status = 'queued', attempts = greatest(attempts - 1, 0), run_at = now(), worker_id = null,
    lease_token = null, lease_expires_at = null, updated_at = now()
  where worker_id = p_worker_id and status = 'running';
  update workers set status = 'stopped', current_task_id = null, presence_lock = false, presence_lost_at = null,
    updated_at = now()
  where id = p_worker_id returning * into v;
  if not found then
    raise exception using errcode = 'CW003', message = format('deregister_worker: no worker has id %L', p_worker_id);
  end if;
  return v;
end
$$;

-- Presence: called by the asyncpg store on its one dedicated connection per worker, after register_worker and
-- after every reconnect, before it claims. Takes the worker's session-level advisory lock and keeps it until
-- that connection ends: the process exits or is killed (the kernel closes the socket), or its host vanishes
-- (TCP keepalives end the connection server-side). requeue_stale() then finds the lock free. A previous session
-- of the same id that the server has not seen end yet still holds it: wait for it, at most lock_timeout per call
-- (55P03; the caller retries). Returns the backend pid, so the caller can tell a connection pooler in between
-- (whose sessions are not the server's): there a session lock proves nothing.
create or replace function presence_acquire(p_worker_id text)
returns integer
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set lock_timeout = '5s'
as $$
begin
  if not exists (select 1 from workers where id = p_worker_id) then
    raise exception using errcode = 'CW003',
      message = format('presence_acquire: no worker has id %L', p_worker_id), hint = 'call register_worker first';
  end if;
  perform pg_advisory_lock(_cw_presence_key(p_worker_id));
  update workers set presence_lock = true, presence_lost_at = null where id = p_worker_id;
  return pg_backend_pid();
end
$$;

-- Set a worker's status from outside (the orchestrator drains workers this way).
create or replace function set_worker_status(p_worker_id text, p_status text, p_metadata jsonb default null)
returns workers
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v workers;
begin
  perform _cw_check_object('set_worker_status', 'metadata', p_metadata);
  update workers set status = p_status, metadata = metadata || coalesce(p_metadata, '{}'), updated_at = now()
  where id = p_worker_id returning * into v;
  if not found then
    raise exception using errcode = 'CW003', message = format('set_worker_status: no worker has id %L', p_worker_id);
  end if;
  return v;
end
$$;

-- Extend the leases of everything the worker holds, record that it is alive, and tell it what to stop:
-- tasks cancelled by a user, and tasks whose lease it lost (requeued after expiry, or taken by another).
-- p_task_ids: the tasks the worker believes it holds. Returns
--   {"worker_status": "...", "cancelled": [...], "lost": [...]}
-- worker_status 'draining' means: stop claiming, finish what you hold, exit.
create or replace function heartbeat(
  p_worker_id text, p_lease_seconds double precision default 60, p_metadata jsonb default '{}',
  p_task_ids text[] default null
) returns jsonb
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
declare
  v_status text;
  v_cancelled text[];
  v_lost text[];
begin
  perform _cw_check_lease_seconds('heartbeat', p_lease_seconds);
  perform _cw_check_object('heartbeat', 'metadata', p_metadata);
  -- a heartbeat lost in a server crash only delays the next one: skip the WAL flush wait
  perform set_config('synchronous_commit', 'off', true);
  -- Lock order: the worker's tasks (by task_id) before its workers row, as complete/fail/release do (they
  -- lock the task, then refresh the worker). The other order deadlocked a heartbeat against a completion of
  -- the same worker; an unordered multi-row update could deadlock two heartbeats of one id.
  update tasks set lease_expires_at = now() + make_interval(secs => p_lease_seconds), updated_at = now()
  where task_id in (select t.task_id from tasks t where t.worker_id = p_worker_id and t.status = 'running'
                    order by t.task_id for update);
  update workers set last_heartbeat = now(), metadata = metadata || coalesce(p_metadata, '{}'), updated_at = now()
  where id = p_worker_id returning status into v_status;
  if not found then
    raise exception using errcode = 'CW003',
      message = format('heartbeat: no worker has id %L', p_worker_id), hint = 'call register_worker first';
  end if;
  if v_status in ('lost', 'starting', 'stopped') then
    -- it was given up on (or never registered properly) but is alive: it counts again
    update workers set status = 'idle' where id = p_worker_id;
    perform _cw_refresh_worker(p_worker_id);
    select status into v_status from workers where id = p_worker_id;
  end if;
  if p_task_ids is null then
    -- no list given: report cancellations of tasks still attributed to this worker and not yet told
    select coalesce(array_agg(task_id order by task_id), '{}') into v_cancelled
    from tasks where worker_id = p_worker_id and status = 'cancelled' and lease_token is not null;
    update tasks set lease_token = null where worker_id = p_worker_id and status = 'cancelled' and lease_token is not null;
    v_lost := '{}';
  else
    select coalesce(array_agg(t.task_id order by t.task_id) filter (where t.status = 'cancelled'), '{}'),
           coalesce(array_agg(t.task_id order by t.task_id)
                    filter (where t.status <> 'cancelled' and (t.status <> 'running' or t.worker_id is distinct from p_worker_id)), '{}')
      into v_cancelled, v_lost
    from tasks t where t.task_id = any(p_task_ids);
    -- ids the worker holds that no longer exist at all are lost too
    v_lost := v_lost || coalesce((select array_agg(i) from unnest(p_task_ids) i
                                  where not exists (select 1 from tasks t where t.task_id = i)), '{}');
  end if;
  return jsonb_build_object('worker_status', v_status, 'cancelled', to_jsonb(v_cancelled), 'lost', to_jsonb(v_lost));
end
$$;

-- ---------------------------------------------------------------------------------------------------------
-- tasks

-- Insert a task (users may equally INSERT directly). Idempotent: an existing task_id, or a dedupe_key held
-- by a queued or running task, returns that task instead of inserting.
create or replace function enqueue_task(
  p_task_type text, p_params jsonb default '{}', p_task_id text default null, p_priority integer default 0,
  p_max_attempts integer default 3, p_depends_on text[] default '{}', p_dedupe_key text default null,
  p_run_at timestamptz default null
) returns tasks
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v tasks;
  v_missing text[];
begin
  if p_task_type is null or length(p_task_type) = 0 then
    raise exception using errcode = 'CW004', message = 'enqueue_task: task_type must be a non-empty string';
  end if;
  if p_params is null or jsonb_typeof(p_params) <> 'object' then
    raise exception using errcode = 'CW004',
      message = format('enqueue_task: params must be a JSON object, got %s', coalesce('a JSON ' || jsonb_typeof(p_params), 'null')),
      hint = 'send params as {"workflow": {...}, ...}';
  end if;
  if p_max_attempts is null or p_max_attempts < 1 then
    raise exception using errcode = 'CW004', message = format('enqueue_task: max_attempts must be >= 1 (got %s)', p_max_attempts);
  end if;
  select array_agg(d) into v_missing from unnest(coalesce(p_depends_on, '{}')) d
  where not exists (select 1 from tasks t where t.task_id = d);
  if v_missing is not null then
    raise exception using errcode = 'CW002',
      message = format('enqueue_task: depends_on names tasks that do not exist: %s', array_to_string(v_missing, ', '));
  end if;
  insert into tasks (task_id, task_type, params, priority, max_attempts, depends_on, dedupe_key, run_at)
  values (coalesce(p_task_id, gen_random_uuid()::text), p_task_type, p_params, coalesce(p_priority, 0),
          p_max_attempts, coalesce(p_depends_on, '{}'), p_dedupe_key, coalesce(p_run_at, now()))
  on conflict do nothing
  returning * into v;
  if found then
    return v;
  end if;
  select * into v from tasks where task_id = p_task_id;
  if not found then
    select * into v from tasks where dedupe_key = p_dedupe_key and status in ('queued', 'running');
  end if;
  return v;
end
$$;

create or replace function get_task(p_task_id text)
returns tasks
language plpgsql stable security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v tasks;
begin
  select * into v from tasks where task_id = p_task_id;
  if not found then
    raise exception using errcode = 'CW002', message = format('get_task: no task has id %L', p_task_id);
  end if;
  return v;
end
$$;

-- Is any task of these types (null or empty = any) queued and due? What polling stores (Supabase) ask between
-- claims: it stops at the first due row of the claim index instead of summarising the whole queue.
create or replace function work_ready(p_task_types text[] default null)
returns boolean
language sql stable security invoker set search_path = public, pg_temp set jit = off
as $$
  select exists (
    select 1 from tasks t
    where t.status = 'queued' and t.run_at <= now()
      and (p_task_types is null or cardinality(p_task_types) = 0 or t.task_type = any(p_task_types))
  );
$$;

-- Claim up to p_n claimable tasks for a worker: queued, due (run_at), dependencies complete, of one of
-- p_task_types (null or empty = any), highest priority first, then oldest. Concurrent claimers never get the
-- same task (FOR UPDATE SKIP LOCKED). A draining or stopped worker gets nothing.
create or replace function claim_tasks(
  p_worker_id text, p_task_types text[] default null, p_n integer default 1,
  p_lease_seconds double precision default 60
) returns setof tasks
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
declare
  v_status text;
begin
  if p_n is null or p_n < 1 or p_n > 1000 then
    raise exception using errcode = 'CW004', message = format('claim_tasks: n must be between 1 and 1000 (got %s)', p_n);
  end if;
  perform _cw_check_lease_seconds('claim_tasks', p_lease_seconds);
  select status into v_status from workers where id = p_worker_id;
  if not found then
    raise exception using errcode = 'CW003',
      message = format('claim_tasks: no worker has id %L', p_worker_id), hint = 'call register_worker first';
  end if;
  if v_status in ('draining', 'stopped') then
    return;
  end if;
  return query
  with picked as (
    select t.task_id
    from tasks t
    where t.status = 'queued' and t.run_at <= now()
      and (p_task_types is null or cardinality(p_task_types) = 0 or t.task_type = any(p_task_types))
      and (cardinality(t.depends_on) = 0 or not exists (
            select 1 from unnest(t.depends_on) d(id) left join tasks dt on dt.task_id = d.id
            where dt.status is distinct from 'complete'))
    order by t.priority desc, t.run_at, t.created_at
    limit p_n
    for update of t skip locked
  ), claimed as (
    update tasks t set
      status = 'running', worker_id = p_worker_id, lease_token = gen_random_uuid(),
      lease_expires_at = now() + make_interval(secs => p_lease_seconds), attempts = t.attempts + 1,
      started_at = now(), completed_at = null, updated_at = now()
    -- = any(array(...)): primary-key lookups whatever the planner guesses for LIMIT p_n (a join here let a
    -- generic plan hash-join a sequential scan of the whole table, 75 ms per claim at 100k queued tasks)
    where t.task_id = any(array(select picked.task_id from picked))
    returning t.*
  ), w as (
    update workers wk set status = 'busy', current_task_id = c.task_id, last_heartbeat = now(), updated_at = now()
    from (select task_id from claimed limit 1) c
    where wk.id = p_worker_id
  )
  select * from claimed order by claimed.priority desc, claimed.run_at, claimed.created_at;  -- claim order
end
$$;

create or replace function update_progress(
  p_task_id text, p_lease_token uuid, p_progress jsonb, p_checkpoint jsonb default null
) returns void
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
begin
  perform _cw_check_object('update_progress', 'progress', p_progress);
  perform _cw_check_object('update_progress', 'checkpoint', p_checkpoint);
  perform _cw_held_task('update_progress', p_task_id, p_lease_token);
  if p_checkpoint is null then
    -- progress lost in a server crash is harmless; checkpoints (resume points) stay durable
    perform set_config('synchronous_commit', 'off', true);
  end if;
  update tasks set progress = coalesce(p_progress, progress), checkpoint = coalesce(p_checkpoint, checkpoint),
    updated_at = now()
  where task_id = p_task_id;
end
$$;

create or replace function complete_task(
  p_task_id text, p_lease_token uuid, p_result jsonb default '{}', p_output_url text default null
) returns tasks
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
declare
  v tasks;
begin
  perform _cw_check_object('complete_task', 'result', p_result);
  -- the happy path is one guarded UPDATE; only a miss pays for finding out why
  update tasks set status = 'complete', result = coalesce(p_result, '{}'), output_url = p_output_url,
    error = null, error_details = null, lease_token = null, lease_expires_at = null,
    completed_at = now(), updated_at = now()
  where task_id = p_task_id and status = 'running' and lease_token = p_lease_token
  returning * into v;
  if not found then
    perform _cw_held_task('complete_task', p_task_id, p_lease_token);  -- raises CW001/CW002
  end if;
  perform _cw_refresh_worker(v.worker_id, 1, 0);
  return v;
end
$$;

-- Record a failed attempt. Retryable and attempts left: back to the queue after capped exponential backoff
-- with jitter (delay = min(cap, base * 2^(attempts-1)) * uniform(0.5, 1)). Otherwise: failed, for good.
create or replace function fail_task(
  p_task_id text, p_lease_token uuid, p_error text, p_error_details jsonb default null,
  p_retryable boolean default true, p_backoff_base_s double precision default 5,
  p_backoff_cap_s double precision default 300
) returns tasks
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
declare
  v tasks;
  v_worker text;
  v_delay double precision;
begin
  perform _cw_check_object('fail_task', 'error_details', p_error_details);
  if p_error is null or length(p_error) = 0 then
    raise exception using errcode = 'CW004', message = 'fail_task: error must say what went wrong (got an empty message)';
  end if;
  if p_backoff_base_s < 0 or p_backoff_cap_s < 0 then
    raise exception using errcode = 'CW004', message = 'fail_task: backoff values must not be negative';
  end if;
  v := _cw_held_task('fail_task', p_task_id, p_lease_token);
  v_worker := v.worker_id;
  if coalesce(p_retryable, true) and v.attempts < v.max_attempts then
    v_delay := least(p_backoff_cap_s, p_backoff_base_s * power(2, greatest(v.attempts - 1, 0))) * (0.5 + random() / 2);
    update tasks set status = 'queued', run_at = now() + make_interval(secs => v_delay),
      error = p_error, error_details = coalesce(p_error_details, '{}') || jsonb_build_object(
        'attempt', v.attempts, 'retryable', true, 'retry_in_s', round(v_delay::numeric, 3)),
      worker_id = null, lease_token = null, lease_expires_at = null, updated_at = now()
    where task_id = p_task_id returning * into v;
  else
    update tasks set status = 'failed', error = p_error,
      error_details = coalesce(p_error_details, '{}') || jsonb_build_object(
        'attempt', v.attempts, 'retryable', coalesce(p_retryable, true),
        'gave_up', case when coalesce(p_retryable, true) then 'max_attempts reached' else 'permanent error' end),
      lease_token = null, lease_expires_at = null, completed_at = now(), updated_at = now()
    where task_id = p_task_id returning * into v;
    perform _cw_end_dependents(p_task_id);
  end if;
  perform _cw_refresh_worker(v_worker, 0, 1);
  return v;
end
$$;

-- Hand a held task back without spending an attempt (graceful shutdown, or a worker that cannot take it).
create or replace function release_task(p_task_id text, p_lease_token uuid)
returns tasks
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
declare
  v tasks;
  v_worker text;
begin
  v := _cw_held_task('release_task', p_task_id, p_lease_token);
  v_worker := v.worker_id;
  update tasks set status = 'queued', attempts = greatest(attempts - 1, 0), run_at = now(), worker_id = null,
    lease_token = null, lease_expires_at = null, updated_at = now()
  where task_id = p_task_id returning * into v;
  perform _cw_refresh_worker(v_worker);
  return v;
end
$$;

-- Cancel a queued or running task. A running task keeps its worker_id and lease token until that worker's
-- next heartbeat tells it to stop; any report it makes afterwards is rejected. Dependents are cancelled too.
create or replace function cancel_task(p_task_id text, p_reason text default null)
returns tasks
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v tasks;
begin
  select * into v from tasks where task_id = p_task_id for update;
  if not found then
    raise exception using errcode = 'CW002', message = format('cancel_task: no task has id %L', p_task_id);
  end if;
  if v.status in ('complete', 'failed') then
    raise exception using errcode = 'CW004',
      message = format('cancel_task: task %s is already %s; there is nothing to cancel', p_task_id, v.status);
  end if;
  if v.status = 'cancelled' then
    return v;
  end if;
  update tasks set status = 'cancelled', error = coalesce(p_reason, 'cancelled by request'),
    error_details = jsonb_build_object('reason', 'cancelled', 'was', v.status),
    lease_expires_at = null, completed_at = now(), updated_at = now()
  where task_id = p_task_id returning * into v;
  perform _cw_end_dependents(p_task_id);
  if v.worker_id is not null then
    perform _cw_refresh_worker(v.worker_id);
  end if;
  return v;
end
$$;

-- requeue_stale's recovery of one running task whose worker stopped (p_reason: lease_expired, worker_gone;
-- p_what: why, in words): back to the queue at once (the attempt is spent), or failed with its dependents when
-- no attempts are left. True when it was requeued.
create or replace function _cw_take_back(
  p_task_id text, p_worker_id text, p_attempts integer, p_max_attempts integer, p_reason text, p_what text
) returns boolean
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
begin
  if p_attempts < p_max_attempts then
    update tasks set status = 'queued', run_at = now(), worker_id = null, lease_token = null,
      lease_expires_at = null,
      error = format('%s (attempt %s of %s); requeued', p_what, p_attempts, p_max_attempts),
      error_details = jsonb_build_object('reason', p_reason, 'worker_id', p_worker_id, 'attempt', p_attempts),
      updated_at = now()
    where task_id = p_task_id;
    return true;
  end if;
  update tasks set status = 'failed', lease_token = null, lease_expires_at = null, completed_at = now(),
    error = format('%s on the last attempt (%s of %s)', p_what, p_attempts, p_max_attempts),
    error_details = jsonb_build_object('reason', p_reason, 'worker_id', p_worker_id, 'attempt', p_attempts,
                                       'gave_up', 'max_attempts reached'),
    updated_at = now()
  where task_id = p_task_id;
  perform _cw_end_dependents(p_task_id);
  return false;
end
$$;

-- Recovery, run often by every worker and by the orchestrator (cheap when there is nothing to do):
--  * running tasks whose lease expired go back to the queue at once (attempt spent), or fail when no
--    attempts are left;
--  * so do the running tasks of a worker that holds a presence lock (presence_acquire) once that lock has
--    been seen free twice, _cw_presence_grace() apart: its process is gone (a slow or stopped process keeps
--    its connection, so its lock, and is recovered by lease expiry as before);
--  * queued tasks whose dependency failed or was cancelled end with the reason;
--  * workers silent for longer than p_worker_timeout_s are marked lost.
-- Returns {"requeued": [...], "failed": [...], "lost_workers": [...], "gone_workers": [...] (whose tasks went back
-- because their presence lock was free), "presence_pending": [...] (free, within the grace), "recheck_in_s":
-- seconds until the first pending worker's grace ends, or null}.
create or replace function requeue_stale(p_worker_timeout_s double precision default 90)
returns jsonb
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v_requeued text[] := '{}';
  v_failed text[] := '{}';
  v_lost text[];
  v_gone text[] := '{}';
  v_pending text[] := '{}';
  v_first_lost timestamptz;
  v record;
  v_w record;
  v_dep record;
begin
  perform _cw_check_lease_seconds('requeue_stale', p_worker_timeout_s);
  for v in
    select t.task_id, t.worker_id, t.attempts, t.max_attempts from tasks t
    where t.status = 'running' and t.lease_expires_at < now()
    order by t.task_id
    for update skip locked
  loop
    if _cw_take_back(v.task_id, v.worker_id, v.attempts, v.max_attempts, 'lease_expired',
                     format('lease expired: worker %s stopped reporting', v.worker_id)) then
      v_requeued := v_requeued || v.task_id;
    else
      v_failed := v_failed || v.task_id;
    end if;
    perform _cw_refresh_worker(v.worker_id);
  end loop;
  -- Presence. Nothing here waits on a lock (skip locked, try-lock), so it cannot deadlock with heartbeats and
  -- reports. The try-lock is transaction-scoped: it ends with this call, and a reconnecting worker's
  -- presence_acquire queues behind it, then clears the stamp.
  for v_w in
    select w.id, w.presence_lost_at from workers w
    where w.presence_lock and exists (select 1 from tasks t where t.worker_id = w.id and t.status = 'running')
    order by w.id
    for update of w skip locked
  loop
    if not pg_try_advisory_xact_lock(_cw_presence_key(v_w.id)) then
      if v_w.presence_lost_at is not null then  -- back within the grace
        update workers set presence_lost_at = null where id = v_w.id;
      end if;
    elsif v_w.presence_lost_at is null
          -- a sighting from before a server restart, or too long ago to vouch for the time since, is no sighting
          or v_w.presence_lost_at < greatest(pg_postmaster_start_time(), now() - interval '60 seconds') then
      update workers set presence_lost_at = now() where id = v_w.id;
      v_pending := v_pending || v_w.id;
      v_first_lost := least(v_first_lost, now());
    elsif v_w.presence_lost_at > now() - _cw_presence_grace() then
      v_pending := v_pending || v_w.id;
      v_first_lost := least(v_first_lost, v_w.presence_lost_at);
    else
      for v in
        select t.task_id, t.attempts, t.max_attempts from tasks t
        where t.worker_id = v_w.id and t.status = 'running'
        order by t.task_id
        for update skip locked
      loop
        if _cw_take_back(v.task_id, v_w.id, v.attempts, v.max_attempts, 'worker_gone',
                         format('worker %s is gone: its database session ended', v_w.id)) then
          v_requeued := v_requeued || v.task_id;
        else
          v_failed := v_failed || v.task_id;
        end if;
      end loop;
      -- not marked lost here: that stays the silence rule below (the orchestrator terminates the pods of lost
      -- workers, and a process that is alive after all heartbeats on and claims again)
      perform _cw_refresh_worker(v_w.id);
      v_gone := v_gone || v_w.id;
    end if;
  end loop;
  -- backstop for rows inserted directly whose dependency had already ended badly
  for v_dep in
    -- (tasks_queued_deps_idx, then one primary-key lookup per dependency: a join here hash-joined two
    -- sequential scans of the whole table, 40 ms at 200k tasks)
    select distinct d.id from tasks t cross join unnest(t.depends_on) d(id)
    where t.status = 'queued' and cardinality(t.depends_on) > 0
      and (select dt.status from tasks dt where dt.task_id = d.id) in ('failed', 'cancelled')
  loop
    perform _cw_end_dependents(v_dep.id);
  end loop;
  with lost as (
    update workers set status = 'lost', current_task_id = null, updated_at = now()
    where status in ('idle', 'busy', 'draining')
      and last_heartbeat < now() - make_interval(secs => p_worker_timeout_s)
    returning id
  )
  select coalesce(array_agg(id order by id), '{}') into v_lost from lost;
  return jsonb_build_object('requeued', to_jsonb(v_requeued), 'failed', to_jsonb(v_failed),
                            'lost_workers', to_jsonb(v_lost), 'gone_workers', to_jsonb(v_gone),
                            'presence_pending', to_jsonb(v_pending),
                            'recheck_in_s', case when v_first_lost is not null then round(greatest(0.05,
                              extract(epoch from v_first_lost + _cw_presence_grace() - now()))::numeric, 3) end);
end
$$;

-- ---------------------------------------------------------------------------------------------------------
-- privileges: service_role only (Supabase grants new functions to anon/authenticated by default)

-- Every overload of the named public functions: executable by service_role only. 004 uses it too.
create or replace function _cw_service_role_only(p_functions text[])
returns void
language plpgsql volatile security invoker set search_path = public, pg_temp
as $$
declare
  f record;
begin
  for f in
    select p.oid::regprocedure as sig from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and p.proname = any(p_functions)
  loop
    execute format('revoke all on function %s from public, anon, authenticated', f.sig);
    execute format('grant execute on function %s to service_role', f.sig);
  end loop;
end
$$;

select _cw_service_role_only(array[
  '_cw_service_role_only', '_cw_check_lease_seconds', '_cw_check_object', '_cw_held_task', '_cw_refresh_worker',
  '_cw_end_dependents', 'register_worker', 'deregister_worker', 'set_worker_status', 'heartbeat', 'enqueue_task',
  'get_task', 'claim_tasks', 'update_progress', 'complete_task', 'fail_task', 'release_task', 'cancel_task',
  'requeue_stale', 'tasks_notify', 'work_ready', '_cw_presence_key', '_cw_presence_grace', 'presence_acquire', '_cw_take_back']);

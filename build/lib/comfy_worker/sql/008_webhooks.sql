-- Completion webhooks: a transactional outbox (README "Webhooks").
--
-- Every path that ends a task (complete_task, fail_task's last attempt, cancel_task, requeue_stale's and
-- register_worker's take-backs with no attempts left, dependents ended by _cw_end_dependents, a direct UPDATE)
-- changes tasks.status; a trigger on that change writes the event row in the same transaction. A worker killed
-- a millisecond after its completion commits has its event in the table, and any live worker delivers it:
-- deliveries are claimed with FOR UPDATE SKIP LOCKED under a lease, like tasks.
--
-- Where an event goes: the task's callback_url (settable in the INSERT, like priority), else the fleet's
-- WEBHOOK_URL (workers that have one say so in webhook_config, so events are only written when somebody
-- can deliver them). Idempotent: safe to run again.

alter table tasks add column if not exists callback_url text;

-- enqueue_task gains p_callback_url (the 002 form is replaced: two forms would make calls by name ambiguous)
drop function if exists enqueue_task(text, jsonb, text, integer, integer, text[], text, timestamptz);
create or replace function enqueue_task(
  p_task_type text, p_params jsonb default '{}', p_task_id text default null, p_priority integer default 0,
  p_max_attempts integer default 3, p_depends_on text[] default '{}', p_dedupe_key text default null,
  p_run_at timestamptz default null, p_callback_url text default null
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
  insert into tasks (task_id, task_type, params, priority, max_attempts, depends_on, dedupe_key, run_at, callback_url)
  values (coalesce(p_task_id, gen_random_uuid()::text), p_task_type, p_params, coalesce(p_priority, 0),
          p_max_attempts, coalesce(p_depends_on, '{}'), p_dedupe_key, coalesce(p_run_at, now()), p_callback_url)
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

-- One row: what the fleet delivers. Written by workers that have WEBHOOK_URL (webhook_configure), read by the
-- trigger. No row: only tasks with a callback_url get events, of the default kinds.
create table if not exists webhook_config (
  id          integer primary key default 1 check (id = 1),
  default_url boolean not null default false,  -- some worker has a WEBHOOK_URL: events without callback_url too
  events      text[] not null default '{task.completed,task.failed,task.cancelled}',
  updated_at  timestamptz not null default now()
);

create table if not exists webhook_events (
  id               bigint generated always as identity primary key,  -- order of events (per task too)
  webhook_id       text not null unique default ('msg_' || replace(gen_random_uuid()::text, '-', '')),
  task_id          text not null,
  event_type       text not null check (event_type in ('task.completed', 'task.failed', 'task.cancelled', 'task.progress')),
  payload          jsonb not null,                   -- the body's "data", as the task was when it happened
  url              text,                             -- the task's callback_url then; null: the fleet's WEBHOOK_URL
  state            text not null default 'pending'
                   check (state in ('pending', 'delivering', 'delivered', 'failed')),
  attempts         integer not null default 0,
  next_try_at      timestamptz not null default now(),
  retry_until      timestamptz,                      -- a failed attempt after this gives up (set at the first)
  claimed_by       text,
  lease_token      uuid,
  lease_expires_at timestamptz,
  last_status      integer,                          -- the receiver's last HTTP status (null: no answer)
  last_error       text,                             -- why the last attempt failed, with a body excerpt
  created_at       timestamptz not null default now(),
  delivered_at     timestamptz,
  updated_at       timestamptz not null default now()
);
create index if not exists webhook_events_due_idx on webhook_events (next_try_at, id)
  where state in ('pending', 'delivering');
create index if not exists webhook_events_task_idx on webhook_events (task_id, id);

alter table webhook_config enable row level security;
alter table webhook_events enable row level security;
revoke all on webhook_config, webhook_events from public, anon, authenticated;
grant select, insert, update, delete on webhook_config, webhook_events to service_role;

-- The body's data for a task row.
create or replace function _cw_webhook_data(t tasks)
returns jsonb language sql stable set search_path = public, pg_temp
as $$
  select jsonb_build_object(
    'task_id', t.task_id, 'task_type', t.task_type, 'status', t.status, 'attempts', t.attempts,
    'max_attempts', t.max_attempts, 'worker_id', t.worker_id, 'output_url', t.output_url,
    'result', t.result, 'progress', t.progress, 'error', t.error, 'error_details', t.error_details,
    'created_at', t.created_at, 'started_at', t.started_at, 'completed_at', t.completed_at);
$$;

-- The outbox write, in the transaction that changed the task.
create or replace function _cw_webhook_event() returns trigger
language plpgsql security invoker set search_path = public, pg_temp
as $$
declare
  v_event text;
  v_cfg webhook_config;
begin
  if tg_op = 'UPDATE' and new.status is not distinct from old.status then
    if new.status <> 'running' or new.progress is not distinct from old.progress then
      return null;
    end if;
    v_event := 'task.progress';
  else
    v_event := case new.status when 'complete' then 'task.completed' when 'failed' then 'task.failed'
                               when 'cancelled' then 'task.cancelled' end;
  end if;
  if v_event is null then
    return null;
  end if;
  select * into v_cfg from webhook_config where id = 1;
  if new.callback_url is null and not coalesce(v_cfg.default_url, false) then
    return null;
  end if;
  if not v_event = any(coalesce(v_cfg.events, '{task.completed,task.failed,task.cancelled}')) then
    return null;
  end if;
  insert into webhook_events (task_id, event_type, payload, url)
  values (new.task_id, v_event, _cw_webhook_data(new), new.callback_url);
  return null;
end
$$;

create or replace trigger tasks_webhook_end
  after update of status on tasks for each row
  when (new.status in ('complete', 'failed', 'cancelled') and old.status is distinct from new.status)
  execute function _cw_webhook_event();
-- a task inserted already ended (an import, a test) has no transition to report
create or replace trigger tasks_webhook_progress
  after update of progress on tasks for each row
  when (new.status = 'running' and new.progress is distinct from old.progress)
  execute function _cw_webhook_event();

-- A worker with WEBHOOK_URL announces it (and WEBHOOK_EVENTS) at start.
create or replace function webhook_configure(p_default_url boolean, p_events text[])
returns webhook_config
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v webhook_config;
  v_bad text;
begin
  select e into v_bad from unnest(p_events) e
  where e not in ('task.completed', 'task.failed', 'task.cancelled', 'task.progress') limit 1;
  if v_bad is not null then
    raise exception using errcode = 'CW004', message = format(
      'webhook_configure: unknown event %L (known: task.completed, task.failed, task.cancelled, task.progress)', v_bad);
  end if;
  insert into webhook_config as c (id, default_url, events, updated_at)
  values (1, coalesce(p_default_url, false), coalesce(p_events, '{task.completed,task.failed,task.cancelled}'), now())
  on conflict (id) do update set default_url = excluded.default_url, events = excluded.events, updated_at = now()
  where c.default_url is distinct from excluded.default_url or c.events is distinct from excluded.events
  returning * into v;
  return v;
end
$$;

-- Claim up to p_n due deliveries: pending ones whose time has come, and ones whose deliverer's lease ran out
-- (it died mid-POST). Per task, only its oldest undelivered event is claimable, so a task's events arrive in
-- order. p_default_url: whether this worker has a WEBHOOK_URL (else it takes only events with their own url).
create or replace function claim_webhook_events(
  p_worker_id text, p_n integer default 4, p_lease_seconds double precision default 60,
  p_default_url boolean default true
) returns setof webhook_events
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
begin
  perform _cw_check_lease_seconds('claim_webhook_events', p_lease_seconds);
  return query
  with c as (
    select e.id from webhook_events e
    where e.state in ('pending', 'delivering') and e.next_try_at <= now()
      and (e.state = 'pending' or e.lease_expires_at < now())
      and (e.url is not null or p_default_url)
      and not exists (select 1 from webhook_events p
                      where p.task_id = e.task_id and p.id < e.id and p.state in ('pending', 'delivering'))
    order by e.next_try_at, e.id
    limit greatest(p_n, 0)
    for update skip locked
  )
  update webhook_events e set state = 'delivering', attempts = e.attempts + 1, claimed_by = p_worker_id,
    lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    next_try_at = now() + make_interval(secs => p_lease_seconds),  -- orders the lease's expiry in the index
    updated_at = now()
  from c where e.id = c.id
  returning e.*;
end
$$;

-- Record one delivery attempt. p_outcome: 'delivered' (2xx), 'failed' (give up now: 410, a refused URL) or
-- 'retry' (other 4xx/5xx, timeouts, connection errors): pending again after capped exponential backoff with
-- jitter, delay = min(cap, base * 2^(attempts-1)) * uniform(0.5, 1), until p_retry_for_s after the first
-- attempt; a failure after that marks it failed. A stale lease token: CW001 (another worker took it over).
create or replace function report_webhook_event(
  p_id bigint, p_lease_token uuid, p_outcome text, p_status integer default null, p_error text default null,
  p_backoff_base_s double precision default 5, p_backoff_cap_s double precision default 3600,
  p_retry_for_s double precision default 86400
) returns webhook_events
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v webhook_events;
  v_until timestamptz;
  v_delay double precision;
begin
  if p_outcome not in ('delivered', 'retry', 'failed') then
    raise exception using errcode = 'CW004',
      message = format('report_webhook_event: outcome must be delivered, retry or failed (got %L)', p_outcome);
  end if;
  select * into v from webhook_events where id = p_id for update;
  if not found then
    raise exception using errcode = 'CW002', message = format('report_webhook_event: no webhook event has id %s', p_id);
  end if;
  if v.state <> 'delivering' or v.lease_token is distinct from p_lease_token then
    raise exception using errcode = 'CW001', message = format(
      'report_webhook_event: report for webhook event %s rejected: it is %s%s', p_id, v.state,
      case when v.state = 'delivering' then format(', now held by worker %s', v.claimed_by) else '' end);
  end if;
  v_until := coalesce(v.retry_until, now() + make_interval(secs => p_retry_for_s));
  if p_outcome = 'retry' and now() < v_until then
    v_delay := least(p_backoff_cap_s, p_backoff_base_s * power(2, greatest(v.attempts - 1, 0))) * (0.5 + random() / 2);
    update webhook_events set state = 'pending', next_try_at = now() + make_interval(secs => v_delay),
      retry_until = v_until, lease_token = null, lease_expires_at = null, last_status = p_status,
      last_error = left(p_error, 1000), updated_at = now()
    where id = p_id returning * into v;
  else
    update webhook_events set state = case when p_outcome = 'delivered' then 'delivered' else 'failed' end,
      retry_until = v_until, lease_token = null, lease_expires_at = null, last_status = p_status,
      last_error = case when p_outcome = 'delivered' then null
                        when p_outcome = 'retry' then left(format('gave up after %s attempts: %s', v.attempts, p_error), 1000)
                        else left(p_error, 1000) end,
      delivered_at = case when p_outcome = 'delivered' then now() end, updated_at = now()
    where id = p_id returning * into v;
  end if;
  return v;
end
$$;

-- Send a task's events again (comfy-worker webhooks replay): every event of the task back to pending, due now,
-- with a fresh retry window and the same webhook-id (the receiver's idempotency key). A task without events
-- (it ended before webhooks were set up) gets one for how it ended. Returns how many will be sent.
create or replace function replay_webhook_events(p_task_id text)
returns integer
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off
as $$
declare
  v tasks;
  v_count integer;
begin
  select * into v from tasks where task_id = p_task_id;
  if not found then
    raise exception using errcode = 'CW002', message = format('replay_webhook_events: no task has id %L', p_task_id);
  end if;
  update webhook_events set state = 'pending', next_try_at = now(), retry_until = null, lease_token = null,
    lease_expires_at = null, delivered_at = null, updated_at = now()
  where task_id = p_task_id and state <> 'delivering';
  get diagnostics v_count = row_count;
  if v_count = 0 and not exists (select 1 from webhook_events where task_id = p_task_id) then
    if v.status not in ('complete', 'failed', 'cancelled') then
      raise exception using errcode = 'CW004', message = format(
        'replay_webhook_events: task %s is %s: it has no end to report yet', p_task_id, v.status);
    end if;
    insert into webhook_events (task_id, event_type, payload, url)
    values (p_task_id, case v.status when 'complete' then 'task.completed' when 'failed' then 'task.failed'
                                     else 'task.cancelled' end,
            _cw_webhook_data(v), v.callback_url);
    v_count := 1;
  end if;
  return v_count;
end
$$;

-- What the outbox holds, per event (newest first): for `select * from webhook_deliveries where task_id = …`.
-- The url without its query string (signed callback URLs carry tokens there).
drop view if exists webhook_deliveries cascade;  -- (re)created with list_webhook_deliveries below
create view webhook_deliveries with (security_invoker = true) as
select e.task_id, e.event_type as event, e.webhook_id, e.state, e.attempts,
       case when e.state = 'pending' then e.next_try_at end as next_try,
       e.last_status, e.last_error,
       coalesce(regexp_replace(e.url, '[?#].*$', ''), '(WEBHOOK_URL)') as url,
       e.claimed_by, e.created_at, e.delivered_at
from webhook_events e
order by e.id desc;

revoke all on webhook_deliveries from public, anon, authenticated;
grant select on webhook_deliveries to service_role;

-- The view's rows for one task (or all), for `comfy-worker webhooks list` on every store (Supabase: via rpc).
create or replace function list_webhook_deliveries(p_task_id text default null, p_limit integer default 50)
returns setof webhook_deliveries
language sql stable security invoker set search_path = public, pg_temp
as $$
  select * from webhook_deliveries where p_task_id is null or task_id = p_task_id limit greatest(p_limit, 0);
$$;

select _cw_service_role_only(array[
  'enqueue_task', '_cw_webhook_data', '_cw_webhook_event', 'webhook_configure', 'claim_webhook_events', 'report_webhook_event',
  'replay_webhook_events', 'list_webhook_deliveries']);

-- Webhooks, after review (008 stays as shipped: a database that has it applies only this file). Idempotent.
--
-- 1. Payload timestamps are RFC 3339 UTC with microseconds and a 'Z' ("2026-12-07T02:56:14.123456Z"), the
--    form the SQLite store writes: 008's jsonb followed the session's TimeZone ("+01:00") and dropped trailing
--    zeros of the fraction (".12", or none), so the same event read differently on the two stores.
-- 2. webhook_configure(p_default_url, null) keeps the fleet's events: a worker without WEBHOOK_URL and without
--    WEBHOOK_EVENTS now announces its missing WEBHOOK_URL (so clearing WEBHOOK_URL stops default deliveries for
--    new events) without resetting the events that the others chose.
-- 3. replay_webhook_events starts each delivery afresh: attempts 0, no last status or error, a new retry window
--    (008 kept the attempts, so a replayed delivery could be out of retries at its first failure).
-- 4. The webhook_deliveries view shows the url without credentials (user:password@), query and fragment, as
--    the SQLite view and the worker's logs do (008 kept the userinfo).
-- 5. claim_webhook_events without 008's redundant lease test: a delivering row's next_try_at is its lease's
--    expiry (set together by the claim, changed by nothing else), so "due" already means "lease ran out".

create or replace function _cw_rfc3339(p_at timestamptz)
returns text language sql stable set search_path = public, pg_temp
as $$
  select to_char(p_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
$$;

create or replace function _cw_webhook_data(t tasks)
returns jsonb language sql stable set search_path = public, pg_temp
as $$
  select jsonb_build_object(
    'task_id', t.task_id, 'task_type', t.task_type, 'status', t.status, 'attempts', t.attempts,
    'max_attempts', t.max_attempts, 'worker_id', t.worker_id, 'output_url', t.output_url,
    'result', t.result, 'progress', t.progress, 'error', t.error, 'error_details', t.error_details,
    'created_at', _cw_rfc3339(t.created_at), 'started_at', _cw_rfc3339(t.started_at),
    'completed_at', _cw_rfc3339(t.completed_at));
$$;

-- A worker announces at start whether it has a WEBHOOK_URL, and its WEBHOOK_EVENTS (null: keep the fleet's).
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
  on conflict (id) do update set default_url = excluded.default_url,
    events = coalesce(p_events, c.events), updated_at = now()
  where c.default_url is distinct from excluded.default_url or c.events is distinct from coalesce(p_events, c.events)
  returning * into v;
  return v;
end
$$;

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
    -- due: pending and its time has come, or delivering and its lease ran out (next_try_at = lease_expires_at)
    where e.state in ('pending', 'delivering') and e.next_try_at <= now()
      and (e.url is not null or p_default_url)
      and not exists (select 1 from webhook_events p
                      where p.task_id = e.task_id and p.id < e.id and p.state in ('pending', 'delivering'))
    order by e.next_try_at, e.id
    limit greatest(p_n, 0)
    for update skip locked
  )
  update webhook_events e set state = 'delivering', attempts = e.attempts + 1, claimed_by = p_worker_id,
    lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    next_try_at = now() + make_interval(secs => p_lease_seconds),  -- the lease's expiry: due again then
    updated_at = now()
  from c where e.id = c.id
  returning e.*;
end
$$;

-- Send a task's events again (comfy-worker webhooks replay): every event of the task not being delivered right
-- now goes back to pending, due now, as a new delivery (attempts 0, no last status or error, a fresh retry
-- window) with the same webhook-id (the receiver's idempotency key) and body. A task without events (it ended
-- before webhooks were set up) gets one for how it ended. Returns how many will be sent.
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
  update webhook_events set state = 'pending', attempts = 0, next_try_at = now(), retry_until = null,
    claimed_by = null, lease_token = null, lease_expires_at = null, last_status = null, last_error = null,
    delivered_at = null, updated_at = now()
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

-- What the outbox holds, per event (newest first). The url as logs show it (comfy_worker.urlpolicy.display_url):
-- scheme://host[:port]/path, without user:password@, query and fragment (signed callback URLs carry tokens).
drop view if exists webhook_deliveries cascade;  -- (re)created with list_webhook_deliveries below
create view webhook_deliveries with (security_invoker = true) as
select e.task_id, e.event_type as event, e.webhook_id, e.state, e.attempts,
       case when e.state = 'pending' then e.next_try_at end as next_try,
       e.last_status, e.last_error,
       coalesce(regexp_replace(regexp_replace(e.url, '[?#].*$', ''), '^([^:/?#]+://)[^/]*@', '\1'),
                '(WEBHOOK_URL)') as url,
       e.claimed_by, e.created_at, e.delivered_at
from webhook_events e
order by e.id desc;

revoke all on webhook_deliveries from public, anon, authenticated;
grant select on webhook_deliveries to service_role;

create or replace function list_webhook_deliveries(p_task_id text default null, p_limit integer default 50)
returns setof webhook_deliveries
language sql stable security invoker set search_path = public, pg_temp
as $$
  select * from webhook_deliveries where p_task_id is null or task_id = p_task_id limit greatest(p_limit, 0);
$$;

select _cw_service_role_only(array[
  '_cw_rfc3339', '_cw_webhook_data', 'webhook_configure', 'claim_webhook_events', 'replay_webhook_events',
  'list_webhook_deliveries']);

-- Supabase: PostgREST caches function signatures (unchanged here; harmless on plain PostgreSQL).
notify pgrst, 'reload schema';

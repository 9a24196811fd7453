-- comfy-worker queue: engine / model affinity for claims. Idempotent; replaces claim_tasks (002) with the same
-- function plus one optional argument, so every caller that passes four arguments keeps today's behaviour.
--
-- A GPU runs one engine (ComfyUI or Wan2GP) and, in Wan2GP, one model at a time; switching costs a model load
-- and a VRAM hand-over. A worker passes p_preference to take the tasks it can run without a switch first:
--
--   {"weights": {"i2v": 2, "i2v_22": 1}, "max_wait_s": 300}
--
--   weights     task type -> weight > 0 (higher: cheaper to run now; types not listed weigh 0). The worker
--               derives them from what it has loaded, e.g. 2 for types of the loaded model, 1 for other
--               types of the loaded engine.
--   max_wait_s  the bound on unfairness (ENGINE_SWITCH_MAX_WAIT_S): a task that has waited this long since it
--               became due (run_at) is "overdue" and no longer gives way to preferred tasks. 0 = plain order.
--
-- Claim order with a preference, among the tasks the plain claim could take:
--   1. priority, highest first (a preference never overrides priority);
--   2. overdue tasks before the others, oldest first among them (run_at, created_at), whatever their weight;
--   3. then weight, highest first;
--   4. then run_at, created_at (the plain order).
-- Hence the bound: once a task is overdue, only tasks of higher priority and overdue tasks ahead of it in the
-- plain order are claimed before it, so the preference delays no task by more than max_wait_s.
--
-- The query stays a handful of index lookups: the p_n best under this order are always among the first p_n
-- in plain order plus the first p_n of each preferred type (a task of weight 0, or an overdue one, has every
-- task ahead of it in plain order ahead of it here too; a preferred task has every earlier task of its own
-- type ahead of it). Those candidates are locked (SKIP LOCKED, as before), ordered, and the best p_n claimed.
-- Without a preference the candidates are the first p_n in plain order, all claimed in plain order.

-- A preferred type's candidates are found through this index, not by walking the whole queue in claim order:
-- an i2v task behind 200k queued comfy tasks costs 0.5 ms instead of 40-60 ms (docs/benchmarks.md).
-- Only queued rows are in it, and a claimed row leaves it: the cost is one more index entry per enqueue.
create index if not exists tasks_claim_type_idx on tasks (task_type, priority desc, run_at, created_at)
  where status = 'queued';

create or replace function _cw_preference_max_wait(p_preference jsonb)
returns double precision language plpgsql immutable set search_path = public, pg_temp set jit = off
  set plan_cache_mode = force_generic_plan
as $$
declare
  v_key text;
  v_weights jsonb := p_preference -> 'weights';
  v_wait jsonb := p_preference -> 'max_wait_s';
begin
  if jsonb_typeof(p_preference) <> 'object' then
    raise exception using errcode = 'CW004',
      message = format('claim_tasks: preference must be a JSON object, got a JSON %s', jsonb_typeof(p_preference)),
      hint = 'pass {"weights": {"<task_type>": <weight>}, "max_wait_s": <seconds>}';
  end if;
  select k into v_key from jsonb_object_keys(p_preference) k where k not in ('weights', 'max_wait_s') limit 1;
  if v_key is not null then
    raise exception using errcode = 'CW004',
      message = format('claim_tasks: preference has an unknown key %L (accepted: weights, max_wait_s)', v_key);
  end if;
  if jsonb_typeof(v_weights) is distinct from 'object' then
    raise exception using errcode = 'CW004',
      message = 'claim_tasks: preference.weights must be an object of task type -> weight > 0';
  end if;
  select w.key into v_key from jsonb_each(v_weights) w
  where jsonb_typeof(w.value) <> 'number' or (w.value)::text::double precision <= 0 limit 1;
  if v_key is not null then
    raise exception using errcode = 'CW004',
      message = format('claim_tasks: preference.weights.%s must be a number > 0, got %s', v_key, v_weights -> v_key);
  end if;
  if jsonb_typeof(v_wait) is distinct from 'number' or (v_wait)::text::double precision < 0
     or (v_wait)::text::double precision > 604800 then
    raise exception using errcode = 'CW004',
      message = format('claim_tasks: preference.max_wait_s must be a number of seconds from 0 to 604800, got %s',
                       coalesce(v_wait::text, 'nothing'));
  end if;
  return (v_wait)::text::double precision;
end
$$;

drop function if exists claim_tasks(text, text[], integer, double precision);  -- the 002 form, replaced below

-- Claim up to p_n claimable tasks for a worker: queued, due (run_at), dependencies complete, of one of
-- p_task_types (null or empty = any), highest priority first, then oldest; with p_preference, in the order
-- described above. Concurrent claimers never get the same task (FOR UPDATE SKIP LOCKED). A draining or
-- stopped worker gets nothing.
create or replace function claim_tasks(
  p_worker_id text, p_task_types text[] default null, p_n integer default 1,
  p_lease_seconds double precision default 60, p_preference jsonb default null
) returns setof tasks
language plpgsql volatile security invoker set search_path = public, pg_temp set jit = off set plan_cache_mode = force_generic_plan
as $$
declare
  v_status text;
  v_any_type boolean := p_task_types is null or cardinality(p_task_types) = 0;
  v_cutoff timestamptz;
  v_weights jsonb;
  v_ids text[];
  v_type text;
begin
  if p_n is null or p_n < 1 or p_n > 1000 then
    raise exception using errcode = 'CW004', message = format('claim_tasks: n must be between 1 and 1000 (got %s)', p_n);
  end if;
  perform _cw_check_lease_seconds('claim_tasks', p_lease_seconds);
  if p_preference is not null then
    v_cutoff := now() - make_interval(secs => _cw_preference_max_wait(p_preference));
    v_weights := p_preference -> 'weights';
  end if;
  select status into v_status from workers where id = p_worker_id;
  if not found then
    raise exception using errcode = 'CW003',
      message = format('claim_tasks: no worker has id %L', p_worker_id), hint = 'call register_worker first';
  end if;
  if v_status in ('draining', 'stopped') then
    return;
  end if;

  -- candidates: the first p_n in plain order, then the first p_n of each preferred type this worker takes
  -- (without a preference: no types, and v_cutoff and v_weights are null, so the plain claim of 002)
  v_ids := array(
    select t.task_id from tasks t
    where t.status = 'queued' and t.run_at <= now()
      and (v_any_type or t.task_type = any(p_task_types))
      and (cardinality(t.depends_on) = 0 or not exists (
            select 1 from unnest(t.depends_on) d(id) left join tasks dt on dt.task_id = d.id
            where dt.status is distinct from 'complete'))
    order by t.priority desc, t.run_at, t.created_at
    limit p_n
    for update of t skip locked);
  for v_type in select k from jsonb_object_keys(v_weights) k order by k loop
    continue when not (v_any_type or v_type = any(p_task_types));
    v_ids := v_ids || array(
      select t.task_id from tasks t
      where t.status = 'queued' and t.run_at <= now() and t.task_type = v_type
        and (cardinality(t.depends_on) = 0 or not exists (
              select 1 from unnest(t.depends_on) d(id) left join tasks dt on dt.task_id = d.id
              where dt.status is distinct from 'complete'))
      order by t.priority desc, t.run_at, t.created_at
      limit p_n
      for update of t skip locked);
  end loop;

  return query
  with ranked as (
    select t.task_id, t.priority, t.run_at, t.created_at, t.run_at <= v_cutoff as overdue,
           case when t.run_at <= v_cutoff then 0
                else coalesce((v_weights ->> t.task_type)::double precision, 0) end as weight
    from tasks t
    where t.task_id = any(v_ids)
  ), picked as (
    select r.task_id from ranked r
    order by r.priority desc, r.overdue desc, r.weight desc, r.run_at, r.created_at
    limit p_n
  ), claimed as (
    update tasks t set
      status = 'running', worker_id = p_worker_id, lease_token = gen_random_uuid(),
      lease_expires_at = now() + make_interval(secs => p_lease_seconds), attempts = t.attempts + 1,
      started_at = now(), completed_at = null, updated_at = now()
    where t.task_id = any(array(select picked.task_id from picked))
    returning t.*
  ), w as (
    update workers wk set status = 'busy', current_task_id = c.task_id, last_heartbeat = now(), updated_at = now()
    from (select task_id from claimed limit 1) c
    where wk.id = p_worker_id
  )
  select c.* from claimed c
  order by c.priority desc, c.run_at <= v_cutoff desc,
           case when c.run_at <= v_cutoff then 0
                else coalesce((v_weights ->> c.task_type)::double precision, 0) end desc,
           c.run_at, c.created_at;  -- claim order
end
$$;

select _cw_service_role_only(array['_cw_preference_max_wait', 'claim_tasks']);

-- Supabase: PostgREST caches function signatures; tell it claim_tasks changed (a no-op on plain PostgreSQL).
notify pgrst, 'reload schema';

-- comfy-worker queue: claims narrowed to task types stay index lookups. Idempotent; replaces claim_tasks (006)
-- and work_ready (002) with the same signatures and the same results.
--
-- A worker with TASK_TYPES (p_task_types) used to find its tasks by walking the whole queue in claim order
-- (tasks_claim_idx) and filtering on the type: behind 200k queued tasks of other types that was 40-150 ms per
-- claim, and as much per work_ready() poll. Now each wanted type is looked up in its own part of
-- tasks_claim_type_idx (006: task_type, priority desc, run_at, created_at, queued rows only), which is in
-- claim order within a type: the first p_n claimable tasks of each type are the candidates, and the best
-- p_n of them are claimed, in the same order as before. A claim for any type (no TASK_TYPES) is unchanged
-- but for its preferred types' lookups (006's loop), which are the same per-type lookup (written once below).
--
-- Why the candidates suffice: within one type, claim order is priority, then (run_at, created_at), with or
-- without a preference (an overdue task is due earlier than any task of its type and priority that is not;
-- the weight is the type's), so the p_n best tasks overall are among the first p_n of each type.
--
-- The type is matched as a range (task_type >= x and task_type <= x: the same rows, the column's collation
-- being deterministic) and the lookup ordered by task_type first. The claim runs generic plans, so the
-- planner does not know the type; with an equality it drops task_type from the ORDER BY (a constant), and
-- both indexes then give the order: when the statistics show one type (a backlog analyzed before the other
-- type arrived) it walks tasks_claim_idx past the backlog again (88 ms measured). Ordered by task_type, only
-- tasks_claim_type_idx gives the order without sorting the whole queue. tests/integration/test_queue_plans.py
-- checks the rows and buffers each lookup reads.
--
-- Locking: every candidate is locked (FOR UPDATE SKIP LOCKED, as before) while the claim's statement runs,
-- so with several types up to p_n per type are locked for that moment and concurrent claimers skip them, as
-- they skip a preference's candidates (006). With one type the claim locks only what it takes.
--
-- This file replaces 006's claim_tasks rather than editing 006: a database that has 006 applies only this
-- file, and 006 stays the record of the affinity change (as 006 did with 002's claim).

create index if not exists tasks_claim_type_idx on tasks (task_type, priority desc, run_at, created_at)
  where status = 'queued';  -- from 006; the claim below relies on it

-- Claim up to p_n claimable tasks for a worker: queued, due (run_at), dependencies complete, of one of
-- p_task_types (null or empty = any), highest priority first, then oldest; with p_preference, in the order
-- described in 006. Concurrent claimers never get the same task (FOR UPDATE SKIP LOCKED). A draining or
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
  v_types text[];
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

  -- candidates: with no TASK_TYPES, the first p_n in plain order and the first p_n of each preferred type (006);
  -- with TASK_TYPES, the first p_n of each wanted type (they include the first p_n in plain order and every
  -- preferred type's first p_n that this worker takes). Each type's through its part of tasks_claim_type_idx.
  if v_any_type then
    v_ids := array(
      select t.task_id from tasks t
      where t.status = 'queued' and t.run_at <= now()
        and (cardinality(t.depends_on) = 0 or not exists (
              select 1 from unnest(t.depends_on) d(id) left join tasks dt on dt.task_id = d.id
              where dt.status is distinct from 'complete'))
      order by t.priority desc, t.run_at, t.created_at
      limit p_n
      for update of t skip locked);
    v_types := array(select jsonb_object_keys(v_weights));  -- none without a preference
  else
    v_ids := '{}';
    v_types := p_task_types;
  end if;
  if cardinality(v_types) > 0 then
    v_ids := v_ids || array(
      select c.task_id
      from (select distinct u.task_type from unnest(v_types) u(task_type)) tt
      cross join lateral (
        select t.task_id from tasks t
        where t.status = 'queued' and t.task_type >= tt.task_type and t.task_type <= tt.task_type
          and t.run_at <= now()
          and (cardinality(t.depends_on) = 0 or not exists (
                select 1 from unnest(t.depends_on) d(id) left join tasks dt on dt.task_id = d.id
                where dt.status is distinct from 'complete'))
        order by t.task_type, t.priority desc, t.run_at, t.created_at  -- one type: its claim order
        limit p_n
        for update of t skip locked) c);
  end if;

  return query
  with ranked as (
    select t.task_id, t.priority, t.run_at, t.created_at, t.ctid, t.run_at <= v_cutoff as overdue,
           case when t.run_at <= v_cutoff then 0
                else coalesce((v_weights ->> t.task_type)::double precision, 0) end as weight
    from tasks t
    where t.task_id = any(v_ids)
  ), picked as (
    select r.task_id from ranked r
    -- exact ties in heap order, as the claim indexes order them (a batch enqueued in one transaction shares
    -- its created_at): the candidates of several types merge into the order one walk of tasks_claim_idx gave
    order by r.priority desc, r.overdue desc, r.weight desc, r.run_at, r.created_at, r.ctid
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

-- Is any task of these types (null or empty = any) queued and due? What polling stores (Supabase) ask between
-- claims: it stops at the first due row of the claim index, or with types at the first due row of each type.
-- PL/pgSQL (002's was SQL, planned again on every call) so both lookups keep a cached plan. Each asks for the
-- first row in an index's order: the planner sees neither the types nor how many rows are due, and without
-- the ORDER BY it chose a sequential scan that it expected to stop early (an idle poll read the whole table).
create or replace function work_ready(p_task_types text[] default null)
returns boolean
language plpgsql stable security invoker set search_path = public, pg_temp set jit = off
  set plan_cache_mode = force_generic_plan
as $$
begin
  if p_task_types is null or cardinality(p_task_types) = 0 then
    perform 1 from tasks t where t.status = 'queued' and t.run_at <= now()
    order by t.priority desc, t.run_at, t.created_at limit 1;
  else
    perform 1 from unnest(p_task_types) u(task_type)
    cross join lateral (
      select 1 from tasks t  -- the range on task_type: see the top of this file
      where t.status = 'queued' and t.task_type >= u.task_type and t.task_type <= u.task_type
        and t.run_at <= now()
      order by t.task_type, t.priority desc, t.run_at, t.created_at limit 1) c
    limit 1;
  end if;
  return found;
end
$$;

select _cw_service_role_only(array['claim_tasks', 'work_ready']);

-- Supabase: PostgREST caches function signatures (unchanged here; harmless on plain PostgreSQL).
notify pgrst, 'reload schema';

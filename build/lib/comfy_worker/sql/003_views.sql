-- comfy-worker monitoring views: plain SQL for humans, dashboards and the orchestrator.
-- security_invoker: a view reads with the caller's rights, so RLS on the tables still applies.

-- One row per task type that has queued or running work or activity in the last hour.
create or replace view queue_summary with (security_invoker = true) as
with recent as (
  select task_type, extract(epoch from started_at - created_at) as wait_s
  from tasks where started_at >= now() - interval '1 hour' and attempts = 1
)
select
  k.task_type,
  count(*) filter (where t.status = 'queued')                                   as queued,
  count(*) filter (where t.status = 'queued' and t.run_at <= now())             as ready,
  count(*) filter (where t.status = 'running')                                  as running,
  coalesce(extract(epoch from now() - min(t.created_at) filter (where t.status = 'queued')), 0)::double precision
                                                                                as oldest_queued_age_s,
  (select percentile_cont(0.5) within group (order by r.wait_s) from recent r where r.task_type = k.task_type)
                                                                                as wait_p50_s_1h,
  (select percentile_cont(0.95) within group (order by r.wait_s) from recent r where r.task_type = k.task_type)
                                                                                as wait_p95_s_1h
from (select distinct task_type from tasks
      where status in ('queued', 'running') or updated_at >= now() - interval '1 hour') k
left join tasks t on t.task_type = k.task_type and t.status in ('queued', 'running')
group by k.task_type;

-- Every worker, with how long ago it was last heard from.
create or replace view worker_liveness with (security_invoker = true) as
select
  w.id, w.status, w.current_task_id, w.last_heartbeat,
  extract(epoch from now() - w.last_heartbeat)::double precision as seconds_since_heartbeat,
  (w.status not in ('stopped', 'lost') and w.last_heartbeat >= now() - interval '90 seconds') as alive,
  (select count(*) from tasks t where t.worker_id = w.id and t.status = 'running') as running_tasks,
  w.tasks_completed, w.tasks_failed, w.host, w.pid, w.version, w.task_types, w.metadata,
  w.started_at, w.created_at
from workers w;

-- Last hour, per task type: what finished, how fast.
create or replace view throughput_last_hour with (security_invoker = true) as
select
  task_type,
  count(*) filter (where status = 'complete')                                   as completed,
  count(*) filter (where status = 'failed')                                     as failed,
  count(*) filter (where status = 'cancelled')                                  as cancelled,
  round(count(*) filter (where status = 'complete') / 60.0, 3)                   as completed_per_minute,
  percentile_cont(0.5) within group (order by extract(epoch from completed_at - started_at))
    filter (where status = 'complete')                                          as duration_p50_s,
  percentile_cont(0.95) within group (order by extract(epoch from completed_at - started_at))
    filter (where status = 'complete')                                          as duration_p95_s
from tasks
where completed_at >= now() - interval '1 hour'
group by task_type;

-- The newest failures, with what went wrong.
create or replace view recent_failures with (security_invoker = true) as
select task_id, task_type, attempts, max_attempts, worker_id, error, error_details, completed_at, created_at
from tasks
where status = 'failed'
order by completed_at desc nulls last
limit 100;

-- Everything above in one call (what `comfy-worker status` and the orchestrator read; one rpc on Supabase).
create or replace function fleet_snapshot()
returns jsonb
language sql stable security invoker set search_path = public, pg_temp
as $$
  select jsonb_build_object(
    'at', now(),
    'queue', coalesce((select jsonb_agg(to_jsonb(q) order by q.task_type) from queue_summary q), '[]'),
    'workers', coalesce((select jsonb_agg(to_jsonb(w) order by w.id) from worker_liveness w), '[]'),
    'throughput', coalesce((select jsonb_agg(to_jsonb(t) order by t.task_type) from throughput_last_hour t), '[]'),
    'failures', coalesce((select jsonb_agg(to_jsonb(f)) from (select * from recent_failures limit 20) f), '[]')
  );
$$;

revoke all on queue_summary, worker_liveness, throughput_last_hour, recent_failures from public, anon, authenticated;
grant select on queue_summary, worker_liveness, throughput_last_hour, recent_failures to service_role;
revoke all on function fleet_snapshot() from public, anon, authenticated;
grant execute on function fleet_snapshot() to service_role;

-- comfy-worker monitoring views, embedded SQLite edition: the same names and columns as sql/003_views.sql.
-- SQLite has no percentile_cont: the p50/p95 columns interpolate between neighbours the same way (window
-- functions), so they equal Postgres' percentile_cont. Durations are seconds (double).

drop view if exists queue_summary;
create view queue_summary as
with recent as (
  select task_type, (julianday(started_at) - julianday(created_at)) * 86400.0 as wait_s
  from tasks
  where started_at >= strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', '-1 hour') and attempts = 1
), ranked as (
  select task_type, wait_s,
         row_number() over (partition by task_type order by wait_s) - 1 as i,
         count(*) over (partition by task_type) as n
  from recent
), pct as (
  select task_type,
    sum(case when i = cast(0.5 * (n - 1) as integer) then wait_s * (1 - (0.5 * (n - 1) - cast(0.5 * (n - 1) as integer)))
             when i = cast(0.5 * (n - 1) as integer) + 1 then wait_s * (0.5 * (n - 1) - cast(0.5 * (n - 1) as integer))
             else 0 end) as p50,
    sum(case when i = cast(0.95 * (n - 1) as integer) then wait_s * (1 - (0.95 * (n - 1) - cast(0.95 * (n - 1) as integer)))
             when i = cast(0.95 * (n - 1) as integer) + 1 then wait_s * (0.95 * (n - 1) - cast(0.95 * (n - 1) as integer))
             else 0 end) as p95
  from ranked group by task_type
)
select
  k.task_type,
  count(t.task_id) filter (where t.status = 'queued')                                             as queued,
  count(t.task_id) filter (where t.status = 'queued'
                           and t.run_at <= strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))           as ready,
  count(t.task_id) filter (where t.status = 'running')                                            as running,
  coalesce((julianday('now') - julianday(min(t.created_at) filter (where t.status = 'queued'))) * 86400.0, 0.0)
                                                                                                  as oldest_queued_age_s,
  (select p.p50 from pct p where p.task_type = k.task_type)                                       as wait_p50_s_1h,
  (select p.p95 from pct p where p.task_type = k.task_type)                                       as wait_p95_s_1h
from (select distinct task_type from tasks
      where status in ('queued', 'running')
         or updated_at >= strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', '-1 hour')) k
left join tasks t on t.task_type = k.task_type and t.status in ('queued', 'running')
group by k.task_type;

-- Every worker, with how long ago it was last heard from.
drop view if exists worker_liveness;
create view worker_liveness as
select
  w.id, w.status, w.current_task_id, w.last_heartbeat,
  (julianday('now') - julianday(w.last_heartbeat)) * 86400.0 as seconds_since_heartbeat,
  (w.status not in ('stopped', 'lost')
   and w.last_heartbeat >= strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', '-90 seconds')) as alive,
  (select count(*) from tasks t where t.worker_id = w.id and t.status = 'running') as running_tasks,
  w.tasks_completed, w.tasks_failed, w.host, w.pid, w.version, w.task_types, w.metadata,
  w.started_at, w.created_at
from workers w;

-- Last hour, per task type: what finished, how fast.
drop view if exists throughput_last_hour;
create view throughput_last_hour as
with finished as (
  select task_type, status, (julianday(completed_at) - julianday(started_at)) * 86400.0 as duration_s
  from tasks
  where completed_at >= strftime('%Y-%m-%dT%H:%M:%f000Z', 'now', '-1 hour')
), ranked as (
  select task_type, duration_s,
         row_number() over (partition by task_type order by duration_s) - 1 as i,
         count(*) over (partition by task_type) as n
  from finished where status = 'complete' and duration_s is not null
), pct as (
  select task_type,
    sum(case when i = cast(0.5 * (n - 1) as integer) then duration_s * (1 - (0.5 * (n - 1) - cast(0.5 * (n - 1) as integer)))
             when i = cast(0.5 * (n - 1) as integer) + 1 then duration_s * (0.5 * (n - 1) - cast(0.5 * (n - 1) as integer))
             else 0 end) as p50,
    sum(case when i = cast(0.95 * (n - 1) as integer) then duration_s * (1 - (0.95 * (n - 1) - cast(0.95 * (n - 1) as integer)))
             when i = cast(0.95 * (n - 1) as integer) + 1 then duration_s * (0.95 * (n - 1) - cast(0.95 * (n - 1) as integer))
             else 0 end) as p95
  from ranked group by task_type
)
select
  f.task_type,
  count(*) filter (where f.status = 'complete')                    as completed,
  count(*) filter (where f.status = 'failed')                      as failed,
  count(*) filter (where f.status = 'cancelled')                   as cancelled,
  round(count(*) filter (where f.status = 'complete') / 60.0, 3)   as completed_per_minute,
  (select p.p50 from pct p where p.task_type = f.task_type)        as duration_p50_s,
  (select p.p95 from pct p where p.task_type = f.task_type)        as duration_p95_s
from finished f
group by f.task_type;

-- The newest failures, with what went wrong.
drop view if exists recent_failures;
create view recent_failures as
select task_id, task_type, attempts, max_attempts, worker_id, error, error_details, completed_at, created_at
from tasks
where status = 'failed'
order by completed_at desc nulls last
limit 100;

-- Named queries of the embedded SQLite store (comfy_worker/store/_sqlite_ops.py), loaded by name:
-- each starts with a `-- name: <name>` line. Parameters are named (:now, :task_id, …). Timestamps are the
-- canonical ISO-8601 UTC text described in 001_tables.sql; :now is passed in by the store.

-- name: task_by_id
select * from tasks where task_id = :task_id;

-- name: task_by_active_dedupe_key
select * from tasks where dedupe_key = :dedupe_key and status in ('queued', 'running');

-- name: missing_task_ids
select j.value as task_id from json_each(:ids) j
where not exists (select 1 from tasks t where t.task_id = j.value);

-- name: insert_task
insert into tasks (task_id, task_type, params, priority, max_attempts, depends_on, dedupe_key, run_at,
                   created_at, updated_at)
values (:task_id, :task_type, :params, :priority, :max_attempts, :depends_on, :dedupe_key, :run_at, :now, :now)
on conflict do nothing
returning *;

-- name: claimable_task_ids
-- queued, due, every dependency complete; in claim order. A claim for any type (with task types the claim
-- takes claimable_task_ids_of_type for each: this walk would pass every queued task of the other types).
select t.task_id from tasks t
where t.status = 'queued' and t.run_at <= :now
  and (t.depends_on = '[]' or not exists (
        select 1 from json_each(t.depends_on) d left join tasks dt on dt.task_id = d.value
        where dt.status is not 'complete'))
order by t.priority desc, t.run_at, t.created_at, t.rowid  -- rowid: insertion order breaks exact ties
limit :n;

-- name: claimable_task_ids_of_type
-- claimable_task_ids for one task type (sql/007: a claim narrowed to task types takes each type's first :n;
-- sql/006: a preferred type's candidates); the planner would rather walk tasks_claim_idx past every queued
-- task of other types
select t.task_id from tasks t indexed by tasks_claim_type_idx
where t.status = 'queued' and t.run_at <= :now and t.task_type = :task_type
  and (t.depends_on = '[]' or not exists (
        select 1 from json_each(t.depends_on) d left join tasks dt on dt.task_id = d.value
        where dt.status is not 'complete'))
order by t.priority desc, t.run_at, t.created_at, t.rowid
limit :n;

-- name: preferred_claim_order
-- sql/006's order among the candidate :ids: priority, overdue (run_at <= :cutoff) first, then the weight of
-- the type (:weights, a JSON object; 0 when absent, and for overdue tasks), then the plain order. With a null
-- :cutoff and '{}' :weights it is the plain order (sql/007 merges the candidates of several types with it).
select t.task_id from tasks t
where t.task_id in (select value from json_each(:ids))
order by t.priority desc, (t.run_at <= :cutoff) desc,
         case when t.run_at <= :cutoff then 0
              else coalesce((select w.value from json_each(:weights) w where w.key = t.task_type), 0) end desc,
         t.run_at, t.created_at, t.rowid
limit :n;

-- name: claim_task
update tasks set status = 'running', worker_id = :worker_id, lease_token = :lease_token,
  lease_expires_at = :lease_expires_at, attempts = attempts + 1, started_at = :now, completed_at = null,
  updated_at = :now
where task_id = :task_id and status = 'queued'
returning *;

-- name: worker_claimed
update workers set status = 'busy', current_task_id = :task_id, last_heartbeat = :now, updated_at = :now
where id = :worker_id;

-- name: worker_by_id
select * from workers where id = :worker_id;

-- name: insert_worker
insert into workers (id, status, host, pid, version, task_types, metadata, started_at, last_heartbeat,
                     created_at, updated_at)
values (:worker_id, 'idle', :host, :pid, :version, :task_types, :metadata, :now, :now, :now, :now);

-- name: reregister_worker
update workers set
  status = case when status = 'draining' then 'draining' else 'idle' end,
  host = :host, pid = :pid, version = :version, task_types = :task_types, metadata = :metadata,
  current_task_id = null, started_at = :now, last_heartbeat = :now, updated_at = :now
where id = :worker_id;

-- name: live_leases_of_worker
select count(*) from tasks where worker_id = :worker_id and status = 'running' and lease_expires_at > :now;

-- name: running_task_ids_of_worker
select task_id from tasks where worker_id = :worker_id and status = 'running' order by task_id;

-- name: requeue_restarted_task
update tasks set
  status = case when attempts < max_attempts then 'queued' else 'failed' end,
  completed_at = case when attempts < max_attempts then null else :now end,
  run_at = :now, worker_id = null, lease_token = null, lease_expires_at = null,
  error = 'worker ' || :worker_id || ' restarted while running this task (attempt ' || attempts
          || ' of ' || max_attempts || ')',
  error_details = json_object('reason', 'worker_restarted', 'worker_id', :worker_id, 'attempt', attempts),
  updated_at = :now
where task_id = :task_id;

-- name: release_worker_tasks
-- a graceful stop is not the task's fault: back to the queue without spending an attempt
update tasks set status = 'queued', attempts = max(attempts - 1, 0), run_at = :now, worker_id = null,
  lease_token = null, lease_expires_at = null, updated_at = :now
where worker_id = :worker_id and status = 'running';

-- name: stop_worker
update workers set status = 'stopped', current_task_id = null, updated_at = :now where id = :worker_id;

-- name: set_worker_status
update workers set status = :status, metadata = :metadata, updated_at = :now where id = :worker_id;

-- name: worker_heartbeat
update workers set last_heartbeat = :now, metadata = :metadata, updated_at = :now where id = :worker_id;

-- name: extend_worker_leases
update tasks set lease_expires_at = :lease_expires_at, updated_at = :now
where worker_id = :worker_id and status = 'running';

-- name: revive_worker
update workers set status = 'idle' where id = :worker_id;

-- name: untold_cancelled_of_worker
select task_id from tasks
where worker_id = :worker_id and status = 'cancelled' and lease_token is not null
order by task_id;

-- name: mark_cancel_told
update tasks set lease_token = null
where worker_id = :worker_id and status = 'cancelled' and lease_token is not null;

-- name: task_states
select j.value as asked, t.task_id, t.status, t.worker_id
from json_each(:ids) j left join tasks t on t.task_id = j.value
order by j.key;

-- name: newest_running_of_worker
select task_id from tasks where worker_id = :worker_id and status = 'running'
order by started_at desc limit 1;

-- name: refresh_worker
update workers set
  current_task_id = :task_id,
  status = case when status in ('idle', 'busy', 'lost', 'starting')
                then case when :task_id is null then 'idle' else 'busy' end
                else status end,
  tasks_completed = tasks_completed + :completed,
  tasks_failed = tasks_failed + :failed,
  updated_at = :now
where id = :worker_id;

-- name: end_dependents
-- queued tasks that can never run because :root ended as :status (failed or cancelled), recursively
with recursive dep(task_id, cause) as (
  select t.task_id, :root from tasks t
  where t.depends_on <> '[]' and t.status = 'queued'
    and exists (select 1 from json_each(t.depends_on) d where d.value = :root)
  union
  select t.task_id, dep.task_id from dep, tasks t
  where t.depends_on <> '[]' and t.status = 'queued'
    and exists (select 1 from json_each(t.depends_on) d where d.value = dep.task_id)
)
update tasks set
  status = :status,
  error = 'dependency ' || dep.cause || ' was ' || :status || ', so this task cannot run',
  error_details = json_object('reason', 'dependency_' || :status, 'dependency', dep.cause),
  completed_at = :now, updated_at = :now
from dep where tasks.task_id = dep.task_id;

-- name: update_progress
update tasks set progress = coalesce(:progress, progress), checkpoint = coalesce(:checkpoint, checkpoint),
  updated_at = :now
where task_id = :task_id;

-- name: complete_task
update tasks set status = 'complete', result = :result, output_url = :output_url, error = null,
  error_details = null, lease_token = null, lease_expires_at = null, completed_at = :now, updated_at = :now
where task_id = :task_id and status = 'running' and lease_token = :lease_token
returning *;

-- name: retry_task
update tasks set status = 'queued', run_at = :run_at, error = :error, error_details = :error_details,
  worker_id = null, lease_token = null, lease_expires_at = null, updated_at = :now
where task_id = :task_id
returning *;

-- name: fail_task
update tasks set status = 'failed', error = :error, error_details = :error_details, lease_token = null,
  lease_expires_at = null, completed_at = :now, updated_at = :now
where task_id = :task_id
returning *;

-- name: release_task
update tasks set status = 'queued', attempts = max(attempts - 1, 0), run_at = :now, worker_id = null,
  lease_token = null, lease_expires_at = null, updated_at = :now
where task_id = :task_id
returning *;

-- name: cancel_task
update tasks set status = 'cancelled', error = :error,
  error_details = json_object('reason', 'cancelled', 'was', status),
  lease_expires_at = null, completed_at = :now, updated_at = :now
where task_id = :task_id
returning *;

-- name: expired_leases
-- the unary + keeps the planner on tasks_running_lease_idx rather than walking the primary key in order
select task_id, worker_id, attempts, max_attempts from tasks
where status = 'running' and lease_expires_at < :now
order by +task_id;

-- name: requeue_expired
update tasks set status = 'queued', run_at = :now, worker_id = null, lease_token = null, lease_expires_at = null,
  error = 'lease expired: worker ' || coalesce(worker_id, '') || ' stopped reporting (attempt ' || attempts
          || ' of ' || max_attempts || '); requeued',
  error_details = json_object('reason', 'lease_expired', 'worker_id', worker_id, 'attempt', attempts),
  updated_at = :now
where task_id = :task_id;

-- name: fail_expired
update tasks set status = 'failed', lease_token = null, lease_expires_at = null, completed_at = :now,
  error = 'lease expired: worker ' || coalesce(worker_id, '') || ' stopped reporting on the last attempt ('
          || attempts || ' of ' || max_attempts || ')',
  error_details = json_object('reason', 'lease_expired', 'worker_id', worker_id, 'attempt', attempts,
                              'gave_up', 'max_attempts reached'),
  updated_at = :now
where task_id = :task_id;

-- name: ended_dependencies_of_queued
-- backstop for rows inserted directly whose dependency had already ended badly
select distinct d.value as task_id
from tasks t, json_each(t.depends_on) d join tasks dt on dt.task_id = d.value
where t.depends_on <> '[]' and t.status = 'queued' and dt.status in ('failed', 'cancelled');

-- name: mark_lost_workers
update workers set status = 'lost', current_task_id = null, updated_at = :now
where status in ('idle', 'busy', 'draining') and last_heartbeat < :cutoff
returning id;

-- name: claimable_exists
-- any claimable task, of any type (with task types: claimable_task_ids_of_type, n = 1, for each)
select exists (
  select 1 from tasks t
  where t.status = 'queued' and t.run_at <= :now
    and (t.depends_on = '[]' or not exists (
          select 1 from json_each(t.depends_on) d left join tasks dt on dt.task_id = d.value
          where dt.status is not 'complete'))
) as found;

-- name: schema_tables
select name from sqlite_master where type in ('table', 'view') and name in ('tasks', 'workers');

-- name: snapshot_queue
select * from queue_summary order by task_type;

-- name: snapshot_workers
select * from worker_liveness order by id;

-- name: snapshot_throughput
select * from throughput_last_hour order by task_type;

-- name: snapshot_failures
select * from recent_failures limit 20;

-- comfy-worker queue: what gpu_orchestrator needs beyond 001-003. Idempotent; service_role only.
--
--   record_spawned_worker(worker_id, metadata)  a workers row in status 'starting' for a pod we are creating,
--                                               so capacity being spawned counts (register_worker sets 'idle').
--   cancel_spawn(worker_id, metadata)           a spawn the backlog no longer needs: 'starting' -> 'draining' only
--                                               if the pod has not registered (true), so no worker loses work.
--   orchestrator_fleet()                        one JSON read of everything the scaling policy looks at.

-- Idle time per worker: when its last task ended (complete / failed / released) is found through this index.
create index if not exists tasks_worker_completed_idx on tasks (worker_id, completed_at desc)
  where worker_id is not null and completed_at is not null;
-- Arrival rate (tasks created in the last minutes).
create index if not exists tasks_created_idx on tasks (created_at desc);

-- Upsert a workers row in status 'starting' (new id), or merge metadata into an existing row without
-- touching its status (a pod that registered already stays idle/busy; a stopped row stays stopped).
create or replace function record_spawned_worker(p_worker_id text, p_metadata jsonb default '{}')
returns workers
language plpgsql volatile security invoker set search_path = public, pg_temp
as $$
declare
  v workers;
begin
  if p_worker_id is null or length(p_worker_id) = 0 then
    raise exception using errcode = 'CW004', message = 'record_spawned_worker: worker_id must be a non-empty string';
  end if;
  perform _cw_check_object('record_spawned_worker', 'metadata', p_metadata);
  insert into workers as w (id, status, metadata)
  values (p_worker_id, 'starting', coalesce(p_metadata, '{}'))
  on conflict (id) do update set metadata = w.metadata || excluded.metadata, updated_at = now()
  returning * into v;
  return v;
end
$$;

-- Cancel a spawn that has not registered yet. Only a row still in 'starting' changes (to 'draining', marked
-- spawn_cancelled), so a pod that registered in the meantime keeps its work; and one that registers after this
-- stays 'draining' (register_worker keeps it), which claim refuses: its pod can be terminated at any time.
create or replace function cancel_spawn(p_worker_id text, p_metadata jsonb default '{}')
returns boolean
language plpgsql volatile security invoker set search_path = public, pg_temp
as $$
begin
  perform _cw_check_object('cancel_spawn', 'metadata', p_metadata);
  update workers
  set status = 'draining',
      metadata = metadata || coalesce(p_metadata, '{}') || jsonb_build_object('spawn_cancelled', true),
      updated_at = now()
  where id = p_worker_id and status = 'starting';
  return found;
end
$$;

-- Everything the policy reads, in one call:
--   queue:    per task type, queued / ready / running / oldest_queued_age_s (from queue_summary)
--   workers:  every worker not stopped-and-released, with age_s (since its row was created), idle_s (since its
--             last task ended, or since it registered), seconds_since_heartbeat, pod_id and cost from metadata
--   durations_s: run times of the last 200 tasks completed in the last hour
--   arrivals_10m: tasks created in the last 10 minutes
--   arrivals_per_min: tasks created in each of the last 30 minutes, oldest first (30 numbers)
--   spawn_delays_s: pod created -> worker registered, for the last 20 pods we spawned that registered (a day)
create or replace function orchestrator_fleet()
returns jsonb
language sql stable security invoker set search_path = public, pg_temp
as $$
  select jsonb_build_object(
    'at', now(),
    'queue', coalesce((select jsonb_agg(jsonb_build_object(
        'task_type', q.task_type, 'queued', q.queued, 'ready', q.ready, 'running', q.running,
        'oldest_queued_age_s', q.oldest_queued_age_s) order by q.task_type) from queue_summary q), '[]'),
    'workers', coalesce((select jsonb_agg(jsonb_build_object(
        'id', w.id, 'status', w.status, 'metadata', w.metadata,
        'age_s', extract(epoch from now() - w.created_at)::double precision,
        'idle_s', case when w.status = 'idle' then extract(epoch from now() - greatest(
            w.started_at,
            (select max(t.completed_at) from tasks t where t.worker_id = w.id and t.completed_at is not null)
          ))::double precision else 0 end,
        'seconds_since_heartbeat', extract(epoch from now() - w.last_heartbeat)::double precision
      ) order by w.id)
      from workers w
      where not (w.status in ('stopped', 'lost') and coalesce((w.metadata->>'pod_terminated')::boolean, false))
        and not (w.status in ('stopped', 'lost') and w.updated_at < now() - interval '1 day')), '[]'),
    'durations_s', coalesce((select jsonb_agg(d) from (
        select extract(epoch from completed_at - started_at)::double precision as d from tasks
        where status = 'complete' and completed_at >= now() - interval '1 hour'
        order by completed_at desc limit 200) x), '[]'),
    'spawn_delays_s', coalesce((select jsonb_agg(d) from (
        select extract(epoch from started_at - created_at)::double precision as d from workers
        where metadata ? 'spawned_at' and started_at is not null and started_at >= now() - interval '1 day'
        order by started_at desc limit 20) x), '[]'),
    'arrivals_10m', (select count(*) from tasks where created_at >= now() - interval '10 minutes'),
    'arrivals_per_min', (select jsonb_agg(coalesce(c.n, 0) order by m.k desc)
      from generate_series(0, 29) as m(k)
      left join (select floor(extract(epoch from now() - created_at) / 60)::int as k, count(*) as n from tasks
                 where created_at >= now() - interval '30 minutes' group by 1) c on c.k = m.k)
  );
$$;

select _cw_service_role_only(array['record_spawned_worker', 'cancel_spawn', 'orchestrator_fleet']);

-- comfy-worker: disk space per worker, from what each heartbeat reports (README "Running for weeks").
-- metadata.disk = {free_bytes (fullest filesystem the worker writes), floor_bytes (MIN_FREE_DISK_GB),
--                  below_floor, claiming, reason, filesystems: [{paths, free_bytes}]}
-- metadata.comfy_bytes = {input, output, temp}; metadata.work_bytes.
-- disk_state: 'below' (free < floor: the worker has stopped claiming), 'near' (free < 1.5 x floor), 'ok'.
-- Workers that are stopped or lost, or never reported disk space, are left out.
--   SELECT id, disk_state, free_gb, floor_gb, reason FROM worker_disk WHERE disk_state <> 'ok';

create or replace view worker_disk with (security_invoker = true) as
with d as (
  select w.id, w.status, w.last_heartbeat, w.metadata,
         (w.metadata->'disk'->>'free_bytes')::bigint as free_bytes,
         coalesce((w.metadata->'disk'->>'floor_bytes')::bigint, 0) as floor_bytes
  from workers w
  where w.status not in ('stopped', 'lost') and jsonb_typeof(w.metadata->'disk') = 'object'
)
select
  d.id, d.status, d.last_heartbeat,
  case when d.free_bytes < d.floor_bytes then 'below'
       when d.free_bytes < d.floor_bytes * 1.5 then 'near'
       else 'ok' end                                                          as disk_state,
  d.free_bytes, d.floor_bytes,
  round(d.free_bytes / 1073741824.0, 2)::double precision                     as free_gb,
  round(d.floor_bytes / 1073741824.0, 2)::double precision                    as floor_gb,
  coalesce((d.metadata->'disk'->>'claiming')::boolean, true)                  as claiming,
  d.metadata->'disk'->>'reason'                                               as reason,
  coalesce((d.metadata->'comfy_bytes'->>'input')::bigint, 0)                  as comfy_input_bytes,
  coalesce((d.metadata->'comfy_bytes'->>'output')::bigint, 0)                 as comfy_output_bytes,
  coalesce((d.metadata->'comfy_bytes'->>'temp')::bigint, 0)                   as comfy_temp_bytes,
  coalesce((d.metadata->>'work_bytes')::bigint, 0)                            as work_bytes
from d;

revoke all on worker_disk from public, anon, authenticated;
grant select on worker_disk to service_role;

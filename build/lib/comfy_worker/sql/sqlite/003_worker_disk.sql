-- Disk space per worker, embedded SQLite edition: the same name and columns as sql/005_worker_disk.sql.

drop view if exists worker_disk;
create view worker_disk as
with d as (
  select w.id, w.status, w.last_heartbeat, w.metadata,
         cast(json_extract(w.metadata, '$.disk.free_bytes') as integer) as free_bytes,
         coalesce(cast(json_extract(w.metadata, '$.disk.floor_bytes') as integer), 0) as floor_bytes
  from workers w
  where w.status not in ('stopped', 'lost') and json_type(w.metadata, '$.disk') = 'object'
)
select
  d.id, d.status, d.last_heartbeat,
  case when d.free_bytes < d.floor_bytes then 'below'
       when d.free_bytes < d.floor_bytes * 1.5 then 'near'
       else 'ok' end                                                          as disk_state,
  d.free_bytes, d.floor_bytes,
  round(d.free_bytes / 1073741824.0, 2)                                       as free_gb,
  round(d.floor_bytes / 1073741824.0, 2)                                      as floor_gb,
  coalesce(json_extract(d.metadata, '$.disk.claiming'), 1)                    as claiming,
  json_extract(d.metadata, '$.disk.reason')                                   as reason,
  coalesce(cast(json_extract(d.metadata, '$.comfy_bytes.input') as integer), 0)  as comfy_input_bytes,
  coalesce(cast(json_extract(d.metadata, '$.comfy_bytes.output') as integer), 0) as comfy_output_bytes,
  coalesce(cast(json_extract(d.metadata, '$.comfy_bytes.temp') as integer), 0)   as comfy_temp_bytes,
  coalesce(cast(json_extract(d.metadata, '$.work_bytes') as integer), 0)         as work_bytes
from d;

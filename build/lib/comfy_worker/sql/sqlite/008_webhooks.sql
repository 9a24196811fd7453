-- Completion webhooks, embedded SQLite edition: the same tables, columns, events and view as
-- sql/008_webhooks.sql. Triggers write the event row in the transaction that ended the task (every path:
-- complete, the last failed attempt, cancel, recovery with no attempts left, ended dependents, a direct UPDATE);
-- the claim / report / replay rules are in comfy_worker/store/_sqlite_webhooks.py.
-- Re-runnable: the migration runner skips an ALTER TABLE … ADD COLUMN whose column exists.

alter table tasks add column callback_url text;

create table if not exists webhook_config (
  id          integer primary key default 1 check (id = 1),
  default_url integer not null default 0,
  events      text not null default '["task.completed","task.failed","task.cancelled"]'
              check (case when json_valid(events) then json_type(events) = 'array' else 0 end),
  updated_at  text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

create table if not exists webhook_events (
  id               integer primary key autoincrement,
  webhook_id       text not null unique default ('msg_' || lower(hex(randomblob(16)))),
  task_id          text not null,
  event_type       text not null
                   check (event_type in ('task.completed', 'task.failed', 'task.cancelled', 'task.progress')),
  payload          text not null check (json_valid(payload)),
  url              text,
  state            text not null default 'pending'
                   check (state in ('pending', 'delivering', 'delivered', 'failed')),
  attempts         integer not null default 0,
  next_try_at      text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
  retry_until      text,
  claimed_by       text,
  lease_token      text,
  lease_expires_at text,
  last_status      integer,
  last_error       text,
  created_at       text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
  delivered_at     text,
  updated_at       text not null default (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
create index if not exists webhook_events_due_idx on webhook_events (next_try_at, id)
  where state in ('pending', 'delivering');
create index if not exists webhook_events_task_idx on webhook_events (task_id, id);

drop trigger if exists tasks_webhook_end;
create trigger tasks_webhook_end after update of status on tasks
  when new.status in ('complete', 'failed', 'cancelled') and old.status is not new.status
begin
  insert into webhook_events (task_id, event_type, payload, url)
  select new.task_id,
         case new.status when 'complete' then 'task.completed' when 'failed' then 'task.failed'
                         else 'task.cancelled' end,
         json_object('task_id', new.task_id, 'task_type', new.task_type, 'status', new.status,
                     'attempts', new.attempts, 'max_attempts', new.max_attempts, 'worker_id', new.worker_id,
                     'output_url', new.output_url, 'result', json(new.result), 'progress', json(new.progress),
                     'error', new.error, 'error_details', json(new.error_details), 'created_at', new.created_at,
                     'started_at', new.started_at, 'completed_at', new.completed_at),
         new.callback_url
  where (new.callback_url is not null or coalesce((select default_url from webhook_config where id = 1), 0))
    and exists (select 1 from json_each(coalesce((select events from webhook_config where id = 1),
                                                  '["task.completed","task.failed","task.cancelled"]')) e
                where e.value = case new.status when 'complete' then 'task.completed'
                                                when 'failed' then 'task.failed' else 'task.cancelled' end);
end;

drop trigger if exists tasks_webhook_progress;
create trigger tasks_webhook_progress after update of progress on tasks
  when new.status = 'running' and new.progress is not old.progress
begin
  insert into webhook_events (task_id, event_type, payload, url)
  select new.task_id, 'task.progress',
         json_object('task_id', new.task_id, 'task_type', new.task_type, 'status', new.status,
                     'attempts', new.attempts, 'max_attempts', new.max_attempts, 'worker_id', new.worker_id,
                     'output_url', new.output_url, 'result', json(new.result), 'progress', json(new.progress),
                     'error', new.error, 'error_details', json(new.error_details), 'created_at', new.created_at,
                     'started_at', new.started_at, 'completed_at', new.completed_at),
         new.callback_url
  where (new.callback_url is not null or coalesce((select default_url from webhook_config where id = 1), 0))
    and exists (select 1 from json_each(coalesce((select events from webhook_config where id = 1),
                                                  '["task.completed","task.failed","task.cancelled"]')) e
                where e.value = 'task.progress');
end;

drop view if exists webhook_deliveries;
create view webhook_deliveries as
select e.task_id, e.event_type as event, e.webhook_id, e.state, e.attempts,
       case when e.state = 'pending' then e.next_try_at end as next_try,
       e.last_status, e.last_error,
       coalesce(case when instr(e.url, '?') > 0 then substr(e.url, 1, instr(e.url, '?') - 1) else e.url end,
                '(WEBHOOK_URL)') as url,
       e.claimed_by, e.created_at, e.delivered_at
from webhook_events e
order by e.id desc;

-- Webhooks after review, embedded SQLite edition of sql/009_webhooks_review.sql (008 stays as shipped).
-- Re-runnable. The claim / report / replay rules (items 2, 3 and 5 there) are in
-- comfy_worker/store/_sqlite_webhooks.py; this file has the schema's part:
--
-- * The body's data is written in one place, the _cw_webhook_data view, which both triggers and replay read
--   (008 wrote the same json_object three times). Its timestamps are the tasks' own text, which this store
--   keeps in the RFC 3339 UTC form with microseconds that PostgreSQL's _cw_rfc3339 now writes.
-- * webhook_deliveries shows the url without credentials (user:password@), query and fragment, like
--   PostgreSQL's view and the worker's logs (008 removed only the query).

drop view if exists _cw_webhook_data;
create view _cw_webhook_data as
select t.task_id, t.callback_url,
       case t.status when 'complete' then 'task.completed' when 'failed' then 'task.failed'
                     when 'cancelled' then 'task.cancelled' end as end_event,
       json_object('task_id', t.task_id, 'task_type', t.task_type, 'status', t.status,
                   'attempts', t.attempts, 'max_attempts', t.max_attempts, 'worker_id', t.worker_id,
                   'output_url', t.output_url, 'result', json(t.result), 'progress', json(t.progress),
                   'error', t.error, 'error_details', json(t.error_details), 'created_at', t.created_at,
                   'started_at', t.started_at, 'completed_at', t.completed_at) as data
from tasks t;

-- Whether the fleet wants this event for a task with (or without) its own callback_url.
drop view if exists _cw_webhook_wanted;
create view _cw_webhook_wanted as
select coalesce(c.default_url, 0) as default_url, e.value as event
from (select 1) one
left join webhook_config c on c.id = 1
join json_each(coalesce(c.events, '["task.completed","task.failed","task.cancelled"]')) e;

drop trigger if exists tasks_webhook_end;
create trigger tasks_webhook_end after update of status on tasks
  when new.status in ('complete', 'failed', 'cancelled') and old.status is not new.status
begin
  insert into webhook_events (task_id, event_type, payload, url)
  select d.task_id, d.end_event, d.data, d.callback_url
  from _cw_webhook_data d join _cw_webhook_wanted w on w.event = d.end_event
  where d.task_id = new.task_id and (d.callback_url is not null or w.default_url);
end;

drop trigger if exists tasks_webhook_progress;
create trigger tasks_webhook_progress after update of progress on tasks
  when new.status = 'running' and new.progress is not old.progress
begin
  insert into webhook_events (task_id, event_type, payload, url)
  select d.task_id, 'task.progress', d.data, d.callback_url
  from _cw_webhook_data d join _cw_webhook_wanted w on w.event = 'task.progress'
  where d.task_id = new.task_id and (d.callback_url is not null or w.default_url);
end;

-- The url as comfy_worker.urlpolicy.display_url shows it: cut at the first '?' or '#', then the authority
-- (after '://', up to the first '/') keeps only what follows its last '@'. rtrim(a, replace(a, '@', '')) is
-- a up to and including its last '@' ('' when it has none).
drop view if exists webhook_deliveries;
create view webhook_deliveries as
select task_id, event, webhook_id, state, attempts, next_try, last_status, last_error,
       case when url is null then '(WEBHOOK_URL)'
            when sep = 0 then cut
            else substr(cut, 1, sep + 2)
                 || replace(authority, rtrim(authority, replace(authority, '@', '')), '')
                 || substr(rest, length(authority) + 1) end as url,
       claimed_by, created_at, delivered_at
from (
  select *, substr(rest, 1, coalesce(nullif(instr(rest, '/'), 0), length(rest) + 1) - 1) as authority
  from (
    select *, substr(cut, sep + 3) as rest
    from (
      select *, instr(cut, '://') as sep
      from (
        select e.id, e.task_id, e.event_type as event, e.webhook_id, e.state, e.attempts,
               case when e.state = 'pending' then e.next_try_at end as next_try,
               e.last_status, e.last_error, e.url,
               substr(e.url, 1, min(coalesce(nullif(instr(e.url, '?'), 0), length(e.url) + 1),
                                    coalesce(nullif(instr(e.url, '#'), 0), length(e.url) + 1)) - 1) as cut,
               e.claimed_by, e.created_at, e.delivered_at
        from webhook_events e))))
order by id desc;

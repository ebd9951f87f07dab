-- Marty's claim (runtime/src/outbox/relay.rs, less its per-key check) and the delete of what was sent.
begin;
with batch as (
    select id from today
    where state = 0 and next_attempt_at <= now() and tx_id < pg_snapshot_xmin(pg_current_snapshot())
    order by id limit 500 for update skip locked),
sent as (delete from today o using batch b where o.id = b.id returning o.id, o.payload)
select count(*) from sent;
commit;
\sleep 2 ms

-- Everything committed since the cursor and below the snapshot's xmin (no transaction that could
-- still commit lies below it), then the cursor moves: no row is updated or deleted.
begin;
select xid::text as since, pg_snapshot_xmin(pg_current_snapshot())::text as below from by_xid_cursor \gset
select id, payload from by_xid
where tx_id >= :since::text::xid8 and tx_id < :below::text::xid8
order by tx_id, id;
update by_xid_cursor set xid = :below::text::xid8;
commit;
\sleep 2 ms

-- Two outbox designs side by side, in a schema of their own (psql -v schema=..).
--
-- today: Marty's `marty_outbox` on PostgreSQL (runtime/src/store/schema.rs, migrations 1-2) with
--        its indexes; its relay claims rows and deletes the ones it sent.
-- by_xid: the same row, range-partitioned by the writing transaction's id and keyed by it; its
--        relay reads what committed below the snapshot's xmin since its cursor, moves the cursor,
--        and deletes nothing (partitions wholly below the cursor would be truncated).
drop schema if exists :schema cascade;
create schema :schema;
set search_path to :schema;

create table orders (id bigserial primary key, item text not null, quantity bigint not null);

create table today (
    id bigserial primary key,
    event_id text not null,
    topic text not null,
    key text,
    version integer not null,
    payload bytea not null,
    traceparent text,
    tracestate text,
    tx_id xid8 not null default pg_current_xact_id(),
    created_at timestamptz not null default clock_timestamp(),
    state smallint not null default 0,
    attempts integer not null default 0,
    last_error text,
    next_attempt_at timestamptz not null default '-infinity',
    sent_at timestamptz
);
create index on today (id) where state = 0;
create index on today (key, id) where state = 0;
create index on today (id) where state = 2;

-- The same row (and the same id sequence), keyed and partitioned by the writing transaction.
create table by_xid (like today including defaults, primary key (tx_id, id)) partition by range (tx_id);
create table by_xid_cursor (xid xid8 not null);
insert into by_xid_cursor values (pg_snapshot_xmin(pg_current_snapshot()));

\set key random(1, 1000000)
begin;
insert into orders (item, quantity) values ('book', 2) returning id;
insert into :table (event_id, topic, key, version, payload)
values ('0192f6a0-7c1e-7b3a-8f00-0123456789ab', 'store.orders', :key::text, 1,
        '\x7b226f726465725f6964223a3132332c226974656d223a22626f6f6b222c227175616e74697479223a327d'::bytea);
commit;

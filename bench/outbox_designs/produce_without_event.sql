begin;
insert into orders (item, quantity) values ('book', 2) returning id;
commit;

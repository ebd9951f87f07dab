#!/usr/bin/env bash
# The producers' transaction rate while a relay runs, with today's outbox and with one partitioned by
# transaction id whose relay deletes nothing, measured side by side with pgbench (SQL only: no
# broker, no Rust). Rounds interleave the four runs; each relay starts from an empty outbox.
# Needs psql and pgbench. MARTY_BENCH_POSTGRES_URL overrides the loopback default. Last stdout
# line: one JSON object.
set -euo pipefail
cd "$(dirname "$0")"

URL="${MARTY_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
SCHEMA=bench_outbox_designs
ROUNDS=5
SECONDS_PER_RUN=6
CLIENTS=8
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"; psql -q "$URL" -c "drop schema if exists $SCHEMA cascade" >/dev/null 2>&1 || true' EXIT
export PGOPTIONS="-c search_path=$SCHEMA -c client_min_messages=warning"

psql -q -v ON_ERROR_STOP=1 -v schema="$SCHEMA" "$URL" -f setup.sql >/dev/null
# Partitions of a million transaction ids each, from the current one on: enough for every run.
first=$(psql -tA "$URL" -c "select pg_current_xact_id()::text::bigint / 1000000 * 1000000")
for i in $(seq 0 9); do
  from=$((first + i * 1000000))
  echo "create table by_xid_$i partition of by_xid for values from ('$from') to ('$((from + 1000000))');"
done | psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null
for table in today by_xid; do sed "s/:table/$table/" produce.sql >"$WORK/produce_$table.sql"; done

# Producer transactions per second over one run, with `$2` (a relay script, or none) running beside.
producer_tps() {
  psql -q "$URL" -c "truncate today; update by_xid_cursor set xid = pg_snapshot_xmin(pg_current_snapshot())" >/dev/null
  local relay=""
  if [ "$2" != none ]; then
    # Simple protocol: the cursor relay splices its variables into the text.
    pgbench -n -M simple -c 1 -T $((SECONDS_PER_RUN + 1)) -f "$2" "$URL" >"$WORK/relay.log" 2>&1 &
    relay=$!
    sleep 0.5
  fi
  pgbench -n -M prepared -c $CLIENTS -j 2 -T $SECONDS_PER_RUN -f "$1" "$URL" 2>/dev/null | awk '/^tps/ {print $3}'
  if [ -n "$relay" ]; then
    wait "$relay" || { cat "$WORK/relay.log" >&2; exit 1; }
  fi
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

: >"$WORK/samples"
for round in $(seq 1 $ROUNDS); do
  plain=$(producer_tps produce_without_event.sql none)
  today_off=$(producer_tps "$WORK/produce_today.sql" none)
  today_on=$(producer_tps "$WORK/produce_today.sql" relay_today.sql)
  by_xid_off=$(producer_tps "$WORK/produce_by_xid.sql" none)
  by_xid_on=$(producer_tps "$WORK/produce_by_xid.sql" relay_by_xid.sql)
  echo "round $round: plain $plain, today $today_off / relay on $today_on, by_xid $by_xid_off / relay on $by_xid_on"
  echo "$(ratio "$today_off" "$plain") $(ratio "$by_xid_off" "$plain") $(ratio "$today_on" "$today_off") $(ratio "$by_xid_on" "$by_xid_off")" >>"$WORK/samples"
done
left=$(psql -tA "$URL" -c "select count(*) from by_xid where tx_id >= (select xid from by_xid_cursor)")
[ "$left" -lt 100000 ] || { echo "the cursor relay fell behind: $left rows left" >&2; exit 1; }

column() { cut -d' ' -f"$1" "$WORK/samples" | median; }
echo "{\"bench\":\"outbox_designs\",\"rounds\":$ROUNDS,\"business_ratio_today\":$(column 1),\"business_ratio_by_xid\":$(column 2),\"producer_ratio_today\":$(column 3),\"producer_ratio_by_xid\":$(column 4)}"

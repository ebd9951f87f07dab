//! One batch on PostgreSQL: rows of settled transactions only, in key order, claimed with `SKIP LOCKED`.

use super::{taken_of, BatchReport, Relay, Row};
use crate::store::clock_skew_seconds;

impl Relay {
    pub(super) async fn postgres_batch(&self, pool: &sqlx::PgPool) -> Result<BatchReport, sqlx::Error> {
        // Gate: only rows of transactions older than every transaction still running, so a row
        // whose transaction commits later can never be overtaken. Order: a row is published only
        // if no earlier pending row of its key is outside this batch. `now()` is shifted by the
        // skew of tokio's clock (0 but under a test's paused clock), as retries are scheduled.
        const TAKE: &str = "
            with batch as (
                select id, key from marty_outbox
                where state = 0 and next_attempt_at <= now() + make_interval(secs => $2)
                  and tx_id < pg_snapshot_xmin(pg_current_snapshot())
                order by id
                limit $1
                for update skip locked
            )
            select o.id, o.event_id, o.topic, o.key, o.version, o.payload, o.traceparent, o.tracestate, o.attempts
            from batch b join marty_outbox o on o.id = b.id
            where b.key is null or not exists (
                select 1 from marty_outbox p
                where p.key = b.key and p.id < b.id and p.state = 0
                  and p.id not in (select id from batch))";
        let mut tx = pool.begin().await?;
        let skew = clock_skew_seconds();
        let rows: Vec<Row> =
            sqlx::query_as(TAKE).bind(i64::from(self.options.batch_size)).bind(skew).fetch_all(&mut *tx).await?;
        let mut report = BatchReport { taken: rows.len(), ..BatchReport::default() };
        if rows.is_empty() {
            // Rows held back by the gate, or any transaction in progress (its commit may not wake
            // a relay that is not yet marked as waiting).
            report.waiting = sqlx::query_scalar(
                "select exists (select 1 from marty_outbox
                                where state = 0 and next_attempt_at <= now() + make_interval(secs => $1)
                                and tx_id >= pg_snapshot_xmin(pg_current_snapshot()))
                     or pg_snapshot_xmin(pg_current_snapshot()) < pg_snapshot_xmax(pg_current_snapshot())",
            )
            .bind(skew)
            .fetch_one(&mut *tx)
            .await?;
        }
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(report);
        }
        let taken = taken_of(rows);
        let settled = self.publish(&taken, &mut report).await;
        if !settled.sent.is_empty() {
            let mark_sent = if self.options.retention.is_zero() {
                "delete from marty_outbox where id = any($1)"
            } else {
                "update marty_outbox set state = 1, sent_at = now() where id = any($1)"
            };
            sqlx::query(mark_sent).bind(&settled.sent).execute(&mut *tx).await?;
        }
        for (id, attempts, park, problem) in &settled.rejected {
            sqlx::query(
                "update marty_outbox set attempts = $2, state = $3, last_error = $4,
                 next_attempt_at = now() + make_interval(secs => $5) where id = $1",
            )
            .bind(id)
            .bind(attempts)
            .bind(if *park { 2i16 } else { 0 })
            .bind(problem)
            .bind(Self::retry_delay(*attempts).as_secs_f64() + skew)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(report)
    }
}

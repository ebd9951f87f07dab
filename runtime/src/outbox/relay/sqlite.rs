//! One batch on SQLite: writers are serialised, so ids are in commit order; rows are claimed for a lease in one statement.

use super::{taken_of, BatchReport, Relay, Row};
use crate::store::unix_seconds;

impl Relay {
    pub(super) async fn sqlite_batch(&self, pool: &sqlx::SqlitePool) -> Result<BatchReport, sqlx::Error> {
        // SQLite serialises writers, so ids are in commit order and no gate is needed. Rows are
        // claimed for a lease in one statement (it has no row locks); a row is claimed only if no
        // earlier pending row of its key is claimed by someone else or waiting for its retry.
        const CLAIM: &str = "
            update marty_outbox set claimed_until = ?1 + ?2
            where id in (
                select o.id from marty_outbox o
                where o.state = 0 and o.claimed_until < ?1 and o.next_attempt_at <= ?1
                  and (o.key is null or not exists (
                      select 1 from marty_outbox p
                      where p.key = o.key and p.id < o.id and p.state = 0
                        and (p.claimed_until >= ?1 or p.next_attempt_at > ?1)))
                order by o.id
                limit ?3)
            returning id, event_id, topic, key, version, payload, traceparent, tracestate, attempts";
        let now = unix_seconds();
        let rows: Vec<Row> = sqlx::query_as(CLAIM)
            .bind(now)
            .bind(self.options.claim_lease.as_secs_f64())
            .bind(i64::from(self.options.batch_size))
            .fetch_all(pool)
            .await?;
        let mut report = BatchReport { taken: rows.len(), ..BatchReport::default() };
        if rows.is_empty() {
            return Ok(report);
        }
        let taken = taken_of(rows);
        let settled = self.publish(&taken, &mut report).await;
        let ids = |ids: &[i64]| format!("[{}]", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
        let mut tx = pool.begin().await?;
        if !settled.sent.is_empty() {
            let mark_sent = if self.options.retention.is_zero() {
                "delete from marty_outbox where ?1 > 0 and id in (select value from json_each(?2))"
            } else {
                "update marty_outbox set state = 1, sent_at = ?1, claimed_until = 0
                 where id in (select value from json_each(?2))"
            };
            sqlx::query(mark_sent).bind(unix_seconds()).bind(ids(&settled.sent)).execute(&mut *tx).await?;
        }
        if !settled.unavailable.is_empty() {
            sqlx::query("update marty_outbox set claimed_until = 0 where id in (select value from json_each(?))")
                .bind(ids(&settled.unavailable))
                .execute(&mut *tx)
                .await?;
        }
        for (id, attempts, park, problem) in &settled.rejected {
            sqlx::query(
                "update marty_outbox set attempts = ?, state = ?, last_error = ?, next_attempt_at = ?,
                 claimed_until = 0 where id = ?",
            )
            .bind(attempts)
            .bind(if *park { 2i64 } else { 0 })
            .bind(problem)
            .bind(unix_seconds() + Self::retry_delay(*attempts).as_secs_f64())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(report)
    }
}

//! The audit trail: who did what, whether it was allowed, and why.
//!
//! - **Requests** (feature `security`): every request the service turns away (401, 403, 429, 503
//!   before keys were fetched; gRPC alike) and every allowed request to a route marked
//!   `#[audit]` is written as one event on the tracing target `marty::audit`, with `who` (the
//!   caller's subject, or `anonymous`), `what` (`POST /orders`, or the gRPC method), `decision`
//!   (`allowed` / `denied`), `reason`, `request_id`, `trace_id` and `time` (RFC 3339). Route the
//!   target to your audit store with the log pipeline (`RUST_LOG=marty::audit=info`); it never
//!   holds a token or key.
//! - **Changes** (features `events` and `postgres` or `sqlite`): `record` writes an [`AuditRecord`]
//!   to the outbox in the transaction of the change it describes, so the record exists exactly when
//!   the change does, and reaches the broker (topic `marty.audit`) like any event.

use std::time::{SystemTime, UNIX_EPOCH};

/// One audited decision or change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "events", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct AuditRecord {
    /// Who: the caller's subject (`Principal::subject`), or `anonymous`.
    pub who: String,
    /// What: the route (`POST /orders`), gRPC method, or change (`order 42 cancelled`).
    pub what: String,
    /// `allowed`, `denied`, or what happened (`cancelled`).
    pub decision: String,
    /// Why, when there is more to say.
    pub reason: Option<String>,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
    /// The W3C trace it belongs to.
    pub trace_id: Option<String>,
    /// When, RFC 3339 in UTC with milliseconds.
    pub time: String,
}

impl AuditRecord {
    /// A record made now, in the current trace (when telemetry exports one).
    pub fn new(who: impl Into<String>, what: impl Into<String>, decision: impl Into<String>) -> Self {
        AuditRecord {
            who: who.into(),
            what: what.into(),
            decision: decision.into(),
            reason: None,
            request_id: None,
            trace_id: crate::telemetry::otel::trace_id(&tracing::Span::current()),
            time: rfc3339(SystemTime::now()),
        }
    }

    /// With why.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// With the request's id (its `x-request-id` header).
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Writes it on the `marty::audit` target.
    pub fn log(&self) {
        tracing::info!(
            target: "marty::audit",
            who = %self.who,
            what = %self.what,
            decision = %self.decision,
            reason = self.reason.as_deref(),
            request_id = self.request_id.as_deref(),
            trace_id = self.trace_id.as_deref(),
            time = %self.time,
            "audit"
        );
    }
}

#[cfg(feature = "events")]
impl crate::events::Event for AuditRecord {
    const TOPIC: &'static str = "marty.audit";
    const VERSION: u32 = 1;

    /// Records of one subject keep their order.
    fn key(&self) -> Option<String> {
        Some(self.who.clone())
    }
}

/// Writes `record` to the outbox in `tx`, with the change it describes: it exists, and is published
/// on `marty.audit`, exactly when `tx` commits.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub async fn record<T>(tx: &mut T, record: &AuditRecord) -> Result<(), sqlx::Error>
where
    T: crate::outbox::OutboxTransaction + ?Sized,
{
    crate::outbox::publish(tx, record).await
}

/// A time as audit records (and `cargo marty`) write it: RFC 3339 in UTC, to the millisecond,
/// `2026-12-03T08:05:09.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, of_day) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(951_827_696_789);
        assert_eq!(super::rfc3339(leap_day), "2000-02-29T12:34:56.789Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_796_285_109);
        assert_eq!(super::rfc3339(later), "2026-12-03T08:05:09.000Z");
    }
}

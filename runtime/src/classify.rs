//! Which errors count against a dependency's health, which are worth retrying, and whether a failed
//! call may still have taken effect on the other side.
//!
//! The breaker and retry only see a call's error through [`Classify`]: timeouts and broken
//! connections are failures worth retrying; "not found" or a constraint violation means the
//! dependency answered, so it neither opens the breaker nor is retried; a call Marty's own breaker
//! or bulkhead turned away never reached the dependency at all.
//!
//! Sagas ask one more question, [`Classify::may_have_applied`]: when a call fails, did its effect
//! (a charge, a reservation, a row) perhaps happen anyway? Only an error that certainly came before
//! any effect says no: Marty's own rejections, a refused connection, a request known not to have
//! been sent, or an answer from the other side that it did nothing. A connection lost after the
//! request was written, a timeout, an `Internal` or `Unknown` status, a 502/503/504 from a proxy:
//! the other side may have done the work and died before replying, so the answer is "maybe". A call
//! the policy retried speaks only of its last attempt; the saga orchestrator, which must know,
//! also counts the retry itself as a "maybe".

use std::error::Error as StdError;
use std::time::Duration;

use crate::error::{CallError, Error};

/// What an error says about the dependency that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The dependency failed in a way that may pass (connection lost, timeout, overload): counts as a
    /// failure for the circuit breaker and is retried.
    Transient,
    /// The dependency failed and trying again will not help (corrupt data, internal error): counts as a
    /// failure for the circuit breaker, not retried.
    Failure,
    /// The dependency worked and the answer is an error for the caller (not found, invalid input,
    /// constraint violated): counts as a success for the circuit breaker, not retried.
    Expected,
    /// Marty turned the call away before it started (the circuit breaker is open, the bulkhead is
    /// full): the dependency was not called. The call's own breaker never sees it and its retry does
    /// not retry it, which would only add load; a saga step waits `retry_after` and tries again
    /// without using up an attempt. (Met by an outer call, as the error of a call it made, it is
    /// that call's failure.)
    TurnedAway {
        /// How long until trying again makes sense: the breaker's remaining `open_for`, zero while a
        /// half-open breaker's trial calls are taken, one second for a full bulkhead.
        retry_after: Duration,
    },
}

impl ErrorClass {
    /// Whether a circuit breaker records this as a failure: every class but `Expected`.
    pub fn is_failure(self) -> bool {
        self != ErrorClass::Expected
    }

    /// Whether retry may try again.
    pub fn is_transient(self) -> bool {
        self == ErrorClass::Transient
    }

    /// When Marty turned the call away: how long until trying again makes sense.
    pub fn turned_away(self) -> Option<Duration> {
        match self {
            ErrorClass::TurnedAway { retry_after } => Some(retry_after),
            _ => None,
        }
    }

    /// Whether an error of this class may have let its call take effect, when nothing more is known:
    /// a call turned away, or answered with an expected error, did not; a failed one may have.
    pub fn may_have_applied(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Failure)
    }

    /// How to read an HTTP error status from a dependency, for clients Marty has no impl for:
    /// 408, 429, 502, 503 and 504 are transient (a proxy or an overloaded server: the request may
    /// still have been carried out), other 5xx are failures, everything else is the dependency's
    /// answer to the caller.
    ///
    /// ```
    /// use marty::ErrorClass;
    /// assert_eq!(ErrorClass::from_http_status(503), ErrorClass::Transient);
    /// assert!(ErrorClass::from_http_status(504).may_have_applied());
    /// assert!(!ErrorClass::from_http_status(404).may_have_applied());
    /// ```
    pub fn from_http_status(status: u16) -> ErrorClass {
        match status {
            408 | 429 | 502 | 503 | 504 => ErrorClass::Transient,
            500..=599 => ErrorClass::Failure,
            _ => ErrorClass::Expected,
        }
    }
}

/// Classifies an error for the circuit breaker, retry and sagas.
///
/// Marty implements it for `std::io::Error`, `marty::Error`, `CallError<E>`, boxed errors, and with
/// the `sqlx`, `tonic` and `reqwest` features for `sqlx::Error`, `tonic::Status` and `reqwest::Error`.
/// For your own error type, delegate both methods to the error it wraps; a single call can also
/// override `classify` with `classify = path::to_fn`.
///
/// ```
/// use marty::{Classify, ErrorClass};
///
/// #[derive(Debug)]
/// enum PaymentError {
///     Declined,
///     Io(std::io::Error),
///     Resilience(marty::Error),
/// }
///
/// impl Classify for PaymentError {
///     fn classify(&self) -> ErrorClass {
///         match self {
///             PaymentError::Declined => ErrorClass::Expected,
///             PaymentError::Io(error) => error.classify(),
///             PaymentError::Resilience(error) => error.classify(),
///         }
///     }
///
///     fn may_have_applied(&self) -> bool {
///         match self {
///             PaymentError::Declined => false,
///             PaymentError::Io(error) => error.may_have_applied(),
///             PaymentError::Resilience(error) => error.may_have_applied(),
///         }
///     }
/// }
///
/// let refused = PaymentError::Io(std::io::ErrorKind::ConnectionRefused.into());
/// assert!(refused.classify().is_transient() && !refused.may_have_applied());
/// let reset = PaymentError::Io(std::io::ErrorKind::ConnectionReset.into());
/// assert!(reset.classify().is_transient() && reset.may_have_applied());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say which of its errors are transient",
    label = "Marty asks the error whether a retry may help",
    note = "use an error type that says it (`marty::saga::StepError`, `marty::CallError<E>`, `std::io::Error`, `sqlx::Error`, `tonic::Status`), or implement `marty::Classify` for your own: `Transient` for errors worth retrying, `Failure` for other dependency failures, `Expected` for answers such as \"not found\""
)]
pub trait Classify {
    /// What this error says about the dependency.
    fn classify(&self) -> ErrorClass;

    /// Whether the failed call may have taken effect on the other side before it failed. A saga
    /// compensates a step whose failed attempts may have applied, so `true` is the safe answer;
    /// `false` only when the error certainly came before any effect.
    ///
    /// The default answers from [`classify`](Classify::classify) ([`ErrorClass::may_have_applied`]):
    /// a refused connection is then a "maybe", which costs a compensation that finds nothing to undo.
    /// Delegate it wherever you delegate `classify` to keep the wrapped error's precise answer.
    fn may_have_applied(&self) -> bool {
        self.classify().may_have_applied()
    }
}

impl Classify for Error {
    fn classify(&self) -> ErrorClass {
        match self {
            // An injected fault stands for a dependency's transient failure: retried, counted by the breaker.
            Error::Timeout { .. } | Error::InjectedFault { .. } => ErrorClass::Transient,
            Error::Rejected { .. } | Error::CircuitOpen { .. } => {
                ErrorClass::TurnedAway { retry_after: self.retry_after().unwrap_or(Duration::from_secs(1)) }
            }
            Error::Config(_) => ErrorClass::Failure,
        }
    }

    fn may_have_applied(&self) -> bool {
        // A timeout may have cut the call short after its effect; the others stopped it before it began.
        matches!(self, Error::Timeout { .. })
    }
}

impl<E: Classify> Classify for CallError<E> {
    fn classify(&self) -> ErrorClass {
        match self {
            CallError::Resilience(error) => error.classify(),
            CallError::Inner(error) => error.classify(),
        }
    }

    fn may_have_applied(&self) -> bool {
        match self {
            CallError::Resilience(error) => error.may_have_applied(),
            CallError::Inner(error) => error.may_have_applied(),
        }
    }
}

impl Classify for std::io::Error {
    fn classify(&self) -> ErrorClass {
        classify_io_kind(self.kind())
    }

    fn may_have_applied(&self) -> bool {
        !never_sent(self.kind()) && self.classify().may_have_applied()
    }
}

fn classify_io_kind(kind: std::io::ErrorKind) -> ErrorClass {
    use std::io::ErrorKind::*;
    match kind {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe | TimedOut
        | Interrupted | WouldBlock | UnexpectedEof | HostUnreachable | NetworkUnreachable | NetworkDown
        | AddrNotAvailable => ErrorClass::Transient,
        NotFound | AlreadyExists | InvalidInput | PermissionDenied => ErrorClass::Expected,
        _ => ErrorClass::Failure,
    }
}

/// The I/O errors that only happen before a connection exists, so nothing was sent on it.
fn never_sent(kind: std::io::ErrorKind) -> bool {
    matches!(kind, std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable)
}

/// Whether `error` was caused, anywhere down its `source()` chain, by a connection that was never
/// made: client libraries wrap the refused `connect` in errors of their own.
fn never_connected(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.downcast_ref::<std::io::Error>().is_some_and(|io| never_sent(io.kind())) {
            return true;
        }
        next = error.source();
    }
    false
}

/// Boxed errors are classified by what they hold when Marty knows the type, else as failures (that
/// may have applied, unless a refused connection caused them).
impl Classify for Box<dyn StdError + Send + Sync> {
    fn classify(&self) -> ErrorClass {
        match known(self.as_ref()) {
            Some(known) => known.classify(),
            None => ErrorClass::Failure,
        }
    }

    fn may_have_applied(&self) -> bool {
        match known(self.as_ref()) {
            Some(known) => known.may_have_applied(),
            None => !never_connected(self.as_ref()),
        }
    }
}

/// The error behind a boxed one, when it is of a type Marty classifies.
fn known<'a>(error: &'a (dyn StdError + Send + Sync + 'static)) -> Option<&'a dyn Classify> {
    if let Some(error) = error.downcast_ref::<Error>() {
        return Some(error);
    }
    if let Some(error) = error.downcast_ref::<std::io::Error>() {
        return Some(error);
    }
    #[cfg(feature = "sqlx")]
    if let Some(error) = error.downcast_ref::<sqlx::Error>() {
        return Some(error);
    }
    #[cfg(feature = "tonic")]
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return Some(status);
    }
    #[cfg(feature = "reqwest")]
    if let Some(error) = error.downcast_ref::<reqwest::Error>() {
        return Some(error);
    }
    None
}

#[cfg(feature = "sqlx")]
impl Classify for sqlx::Error {
    fn classify(&self) -> ErrorClass {
        use sqlx::Error::*;
        match self {
            Io(error) => error.classify(),
            PoolTimedOut | PoolClosed | WorkerCrashed | Tls(_) | Protocol(_) => ErrorClass::Transient,
            RowNotFound
            | TypeNotFound { .. }
            | ColumnNotFound(_)
            | ColumnIndexOutOfBounds { .. }
            | Encode(_)
            | InvalidArgument(_) => ErrorClass::Expected,
            Database(error) => classify_database_code(error.code().as_deref()),
            _ => ErrorClass::Failure,
        }
    }

    fn may_have_applied(&self) -> bool {
        use sqlx::Error::*;
        match self {
            Io(error) => error.may_have_applied(),
            // No connection was had (or made): no statement was sent.
            PoolTimedOut | PoolClosed | Configuration(_) | Tls(_) => false,
            _ => self.classify().may_have_applied(),
        }
    }
}

/// Database error codes: SQLSTATE for PostgreSQL and MySQL, result codes for SQLite.
#[cfg(feature = "sqlx")]
fn classify_database_code(code: Option<&str>) -> ErrorClass {
    match code {
        // PostgreSQL / SQL standard: serialization failure, deadlock, connection exceptions (08xxx),
        // insufficient resources (53xxx), operator intervention such as admin shutdown (57Pxx).
        Some("40001" | "40P01") => ErrorClass::Transient,
        Some(code) if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") => {
            ErrorClass::Transient
        }
        // Constraint violations and bad input (SQLSTATE classes 22 and 23).
        Some(code) if code.len() == 5 && (code.starts_with("22") || code.starts_with("23")) => ErrorClass::Expected,
        // SQLite result codes are short numbers; the low byte is the primary code: BUSY (5), LOCKED (6)
        // and CANTOPEN (14) pass, CONSTRAINT (19) is the caller's.
        Some(code) if code.len() < 5 => match code.parse::<u32>().map(|c| c & 0xff) {
            Ok(5 | 6 | 14) => ErrorClass::Transient,
            Ok(19) => ErrorClass::Expected,
            _ => ErrorClass::Failure,
        },
        _ => ErrorClass::Failure,
    }
}

/// A status the server sent is its answer; a status with a `source` was made by the client from its
/// own transport failing (tonic maps a lost connection to `Unknown` or `Cancelled`, a refused one to
/// `Unavailable`), so it is transient whatever its code, and it may have applied unless the
/// connection was never made.
#[cfg(feature = "tonic")]
impl Classify for tonic::Status {
    fn classify(&self) -> ErrorClass {
        use tonic::Code::*;
        let from_transport = StdError::source(self).is_some();
        match self.code() {
            Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled => ErrorClass::Transient,
            _ if from_transport => ErrorClass::Transient,
            Internal | Unknown | DataLoss => ErrorClass::Failure,
            _ => ErrorClass::Expected,
        }
    }

    fn may_have_applied(&self) -> bool {
        !never_connected(self) && self.classify().may_have_applied()
    }
}

/// An HTTP error status is read with [`ErrorClass::from_http_status`]; a failure to connect never
/// sent the request; a timeout or a connection lost while sending or receiving may have applied.
#[cfg(feature = "reqwest")]
impl Classify for reqwest::Error {
    fn classify(&self) -> ErrorClass {
        if let Some(status) = self.status() {
            return ErrorClass::from_http_status(status.as_u16());
        }
        if self.is_builder() || self.is_redirect() {
            // The caller's request (or the redirect policy) is at fault, not the dependency.
            ErrorClass::Expected
        } else if self.is_decode() {
            ErrorClass::Failure
        } else {
            // Connect, timeout, request and body errors: the connection or the server went away.
            ErrorClass::Transient
        }
    }

    fn may_have_applied(&self) -> bool {
        if self.is_builder() || self.is_connect() || never_connected(self) {
            return false;
        }
        // A body that cannot be decoded came with a success status, and a redirect answered a request
        // that was carried out (a POST answered 303): the call may well have taken effect.
        self.is_decode() || self.is_redirect() || self.classify().may_have_applied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn io_errors_split_into_transient_and_expected() {
        assert_eq!(io::Error::from(io::ErrorKind::ConnectionRefused).classify(), ErrorClass::Transient);
        assert_eq!(io::Error::from(io::ErrorKind::NotFound).classify(), ErrorClass::Expected);
        assert_eq!(io::Error::other("disk on fire").classify(), ErrorClass::Failure);
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(boxed.classify(), ErrorClass::Transient);
    }

    #[test]
    fn only_a_connection_never_made_certainly_did_not_apply() {
        assert!(!io::Error::from(io::ErrorKind::ConnectionRefused).may_have_applied());
        for kind in [io::ErrorKind::ConnectionReset, io::ErrorKind::UnexpectedEof, io::ErrorKind::TimedOut] {
            assert!(io::Error::from(kind).may_have_applied(), "{kind:?}");
        }
        assert!(!io::Error::from(io::ErrorKind::NotFound).may_have_applied(), "an answer, not a failure");
        // Wrapped in an error of a client library, as hyper-util and tonic wrap their connect errors.
        #[derive(Debug)]
        struct ConnectFailed(io::Error);
        impl std::fmt::Display for ConnectFailed {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl StdError for ConnectFailed {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let refused: Box<dyn StdError + Send + Sync> = Box::new(ConnectFailed(io::ErrorKind::ConnectionRefused.into()));
        assert!(!refused.may_have_applied());
        let reset: Box<dyn StdError + Send + Sync> = Box::new(ConnectFailed(io::ErrorKind::ConnectionReset.into()));
        assert!(reset.may_have_applied());
    }

    #[test]
    fn marty_turns_calls_away_before_they_start() {
        let open = Error::CircuitOpen { dependency: "db".into(), retry_after: Duration::from_secs(7) };
        assert_eq!(open.classify(), ErrorClass::TurnedAway { retry_after: Duration::from_secs(7) });
        assert!(!open.classify().is_transient() && !open.may_have_applied());
        assert!(open.classify().is_failure(), "an outer call's breaker counts it against that call");
        let full = Error::Rejected { dependency: "db".into(), max_concurrent: 4 };
        assert_eq!(full.classify().turned_away(), Some(Duration::from_secs(1)));
        assert!(!full.may_have_applied());
        let slow = Error::Timeout { dependency: "db".into(), timeout: Duration::from_secs(1) };
        assert!(slow.classify().is_transient() && slow.may_have_applied());
        let wrapped: CallError<io::Error> = CallError::Resilience(open);
        assert!(!wrapped.may_have_applied());
        assert!(CallError::<io::Error>::Inner(io::ErrorKind::BrokenPipe.into()).may_have_applied());
    }

    #[test]
    fn http_statuses_from_proxies_are_transient_and_may_have_applied() {
        for status in [502, 503, 504, 408, 429] {
            assert_eq!(ErrorClass::from_http_status(status), ErrorClass::Transient, "{status}");
            assert!(ErrorClass::from_http_status(status).may_have_applied(), "{status}");
        }
        assert_eq!(ErrorClass::from_http_status(500), ErrorClass::Failure);
        assert_eq!(ErrorClass::from_http_status(409), ErrorClass::Expected);
        assert!(!ErrorClass::from_http_status(422).may_have_applied());
    }

    #[cfg(feature = "sqlx")]
    #[test]
    fn database_codes_are_classified_by_sqlstate_and_sqlite_result_code() {
        assert_eq!(classify_database_code(Some("40001")), ErrorClass::Transient);
        assert_eq!(classify_database_code(Some("08006")), ErrorClass::Transient);
        assert_eq!(classify_database_code(Some("23505")), ErrorClass::Expected);
        assert_eq!(classify_database_code(Some("5")), ErrorClass::Transient);
        assert_eq!(classify_database_code(Some("2067")), ErrorClass::Expected, "SQLITE_CONSTRAINT_UNIQUE");
        assert_eq!(classify_database_code(Some("42P01")), ErrorClass::Failure);
        assert_eq!(sqlx::Error::RowNotFound.classify(), ErrorClass::Expected);
        assert!(!sqlx::Error::PoolTimedOut.may_have_applied(), "no connection, no statement");
        assert!(sqlx::Error::Io(io::ErrorKind::ConnectionReset.into()).may_have_applied());
        assert!(!sqlx::Error::Io(io::ErrorKind::ConnectionRefused.into()).may_have_applied());
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn grpc_statuses_follow_their_retry_semantics() {
        assert_eq!(tonic::Status::unavailable("down").classify(), ErrorClass::Transient);
        assert_eq!(tonic::Status::deadline_exceeded("slow").classify(), ErrorClass::Transient);
        assert_eq!(tonic::Status::cancelled("reset").classify(), ErrorClass::Transient);
        assert_eq!(tonic::Status::internal("bug").classify(), ErrorClass::Failure);
        assert_eq!(tonic::Status::not_found("no such order").classify(), ErrorClass::Expected);
        assert_eq!(tonic::Status::invalid_argument("bad id").classify(), ErrorClass::Expected);
        // An answer that says no did nothing; a server's `UNAVAILABLE` (or a proxy's 503) may have.
        assert!(!tonic::Status::failed_precondition("declined").may_have_applied());
        assert!(tonic::Status::unavailable("down").may_have_applied());
        assert!(tonic::Status::internal("bug").may_have_applied());
    }
}

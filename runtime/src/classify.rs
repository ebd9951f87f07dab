//! Which errors count against a dependency's health and which are worth retrying.
//!
//! The breaker and retry only see a call's error through [`Classify`]: timeouts and broken
//! connections are failures worth retrying; "not found" or a constraint violation means the
//! dependency answered, so it neither opens the breaker nor is retried.

use crate::error::{CallError, Error};

/// What an error says about the dependency that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

impl ErrorClass {
    /// Whether the circuit breaker records this as a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Failure)
    }

    /// Whether retry may try again.
    pub fn is_transient(self) -> bool {
        self == ErrorClass::Transient
    }
}

/// Classifies an error for the circuit breaker and retry.
///
/// Marty implements it for `std::io::Error`, `marty::Error`, `CallError<E>`, boxed errors, and with the
/// `sqlx` and `tonic` features for `sqlx::Error` and `tonic::Status`. For your own error type, delegate
/// to the error it wraps; a single call can also override it with `classify = path::to_fn`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say which of its errors are transient",
    label = "Marty needs to classify this error for the circuit breaker and retry",
    note = "implement `marty::Classify` for `{Self}`: return `ErrorClass::Transient` for errors worth retrying, `Failure` for other dependency failures, `Expected` for answers such as \"not found\""
)]
pub trait Classify {
    /// What this error says about the dependency.
    fn classify(&self) -> ErrorClass;
}

impl Classify for Error {
    fn classify(&self) -> ErrorClass {
        match self {
            Error::Timeout { .. } => ErrorClass::Transient,
            // Retrying into a full bulkhead or an open breaker only adds load; they are not the
            // dependency's answers either, so they are not recorded again.
            Error::Rejected { .. } | Error::CircuitOpen { .. } | Error::Config(_) => ErrorClass::Failure,
        }
    }
}

impl<E: Classify> Classify for CallError<E> {
    fn classify(&self) -> ErrorClass {
        match self {
            CallError::Resilience(error) => error.classify(),
            CallError::Inner(error) => error.classify(),
        }
    }
}

impl Classify for std::io::Error {
    fn classify(&self) -> ErrorClass {
        classify_io_kind(self.kind())
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

/// Boxed errors are classified by what they hold when Marty knows the type, else as failures.
impl Classify for Box<dyn std::error::Error + Send + Sync> {
    fn classify(&self) -> ErrorClass {
        if let Some(error) = self.downcast_ref::<Error>() {
            return error.classify();
        }
        if let Some(error) = self.downcast_ref::<std::io::Error>() {
            return error.classify();
        }
        #[cfg(feature = "sqlx")]
        if let Some(error) = self.downcast_ref::<sqlx::Error>() {
            return error.classify();
        }
        #[cfg(feature = "tonic")]
        if let Some(status) = self.downcast_ref::<tonic::Status>() {
            return status.classify();
        }
        ErrorClass::Failure
    }
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

#[cfg(feature = "tonic")]
impl Classify for tonic::Status {
    fn classify(&self) -> ErrorClass {
        use tonic::Code::*;
        match self.code() {
            Unavailable | DeadlineExceeded | ResourceExhausted | Aborted => ErrorClass::Transient,
            Internal | Unknown | DataLoss => ErrorClass::Failure,
            _ => ErrorClass::Expected,
        }
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
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(boxed.classify(), ErrorClass::Transient);
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
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn grpc_statuses_follow_their_retry_semantics() {
        assert_eq!(tonic::Status::unavailable("down").classify(), ErrorClass::Transient);
        assert_eq!(tonic::Status::deadline_exceeded("slow").classify(), ErrorClass::Transient);
        assert_eq!(tonic::Status::internal("bug").classify(), ErrorClass::Failure);
        assert_eq!(tonic::Status::not_found("no such order").classify(), ErrorClass::Expected);
        assert_eq!(tonic::Status::invalid_argument("bad id").classify(), ErrorClass::Expected);
    }
}

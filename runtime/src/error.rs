//! The errors the framework itself produces, and how they reach the user's error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use marty_config::ConfigErrors;

/// An error produced by Marty rather than by the wrapped call: the call was not made, or was cut short.
///
/// A function under `#[database_call]` returns its own error type `E`; these errors reach it through
/// `E: From<marty::Error>`. Each variant says what happened and when trying again makes sense.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The dependency's bulkhead was full for longer than `max_wait`: the call was not made.
    Rejected {
        /// The dependency's name in `marty.toml`.
        dependency: Arc<str>,
        /// Its bulkhead size.
        max_concurrent: usize,
    },
    /// The attempt (bulkhead wait included) took longer than the timeout and was cancelled.
    Timeout {
        /// The dependency's name in `marty.toml`.
        dependency: Arc<str>,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The dependency's circuit breaker is open: the call was not made.
    CircuitOpen {
        /// The dependency's name in `marty.toml`.
        dependency: Arc<str>,
        /// How long until the breaker lets trial calls through.
        retry_after: Duration,
    },
    /// A fault injected under `[dependencies.<name>.fault]` (`error_rate`): the call was not made,
    /// and the attempt failed as a transient error of the dependency would.
    InjectedFault {
        /// The dependency's name in `marty.toml`.
        dependency: Arc<str>,
    },
    /// The configuration could not be loaded or does not declare the dependency.
    Config(Arc<ConfigErrors>),
}

impl Error {
    /// The dependency the error is about, if any.
    pub fn dependency(&self) -> Option<&str> {
        match self {
            Error::Rejected { dependency, .. }
            | Error::Timeout { dependency, .. }
            | Error::CircuitOpen { dependency, .. }
            | Error::InjectedFault { dependency } => Some(dependency),
            Error::Config(_) => None,
        }
    }

    /// When a client may try again (a `Retry-After` header, a gRPC retry hint), if the error knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::CircuitOpen { retry_after, .. } => Some(*retry_after),
            Error::Rejected { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The HTTP status this error maps to: 503 for shed load and injected faults, 504 for a
    /// timeout, 500 for configuration.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Rejected { .. } | Error::CircuitOpen { .. } | Error::InjectedFault { .. } => 503,
            Error::Timeout { .. } => 504,
            Error::Config(_) => 500,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rejected { dependency, max_concurrent } => {
                write!(f, "call to `{dependency}` rejected: all {max_concurrent} bulkhead permits are in use")
            }
            Error::Timeout { dependency, timeout } => {
                write!(f, "call to `{dependency}` timed out after {}", marty_config::format_duration(*timeout))
            }
            Error::CircuitOpen { dependency, retry_after } => {
                write!(
                    f,
                    "call to `{dependency}` short-circuited: the circuit breaker is open (trial calls in {retry_after:.1?})"
                )
            }
            Error::InjectedFault { dependency } => {
                write!(f, "call to `{dependency}` failed by an injected fault (`[dependencies.{dependency}.fault]`)")
            }
            Error::Config(errors) => write!(f, "invalid Marty configuration:\n{errors}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(any(feature = "http", feature = "tonic"))]
impl Error {
    /// Writes what a client is not told: which dependency failed and how. Throttled per dependency
    /// and kind, so a flood of shed requests writes one line a window with the count.
    pub(crate) fn log_for_operators(&self) {
        static LINES: std::sync::OnceLock<crate::throttled_log::Throttle<(Arc<str>, u16)>> = std::sync::OnceLock::new();
        let lines = LINES.get_or_init(|| crate::throttled_log::Throttle::new(crate::throttled_log::WINDOW));
        let key = (self.dependency().map_or_else(|| Arc::from(""), Arc::from), self.http_status());
        let Some(count) = lines.hit_for(key) else { return };
        let window = marty_config::format_duration(crate::throttled_log::WINDOW);
        match self {
            Error::Config(errors) => {
                tracing::error!(%errors, count, "{count} requests failed on invalid configuration in the last {window}")
            }
            Error::Rejected { dependency, .. } | Error::CircuitOpen { dependency, .. } => tracing::warn!(
                dependency = &**dependency,
                count,
                latest = %self,
                "{count} calls to `{dependency}` turned away in the last {window}"
            ),
            Error::Timeout { dependency, .. } => tracing::warn!(
                dependency = &**dependency,
                count,
                latest = %self,
                "{count} calls to `{dependency}` timed out in the last {window}"
            ),
            Error::InjectedFault { dependency } => tracing::warn!(
                dependency = &**dependency,
                count,
                "{count} calls to `{dependency}` failed by injected faults in the last {window}"
            ),
        }
    }
}

/// The gRPC status a framework error answers with: shed load and open breakers are `UNAVAILABLE`
/// (clients may retry), timeouts `DEADLINE_EXCEEDED`, configuration problems `INTERNAL`. The message
/// says nothing of the service's insides; those go to the log (`Error::log_for_operators`).
#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        error.log_for_operators();
        match &error {
            Error::Rejected { .. } | Error::CircuitOpen { .. } | Error::InjectedFault { .. } => {
                tonic::Status::unavailable("the service cannot take this call now; try again later")
            }
            Error::Timeout { .. } => tonic::Status::deadline_exceeded("the call did not complete in time"),
            Error::Config(_) => tonic::Status::internal("the call failed unexpectedly"),
        }
    }
}

/// A wrapped call's error when the inner error type cannot hold Marty's own (an `io::Error`, a
/// `sqlx::Error`): either the framework stopped the call, or the call itself failed.
#[derive(Debug)]
pub enum CallError<E> {
    /// The framework stopped or cut short the call.
    Resilience(Error),
    /// The call ran and failed.
    Inner(E),
}

impl<E> From<Error> for CallError<E> {
    fn from(error: Error) -> Self {
        CallError::Resilience(error)
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Resilience(error) => error.fmt(f),
            CallError::Inner(error) => error.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Resilience(error) => Some(error),
            CallError::Inner(error) => Some(error),
        }
    }
}

/// Implemented by every error type that can carry Marty's errors, i.e. every `E: From<marty::Error>`.
/// The macros assert it on the user's error type so a missing conversion is reported at the return type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold the errors Marty produces (bulkhead full, timeout, circuit open)",
    label = "this error type needs `impl From<marty::Error> for {Self}`",
    note = "return `marty::CallError<{Self}>`, which holds both; or, when `{Self}` is your own type, implement `From<marty::Error>` for it"
)]
pub trait HoldsMartyErrors: From<Error> {}

impl<E: From<Error>> HoldsMartyErrors for E {}

#[cfg(all(test, feature = "tonic"))]
mod tests {
    use super::*;

    #[test]
    fn framework_errors_become_the_matching_grpc_statuses() {
        let dependency: Arc<str> = "db".into();
        let open = Error::CircuitOpen { dependency: dependency.clone(), retry_after: Duration::from_secs(3) };
        assert_eq!(tonic::Status::from(open).code(), tonic::Code::Unavailable);
        let full = Error::Rejected { dependency: dependency.clone(), max_concurrent: 4 };
        assert_eq!(tonic::Status::from(full).code(), tonic::Code::Unavailable);
        let slow = Error::Timeout { dependency, timeout: Duration::from_secs(1) };
        let status = tonic::Status::from(slow);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(!status.message().contains("db"), "no internals for clients: {}", status.message());
    }
}

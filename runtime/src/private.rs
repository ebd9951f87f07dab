//! The macro -> runtime contract. Everything an expansion of `#[database_call]` (and friends) touches
//! is here, so the macros never name runtime internals elsewhere.
//!
//! Not public API: no semver guarantee; only the macros of the same version may use it.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

pub use core;
pub use marty_config::{Backoff, DependencyKind};
pub use std::string::String;

#[cfg(feature = "events")]
pub use crate::events::Event;

use crate::classify::{Classify, ErrorClass};
use crate::error::{Error, HoldsMartyErrors};
use crate::policy::CallPolicy;
use crate::registry::DependencyRegistry;
use crate::retry::RetryPolicy;

/// A call site's retry override from its attribute.
#[derive(Debug, Clone, Copy)]
pub enum RetryOverride {
    /// Use the dependency's `retry`.
    Inherit,
    /// `retry = false`: one attempt.
    Off,
    /// `retry(...)`: these fields replace the dependency's.
    Set {
        /// `max_attempts`.
        max_attempts: Option<u32>,
        /// `backoff`.
        backoff: Option<Backoff>,
        /// `initial`.
        initial: Option<Duration>,
        /// `max`.
        max: Option<Duration>,
        /// `jitter`.
        jitter: Option<bool>,
    },
}

/// One annotated fn: what its attribute said, and its policy once resolved.
#[derive(Debug)]
pub struct CallSite {
    dependency: &'static str,
    kind: DependencyKind,
    operation: &'static str,
    timeout: Option<Duration>,
    retry: RetryOverride,
    config_path: &'static str,
    config_text: &'static str,
    /// Kept once resolved; a failure is not kept, so a configuration fixed later (see
    /// [`DependencyRegistry::global_or_load`]) takes effect.
    policy: OnceLock<CallPolicy>,
}

impl CallSite {
    /// What the attribute said. `config_text` is the file as it compiled, used when the file is not
    /// found at run time.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        dependency: &'static str,
        kind: DependencyKind,
        operation: &'static str,
        timeout: Option<Duration>,
        retry: RetryOverride,
        config_path: &'static str,
        config_text: &'static str,
    ) -> Self {
        CallSite { dependency, kind, operation, timeout, retry, config_path, config_text, policy: OnceLock::new() }
    }

    /// The call site's policy: in the runtime in scope when it is not the global one (a test's,
    /// a second service's), else the global registry's, resolved on first use and kept.
    #[inline]
    pub fn policy(&'static self) -> Result<SitePolicy, Error> {
        if let Some(runtime) = crate::Runtime::scoped_other() {
            let site = std::ptr::from_ref(self) as usize;
            return runtime.call_site_policy(site, |registry| self.resolve(registry)).map(SitePolicy::InRuntime);
        }
        if let Some(policy) = self.policy.get() {
            return Ok(SitePolicy::Global(policy));
        }
        let registry = DependencyRegistry::global_or_load(self.config_path, self.config_text)?;
        let policy = self.resolve(registry)?;
        Ok(SitePolicy::Global(self.policy.get_or_init(|| policy)))
    }

    fn resolve(&self, registry: &DependencyRegistry) -> Result<CallPolicy, Error> {
        let mut policy = registry.call_policy_of_kind(self.dependency, self.kind, self.operation)?;
        if let Some(timeout) = self.timeout {
            policy = policy.with_timeout(timeout);
        }
        let retry = match self.retry {
            RetryOverride::Inherit => None,
            RetryOverride::Off => Some(RetryPolicy::disabled()),
            RetryOverride::Set { max_attempts, backoff, initial, max, jitter } => {
                let base = policy.retry();
                Some(RetryPolicy {
                    max_attempts: max_attempts.unwrap_or(base.max_attempts),
                    backoff: backoff.unwrap_or(base.backoff),
                    initial: initial.unwrap_or(base.initial),
                    max: max.unwrap_or(base.max),
                    jitter: jitter.unwrap_or(base.jitter),
                })
            }
        };
        Ok(match retry {
            Some(retry) => policy.with_retry(retry),
            None => policy,
        })
    }
}

/// A call site's policy: its own for the global runtime, or the one of the runtime in scope.
#[derive(Debug)]
pub enum SitePolicy {
    /// Kept by the call site.
    Global(&'static CallPolicy),
    /// Kept by the runtime in scope.
    InRuntime(std::sync::Arc<CallPolicy>),
}

impl std::ops::Deref for SitePolicy {
    type Target = CallPolicy;

    #[inline]
    fn deref(&self) -> &CallPolicy {
        match self {
            SitePolicy::Global(policy) => policy,
            SitePolicy::InRuntime(policy) => policy,
        }
    }
}

/// Names the `Ok` and `Err` types of a wrapped fn's return type, whatever alias spells it.
///
/// The expansion names the return type only through this trait, at the return type's span: when it
/// is not a `Result`, every use is the same unmet bound at the same span, which rustc reports once,
/// and everything derived from it is an error type that reports nothing more.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `Result`",
    label = "Marty-wrapped calls must return `Result<T, E>`",
    note = "return `Result<T, E>` where `E: From<marty::Error>`, so bulkhead, timeout and circuit-breaker errors can be returned"
)]
pub trait CallResult: Sized {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
    /// An attempt's future, with its output named as a `Result`: for `Result<T, E>`, the body's own.
    type Attempt<F: Future<Output = Self>>: Future<Output = Result<Self::Ok, Self::Err>>;
    /// The body's future as an attempt.
    fn attempt<F: Future<Output = Self>>(future: F) -> Self::Attempt<F>;
    /// The `Result` as the fn's declared return type.
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;
}

impl<T, E> CallResult for Result<T, E> {
    type Ok = T;
    type Err = E;
    type Attempt<F: Future<Output = Self>> = F;

    #[inline(always)]
    fn attempt<F: Future<Output = Self>>(future: F) -> F {
        future
    }

    #[inline(always)]
    fn from_result(result: Self) -> Self {
        result
    }
}

/// How a wrapped fn turns Marty's errors into its own. Called once per call, at the span of the user's
/// return type, so a missing `From<marty::Error>` is reported there once, with `HoldsMartyErrors`'s text.
#[inline(always)]
pub fn error_converter<R>() -> fn(Error) -> R::Err
where
    R: CallResult,
    R::Err: HoldsMartyErrors,
{
    <R::Err as From<Error>>::from
}

/// The error type's own classification (when no `classify = ..` override is given); like
/// [`error_converter`], named at the return type's span.
#[inline(always)]
pub fn classifier<R>() -> fn(&R::Err) -> ErrorClass
where
    R: CallResult,
    R::Err: Classify,
{
    <R::Err as Classify>::classify
}

/// Pins an attempt's future to the fn's declared return type `R`, so `?` in the body converts into
/// it. Its type is a projection of `CallResult`: when `R` is not a `Result` it is an error type, and
/// the call's future reports nothing more at the attribute.
#[inline(always)]
pub fn attempt_future<R: CallResult, F: Future<Output = R>>(future: F) -> R::Attempt<F> {
    R::attempt(future)
}

/// The fn's declared return type, from the call's `Result`.
#[inline(always)]
pub fn call_return<R: CallResult>(result: Result<R::Ok, R::Err>) -> R {
    R::from_result(result)
}

/// What `#[service]` expansions name.
#[cfg(feature = "http")]
pub mod service_support {
    pub use std::option::Option;
    pub use std::sync::Arc;
    pub use std::vec::Vec;

    pub use axum::{routing, Router};

    #[cfg(feature = "grpc")]
    pub use crate::service::GrpcServices;
    pub use crate::service::{HealthCheck, Requirement, RouteAccess, Routes};

    /// Implemented by everything a route handler may return: every axum `IntoResponse`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be turned into an HTTP response",
        label = "a route handler must return something axum can answer with",
        note = "return a `String`, `Json<T>`, `(StatusCode, T)`, `marty::service::Problem`, or `Result<T, E>` where both implement `axum::response::IntoResponse`"
    )]
    pub trait HandlerOutput {
        /// The response axum sends.
        fn into_handler_response(self) -> axum::response::Response;
    }

    impl<T: axum::response::IntoResponse> HandlerOutput for T {
        #[inline(always)]
        fn into_handler_response(self) -> axum::response::Response {
            self.into_response()
        }
    }

    /// A route handler's output as the response axum sends, converted at the handler's return type:
    /// when axum cannot answer with the output, that is this one error, and the route's closure,
    /// which returns a `Response` whatever the output, does not also fail axum's `Handler` bound.
    /// (axum would make the same `into_response` call on the closure's output.)
    #[inline(always)]
    pub fn handler_output<T: HandlerOutput>(output: T) -> axum::response::Response {
        output.into_handler_response()
    }

    #[cfg(feature = "events")]
    pub use event_support::*;

    /// What `#[event_handler]` expands to.
    #[cfg(feature = "events")]
    mod event_support {
        pub use std::boxed::Box;
        pub use std::result::Result;
        pub use std::time::Duration;

        pub use crate::events::{Event, EventHandler, Handled, HandlerError, HandlerOptions, Message};

        /// Asserts at the parameter's type that it is an event.
        pub const fn assert_event<E: Event>() {}

        pub use core::panic;

        /// Whether `#[event_handler(topic = ..)]` agrees with the event type's topic. The expansion
        /// panics in its own `const` when not, so the error is at the literal, in one sentence.
        pub const fn same_topic(declared: &str, written: &str) -> bool {
            let (declared, written) = (declared.as_bytes(), written.as_bytes());
            let mut same = declared.len() == written.len();
            let mut i = 0;
            while same && i < declared.len() {
                same = declared[i] == written[i];
                i += 1;
            }
            same
        }

        /// Implemented by what an event handler may return.
        #[diagnostic::on_unimplemented(
            message = "an event handler must return `Result<(), E>` where `E: Display`, not `{Self}`",
            label = "an `Err` is retried with backoff, then dead-lettered with its message"
        )]
        pub trait HandlerResult {
            /// The outcome as the consumer sees it.
            fn into_outcome(self) -> Result<Handled, HandlerError>;
        }

        impl<E: std::fmt::Display> HandlerResult for Result<(), E> {
            fn into_outcome(self) -> Result<Handled, HandlerError> {
                self.map(|()| Handled::Done).map_err(|error| HandlerError::Failed(error.to_string()))
            }
        }

        /// The handler's result, as the consumer sees it.
        pub fn handler_result<T: HandlerResult>(result: T) -> Result<Handled, HandlerError> {
            result.into_outcome()
        }

        /// The payload as the handler's event type; a bad one is dead-lettered, never a panic.
        pub fn decode_event<E: Event>(message: &Message) -> Result<E, HandlerError> {
            E::decode(&message.payload).map_err(|error| HandlerError::Undecodable(error.to_string()))
        }

        /// Begins the handler's inbox transaction in dependency `store`; `None` for a duplicate.
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        pub async fn inbox_begin<DB: crate::inbox::InboxDatabase>(
            store: &str,
            group: &str,
            event_id: &str,
        ) -> Result<Option<sqlx::Transaction<'static, DB>>, HandlerError> {
            let failed = |error: sqlx::Error| HandlerError::Failed(format!("inbox: {error}"));
            let pool = crate::store::pool::<DB>(store).await.map_err(failed)?;
            crate::inbox::begin(&pool, group, event_id).await.map_err(failed)
        }

        /// Commits the handler's effects with its inbox record.
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        pub async fn inbox_commit<DB: sqlx::Database>(
            tx: sqlx::Transaction<'static, DB>,
        ) -> Result<Handled, HandlerError> {
            tx.commit().await.map(|()| Handled::Done).map_err(|error| HandlerError::Failed(format!("commit: {error}")))
        }
    }
}

/// Implemented by every type an event's key field can have: anything that prints.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an event key",
    label = "the `#[event(key)]` field's type must implement `Display`",
    note = "keys travel as strings: use an id, a number or a string, or implement `Display` for `{Self}`"
)]
pub trait EventKey: std::fmt::Display {}

impl<T: std::fmt::Display + ?Sized> EventKey for T {}

/// An event's key as it travels.
pub fn event_key<T: EventKey + ?Sized>(key: &T) -> String {
    key.to_string()
}

/// What `#[saga]` expands to.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod saga_support {
    pub use std::boxed::Box;
    pub use std::result::Result;
    pub use std::time::Duration;

    pub use crate::events::BoxFuture;
    pub use crate::saga::{Saga, SagaDefinition, StepContext, StepDefinition, StepError, StepResult};

    /// A step's (or compensation's) result, as the orchestrator records it; the bound is reported at
    /// the method's return type.
    pub fn step_result<R: StepResult>(result: R) -> Result<(), StepError> {
        result.into_step_result()
    }

    /// An index past the last step: only reachable through a hand-written call.
    pub fn no_such_step(saga: &str, index: usize) -> Result<(), StepError> {
        Err(StepError::permanent(format!("saga `{saga}` has no step {index} with this role")))
    }
}

/// What `#[service]` expands to with `[openapi]`: each route's description.
#[cfg(feature = "openapi")]
pub mod openapi_support {
    pub use crate::openapi::{DescribeArgument, DescribeResponse, Operation, Operations};
}

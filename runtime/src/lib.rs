//! # Marty
//!
//! Annotate ordinary async Rust and get a production microservice. This crate is the one users depend
//! on: it re-exports the attribute macros and holds the runtime they expand into, every part of which
//! is also usable directly (tower layers, builders).
//!
//! ```no_run
//! use marty::CallError;
//!
//! /// Bulkhead, circuit breaker, timeout and retry from `[dependencies.orders_db]` in `marty.toml`,
//! /// a `marty.call` span and Prometheus metrics.
//! #[marty::database_call(dependency = "orders_db")]
//! async fn order_total(id: i64) -> Result<i64, CallError<std::io::Error>> {
//!     // The query; an `io::Error` (or a `sqlx::Error` with the `sqlx` feature) says whether a
//!     // failure is worth retrying.
//!     Ok(id * 100)
//! }
//! ```
//!
//! Where to read on:
//! - [`policy`]: what a wrapped call does (`#[database_call]`, `#[api_call]`, `#[cache_call]`), and
//!   the same as tower layers;
//! - `service`: `#[service]` over HTTP and gRPC, health, readiness, problem+json, shutdown (feature
//!   `http`, on by default);
//! - `events`, `outbox`, `inbox`: `#[derive(Event)]`, `#[event_handler]`, the transactional outbox
//!   and the inbox over four brokers (features `events`, `postgres` or `sqlite`, and a broker's);
//! - `saga`: `#[saga]`, persisted and crash-safe (features `postgres` or `sqlite`);
//! - `store`: the databases Marty's tables live in, their DDL and retention;
//! - [`config`]: `marty.toml`, environment overrides, the service's own `[app]` settings;
//! - [`metrics`] and `telemetry`: Prometheus, logs, OpenTelemetry traces and metrics;
//! - [`Runtime`]: what a service keeps while it runs, and a runtime of your own for a test.
//!
//! Testing: `marty::testing` (feature `testing`) serves a `#[service]` in a test, in a runtime of
//! its own, with a client, the events it publishes and control of its dependencies. The policies,
//! sagas and the outbox read tokio's clock, so under `#[tokio::test(start_paused = true)]`
//! timeouts, retry backoffs, a breaker's `open_for` and saga backoffs pass at once and in order.
#![forbid(unsafe_code)]
// docs.rs builds with every feature and `--cfg docsrs`: each feature-gated item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

#[cfg(any(feature = "events", feature = "security"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "events", feature = "security"))))]
pub mod audit;
pub mod bulkhead;
pub mod circuit_breaker;
mod classify;
mod error;
#[cfg(feature = "events")]
#[cfg_attr(docsrs, doc(cfg(feature = "events")))]
pub mod events;
pub mod fallback;
#[cfg(feature = "faults")]
#[cfg_attr(docsrs, doc(cfg(feature = "faults")))]
pub mod fault;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub mod inbox;
pub mod metrics;
#[cfg(feature = "openapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "openapi")))]
pub mod openapi;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub mod outbox;
pub mod policy;
mod registry;
pub mod retry;
mod runtime;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub mod saga;
#[cfg(feature = "security")]
#[cfg_attr(docsrs, doc(cfg(feature = "security")))]
pub mod security;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod service;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub mod store;
mod stripe;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod telemetry;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(any(feature = "http", feature = "tonic"))]
mod throttled_log;
pub mod timeout;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

use std::future::Future;
use std::pin::Pin;

pub use classify::{Classify, ErrorClass};
pub use error::{CallError, Error, HoldsMartyErrors};
pub use registry::DependencyRegistry;
pub use runtime::Runtime;

/// `marty.toml`: the configuration schema, shared with the macros.
pub use marty_config as config;

#[cfg(feature = "events")]
#[cfg_attr(docsrs, doc(cfg(feature = "events")))]
pub use events::Event;
#[doc(inline)]
pub use marty_macros::{
    api_call, audit, authorize, cache_call, database_call, delete, event_handler, get, health_check, patch, post,
    public, put, saga, saga_step, service, undescribed, Event,
};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use axum;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub use sqlx;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use tonic;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub use {opentelemetry, opentelemetry_sdk, tracing_opentelemetry};
/// Version-matched ecosystem crates, so users never fight version skew.
pub use {prometheus_client, tracing};

/// A boxed future borrowing for `'a`: what the policy layers, the bulkhead's wait and the object-safe
/// broker, outbox and inbox traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

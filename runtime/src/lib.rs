//! # Marty
//!
//! Annotate ordinary async Rust and get a production microservice. This crate is the one users depend
//! on: it re-exports the attribute macros and holds the runtime they expand into, every part of which
//! is also usable directly (tower layers, builders).
//!
//! ```ignore
//! #[marty::database_call(dependency = "orders_db")]
//! async fn load_order(pool: &SqlitePool, id: i64) -> Result<Order, OrderError> {
//!     Ok(sqlx::query_as("select * from orders where id = ?").bind(id).fetch_one(pool).await?)
//! }
//! ```
//!
//! ## Order of policies
//! Outermost first: retry -> circuit breaker -> timeout -> bulkhead -> the call. Each retry attempt
//! passes through the breaker; bulkhead wait counts against the timeout. See [`policy`].
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod bulkhead;
pub mod circuit_breaker;
mod classify;
mod error;
#[cfg(feature = "events")]
pub mod events;
pub mod fallback;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod inbox;
pub mod metrics;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod outbox;
pub mod policy;
mod registry;
pub mod retry;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod saga;
#[cfg(feature = "http")]
pub mod service;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod store;
mod stripe;
#[cfg(feature = "http")]
pub mod telemetry;
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

/// `marty.toml`: the configuration schema, shared with the macros.
pub use marty_config as config;

#[cfg(feature = "events")]
pub use events::Event;
#[doc(inline)]
pub use marty_macros::{
    api_call, cache_call, database_call, delete, event_handler, get, health_check, patch, post, put, saga, saga_step,
    service, Event,
};

#[cfg(feature = "http")]
pub use axum;
#[cfg(feature = "reqwest")]
pub use reqwest;
#[cfg(feature = "sqlx")]
pub use sqlx;
#[cfg(feature = "tonic")]
pub use tonic;
#[cfg(feature = "otel")]
pub use {opentelemetry, opentelemetry_sdk, tracing_opentelemetry};
/// Version-matched ecosystem crates, so users never fight version skew.
pub use {prometheus_client, tracing};

/// A boxed future borrowing for `'a`: what the policy layers, the bulkhead's wait and the object-safe
/// broker, outbox and inbox traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

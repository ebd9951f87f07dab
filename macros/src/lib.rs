//! Attribute macros of the Marty framework. Depend on `marty`, which re-exports them; see its docs for
//! the arguments, examples, expansions and errors of each attribute.
//!
//! Entry points stay thin: each converts to `proc_macro2` and calls an `expand` fn, so every expansion
//! is unit-testable. Set `MARTY_MACROS_DEBUG=1` to print expansions while compiling.

mod call;
mod config_file;
mod diagnostic;
mod paths;

use marty_config::DependencyKind;
use proc_macro::TokenStream;

/// Wraps an async fn that calls a `kind = "database"` dependency in its bulkhead, timeout, circuit
/// breaker, retry, span and metrics. Documented on `marty::database_call`.
#[proc_macro_attribute]
pub fn database_call(args: TokenStream, item: TokenStream) -> TokenStream {
    call::expand(DependencyKind::Database, args.into(), item.into()).into()
}

/// The same as `database_call`, for a `kind = "api"` dependency. Documented on `marty::api_call`.
#[proc_macro_attribute]
pub fn api_call(args: TokenStream, item: TokenStream) -> TokenStream {
    call::expand(DependencyKind::Api, args.into(), item.into()).into()
}

/// The same as `database_call`, for a `kind = "cache"` dependency. Documented on `marty::cache_call`.
#[proc_macro_attribute]
pub fn cache_call(args: TokenStream, item: TokenStream) -> TokenStream {
    call::expand(DependencyKind::Cache, args.into(), item.into()).into()
}

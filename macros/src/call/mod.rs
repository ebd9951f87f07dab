//! `#[database_call]`, `#[api_call]`, `#[cache_call]`: parse (darling) -> check (against the fn and
//! `marty.toml`, producing a [`CallModel`]) -> codegen (never fails). On any error the user's fn is
//! emitted unchanged beside the errors, so the rest of the crate still type-checks.

mod check;
mod codegen;
mod parse;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use marty_config::{Backoff, DependencyKind};
use proc_macro2::TokenStream;

use crate::common::{finish, wrong_item};

/// A call attribute whose arguments, fn and configuration all checked out.
pub(crate) struct CallModel {
    pub(crate) kind: DependencyKind,
    pub(crate) dependency: String,
    pub(crate) operation: String,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: RetryModel,
    pub(crate) fallback: Option<syn::Path>,
    pub(crate) classify: Option<syn::Path>,
    pub(crate) config_path: PathBuf,
    pub(crate) krate: Option<syn::Path>,
    pub(crate) func: syn::ItemFn,
}

/// The call's retry, relative to its dependency's.
pub(crate) enum RetryModel {
    Inherit,
    Off,
    Set {
        max_attempts: Option<u32>,
        backoff: Option<Backoff>,
        initial: Option<Duration>,
        max: Option<Duration>,
        jitter: Option<bool>,
    },
}

pub(crate) fn expand(kind: DependencyKind, args: TokenStream, item: TokenStream) -> TokenStream {
    let attribute = kind.attribute();
    let Ok(func) = syn::parse2::<syn::ItemFn>(item.clone()) else {
        let problem = format!("`#[{attribute}]` goes on an `async fn` with a body");
        let help = format!("put it on the async fn (or method) that calls the dependency, e.g. `#[{attribute}(dependency = \"orders_db\")] async fn load(..) -> Result<T, E> {{ .. }}`");
        return wrong_item(item, &problem, &help);
    };
    let mut errors = darling::Error::accumulator();
    let args = parse::parse_args(attribute, args, &mut errors);
    let model = check::validate(kind, args, func, &mut errors);
    finish(attribute, errors, model, codegen::emit, || item)
}

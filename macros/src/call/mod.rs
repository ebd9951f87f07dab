//! `#[database_call]`, `#[api_call]`, `#[cache_call]`: parse (darling) -> check (against the fn and
//! `marty.toml`, producing a [`CallModel`]) -> codegen (never fails). On any error the user's fn is
//! emitted unchanged beside the errors, so the rest of the crate still type-checks.

pub(crate) mod check;
pub(crate) mod codegen;
mod parse;

pub(crate) use parse::{check_names, IntArg, PathArg, Shape, StrArg};
#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;
use std::time::Duration;

use marty_config::{Backoff, DependencyKind};
use proc_macro2::TokenStream;
use quote::quote;

use crate::diagnostic::error;

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
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let span = item.clone().into_iter().next().map_or_else(proc_macro2::Span::call_site, |token| token.span());
            let problem = format!("`#[{attribute}]` goes on an `async fn` with a body");
            let help = format!("put it on the async fn (or method) that calls the dependency, e.g. `#[{attribute}(dependency = \"orders_db\")] async fn load(..) -> Result<T, E> {{ .. }}`");
            return with_errors(error(span, problem, help), item);
        }
    };
    let mut errors = darling::Error::accumulator();
    let args = parse::parse_args(attribute, args, &mut errors);
    let model = check::validate(kind, args, func, &mut errors);
    let output = match (errors.finish(), model) {
        (Ok(()), Some(model)) => codegen::emit(&model),
        (Err(found), _) => with_errors(found, item),
        // No model and nothing to say: the configuration's errors were reported at an earlier call
        // site of this compilation (the build fails there); leave the item as written.
        (Ok(()), None) => item,
    };
    if std::env::var_os("MARTY_MACROS_DEBUG").is_some() {
        eprintln!("#[{attribute}] expands to:\n{output}");
    }
    output
}

/// The user's item untouched, plus the errors: one mistake must not cascade into "cannot find fn".
fn with_errors(errors: darling::Error, item: TokenStream) -> TokenStream {
    let errors = errors.write_errors();
    quote!(#errors #item)
}

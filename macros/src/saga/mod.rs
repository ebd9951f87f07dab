//! `#[saga]` on the `impl` block of a saga's state: parse (the attribute's arguments and each
//! method's `#[saga_step]`) -> check (signatures, compensations, durations, `marty.toml`) -> codegen
//! (the `marty::saga::Saga` impl). Methods without `#[saga_step]` are left as they are; those named
//! by `compensate = ..` become compensations.

mod check;
mod codegen;
mod parse;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use proc_macro2::TokenStream;
use quote::quote;

use crate::diagnostic::error;

/// A `#[saga]` whose arguments, steps and configuration checked out.
pub(crate) struct SagaModel {
    pub(crate) name: String,
    pub(crate) store: String,
    /// `env = ..`, else `X` of the first `ctx: &mut StepContext<X>`: what steps reach through
    /// `ctx.env()`; `()` when neither is written.
    pub(crate) env: Option<syn::Type>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) config_path: PathBuf,
    pub(crate) krate: Option<syn::Path>,
    /// The impl block with `#[saga_step]` removed.
    pub(crate) item: syn::ItemImpl,
    pub(crate) steps: Vec<Step>,
}

/// One `#[saga_step]` method.
pub(crate) struct Step {
    pub(crate) method: syn::Ident,
    /// The type of its context parameter, if it takes one.
    pub(crate) context: Option<syn::Type>,
    /// Where its return type is written: a type that is not a step result is reported there.
    pub(crate) output: proc_macro2::Span,
    pub(crate) compensation: Option<Compensation>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_attempts: u32,
}

/// The method named by `compensate = ..`.
pub(crate) struct Compensation {
    pub(crate) method: syn::Ident,
    pub(crate) context: Option<syn::Type>,
    pub(crate) output: proc_macro2::Span,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let item_impl: syn::ItemImpl = match syn::parse2(item.clone()) {
        Ok(item_impl) => item_impl,
        Err(_) => {
            let span = item.clone().into_iter().next().map_or_else(proc_macro2::Span::call_site, |token| token.span());
            let help = "put it on the impl block of the saga's state: `#[marty::saga(store = \"orders_db\")] impl PlaceOrder { #[saga_step(compensate = release_stock)] async fn reserve_stock(&mut self) -> .. }`";
            let errors = error(span, "`#[saga]` goes on an `impl` block", help).write_errors();
            return quote!(#errors #item);
        }
    };
    let mut errors = darling::Error::accumulator();
    let args = parse::parse_args(args, &mut errors);
    let (stripped, steps) = parse::take_steps(item_impl, &mut errors);
    let model = check::validate(args, stripped, steps, &mut errors);
    let output = match (errors.finish(), model) {
        (Ok(()), Some(model)) => codegen::emit(&model),
        (Err(found), _) => {
            let found = found.write_errors();
            let item = parse::strip_step_attributes(item);
            quote!(#found #item)
        }
        // No model and nothing to say: the configuration's errors were reported at an earlier call
        // site of this compilation (the build fails there); leave the item as written.
        (Ok(()), None) => parse::strip_step_attributes(item),
    };
    if std::env::var_os("MARTY_MACROS_DEBUG").is_some() {
        eprintln!("#[saga] expands to:\n{output}");
    }
    output
}

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

use crate::common::{finish, wrong_item};

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
    let Ok(item_impl) = syn::parse2::<syn::ItemImpl>(item.clone()) else {
        let help = "put it on the impl block of the saga's state: `#[marty::saga(store = \"orders_db\")] impl PlaceOrder { #[saga_step(compensate = release_stock)] async fn reserve_stock(&mut self) -> .. }`";
        return wrong_item(item, "`#[saga]` goes on an `impl` block", help);
    };
    let mut errors = darling::Error::accumulator();
    let args = parse::parse_args(args, &mut errors);
    let (stripped, steps) = parse::take_steps(item_impl, &mut errors);
    let model = check::validate(args, stripped, steps, &mut errors);
    finish("saga", errors, model, codegen::emit, || parse::strip_step_attributes(item))
}

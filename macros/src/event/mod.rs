//! `#[derive(Event)]`: parse (`#[event(..)]` on the type and on one key field) -> check (topic,
//! version, key) -> codegen (`impl marty::Event`). On any error only the errors are emitted (a derive
//! never re-emits the type).

mod check;
mod codegen;
mod parse;

use proc_macro2::TokenStream;

use crate::common::finish;

/// The checked event.
pub(crate) struct EventModel {
    pub(crate) ident: syn::Ident,
    pub(crate) topic: String,
    pub(crate) version: u32,
    /// The aggregate key: how to reach the field, and its type.
    pub(crate) key: Option<(TokenStream, syn::Type)>,
    pub(crate) krate: Option<syn::Path>,
}

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(syn_error) => return syn_error.to_compile_error(),
    };
    let mut errors = darling::Error::accumulator();
    let model = check::check(&input, &mut errors);
    finish("derive(Event)", errors, model, codegen::emit, TokenStream::new)
}

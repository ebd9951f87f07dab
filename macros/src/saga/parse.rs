//! Stage 1: `#[saga(..)]`'s arguments and the `#[saga_step(..)]` attributes on the impl's methods
//! (matched by last path segment, so `marty::saga_step` works too), parsed with darling and removed.

use darling::ast::NestedMeta;
use darling::error::Accumulator;
use darling::FromMeta;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::spanned::Spanned;

use crate::common::args::{check_names, parse_list, IntArg, PathArg, Shape, StrArg};
use crate::common::cfg_attributes;

#[derive(FromMeta, Default)]
pub(crate) struct SagaArgs {
    pub(crate) name: Option<StrArg>,
    pub(crate) store: Option<StrArg>,
    pub(crate) env: Option<PathArg>,
    pub(crate) timeout: Option<StrArg>,
    pub(crate) config: Option<StrArg>,
    #[darling(rename = "crate")]
    pub(crate) krate: Option<PathArg>,
}

const SAGA_ARGS: &[(&str, Shape)] = &[
    ("name", Shape::Value("name = \"place_order\"")),
    ("store", Shape::Value("store = \"orders_db\"")),
    ("env", Shape::Value("env = Clients")),
    ("timeout", Shape::Value("timeout = \"30s\"")),
    ("config", Shape::Value("config = \"marty.toml\"")),
    ("crate", Shape::Value("crate = \"::marty\"")),
];

#[derive(FromMeta, Default)]
pub(crate) struct StepArgs {
    pub(crate) compensate: Option<PathArg>,
    pub(crate) timeout: Option<StrArg>,
    pub(crate) max_attempts: Option<IntArg>,
}

const STEP_ARGS: &[(&str, Shape)] = &[
    ("compensate", Shape::Value("compensate = release_stock")),
    ("timeout", Shape::Value("timeout = \"5s\"")),
    ("max_attempts", Shape::Value("max_attempts = 3")),
];

/// A method marked `#[saga_step]`, attribute removed.
pub(crate) struct StepMethod {
    pub(crate) args: StepArgs,
    /// Where the `compensate` value was written, for errors about it.
    pub(crate) compensate_span: Option<Span>,
    pub(crate) sig: syn::Signature,
    pub(crate) cfgs: Vec<syn::Attribute>,
    /// A second `#[saga_step]` on the same method.
    pub(crate) repeated: Option<Span>,
}

pub(crate) fn parse_args(tokens: TokenStream, errors: &mut Accumulator) -> SagaArgs {
    let items = parse_list("saga", "name = \"place_order\", store = \"orders_db\"", tokens, errors).unwrap_or_default();
    let items = check_names("#[saga]", &items, SAGA_ARGS, errors);
    errors.handle(SagaArgs::from_list(&items)).unwrap_or_default()
}

pub(crate) fn is_saga_step(attr: &syn::Attribute) -> bool {
    attr.path().segments.last().is_some_and(|segment| segment.ident == "saga_step")
}

/// Removes every `#[saga_step]` from the impl's methods and returns the marked methods, parsed.
pub(crate) fn take_steps(mut item: syn::ItemImpl, errors: &mut Accumulator) -> (syn::ItemImpl, Vec<StepMethod>) {
    let mut steps = Vec::new();
    for impl_item in &mut item.items {
        let syn::ImplItem::Fn(method) = impl_item else { continue };
        let marked: Vec<syn::Attribute> = method.attrs.iter().filter(|attr| is_saga_step(attr)).cloned().collect();
        method.attrs.retain(|attr| !is_saga_step(attr));
        let Some(first) = marked.first() else { continue };
        let tokens = match &first.meta {
            syn::Meta::List(list) => list.tokens.clone(),
            _ => TokenStream::new(),
        };
        let items = parse_list("saga_step", "compensate = release_stock", tokens, errors).unwrap_or_default();
        let items = check_names("#[saga_step]", &items, STEP_ARGS, errors);
        let compensate_span = items.iter().find_map(|item| match item {
            NestedMeta::Meta(syn::Meta::NameValue(pair)) if pair.path.is_ident("compensate") => Some(pair.value.span()),
            _ => None,
        });
        let args = errors.handle(StepArgs::from_list(&items)).unwrap_or_default();
        let cfgs = cfg_attributes(&method.attrs);
        let repeated = marked.get(1).map(|attr| attr.path().span());
        steps.push(StepMethod { args, compensate_span, sig: method.sig.clone(), cfgs, repeated });
    }
    (item, steps)
}

/// The item with `#[saga_step]` removed, for the error path (so rustc does not also complain about
/// an attribute used outside `#[saga]`).
pub(crate) fn strip_step_attributes(item: TokenStream) -> TokenStream {
    match syn::parse2::<syn::ItemImpl>(item.clone()) {
        Ok(mut item_impl) => {
            for impl_item in &mut item_impl.items {
                if let syn::ImplItem::Fn(method) = impl_item {
                    method.attrs.retain(|attr| !is_saga_step(attr));
                }
            }
            item_impl.into_token_stream()
        }
        Err(_) => item,
    }
}

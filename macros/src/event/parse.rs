//! Stage 1: the `#[event(..)]` lists on the type and its fields, names and shapes checked, values
//! converted by darling.

use darling::ast::NestedMeta;
use darling::FromMeta;
use syn::spanned::Spanned;

use crate::common::args::{check_names, IntArg, PathArg, Shape, StrArg};
use crate::common::diagnostic::error;

#[derive(FromMeta, Default)]
pub(super) struct EventArgs {
    pub(super) topic: Option<StrArg>,
    pub(super) version: Option<IntArg>,
    #[darling(rename = "crate")]
    pub(super) krate: Option<PathArg>,
}

const EVENT_ARGS: &[(&str, Shape)] = &[
    ("topic", Shape::Value("topic = \"orders.created\"")),
    ("version", Shape::Value("version = 2")),
    ("crate", Shape::Value("crate = \"my_marty\"")),
];
const FIELD_ARGS: &[(&str, Shape)] = &[("key", Shape::Word("#[event(key)]"))];

/// The type's `#[event(..)]` arguments.
pub(super) fn type_args(input: &syn::DeriveInput, errors: &mut darling::error::Accumulator) -> EventArgs {
    let items = event_lists(&input.attrs, errors);
    let items = check_names("#[event(..)]", &items, EVENT_ARGS, errors);
    errors.handle(EventArgs::from_list(&items)).unwrap_or_default()
}

/// Whether a field is marked `#[event(key)]` (and nothing else it may not say).
pub(super) fn is_key(field: &syn::Field, errors: &mut darling::error::Accumulator) -> bool {
    let items = event_lists(&field.attrs, errors);
    !check_names("#[event(..)] on a field", &items, FIELD_ARGS, errors).is_empty()
}

fn event_lists(attrs: &[syn::Attribute], errors: &mut darling::error::Accumulator) -> Vec<NestedMeta> {
    let mut items = Vec::new();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("event")) {
        match &attr.meta {
            syn::Meta::List(list) => match NestedMeta::parse_meta_list(list.tokens.clone()) {
                Ok(parsed) => items.extend(parsed),
                Err(syn_error) => errors.push(error(
                    syn_error.span(),
                    format!("cannot parse `#[event(..)]`: {syn_error}"),
                    "write `#[event(topic = \"orders.created\")]`",
                )),
            },
            other => errors.push(error(
                other.span(),
                "`#[event]` needs arguments",
                "write `#[event(topic = \"orders.created\")]`, or `#[event(key)]` on the key field",
            )),
        }
    }
    items
}

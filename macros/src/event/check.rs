//! Stage 2: the rules an event follows, producing the [`EventModel`] codegen needs.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;

use super::parse::{is_key, type_args};
use super::EventModel;
use crate::common::args::StrArg;
use crate::common::diagnostic::error;

pub(super) fn check(input: &syn::DeriveInput, errors: &mut darling::error::Accumulator) -> Option<EventModel> {
    let args = type_args(input, errors);

    if let Some(param) = input.generics.params.first() {
        errors.push(error(
            param.span(),
            "generic events are not supported",
            "give the event concrete types; consumers decode it by topic",
        ));
    }
    let topic = match &args.topic {
        Some(topic) => check_topic(topic, errors),
        None => {
            let help = format!(
                "add `#[event(topic = \"..\")]` above `{}`, e.g. `#[event(topic = \"orders.created\")]`",
                input.ident
            );
            errors.push(error(input.ident.span(), format!("`{}` needs a topic", input.ident), help));
            None
        }
    };
    let version = match &args.version {
        Some(version) if version.value == 0 => {
            errors.push(error(
                version.span,
                "event versions start at 1",
                "write `version = 1` for the first schema, then raise it on each incompatible change",
            ));
            None
        }
        Some(version) => Some(version.value),
        None => Some(1),
    };
    let key = check_key(input, errors);
    Some(EventModel {
        ident: input.ident.clone(),
        topic: topic?,
        version: version?,
        key: key?,
        krate: args.krate.map(|arg| arg.path),
    })
}

/// Topics are dot-separated names: letters, digits, `_` and `-`, as every broker accepts.
fn check_topic(topic: &StrArg, errors: &mut darling::error::Accumulator) -> Option<String> {
    let value = &topic.value;
    let segment_ok = |segment: &str| {
        !segment.is_empty() && segment.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if value.split('.').all(segment_ok) {
        return Some(value.clone());
    }
    let help = "use dot-separated names of letters, digits, `_` and `-`, e.g. `orders.created`";
    errors.push(error(topic.span, format!("`{value}` is not a valid topic"), help));
    None
}

/// At most one field marked `#[event(key)]`, on a struct; its type must print (`Display`).
fn check_key(
    input: &syn::DeriveInput,
    errors: &mut darling::error::Accumulator,
) -> Option<Option<(TokenStream, syn::Type)>> {
    let fields: Vec<(TokenStream, &syn::Field)> = match &input.data {
        syn::Data::Struct(data) => data
            .fields
            .iter()
            .enumerate()
            .map(|(index, field)| {
                let access = match &field.ident {
                    Some(ident) => quote!(#ident),
                    None => {
                        let index = syn::Index::from(index);
                        quote!(#index)
                    }
                };
                (access, field)
            })
            .collect(),
        syn::Data::Enum(data) => {
            for field in data.variants.iter().flat_map(|variant| variant.fields.iter()) {
                if let Some(attr) = field.attrs.iter().find(|attr| attr.path().is_ident("event")) {
                    errors.push(error(
                        attr.meta.span(),
                        "`#[event(key)]` is only supported on struct fields",
                        "give each kind of event its own struct with its key field, or leave the enum without a key",
                    ));
                    return None;
                }
            }
            Vec::new()
        }
        syn::Data::Union(data) => {
            errors.push(error(data.union_token.span(), "an event cannot be a union", "use a struct or an enum"));
            return None;
        }
    };
    let mut key = None;
    for (access, field) in fields {
        if !is_key(field, errors) {
            continue;
        }
        if key.is_some() {
            let help = "an event belongs to one aggregate: keep `#[event(key)]` on one field";
            let span = field.ident.as_ref().map_or_else(|| field.span(), |ident| ident.span());
            errors.push(error(span, "`#[event(key)]` is on more than one field", help));
            return None;
        }
        key = Some((access, field.ty.clone()));
    }
    Some(key)
}

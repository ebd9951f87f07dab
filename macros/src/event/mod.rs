//! `#[derive(Event)]`: parse (`#[event(..)]` on the type and on one key field) -> check -> codegen of
//! `marty::Event`. On any error only the errors are emitted (a derive never re-emits the type).

use darling::ast::NestedMeta;
use darling::FromMeta;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::call::{check_names, IntArg, PathArg, Shape, StrArg};
use crate::diagnostic::error;
use crate::paths::Paths;

#[derive(FromMeta, Default)]
struct EventArgs {
    topic: Option<StrArg>,
    version: Option<IntArg>,
    #[darling(rename = "crate")]
    krate: Option<PathArg>,
}

const EVENT_ARGS: &[(&str, Shape)] = &[
    ("topic", Shape::Value("topic = \"orders.created\"")),
    ("version", Shape::Value("version = 2")),
    ("crate", Shape::Value("crate = \"my_marty\"")),
];
const FIELD_ARGS: &[(&str, Shape)] = &[("key", Shape::Word("#[event(key)]"))];

/// The checked event.
struct EventModel {
    ident: syn::Ident,
    topic: String,
    version: u32,
    /// The aggregate key: how to reach the field, and its type.
    key: Option<(TokenStream, syn::Type)>,
    krate: Option<syn::Path>,
}

pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(syn_error) => return syn_error.to_compile_error(),
    };
    let mut errors = darling::Error::accumulator();
    let model = check(&input, &mut errors);
    match (errors.finish(), model) {
        (Ok(()), Some(model)) => emit(&model),
        (Err(found), _) => found.write_errors(),
        (Ok(()), None) => unreachable!("checks return no model only after reporting an error"),
    }
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

fn check(input: &syn::DeriveInput, errors: &mut darling::error::Accumulator) -> Option<EventModel> {
    let items = event_lists(&input.attrs, errors);
    let items = check_names("#[event(..)]", &items, EVENT_ARGS, errors);
    let args = errors.handle(EventArgs::from_list(&items)).unwrap_or_default();

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
                        attr.span(),
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
        let items = event_lists(&field.attrs, errors);
        let items = check_names("#[event(..)] on a field", &items, FIELD_ARGS, errors);
        if items.is_empty() {
            continue;
        }
        if key.is_some() {
            let help = "an event belongs to one aggregate: keep `#[event(key)]` on one field";
            errors.push(error(field.span(), "`#[event(key)]` is on more than one field", help));
            return None;
        }
        key = Some((access, field.ty.clone()));
    }
    Some(key)
}

fn emit(model: &EventModel) -> TokenStream {
    let paths = Paths::new(model.krate.as_ref());
    let event = paths.private_item("Event");
    let core = paths.core();
    let (ident, topic, version) = (&model.ident, &model.topic, model.version);
    let string = paths.private_item("String");
    let key = match &model.key {
        Some((access, ty)) => {
            // Named at the field type's span: a key that does not print is reported there.
            let event_key = paths.private_item_at("event_key", ty.span());
            let key = quote_spanned!(ty.span()=> #event_key::<#ty>(&self.#access));
            quote!(#core::option::Option::Some(#key))
        }
        None => quote!(#core::option::Option::None),
    };
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #event for #ident {
                const TOPIC: &'static str = #topic;
                const VERSION: u32 = #version;

                fn key(&self) -> #core::option::Option<#string> {
                    #key
                }
            }
        };
    }
}

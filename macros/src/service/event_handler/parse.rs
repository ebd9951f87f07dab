//! Stage 1: one method's `#[event_handler(..)]`, its arguments converted by darling.

use darling::error::Accumulator;
use darling::FromMeta;
use proc_macro2::TokenStream;
use syn::spanned::Spanned;

use super::HandlerMethod;
use crate::common::args::{check_names, parse_list, IntArg, Shape, StrArg};
use crate::common::cfg_attributes;

#[derive(FromMeta, Default)]
pub(super) struct HandlerArgs {
    pub(super) topic: Option<StrArg>,
    pub(super) group: Option<StrArg>,
    pub(super) inbox: Option<StrArg>,
    pub(super) max_attempts: Option<IntArg>,
    pub(super) concurrency: Option<IntArg>,
    pub(super) backoff: Option<StrArg>,
    pub(super) ack_wait: Option<StrArg>,
}

const HANDLER_ARGS: &[(&str, Shape)] = &[
    ("topic", Shape::Value("topic = \"orders.placed\"")),
    ("group", Shape::Value("group = \"billing\"")),
    ("inbox", Shape::Value("inbox = \"orders_db\"")),
    ("max_attempts", Shape::Value("max_attempts = 5")),
    ("concurrency", Shape::Value("concurrency = 8")),
    ("backoff", Shape::Value("backoff = \"100ms\"")),
    ("ack_wait", Shape::Value("ack_wait = \"5s\"")),
];

pub(crate) fn is_event_handler(attr: &syn::Attribute) -> bool {
    attr.path().segments.last().is_some_and(|segment| segment.ident == "event_handler")
}

/// Parses one `#[event_handler(..)]`.
pub(crate) fn parse(
    attr: &syn::Attribute,
    method: &syn::ImplItemFn,
    errors: &mut Accumulator,
) -> Option<HandlerMethod> {
    let tokens = match &attr.meta {
        syn::Meta::List(list) => list.tokens.clone(),
        _ => TokenStream::new(),
    };
    let items = parse_list("event_handler", "group = \"billing\"", tokens, errors)?;
    let kept = check_names("#[event_handler]", &items, HANDLER_ARGS, errors);
    let args = errors.handle(HandlerArgs::from_list(&kept))?;
    Some(HandlerMethod {
        args,
        sig: method.sig.clone(),
        cfgs: cfg_attributes(&method.attrs),
        attr_span: attr.path().span(),
    })
}

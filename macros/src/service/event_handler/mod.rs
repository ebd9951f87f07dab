//! `#[event_handler(..)]` on methods of a `#[service]`: parse (each method's attribute) -> check (the
//! signature, the options, `marty.toml`'s inbox store) -> codegen (the `event_handlers` part of the
//! `Routes` impl). Each handler becomes a `marty::events::EventHandler` whose function decodes the
//! payload into the parameter's event type and calls the method, inside an inbox transaction when the
//! method takes one.

mod check;
mod codegen;
mod parse;

use std::time::Duration;

use proc_macro2::Span;

use crate::common::args::StrArg;
pub(crate) use check::check;
pub(crate) use codegen::emit;
pub(crate) use parse::{is_event_handler, parse};

/// A method marked `#[event_handler]`, attribute removed.
pub(crate) struct HandlerMethod {
    args: parse::HandlerArgs,
    sig: syn::Signature,
    cfgs: Vec<syn::Attribute>,
    attr_span: Span,
}

/// A handler that checked out.
pub(crate) struct Handler {
    method: syn::Ident,
    event: syn::Type,
    topic: Option<StrArg>,
    group: Option<String>,
    /// The inbox's database dependency, when the method takes a transaction.
    inbox: Option<String>,
    output: syn::Type,
    max_attempts: Option<u32>,
    concurrency: Option<u32>,
    backoff: Option<Duration>,
    ack_wait: Option<Duration>,
    cfgs: Vec<syn::Attribute>,
}

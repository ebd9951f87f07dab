//! Stage 2: each handler's signature and options, and the inbox's store in `marty.toml`; one fn per
//! rule, producing the [`Handler`]s codegen needs.

use std::collections::HashMap;
use std::time::Duration;

use darling::error::Accumulator;
use quote::quote;
use syn::spanned::Spanned;

use super::{Handler, HandlerMethod};
use crate::common::args::{IntArg, StrArg};
use crate::common::config_file::ConfigFile;
use crate::common::diagnostic::error;
use crate::common::durations::duration;

/// Checks every handler against the service's configuration `file`, and that no two handle the
/// same topic in the same consumer group.
pub(crate) fn check(methods: Vec<HandlerMethod>, file: &ConfigFile, errors: &mut Accumulator) -> Vec<Handler> {
    let mut handlers = Vec::new();
    if !cfg!(feature = "events") {
        if let Some(first) = methods.first() {
            errors.push(error(
                first.attr_span,
                "`#[event_handler]` needs marty's `events` feature (on by default)",
                "in Cargo.toml: `marty = { version = \"0.1\", features = [\"events\"] }`",
            ));
        }
        return handlers;
    }
    // Each handler's name, by topic and group.
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    for method in methods {
        let Some(handler) = check_one(method, file, errors) else { continue };
        let event = &handler.event;
        let topic_key = handler.topic.as_ref().map_or_else(|| quote!(#event).to_string(), |topic| topic.value.clone());
        let group_key = handler.group.clone().unwrap_or_default();
        if let Some(first) = seen.insert((topic_key.clone(), group_key), handler.method.to_string()) {
            let group = handler
                .group
                .as_deref()
                .map_or_else(|| "the service's consumer group".to_owned(), |group| format!("group `{group}`"));
            errors.push(error(
                handler.method.span(),
                format!("a second handler of `{topic_key}` in {group}: `{first}` handles it already"),
                "each event reaches one handler per group: merge the two, or give this one its own `group = \"..\"`",
            ));
            continue;
        }
        handlers.push(handler);
    }
    handlers
}

/// What the handler's signature says: `async fn name(&self, event: E[, tx: &mut Tx]) -> R`.
struct HandlerSignature {
    event: syn::Type,
    takes_tx: bool,
    output: syn::Type,
}

fn check_one(method: HandlerMethod, file: &ConfigFile, errors: &mut Accumulator) -> Option<Handler> {
    let signature = check_signature(&method.sig, errors);
    let args = method.args;
    let name = &method.sig.ident;
    let mut ok = signature.is_some();
    if let Some(topic) = &args.topic {
        ok &= check_broker_name("topic", topic, &['.', '-', '_'], errors);
    }
    if let Some(group) = &args.group {
        ok &= check_broker_name("group", group, &['-', '_'], errors);
    }
    // Unknown when the signature did not check out: then `inbox` is not judged either.
    let takes_tx = signature.as_ref().map(|signature| signature.takes_tx);
    let inbox = match (takes_tx, file.valid()) {
        (Some(true), Some(_)) => {
            let missing = || {
                error(
                    method.attr_span,
                    "the handler takes an inbox transaction but no database is named for it",
                    "name the database dependency: `#[event_handler(inbox = \"orders_db\")]`, or configure `[outbox] store`",
                )
            };
            let store = file.store(args.inbox.as_ref(), "the inbox", missing, errors);
            ok &= store.is_some();
            store
        }
        // No valid configuration: the service reports it.
        (Some(true), None) => {
            ok = false;
            None
        }
        (Some(false), _) => {
            if let Some(arg) = &args.inbox {
                errors.push(error(
                    arg.span,
                    "`inbox` names the database of the handler's transaction, but the handler takes none",
                    format!("take it after the event: `async fn {name}(&self, event: E, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>)`"),
                ));
                ok = false;
            }
            None
        }
        (None, _) => None,
    };
    let max_attempts = at_least_one(args.max_attempts.as_ref(), "max_attempts", errors);
    let concurrency = at_least_one(args.concurrency.as_ref(), "concurrency", errors);
    let backoff = args.backoff.as_ref().and_then(|arg| duration(arg, errors));
    let ack_wait = args.ack_wait.as_ref().and_then(|arg| check_ack_wait(arg, errors));
    let signature = signature.filter(|_| ok)?;
    Some(Handler {
        method: name.clone(),
        event: signature.event,
        topic: args.topic,
        group: args.group.map(|group| group.value),
        inbox,
        output: signature.output,
        max_attempts,
        concurrency,
        backoff,
        ack_wait,
        cfgs: method.cfgs,
    })
}

/// `async`, `&self`, the event by value, optionally `&mut` the inbox transaction, and a return type.
fn check_signature(sig: &syn::Signature, errors: &mut Accumulator) -> Option<HandlerSignature> {
    let name = &sig.ident;
    let shape = format!("async fn {name}(&self, event: OrderPlaced) -> Result<(), MyError>");
    let mut ok = true;
    if sig.asyncness.is_none() {
        let problem = format!("event handler `{name}` must be an `async fn`");
        errors.push(error(sig.fn_token.span(), problem, format!("add `async`: `async fn {name}(&self, ..)`")));
        ok = false;
    }
    let shared_self = matches!(sig.inputs.first(), Some(syn::FnArg::Receiver(receiver)) if matches!(receiver.kind, syn::ReceiverKind::Reference(_, _, None)));
    if !shared_self {
        errors.push(error(
            sig.inputs.first().map_or(name.span(), Spanned::span),
            format!("event handler `{name}` must take `&self`"),
            format!("write `{shape}`; events are handled concurrently, so handlers share the service"),
        ));
        ok = false;
    }
    let params: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            syn::FnArg::Typed(typed) => Some(typed),
            syn::FnArg::Receiver(_) => None,
        })
        .collect();
    let Some(event_param) = params.first() else {
        let problem = format!("event handler `{name}` takes no event");
        errors.push(error(
            sig.paren_token.span.join(),
            problem,
            format!("take the event by value after `&self`: `{shape}`"),
        ));
        return None;
    };
    if let syn::Type::Reference(reference) = &*event_param.ty {
        let help = "drop the `&`: the handler owns the decoded event";
        errors.push(error(reference.span(), "the event is taken by value", help));
        ok = false;
    }
    let takes_tx = match params.get(1).map(|tx| &*tx.ty) {
        None => false,
        Some(syn::Type::Reference(reference)) if reference.mutability.is_some() => true,
        Some(other) => {
            errors.push(error(
                other.span(),
                "the second argument of an event handler is the inbox transaction, taken as `&mut`",
                "write `tx: &mut sqlx::Transaction<'_, sqlx::Postgres>` (or `sqlx::Sqlite`)",
            ));
            ok = false;
            false
        }
    };
    if let Some(extra) = params.get(2) {
        errors.push(error(
            extra.span(),
            "an event handler takes the event and, optionally, the inbox transaction; nothing else",
            "reach other state through `&self`",
        ));
        ok = false;
    }
    let syn::ReturnType::Type(_, output) = &sig.output else {
        let help = format!("write `{shape}`: an `Err` is retried with backoff, then dead-lettered");
        errors.push(error(name.span(), format!("event handler `{name}` must return a `Result`"), help));
        return None;
    };
    ok.then(|| HandlerSignature { event: (*event_param.ty).clone(), takes_tx, output: (**output).clone() })
}

/// Topics and group names travel into broker names: letters, digits and a few separators.
fn check_broker_name(what: &str, arg: &StrArg, separators: &[char], errors: &mut Accumulator) -> bool {
    let valid = !arg.value.is_empty()
        && arg.value.chars().all(|c| c.is_ascii_alphanumeric() || separators.contains(&c))
        && !arg.value.starts_with(separators)
        && !arg.value.ends_with(separators);
    if !valid {
        let allowed: String = separators.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
        errors.push(error(
            arg.span,
            format!("`{}` is not a valid {what}", arg.value),
            format!("use ASCII letters and digits separated by {allowed}, e.g. `\"billing\"`"),
        ));
    }
    valid
}

fn at_least_one(arg: Option<&IntArg>, what: &str, errors: &mut Accumulator) -> Option<u32> {
    let arg = arg?;
    if arg.value == 0 {
        errors.push(error(arg.span, format!("`{what}` must be at least 1"), format!("write `{what} = 1` or more")));
        return None;
    }
    Some(arg.value)
}

/// Shorter than 100ms, the broker would redeliver before the handler could be settled.
fn check_ack_wait(arg: &StrArg, errors: &mut Accumulator) -> Option<Duration> {
    let wait = duration(arg, errors)?;
    if wait < Duration::from_millis(100) {
        let help = "give the handler time to be settled, e.g. `ack_wait = \"5s\"` (the default)";
        errors.push(error(arg.span, "`ack_wait` must be at least 100ms: the broker would redeliver at once", help));
        return None;
    }
    Some(wait)
}

//! `#[event_handler(..)]` on methods of a `#[service]`: parsed, checked, and turned into the
//! `event_handlers` part of the `Routes` impl. Each handler becomes a `marty::events::EventHandler`
//! whose function decodes the payload into the parameter's event type and calls the method, inside
//! an inbox transaction when the method takes one.

use std::collections::HashMap;
use std::time::Duration;

use darling::ast::NestedMeta;
use darling::error::Accumulator;
use darling::FromMeta;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::call::check::duration;
use crate::call::{check_names, IntArg, Shape, StrArg};
use crate::diagnostic::{did_you_mean, error};
use crate::paths::respan;

#[derive(FromMeta, Default)]
struct HandlerArgs {
    topic: Option<StrArg>,
    group: Option<StrArg>,
    inbox: Option<StrArg>,
    max_attempts: Option<IntArg>,
    concurrency: Option<IntArg>,
    backoff: Option<StrArg>,
    ack_wait: Option<StrArg>,
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

/// A method marked `#[event_handler]`, attribute removed.
pub(crate) struct HandlerMethod {
    args: HandlerArgs,
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
    let items = match NestedMeta::parse_meta_list(tokens) {
        Ok(items) => items,
        Err(syn_error) => {
            errors.push(error(
                syn_error.span(),
                format!("cannot parse the arguments of `#[event_handler]`: {syn_error}"),
                "write `#[event_handler(group = \"billing\")]`",
            ));
            return None;
        }
    };
    let kept = check_names("#[event_handler]", &items, HANDLER_ARGS, errors);
    let args = errors.handle(HandlerArgs::from_list(&kept))?;
    let cfgs = method.attrs.iter().filter(|attr| attr.path().is_ident("cfg")).cloned().collect();
    Some(HandlerMethod { args, sig: method.sig.clone(), cfgs, attr_span: attr.path().span() })
}

/// Checks every handler; `outbox_store` is `[outbox] store`, the default inbox.
pub(crate) fn check(
    methods: Vec<HandlerMethod>,
    config: Option<&marty_config::Config>,
    errors: &mut Accumulator,
) -> Vec<Handler> {
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
    let mut seen: HashMap<(String, String), Span> = HashMap::new();
    for method in methods {
        let Some(handler) = check_one(method, config, errors) else { continue };
        let event = &handler.event;
        let topic_key = handler.topic.as_ref().map_or_else(|| quote!(#event).to_string(), |topic| topic.value.clone());
        let group_key = handler.group.clone().unwrap_or_default();
        if seen.insert((topic_key.clone(), group_key), handler.method.span()).is_some() {
            errors.push(error(
                handler.method.span(),
                format!("a second handler of `{topic_key}` in the same consumer group"),
                "each event reaches one handler per group: merge the two, or give this one its own `group = \"..\"`",
            ));
            continue;
        }
        handlers.push(handler);
    }
    handlers
}

fn check_one(
    method: HandlerMethod,
    config: Option<&marty_config::Config>,
    errors: &mut Accumulator,
) -> Option<Handler> {
    let sig = &method.sig;
    let name = &sig.ident;
    let shape = format!("async fn {name}(&self, event: OrderPlaced) -> Result<(), MyError>");
    let mut ok = true;
    if sig.asyncness.is_none() {
        errors.push(error(
            sig.fn_token.span(),
            format!("event handler `{name}` must be an `async fn`"),
            format!("write `{shape}`"),
        ));
        ok = false;
    }
    if !matches!(sig.inputs.first(), Some(syn::FnArg::Receiver(receiver)) if matches!(receiver.kind, syn::ReceiverKind::Reference(_, _, None)))
    {
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
        .skip(1)
        .filter_map(|input| match input {
            syn::FnArg::Typed(typed) => Some(typed),
            syn::FnArg::Receiver(_) => None,
        })
        .collect();
    let Some(event_param) = params.first() else {
        errors.push(error(
            sig.paren_token.span.join(),
            format!("event handler `{name}` takes no event"),
            format!("take the event by value after `&self`: `{shape}`"),
        ));
        return None;
    };
    if let syn::Type::Reference(reference) = &*event_param.ty {
        errors.push(error(
            reference.span(),
            "the event is taken by value",
            "drop the `&`: the handler owns the decoded event",
        ));
        ok = false;
    }
    let takes_tx = match params.get(1) {
        None => false,
        Some(tx) => match &*tx.ty {
            syn::Type::Reference(reference) if reference.mutability.is_some() => true,
            other => {
                errors.push(error(
                    other.span(),
                    "the second argument of an event handler is the inbox transaction, taken as `&mut`",
                    "write `tx: &mut sqlx::Transaction<'_, sqlx::Postgres>` (or `sqlx::Sqlite`)",
                ));
                ok = false;
                false
            }
        },
    };
    if let Some(extra) = params.get(2) {
        errors.push(error(
            extra.span(),
            "an event handler takes the event and, optionally, the inbox transaction; nothing else",
            "reach other state through `&self`",
        ));
        ok = false;
    }
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => (**ty).clone(),
        syn::ReturnType::Default => {
            errors.push(error(
                name.span(),
                format!("event handler `{name}` must return a `Result`"),
                format!("write `{shape}`: an `Err` is retried with backoff, then dead-lettered"),
            ));
            return None;
        }
    };
    let args = method.args;
    if let Some(topic) = &args.topic {
        ok &= check_name("topic", topic, &['.', '-', '_'], errors);
    }
    if let Some(group) = &args.group {
        ok &= check_name("group", group, &['-', '_'], errors);
    }
    let inbox = if takes_tx { inbox_store(args.inbox.as_ref(), config, method.attr_span, errors) } else { None };
    if let (false, Some(arg)) = (takes_tx, &args.inbox) {
        errors.push(error(
            arg.span,
            "`inbox` names the database of the handler's transaction, but the handler takes none",
            format!("take it after the event: `async fn {name}(&self, event: E, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>)`"),
        ));
        ok = false;
    }
    ok &= !takes_tx || inbox.is_some();
    let mut positive = |arg: &Option<IntArg>, what: &str| -> Option<u32> {
        let arg = arg.as_ref()?;
        if arg.value == 0 {
            errors.push(error(arg.span, format!("`{what}` must be at least 1"), format!("write `{what} = 1` or more")));
            return None;
        }
        Some(arg.value)
    };
    let max_attempts = positive(&args.max_attempts, "max_attempts");
    let concurrency = positive(&args.concurrency, "concurrency");
    let backoff = args.backoff.as_ref().and_then(|arg| duration(arg, errors));
    let ack_wait = args.ack_wait.as_ref().and_then(|arg| {
        let wait = duration(arg, errors)?;
        if wait < Duration::from_millis(100) {
            let help = "give the handler time to be settled, e.g. `ack_wait = \"5s\"` (the default)";
            errors.push(error(arg.span, "`ack_wait` must be at least 100ms: the broker would redeliver at once", help));
            return None;
        }
        Some(wait)
    });
    ok.then(|| Handler {
        method: name.clone(),
        event: (*event_param.ty).clone(),
        topic: args.topic,
        group: args.group.map(|group| group.value),
        inbox,
        output,
        max_attempts,
        concurrency,
        backoff,
        ack_wait,
        cfgs: method.cfgs,
    })
}

/// Topics and group names travel into broker names: letters, digits and a few separators.
fn check_name(what: &str, arg: &StrArg, separators: &[char], errors: &mut Accumulator) -> bool {
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

/// The inbox's database: `inbox = ".."`, else `[outbox] store`; a database dependency either way.
fn inbox_store(
    arg: Option<&StrArg>,
    config: Option<&marty_config::Config>,
    attr_span: Span,
    errors: &mut Accumulator,
) -> Option<String> {
    let config = config?;
    let (name, span) = match (arg, &config.outbox) {
        (Some(arg), _) => (arg.value.clone(), arg.span),
        (None, Some(outbox)) => (outbox.store.clone(), attr_span),
        (None, None) => {
            errors.push(error(
                attr_span,
                "the handler takes an inbox transaction but no database is named for it",
                "name the database dependency: `#[event_handler(inbox = \"orders_db\")]`, or configure `[outbox] store`",
            ));
            return None;
        }
    };
    match config.dependencies.get(&name) {
        Some(dependency) if dependency.kind == marty_config::DependencyKind::Database => Some(name),
        Some(dependency) => {
            errors.push(error(
                span,
                format!("`{name}` is a `{}` dependency; the inbox lives in a database", dependency.kind),
                "name a dependency with `kind = \"database\"`",
            ));
            None
        }
        None => {
            let names: Vec<&str> = config.dependencies.keys().map(String::as_str).collect();
            errors.push(error(
                span,
                format!("unknown dependency `{name}`"),
                did_you_mean(&name, &names, "dependencies:"),
            ));
            None
        }
    }
}

/// `fn event_handlers(..)`: one `EventHandler` per handler method.
pub(crate) fn emit(handlers: &[Handler], service_name: &str, private: &TokenStream) -> TokenStream {
    if handlers.is_empty() {
        return TokenStream::new();
    }
    let list = format_ident!("__marty_handlers", span = Span::mixed_site());
    let service = format_ident!("__marty_service", span = Span::mixed_site());
    let message = format_ident!("__marty_message", span = Span::mixed_site());
    let tx = format_ident!("__marty_tx", span = Span::mixed_site());
    let each = handlers.iter().map(|handler| {
        let method = &handler.method;
        let event = &handler.event;
        let cfgs = &handler.cfgs;
        let group = handler.group.as_deref().unwrap_or(service_name);
        let name = format!("{service_name}::{method}");
        // At the parameter's type: a type that is not an event is reported there.
        let event_check = quote_spanned!(event.span()=> #private::assert_event::<#event>(););
        let topic_check = handler.topic.as_ref().map(|topic| {
            let value = &topic.value;
            // Every token at the literal, so a mismatch is reported there.
            respan(
                quote! {
                    const _: () = if !#private::same_topic(<#event as #private::Event>::TOPIC, #value) {
                        #private::panic!("`#[event_handler(topic = ..)]` differs from the event type's `#[event(topic = ..)]`: remove `topic` or make the two agree");
                    };
                },
                topic.span,
            )
        });
        // At the return type: a result the consumer cannot read is reported there.
        // The result is passed on at the return type's span: a result the consumer cannot read is
        // reported there, not at `#[service]`.
        let returned = format_ident!("__marty_returned", span = handler.output.span());
        let handler_result = respan(quote!(#private::handler_result(#returned)), handler.output.span());
        let options = {
            let mut options = quote!(#private::HandlerOptions::default());
            if let Some(attempts) = handler.max_attempts {
                options = quote!(#options.max_attempts(#attempts));
            }
            if let Some(lanes) = handler.concurrency {
                let lanes = lanes as usize;
                options = quote!(#options.concurrency(#lanes));
            }
            if let Some(backoff) = handler.backoff {
                let nanos = backoff.as_nanos() as u64;
                options =
                    quote!(#options.backoff(#private::Duration::from_nanos(#nanos), #private::Duration::from_secs(10)));
            }
            if let Some(wait) = handler.ack_wait {
                let nanos = wait.as_nanos() as u64;
                options = quote!(#options.ack_wait(#private::Duration::from_nanos(#nanos)));
            }
            options
        };
        let body = match &handler.inbox {
            None => quote! {
                let event = #private::decode_event::<#event>(&#message)?;
                let #returned = #service.#method(event).await;
                #handler_result
            },
            Some(store) => quote! {
                let event = #private::decode_event::<#event>(&#message)?;
                let #private::Option::Some(mut #tx) = #private::inbox_begin(#store, #group, &#message.id).await? else {
                    return #private::Result::Ok(#private::Handled::Duplicate);
                };
                let #returned = #service.#method(event, &mut #tx).await;
                #handler_result?;
                #private::inbox_commit(#tx).await
            },
        };
        quote! {
            #(#cfgs)*
            {
                #event_check
                #topic_check
                let #service = #private::Arc::clone(&self);
                #list.push(#private::EventHandler::new(
                    <#event as #private::Event>::TOPIC,
                    #group,
                    #name,
                    #options,
                    #private::Arc::new(move |#message: #private::Message| {
                        let #service = #private::Arc::clone(&#service);
                        #private::Box::pin(async move { #body })
                    }),
                ));
            }
        }
    });
    quote! {
        fn event_handlers(self: #private::Arc<Self>) -> #private::Vec<#private::EventHandler> {
            let mut #list = #private::Vec::new();
            #(#each)*
            #list
        }
    }
}

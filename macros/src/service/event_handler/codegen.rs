//! Stage 3: `fn event_handlers(..)` of the `Routes` impl, one `EventHandler` per handler method.
//! Never validates, never fails.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::Handler;
use crate::common::durations::duration_tokens;
use crate::common::paths::{respan, rt, Paths};

/// Names the expansion shares between handlers.
struct Names {
    list: syn::Ident,
    service: syn::Ident,
    message: syn::Ident,
    tx: syn::Ident,
}

/// `fn event_handlers(..)`: one `EventHandler` per handler method; nothing without handlers.
pub(crate) fn emit(handlers: &[Handler], service_name: &str, paths: &Paths) -> TokenStream {
    if handlers.is_empty() {
        return TokenStream::new();
    }
    let mixed = Span::mixed_site();
    let names = Names {
        list: format_ident!("__marty_handlers", span = mixed),
        service: format_ident!("__marty_service", span = mixed),
        message: format_ident!("__marty_message", span = mixed),
        tx: format_ident!("__marty_tx", span = mixed),
    };
    let each = handlers.iter().map(|handler| emit_one(handler, service_name, paths, &names));
    let list = &names.list;
    let (arc, vec, event_handler) = (paths.get(rt::ARC), paths.get(rt::VEC), paths.get(rt::EVENT_HANDLER));
    quote! {
        fn event_handlers(self: #arc<Self>) -> #vec<#event_handler> {
            let mut #list = #vec::new();
            #(#each)*
            #list
        }
    }
}

fn emit_one(handler: &Handler, service_name: &str, paths: &Paths, names: &Names) -> TokenStream {
    let Names { list, service, message, .. } = names;
    let (event, cfgs) = (&handler.event, &handler.cfgs);
    let group = handler.group.as_deref().unwrap_or(service_name);
    let name = format!("{service_name}::{}", handler.method);
    let (arc, event_handler, message_type) = (paths.get(rt::ARC), paths.get(rt::EVENT_HANDLER), paths.get(rt::MESSAGE));
    let (event_trait, boxed) = (paths.get(rt::EVENT), paths.get(rt::BOX));
    // At the parameter's type: a type that is not an event is reported there.
    let assert_event = paths.get(rt::ASSERT_EVENT);
    let event_check = quote_spanned!(event.span()=> #assert_event::<#event>(););
    let topic_check = handler.topic.as_ref().map(|topic| {
        let value = &topic.value;
        let (same_topic, panic) = (paths.get(rt::SAME_TOPIC), paths.get(rt::PANIC));
        let event_name = quote!(#event).to_string().replace(' ', "");
        let message = format!(
            "`topic = \"{value}\"` is not the topic of `{event_name}` (its `#[event(topic = ..)]`): remove `topic`, or make the two agree"
        );
        // Every token at the literal, so a mismatch is reported there, in one sentence.
        respan(
            quote! {
                const _: () = if !#same_topic(<#event as #event_trait>::TOPIC, #value) {
                    #panic!(#message);
                };
            },
            topic.span,
        )
    });
    let options = emit_options(handler, paths);
    let body = emit_body(handler, group, paths, names);
    quote! {
        #(#cfgs)*
        {
            #event_check
            #topic_check
            let #service = #arc::clone(&self);
            #list.push(#event_handler::new(
                <#event as #event_trait>::TOPIC,
                #group,
                #name,
                #options,
                #arc::new(move |#message: #message_type| {
                    let #service = #arc::clone(&#service);
                    #boxed::pin(async move { #body })
                }),
            ));
        }
    }
}

/// `HandlerOptions::default()` with the attribute's overrides.
fn emit_options(handler: &Handler, paths: &Paths) -> TokenStream {
    let handler_options = paths.get(rt::HANDLER_OPTIONS);
    let mut options = quote!(#handler_options::default());
    let duration_type = paths.get(rt::DURATION);
    let duration = |duration| duration_tokens(&duration_type, duration);
    if let Some(attempts) = handler.max_attempts {
        options = quote!(#options.max_attempts(#attempts));
    }
    if let Some(lanes) = handler.concurrency {
        let lanes = lanes as usize;
        options = quote!(#options.concurrency(#lanes));
    }
    if let Some(backoff) = handler.backoff {
        let backoff = duration(backoff);
        options = quote!(#options.backoff(#backoff, #duration_type::from_secs(10)));
    }
    if let Some(wait) = handler.ack_wait {
        let wait = duration(wait);
        options = quote!(#options.ack_wait(#wait));
    }
    options
}

/// Decode, call, and hand the result to the consumer; inside the inbox's transaction when the
/// handler takes one.
fn emit_body(handler: &Handler, group: &str, paths: &Paths, names: &Names) -> TokenStream {
    let Names { service, message, tx, .. } = names;
    let (method, event) = (&handler.method, &handler.event);
    // The result is passed on at the return type's span: a result the consumer cannot read is
    // reported there, not at `#[service]`.
    let returned = format_ident!("__marty_returned", span = handler.output.span());
    let handler_result = paths.get(rt::HANDLER_RESULT);
    let handler_result = respan(quote!(#handler_result(#returned)), handler.output.span());
    let decode_event = paths.get(rt::DECODE_EVENT);
    match &handler.inbox {
        None => quote! {
            let event = #decode_event::<#event>(&#message)?;
            let #returned = #service.#method(event).await;
            #handler_result
        },
        Some(store) => {
            let (option, result, handled) = (paths.get(rt::OPTION), paths.get(rt::RESULT), paths.get(rt::HANDLED));
            let (inbox_begin, inbox_commit) = (paths.get(rt::INBOX_BEGIN), paths.get(rt::INBOX_COMMIT));
            quote! {
                let event = #decode_event::<#event>(&#message)?;
                let #option::Some(mut #tx) = #inbox_begin(#store, #group, &#message.id).await? else {
                    return #result::Ok(#handled::Duplicate);
                };
                let #returned = #service.#method(event, &mut #tx).await;
                #handler_result?;
                #inbox_commit(#tx).await
            }
        }
    }
}

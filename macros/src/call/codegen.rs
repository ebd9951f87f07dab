//! Stage 3: the expansion. Never validates and never fails: everything it needs is in the model.
//!
//! ```text
//! async fn load(&self, id: i64) -> Result<Order, AppError> {
//!     static __MARTY_CALL_SITE: CallSite = CallSite::new("orders_db", Database, "load", None, Inherit, PATH, include_str!(PATH));
//!     // `Ret` is named only through `CallResult`, at the return type's span.
//!     let __marty_convert = error_converter::<Ret>();   // E: From<marty::Error>
//!     let __marty_classify = classifier::<Ret>();       // or the `classify = ..` path
//!     let __marty_policy = match __MARTY_CALL_SITE.policy() {
//!         Ok(p) => p,
//!         Err(e) => return call_return::<Ret>(Err(__marty_convert(e))),
//!     };
//!     let mut __marty_call = __marty_policy.begin();
//!     let __marty_result = loop {
//!         // `attempt` runs the body inside the call's `marty.call` span.
//!         match __marty_call.attempt(attempt_future::<Ret, _>(async { <body> }), __marty_classify, __marty_convert).await {
//!             Break(result) => break result,
//!             Continue(()) => {}
//!         }
//!     };
//!     call_return::<Ret>(__marty_result)                // or through the fallback
//! }
//! ```
//! The body runs inside `async { }` once per attempt, so `?` and `return` keep their meaning. The
//! policy is resolved once per call site and kept in the static: no lookup by name per call.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{CallModel, RetryModel};
use crate::common::durations::option_duration;
use crate::common::paths::{rt, Item, Paths};

pub(super) fn emit(model: &CallModel) -> TokenStream {
    let paths = Paths::new(model.krate.as_ref());
    let core = paths.core();
    let func = &model.func;
    let (attrs, vis, sig, body) = (&func.attrs, &func.vis, &func.sig, &func.block);
    let return_type = match &sig.output {
        syn::ReturnType::Type(_, ty) => ty,
        syn::ReturnType::Default => unreachable!("checked: wrapped fns return a Result"),
    };
    let mixed = Span::mixed_site();
    let call_site = format_ident!("__MARTY_CALL_SITE", span = mixed);
    let policy = format_ident!("__marty_policy", span = mixed);
    let call = format_ident!("__marty_call", span = mixed);
    let result = format_ident!("__marty_result", span = mixed);
    let config_error = format_ident!("__marty_config_error", span = mixed);

    let call_site_static = emit_call_site(model, &paths, &call_site);
    // The return type is named only through `CallResult`, in calls spanned wholly at the return type:
    // when it is not a `Result`, every use is one unmet bound at one span, which rustc reports once.
    let ret_span = return_type.span();
    let with_return_type = |item: Item, args: TokenStream| {
        let path = paths.get_at(item, ret_span);
        // `attempt_future` also takes the body's future type.
        let rest = (item == rt::ATTEMPT_FUTURE).then(|| quote_spanned!(ret_span=> , _));
        quote_spanned!(ret_span=> #path::<#return_type #rest>(#args))
    };
    let convert = format_ident!("__marty_convert", span = mixed);
    let classify = format_ident!("__marty_classify", span = mixed);
    let error_converter = with_return_type(rt::ERROR_CONVERTER, quote!());
    let classifier = match &model.classify {
        Some(path) => quote_spanned!(path.span()=> #path),
        None => with_return_type(rt::CLASSIFIER, quote!()),
    };
    let attempt_future = with_return_type(rt::ATTEMPT_FUTURE, quote!(async #body));
    // At the return type too: the attempt's output names `CallResult`'s `Ok` and `Err`.
    let attempt = quote_spanned! {ret_span=>
        #call.attempt(#attempt_future, #classify, #convert).await
    };
    // With `retry = false` there is exactly one attempt, so the body may consume its arguments.
    let attempts = match model.retry {
        RetryModel::Off => quote! {
            match #attempt {
                #core::ops::ControlFlow::Break(#result) => #result,
                #core::ops::ControlFlow::Continue(()) => #core::unreachable!("`retry = false` makes one attempt"),
            }
        },
        _ => quote! {
            loop {
                if let #core::ops::ControlFlow::Break(#result) = #attempt {
                    break #result;
                }
            }
        },
    };
    let finish = emit_fallback(model, &core, &result, with_return_type(rt::CALL_RETURN, quote!(#result)));
    let config_error_return =
        with_return_type(rt::CALL_RETURN, quote!(#core::result::Result::Err(#convert(#config_error))));
    quote! {
        #(#attrs)*
        #vis #sig {
            #call_site_static
            let #convert = #error_converter;
            let #classify: fn(&_) -> _ = #classifier;
            let #policy = match #call_site.policy() {
                #core::result::Result::Ok(policy) => policy,
                #core::result::Result::Err(#config_error) => {
                    return #config_error_return;
                }
            };
            let mut #call = #policy.begin();
            let #result = #attempts;
            #finish
        }
    }
}

fn emit_call_site(model: &CallModel, paths: &Paths, name: &syn::Ident) -> TokenStream {
    let core = paths.core();
    let call_site = paths.get(rt::CALL_SITE);
    let kind = paths.get(rt::DEPENDENCY_KIND);
    let kind_variant = format_ident!("{}", format!("{:?}", model.kind));
    let dependency = &model.dependency;
    let operation = &model.operation;
    let timeout = option_duration(&core, model.timeout);
    let retry_override = paths.get(rt::RETRY_OVERRIDE);
    let retry = match &model.retry {
        RetryModel::Inherit => quote!(#retry_override::Inherit),
        RetryModel::Off => quote!(#retry_override::Off),
        RetryModel::Set { max_attempts, backoff, initial, max, jitter } => {
            let backoff_type = paths.get(rt::BACKOFF);
            let max_attempts = option(&core, max_attempts.map(|n| quote!(#n)));
            let backoff = option(
                &core,
                backoff.map(|b| {
                    let variant = format_ident!("{}", format!("{b:?}"));
                    quote!(#backoff_type::#variant)
                }),
            );
            let initial = option_duration(&core, *initial);
            let max = option_duration(&core, *max);
            let jitter = option(&core, jitter.map(|j| quote!(#j)));
            quote!(#retry_override::Set { max_attempts: #max_attempts, backoff: #backoff, initial: #initial, max: #max, jitter: #jitter })
        }
    };
    let path = model.config_path.display().to_string();
    let embedded = crate::common::config_file::embedded_text(&core, &path);
    quote! {
        #[doc(hidden)]
        static #name: #call_site = #call_site::new(
            #dependency,
            #kind::#kind_variant,
            #operation,
            #timeout,
            #retry,
            #path,
            #embedded,
        );
    }
}

/// `fallback = path` gets the final error: `path(self, error)` for methods, `path(error)` otherwise.
/// `call_return` turns the result into the fn's return type.
fn emit_fallback(model: &CallModel, core: &TokenStream, result: &syn::Ident, call_return: TokenStream) -> TokenStream {
    let Some(fallback) = &model.fallback else { return call_return };
    let error = format_ident!("__marty_error", span = Span::mixed_site());
    let has_receiver = matches!(model.func.sig.inputs.first(), Some(syn::FnArg::Receiver(_)));
    let invoke = if has_receiver {
        quote_spanned!(fallback.span()=> #fallback(self, #error).await)
    } else {
        quote_spanned!(fallback.span()=> #fallback(#error).await)
    };
    quote! {
        match #result {
            #core::result::Result::Err(#error) => #invoke,
            #result => #call_return,
        }
    }
}

fn option(core: &TokenStream, value: Option<TokenStream>) -> TokenStream {
    match value {
        Some(value) => quote!(#core::option::Option::Some(#value)),
        None => quote!(#core::option::Option::None),
    }
}

//! Stage 3: the `marty::saga::Saga` impl. Never validates, never fails.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::SagaModel;
use crate::call::codegen::option_duration;
use crate::paths::Paths;

pub(super) fn emit(model: &SagaModel) -> TokenStream {
    let paths = Paths::new(model.krate.as_ref());
    let core = paths.core();
    let support = paths.private_item("saga_support");
    let item = &model.item;
    let self_ty = &item.self_ty;
    let env = model.env.as_ref().map_or_else(|| quote!(()), |env| quote!(#env));
    let (name, store) = (&model.name, &model.store);
    let timeout = option_duration(&core, model.timeout);
    let path = model.config_path.display().to_string();
    let embedded = crate::config_file::embedded_text(&core, &path);
    let index = format_ident!("__marty_index", span = Span::mixed_site());
    let ctx = format_ident!("__marty_ctx", span = Span::mixed_site());
    let definitions = model.steps.iter().map(|step| {
        let step_name = step.method.to_string();
        let compensation = match &step.compensation {
            Some(compensation) => {
                let compensation = compensation.method.to_string();
                quote!(#core::option::Option::Some(#compensation))
            }
            None => quote!(#core::option::Option::None),
        };
        let timeout = option_duration(&core, step.timeout);
        let max_attempts = step.max_attempts;
        quote! {
            #support::StepDefinition { name: #step_name, compensation: #compensation, timeout: #timeout, max_attempts: #max_attempts }
        }
    });
    let call = |method: &syn::Ident, context: &Option<syn::Type>, output: Span| {
        // At the parameter's type: a context of another `env` is reported there.
        let arguments = match context {
            Some(ty) => {
                let at_parameter = syn::Ident::new("__marty_ctx", Span::mixed_site().located_at(ty.span()));
                quote!(self, #at_parameter)
            }
            None => quote!(self),
        };
        // The result and the check of its type at the method's return type, so a type that is not a
        // step result is reported there.
        let step_result = paths.private_item_at("saga_support", output);
        let step_result = quote_spanned!(output=> #step_result::step_result);
        let result = format_ident!("__marty_result", span = Span::mixed_site());
        let at_output = syn::Ident::new("__marty_result", Span::mixed_site().located_at(output));
        quote!(#support::Box::pin(async move {
            let #result = Self::#method(#arguments).await;
            #step_result(#at_output)
        }))
    };
    let run_arms = model.steps.iter().enumerate().map(|(position, step)| {
        let body = call(&step.method, &step.context, step.output);
        quote!(#position => #body,)
    });
    let compensate_arms = model.steps.iter().enumerate().filter_map(|(position, step)| {
        let compensation = step.compensation.as_ref()?;
        let body = call(&compensation.method, &compensation.context, compensation.output);
        Some(quote!(#position => #body,))
    });
    let fallback = quote!(_ => #support::Box::pin(async move { #support::no_such_step(#name, #index) }),);
    let signature = |function: &str| {
        let function = syn::Ident::new(function, item.self_ty.span());
        quote! {
            #[allow(unused_variables, clippy::needless_lifetimes)]
            fn #function<'a>(
                &'a mut self,
                #index: usize,
                #ctx: &'a mut #support::StepContext<Self::Env>,
            ) -> #support::BoxFuture<'a, #support::Result<(), #support::StepError>>
        }
    };
    let run_step = signature("run_step");
    let compensate = signature("compensate");
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #support::Saga for #self_ty {
                type Env = #env;

                const DEFINITION: &'static #support::SagaDefinition = &#support::SagaDefinition {
                    name: #name,
                    store: #store,
                    timeout: #timeout,
                    steps: &[#(#definitions),*],
                    config: (#path, #embedded),
                };

                #run_step {
                    match #index {
                        #(#run_arms)*
                        #fallback
                    }
                }

                #compensate {
                    match #index {
                        #(#compensate_arms)*
                        #fallback
                    }
                }
            }
        };
    }
}

//! Stage 3: the `marty::saga::Saga` impl. Never validates, never fails.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;

use super::{SagaModel, Step};
use crate::common::config_file::embedded_text;
use crate::common::durations::option_duration;
use crate::common::paths::{rt, Paths};

pub(super) fn emit(model: &SagaModel) -> TokenStream {
    let paths = Paths::new(model.krate.as_ref());
    let item = &model.item;
    let self_ty = &item.self_ty;
    let env = model.env.as_ref().map_or_else(|| quote!(()), |env| quote!(#env));
    let (saga, saga_definition) = (paths.get(rt::SAGA), paths.get(rt::SAGA_DEFINITION));
    let definition = emit_definition(model, &paths);
    let run_step = emit_dispatch(model, &paths, "run_step", |step| {
        Some(emit_call(&paths, &step.method, &step.context, step.output))
    });
    let compensate = emit_dispatch(model, &paths, "compensate", |step| {
        let compensation = step.compensation.as_ref()?;
        Some(emit_call(&paths, &compensation.method, &compensation.context, compensation.output))
    });
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #saga for #self_ty {
                type Env = #env;

                const DEFINITION: &'static #saga_definition = &#definition;

                #run_step

                #compensate
            }
        };
    }
}

/// The static `SagaDefinition`: name, store, timeout, the steps in order, the configuration.
fn emit_definition(model: &SagaModel, paths: &Paths) -> TokenStream {
    let core = paths.core();
    let (saga_definition, step_definition) = (paths.get(rt::SAGA_DEFINITION), paths.get(rt::STEP_DEFINITION));
    let (name, store) = (&model.name, &model.store);
    let timeout = option_duration(&core, model.timeout);
    let path = model.config_path.display().to_string();
    let embedded = embedded_text(&core, &path);
    let steps = model.steps.iter().map(|step| {
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
            #step_definition { name: #step_name, compensation: #compensation, timeout: #timeout, max_attempts: #max_attempts }
        }
    });
    quote! {
        #saga_definition {
            name: #name,
            store: #store,
            timeout: #timeout,
            steps: &[#(#steps),*],
            config: (#path, #embedded),
        }
    }
}

/// `fn run_step` or `fn compensate`: a `match` on the step's index calling `call(step)`'s method.
fn emit_dispatch(
    model: &SagaModel,
    paths: &Paths,
    function: &str,
    call: impl Fn(&Step) -> Option<TokenStream>,
) -> TokenStream {
    let (boxed, no_such_step) = (paths.get(rt::SAGA_BOX), paths.get(rt::NO_SUCH_STEP));
    let (step_context, box_future) = (paths.get(rt::STEP_CONTEXT), paths.get(rt::BOX_FUTURE));
    let (result, step_error) = (paths.get(rt::SAGA_RESULT), paths.get(rt::STEP_ERROR));
    let index = format_ident!("__marty_index", span = Span::mixed_site());
    let ctx = format_ident!("__marty_ctx", span = Span::mixed_site());
    let arms = model.steps.iter().enumerate().filter_map(|(position, step)| {
        let body = call(step)?;
        Some(quote!(#position => #body,))
    });
    let name = &model.name;
    let function = syn::Ident::new(function, model.item.self_ty.span());
    quote! {
        #[allow(unused_variables, clippy::needless_lifetimes)]
        fn #function<'a>(
            &'a mut self,
            #index: usize,
            #ctx: &'a mut #step_context<Self::Env>,
        ) -> #box_future<'a, #result<(), #step_error>> {
            match #index {
                #(#arms)*
                _ => #boxed::pin(async move { #no_such_step(#name, #index) }),
            }
        }
    }
}

/// One step's (or compensation's) call, boxed: `Self::method(self[, ctx])`, its result checked at
/// the method's return type (`output`), so a type that is not a step result is reported there.
fn emit_call(paths: &Paths, method: &syn::Ident, context: &Option<syn::Type>, output: Span) -> TokenStream {
    let boxed = paths.get(rt::SAGA_BOX);
    // At the parameter's type: a context of another `env` is reported there.
    let arguments = match context {
        Some(ty) => {
            let at_parameter = syn::Ident::new("__marty_ctx", Span::mixed_site().located_at(ty.span()));
            quote!(self, #at_parameter)
        }
        None => quote!(self),
    };
    let step_result = paths.get_at(rt::STEP_RESULT, output);
    let result = format_ident!("__marty_result", span = Span::mixed_site());
    let at_output = syn::Ident::new("__marty_result", Span::mixed_site().located_at(output));
    quote!(#boxed::pin(async move {
        let #result = Self::#method(#arguments).await;
        #step_result(#at_output)
    }))
}

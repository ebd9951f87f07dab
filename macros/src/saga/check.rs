//! Stage 2: the rules a saga follows, one fn each, producing the model codegen needs.

use std::collections::HashMap;

use darling::error::Accumulator;
use proc_macro2::Span;
use syn::spanned::Spanned;

use super::parse::{SagaArgs, StepMethod};
use super::{Compensation, SagaModel, Step};
use crate::common::config_file;
use crate::common::diagnostic::{did_you_mean, error};
use crate::common::durations::positive_duration;

/// Attempts a step gets when `max_attempts` is not given.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

pub(super) fn validate(
    args: SagaArgs,
    item: syn::ItemImpl,
    marked: Vec<StepMethod>,
    errors: &mut Accumulator,
) -> Option<SagaModel> {
    let type_name = check_impl(&item, errors)?;
    let config = config_file::load(args.config.as_ref().map(|arg| arg.value.as_str()));
    let config_span = args.config.as_ref().map_or(Span::call_site(), |arg| arg.span);
    let config_ok = config.require(config_span, errors);
    let missing_store = || {
        error(
            Span::call_site(),
            format!("saga `{type_name}` names no database to keep its state in"),
            "name a database dependency of marty.toml: `#[saga(store = \"orders_db\")]`",
        )
    };
    let store = config.store(args.store.as_ref(), "a saga's state", missing_store, errors);
    let timeout = args.timeout.as_ref().and_then(|arg| {
        positive_duration("timeout", arg, "saga", "give `timeout` a positive duration, e.g. `\"30s\"`", errors)
    });
    let methods: HashMap<String, &syn::ImplItemFn> = item
        .items
        .iter()
        .filter_map(|item| match item {
            syn::ImplItem::Fn(method) => Some((method.sig.ident.to_string(), method)),
            _ => None,
        })
        .collect();
    if marked.is_empty() {
        errors.push(error(
            item.self_ty.span(),
            format!("saga `{type_name}` has no steps"),
            "mark the methods that run, in order, with `#[saga_step]`: `#[saga_step(compensate = release_stock)] async fn reserve_stock(&mut self) -> Result<(), StepError>`",
        ));
        return None;
    }
    let step_names: Vec<String> = marked.iter().map(|step| step.sig.ident.to_string()).collect();
    let env = args.env.as_ref().map(|arg| quote::ToTokens::to_token_stream(&arg.path).to_string().replace(' ', ""));
    let impl_block = ImplBlock { methods: &methods, step_names: &step_names, env: env.as_deref() };
    let mut steps = Vec::new();
    let mut ok = true;
    for method in &marked {
        match check_step(method, &impl_block, errors) {
            Some(step) => steps.push(step),
            None => ok = false,
        }
    }
    let name = args.name.map_or_else(|| snake_case(&type_name), |arg| arg.value);
    if !(ok && config_ok) {
        return None;
    }
    Some(SagaModel {
        name,
        store: store?,
        env: args.env.map(|arg| arg.path).map(|path| syn::parse_quote!(#path)).or_else(|| inferred_env(&steps)),
        timeout,
        config_path: config.path,
        krate: args.krate.map(|arg| arg.path),
        item,
        steps,
    })
}

/// `#[saga]` goes on the inherent, non-generic impl of a named type; returns the type's name.
fn check_impl(item: &syn::ItemImpl, errors: &mut Accumulator) -> Option<String> {
    if let Some((path, _)) = &item.trait_ {
        errors.push(error(
            path.span(),
            "`#[saga]` goes on an inherent impl, not a trait impl",
            "move the steps to `impl PlaceOrder { .. }`",
        ));
        return None;
    }
    if let Some(param) = item.generics.params.first() {
        errors.push(error(
            param.span(),
            "a saga's state cannot be generic",
            "persisted sagas are decoded by type: use a concrete type",
        ));
        return None;
    }
    match &*item.self_ty {
        syn::Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().map(|segment| segment.ident.to_string())
        }
        other => {
            errors.push(error(
                other.span(),
                "`#[saga]` goes on the impl of a named type",
                "write `impl PlaceOrder { .. }`",
            ));
            None
        }
    }
}

/// What a step's checks need to know of the rest of the impl.
struct ImplBlock<'a> {
    methods: &'a HashMap<String, &'a syn::ImplItemFn>,
    step_names: &'a [String],
    /// `env = ..` as written, for the signatures suggested in messages.
    env: Option<&'a str>,
}

impl ImplBlock<'_> {
    /// The signature to suggest for step or compensation `name`.
    fn shape(&self, name: &str) -> String {
        let context = self.env.map(|env| format!(", ctx: &mut StepContext<{env}>")).unwrap_or_default();
        format!("async fn {name}(&mut self{context}) -> Result<(), StepError>")
    }
}

fn check_step(method: &StepMethod, impl_block: &ImplBlock<'_>, errors: &mut Accumulator) -> Option<Step> {
    let name = &method.sig.ident;
    let mut ok = true;
    if let Some(span) = method.repeated {
        errors.push(error(
            span,
            format!("`{name}` is marked `#[saga_step]` twice"),
            "remove one of them; a step runs once per saga",
        ));
        ok = false;
    }
    if let Some(cfg) = method.cfgs.first() {
        errors.push(error(
            cfg.span(),
            "a saga step cannot be compiled conditionally",
            "steps are numbered in the database by their order: move the `#[cfg]` inside the method's body",
        ));
        ok = false;
    }
    let shape = impl_block.shape(&name.to_string());
    let context = check_signature(&method.sig, &format!("saga step `{name}`"), &shape, errors);
    let compensation = method.args.compensate.as_ref().and_then(|arg| {
        let span = method.compensate_span.unwrap_or_else(|| arg.path.span());
        check_compensation(&arg.path, span, name, impl_block, errors)
    });
    ok &= method.args.compensate.is_none() || compensation.is_some();
    let timeout = method.args.timeout.as_ref().and_then(|arg| {
        positive_duration("timeout", arg, "attempt", "give `timeout` a positive duration, e.g. `\"5s\"`", errors)
    });
    ok &= method.args.timeout.is_none() || timeout.is_some();
    let max_attempts = match &method.args.max_attempts {
        Some(arg) if arg.value == 0 => {
            errors.push(error(
                arg.span,
                "`max_attempts` must be at least 1",
                "write `max_attempts = 1` to run the step once",
            ));
            ok = false;
            0
        }
        Some(arg) => arg.value,
        None => DEFAULT_MAX_ATTEMPTS,
    };
    let Signature { context, output } = context?;
    Some(Step { method: name.clone(), context, output, compensation, timeout, max_attempts }).filter(|_| ok)
}

/// `compensate = ..` names another, non-step method of the same impl with a step's signature.
fn check_compensation(
    arg: &syn::Path,
    span: Span,
    step: &syn::Ident,
    impl_block: &ImplBlock<'_>,
    errors: &mut Accumulator,
) -> Option<Compensation> {
    let ImplBlock { methods, step_names, .. } = impl_block;
    let Some(ident) = arg.get_ident() else {
        errors.push(error(
            span,
            "`compensate` names a method of this impl",
            "write its bare name: `compensate = release_stock`",
        ));
        return None;
    };
    let name = ident.to_string();
    if step_names.contains(&name) {
        errors.push(error(
            span,
            format!("`{name}` is a saga step; it cannot also be the compensation of `{step}`"),
            format!("write a method of its own that undoes `{step}`, e.g. `undo_{step}`"),
        ));
        return None;
    }
    let Some(method) = methods.get(&name) else {
        let candidates: Vec<&str> = methods
            .keys()
            .map(String::as_str)
            .filter(|candidate| !step_names.iter().any(|step| step == candidate))
            .collect();
        let help = if candidates.is_empty() {
            format!("add `{}` to this impl", impl_block.shape(&name))
        } else {
            did_you_mean(&name, &candidates, "methods of this impl:")
        };
        errors.push(error(span, format!("no method `{name}` in this impl to compensate `{step}`"), help));
        return None;
    };
    let shape = impl_block.shape(&name);
    let Signature { context, output } =
        check_signature(&method.sig, &format!("compensation `{name}` (of step `{step}`)"), &shape, errors)?;
    Some(Compensation { method: ident.clone(), context, output })
}

/// Steps and compensations: `async`, `&self` or `&mut self`, at most the step context besides, and a
/// return type (checked to be a `Result` by the type checker). One thing wrong is reported at its
/// token with its reason; several are one error on the signature, with the signature to write.
fn check_signature(sig: &syn::Signature, what: &str, shape: &str, errors: &mut Accumulator) -> Option<Signature> {
    let name = &sig.ident;
    let add_async = format!("add `async`: `async fn {name}(..)`");
    let mut wrong: Vec<(Span, &str, String)> = Vec::new();
    if sig.asyncness.is_none() {
        wrong.push((sig.fn_token.span(), "is not `async`", add_async));
    }
    let by_reference = matches!(sig.inputs.first(), Some(syn::FnArg::Receiver(receiver)) if matches!(receiver.kind, syn::ReceiverKind::Reference(..)));
    if !by_reference {
        let span = sig.inputs.first().map_or(sig.ident.span(), Spanned::span);
        let help = format!("write `{shape}`: it may change the saga's state, which is saved after it");
        wrong.push((span, "does not take `&mut self` (or `&self`)", help));
    }
    let extra: Vec<&syn::FnArg> = sig.inputs.iter().skip(1).collect();
    if let Some(surplus) = extra.get(1) {
        wrong.push((
            surplus.span(),
            "takes more than the step context",
            format!("write `{shape}`; reach clients through `ctx.env()`"),
        ));
    }
    if matches!(sig.output, syn::ReturnType::Default) {
        wrong.push((
            sig.ident.span(),
            "returns nothing",
            format!("write `{shape}`: an `Err` is retried, then compensated"),
        ));
    }
    match wrong.as_slice() {
        [] => {}
        [(span, problem, help)] => {
            errors.push(error(*span, format!("{what} {problem}"), help));
            return None;
        }
        several => {
            let problems: Vec<&str> = several.iter().map(|(_, problem, _)| *problem).collect();
            let problem = format!("{what} has the wrong signature: it {}", problems.join(", "));
            errors.push(error(sig.ident.span(), problem, format!("write `{shape}`")));
            return None;
        }
    }
    let context = extra.first().and_then(|arg| match arg {
        syn::FnArg::Typed(typed) => Some((*typed.ty).clone()),
        syn::FnArg::Receiver(_) => None,
    });
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => sig.ident.span(),
    };
    Some(Signature { context, output })
}

/// What codegen needs of a checked step or compensation signature.
struct Signature {
    context: Option<syn::Type>,
    output: Span,
}

/// `env` when it is not given: `X` of the first `ctx: &mut StepContext<X>` of a step or compensation.
fn inferred_env(steps: &[Step]) -> Option<syn::Type> {
    let contexts = steps.iter().flat_map(|step| {
        let compensation = step.compensation.as_ref().and_then(|compensation| compensation.context.as_ref());
        step.context.iter().chain(compensation)
    });
    contexts.filter_map(env_of).next()
}

/// `X` in `&mut StepContext<X>` (or `&StepContext<X>`), for `env` when it is not given.
fn env_of(context: &syn::Type) -> Option<syn::Type> {
    let syn::Type::Reference(reference) = context else { return None };
    let syn::Type::Path(path) = &*reference.elem else { return None };
    let last = path.path.segments.last().filter(|segment| segment.ident == "StepContext")?;
    let syn::PathArguments::AngleBracketed(arguments) = &last.arguments else { return None };
    arguments.args.iter().find_map(|argument| match argument {
        syn::GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    })
}

/// `PlaceOrder` -> `place_order`.
fn snake_case(name: &str) -> String {
    let mut snake = String::new();
    for (index, character) in name.char_indices() {
        if character.is_uppercase() && index > 0 {
            snake.push('_');
        }
        snake.extend(character.to_lowercase());
    }
    snake
}

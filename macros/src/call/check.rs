//! Stage 2: checks the arguments against the fn they annotate and the `marty.toml` they name, and
//! builds the [`CallModel`] codegen needs. Every rule reports into the one accumulator, so a user sees
//! every mistake in one compile.

use darling::error::Accumulator;
use marty_config::{Backoff, DependencyKind};
use proc_macro2::Span;
use syn::spanned::Spanned;

use super::parse::{CallArgs, RetryArg};
use super::{CallModel, RetryModel};
use crate::common::args::StrArg;
use crate::common::config_file::{self, ConfigFile, DependencyUse, FileState};
use crate::common::diagnostic::{did_you_mean, error};
use crate::common::durations::{duration, positive_duration};

pub(super) fn validate(
    kind: DependencyKind,
    args: CallArgs,
    func: syn::ItemFn,
    errors: &mut Accumulator,
) -> Option<CallModel> {
    let attribute = kind.attribute();
    check_async(attribute, &func, errors);
    check_return_type(attribute, &func, errors);
    let config = config_file::load(args.config.as_ref().map(|arg| arg.value.as_str()));
    check_config_arg(&args, &config, errors);
    let dependency = match args.dependency_reported {
        true => None,
        false => check_dependency(kind, args.dependency.as_ref(), &config, args.config.is_some(), errors),
    };
    let operation = check_operation(args.operation.as_ref(), &func, errors);
    let timeout = args.timeout.as_ref().and_then(|arg| {
        let help = "give `timeout` a positive duration, e.g. `\"2s\"`, or remove it to use the dependency's";
        positive_duration("timeout", arg, "call", help, errors)
    });
    let retry = check_retry(args.retry, errors);
    Some(CallModel {
        kind,
        dependency: dependency?,
        operation: operation?,
        timeout,
        retry: retry?,
        fallback: args.fallback.map(|arg| arg.path),
        classify: args.classify.map(|arg| arg.path),
        config_path: config.path,
        krate: args.krate.map(|arg| arg.path),
        func,
    })
}

/// The expansion awaits the policy, so the fn must be async.
fn check_async(attribute: &str, func: &syn::ItemFn, errors: &mut Accumulator) {
    if func.sig.asyncness.is_none() {
        let name = &func.sig.ident;
        errors.push(error(
            func.sig.fn_token.span(),
            format!("`#[{attribute}]` needs an `async fn`"),
            format!("add `async`: `async fn {name}(..)`"),
        ));
    }
}

/// A wrapped call returns `Result<T, E>` so Marty's own errors have somewhere to go. Obvious
/// non-`Result` types are rejected here; aliases are checked by a trait assertion at the return type.
fn check_return_type(attribute: &str, func: &syn::ItemFn, errors: &mut Accumulator) {
    let ty = match &func.sig.output {
        syn::ReturnType::Default => {
            let name = &func.sig.ident;
            let help = format!("return a `Result` whose error can hold Marty's errors: `async fn {name}(..) -> Result<(), MyError>` with `impl From<marty::Error> for MyError`");
            errors.push(error(
                func.sig.ident.span(),
                format!("`{name}` returns nothing, but `#[{attribute}]` fns must return `Result<T, E>`"),
                help,
            ));
            return;
        }
        syn::ReturnType::Type(_, ty) => ty,
    };
    let found = match &**ty {
        syn::Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last().map(|segment| segment.ident.to_string()).unwrap_or_default();
            let obviously_not_result = matches!(
                last.as_str(),
                "Option"
                    | "Vec"
                    | "String"
                    | "bool"
                    | "char"
                    | "str"
                    | "Box"
                    | "HashMap"
                    | "i8"
                    | "i16"
                    | "i32"
                    | "i64"
                    | "i128"
                    | "isize"
                    | "u8"
                    | "u16"
                    | "u32"
                    | "u64"
                    | "u128"
                    | "usize"
                    | "f32"
                    | "f64"
            );
            if !obviously_not_result {
                return;
            }
            Some(quote::ToTokens::to_token_stream(ty).to_string())
        }
        syn::Type::ImplTrait(_) => {
            let help = "return a named `Result<T, E>`; the expansion has to name the type";
            errors.push(error(ty.span(), format!("`#[{attribute}]` cannot wrap an `impl Trait` return type"), help));
            return;
        }
        syn::Type::Paren(_) | syn::Type::Group(_) | syn::Type::Macro(_) | syn::Type::Verbatim(_) => return,
        _ => Some(quote::ToTokens::to_token_stream(ty).to_string()),
    };
    if let Some(found) = found {
        let found = found.replace(" < ", "<").replace(" >", ">").replace(" ,", ",");
        let help = format!("return `Result<{found}, E>` where `E: From<marty::Error>`, so bulkhead, timeout and circuit-breaker errors can be returned");
        errors.push(error(ty.span(), format!("`#[{attribute}]` fns must return `Result<T, E>`, not `{found}`"), help));
    }
}

/// `config = ".."` must name a file that exists.
fn check_config_arg(args: &CallArgs, config: &ConfigFile, errors: &mut Accumulator) {
    if let (Some(arg), FileState::Missing) = (&args.config, &*config.state) {
        let problem = format!("configuration file `{}` not found", arg.value);
        let help = format!("`config` is relative to the crate's Cargo.toml; looked for `{}`", config.path.display());
        errors.push(error(arg.span, problem, help));
    }
}

/// The dependency must be declared in `marty.toml`, with the attribute's kind.
fn check_dependency(
    kind: DependencyKind,
    arg: Option<&StrArg>,
    file: &ConfigFile,
    named_by_arg: bool,
    errors: &mut Accumulator,
) -> Option<String> {
    let attribute = kind.attribute();
    let Some(arg) = arg else {
        let declared = file.names_of_kind(kind);
        let help = match declared.first() {
            Some(first) => format!(
                "add `dependency = \"{first}\"`; `{}` declares {} dependencies: {}",
                file.display,
                kind,
                marty_config::suggest::list(declared.iter().copied())
            ),
            None => format!(
                "add `dependency = \"orders_db\"` naming a `[dependencies.orders_db]` with `kind = \"{kind}\"` in `{}`",
                file.display
            ),
        };
        errors.push(error(Span::call_site(), format!("`#[{attribute}]` needs `dependency = \"..\"`"), help));
        return None;
    };
    let name = &arg.value;
    match &*file.state {
        FileState::Valid(_) => {
            file.check_dependency(name, arg.span, DependencyUse::Call(kind), errors).then(|| name.clone())
        }
        // `config = ".."` already reported its own missing file.
        FileState::Missing if named_by_arg => None,
        FileState::Missing => {
            let help =
                format!("create `{}` beside Cargo.toml with:\n[dependencies.{name}]\nkind = \"{kind}\"", file.display);
            errors.push(error(arg.span, format!("`{name}` cannot be checked: `{}` not found", file.display), help));
            None
        }
        FileState::Invalid { .. } => {
            file.report_invalid(arg.span, errors);
            None
        }
    }
}

/// The operation label defaults to the fn's name; an explicit one must say something.
fn check_operation(arg: Option<&StrArg>, func: &syn::ItemFn, errors: &mut Accumulator) -> Option<String> {
    let Some(arg) = arg else { return Some(func.sig.ident.to_string()) };
    if arg.value.trim().is_empty() {
        let help = format!("name the operation, or remove `operation` to use the fn name `{}`", func.sig.ident);
        errors.push(error(arg.span, "`operation` is empty", help));
        return None;
    }
    Some(arg.value.clone())
}

fn check_retry(arg: Option<RetryArg>, errors: &mut Accumulator) -> Option<RetryModel> {
    let fields = match arg {
        None => return Some(RetryModel::Inherit),
        Some(RetryArg::Off) => return Some(RetryModel::Off),
        Some(RetryArg::Set(fields)) => fields,
    };
    let mut valid = true;
    let max_attempts = fields.max_attempts.and_then(|arg| {
        if (1..=100).contains(&arg.value) {
            Some(arg.value)
        } else {
            valid = false;
            errors.push(error(
                arg.span,
                format!("`max_attempts = {}` is out of range", arg.value),
                "use 1 (no retry) to 100 attempts; `retry = false` turns retry off",
            ));
            None
        }
    });
    let backoff = fields.backoff.and_then(|arg| match arg.value.as_str() {
        "exponential" => Some(Backoff::Exponential),
        "fixed" => Some(Backoff::Fixed),
        other => {
            valid = false;
            errors.push(error(
                arg.span,
                format!("unknown backoff `{other}`"),
                did_you_mean(other, &["exponential", "fixed"], "valid values:"),
            ));
            None
        }
    });
    let initial = fields.initial.as_ref().map(|arg| (arg, duration(arg, errors)));
    let max = fields.max.as_ref().map(|arg| (arg, duration(arg, errors)));
    if let (Some((_, Some(initial))), Some((max_arg, Some(max)))) = (initial, max) {
        if initial > max {
            valid = false;
            errors.push(error(
                max_arg.span,
                "`max` backoff is shorter than `initial`",
                "make `max` at least `initial`, e.g. `initial = \"50ms\", max = \"2s\"`",
            ));
        }
    }
    let failed_duration = matches!(initial, Some((_, None))) || matches!(max, Some((_, None)));
    if !valid || failed_duration {
        return None;
    }
    Some(RetryModel::Set {
        max_attempts,
        backoff,
        initial: initial.and_then(|(_, d)| d),
        max: max.and_then(|(_, d)| d),
        jitter: fields.jitter.map(|arg| arg.value),
    })
}

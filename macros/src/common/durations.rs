//! Durations written as strings (`"2s"`, `"150ms"`): parsed by `marty-config`, as `marty.toml`'s are,
//! and written into expansions as `Duration::from_nanos`.

use std::time::Duration;

use darling::error::Accumulator;
use marty_config::{parse_duration, DURATION_HELP};
use proc_macro2::TokenStream;
use quote::quote;

use super::args::StrArg;
use super::diagnostic::error;

/// The duration `arg` spells, or its error at the literal.
pub(crate) fn duration(arg: &StrArg, errors: &mut Accumulator) -> Option<Duration> {
    match parse_duration(&arg.value) {
        Ok(duration) => Some(duration),
        Err(problem) => {
            errors.push(error(arg.span, problem, DURATION_HELP));
            None
        }
    }
}

/// A duration that bounds something (`timeout = ..`): zero would fail every `unit` ("call",
/// "attempt"); `help` says what to write instead.
pub(crate) fn positive_duration(
    name: &str,
    arg: &StrArg,
    unit: &str,
    help: &str,
    errors: &mut Accumulator,
) -> Option<Duration> {
    let value = duration(arg, errors)?;
    if value.is_zero() {
        errors.push(error(arg.span, format!("a zero `{name}` would fail every {unit}"), help));
        return None;
    }
    Some(value)
}

/// `Some(Duration::from_nanos(..))` or `None`, through the runtime's `core`.
pub(crate) fn option_duration(core: &TokenStream, duration: Option<Duration>) -> TokenStream {
    match duration {
        Some(duration) => {
            let duration = duration_tokens(&quote!(#core::time::Duration), duration);
            quote!(#core::option::Option::Some(#duration))
        }
        None => quote!(#core::option::Option::None),
    }
}

/// `<duration_type>::from_nanos(..)`, saturating at `u64::MAX` nanoseconds (584 years).
pub(crate) fn duration_tokens(duration_type: &TokenStream, duration: Duration) -> TokenStream {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    quote!(#duration_type::from_nanos(#nanos))
}

//! Error messages in the house style: the problem (lowercase, no trailing period, code in backticks),
//! then a `help:` line with the concrete edit, on the smallest offending token.

use proc_macro2::Span;

/// An error at `span` saying `problem`, then `help` on its own line (rustc indents it under the message).
pub(crate) fn error(span: Span, problem: impl std::fmt::Display, help: impl std::fmt::Display) -> darling::Error {
    darling::Error::custom(format!("{problem}\nhelp: {help}")).with_span(&span)
}

/// "did you mean `x`? {context} `a`, `b`" or just the list.
pub(crate) fn did_you_mean(name: &str, candidates: &[&str], context: &str) -> String {
    let list = marty_config::suggest::list(candidates.iter().copied());
    match marty_config::suggest::nearest(name, candidates.iter().copied()) {
        Some(near) => format!("did you mean `{near}`? {context} {list}"),
        None => format!("{context} {list}"),
    }
}

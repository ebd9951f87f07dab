//! Stage 1: the attribute's arguments as written, parsed with darling into spanned values. Names and
//! shapes are checked first so every message is in the house style; values are converted by the
//! `FromMeta` impls below. Nothing here reads the configuration or the fn.

use darling::ast::NestedMeta;
use darling::{Error, FromMeta};
use proc_macro2::TokenStream;
use syn::spanned::Spanned;
use syn::{Expr, Lit};

use crate::common::args::{check_names, parse_list, unwrap_group, BoolArg, IntArg, PathArg, Shape, StrArg};
use crate::common::diagnostic::error;

/// The arguments of `#[database_call(..)]` (and `api_call`, `cache_call`).
#[derive(FromMeta, Default)]
pub(crate) struct CallArgs {
    pub(crate) dependency: Option<StrArg>,
    pub(crate) operation: Option<StrArg>,
    pub(crate) timeout: Option<StrArg>,
    pub(crate) retry: Option<RetryArg>,
    pub(crate) fallback: Option<PathArg>,
    pub(crate) classify: Option<PathArg>,
    pub(crate) config: Option<StrArg>,
    #[darling(rename = "crate")]
    pub(crate) krate: Option<PathArg>,
    /// `dependency` was written but could not be read (unquoted, not a string, positional): that
    /// error names the fix, so "needs `dependency`" is not said as well.
    #[darling(skip)]
    pub(crate) dependency_reported: bool,
}

/// How each argument is written, for shape errors and their examples.
const CALL_ARGS: &[(&str, Shape)] = &[
    ("dependency", Shape::Value("dependency = \"orders_db\"")),
    ("operation", Shape::Value("operation = \"load_order\"")),
    ("timeout", Shape::Value("timeout = \"2s\"")),
    ("retry", Shape::ValueOrList("retry = false` or `retry(max_attempts = 5)")),
    ("fallback", Shape::Value("fallback = Self::cached_order")),
    ("classify", Shape::Value("classify = classify_order_error")),
    ("config", Shape::Value("config = \"config/marty.toml\"")),
    ("crate", Shape::Value("crate = \"my_marty\"")),
];

const RETRY_ARGS: &[(&str, Shape)] = &[
    ("max_attempts", Shape::Value("max_attempts = 5")),
    ("backoff", Shape::Value("backoff = \"exponential\"")),
    ("initial", Shape::Value("initial = \"50ms\"")),
    ("max", Shape::Value("max = \"2s\"")),
    ("jitter", Shape::Value("jitter = false")),
];

/// Parses the attribute's tokens; `attribute` names it in messages.
pub(crate) fn parse_args(attribute: &str, tokens: TokenStream, errors: &mut darling::error::Accumulator) -> CallArgs {
    let Some(items) = parse_list(attribute, "dependency = \"orders_db\"", tokens, errors) else {
        return CallArgs { dependency_reported: true, ..CallArgs::default() };
    };
    let dependency_written = items.iter().any(|item| match item {
        NestedMeta::Lit(Lit::Str(_)) => true,
        NestedMeta::Lit(_) => false,
        NestedMeta::Meta(meta) => meta.path().is_ident("dependency"),
        NestedMeta::NameValueInvalidExpr(meta) => meta.path.is_ident("dependency"),
    });
    let items = check_names(attribute, &items, CALL_ARGS, errors);
    // One argument at a time, so a bad value elsewhere does not hide `dependency` from the checks.
    let mut args = CallArgs::default();
    for item in items {
        if let Some(one) = errors.handle(CallArgs::from_list(std::slice::from_ref(&item))) {
            args.merge(one);
        }
    }
    args.dependency_reported = args.dependency.is_none() && dependency_written;
    args
}

impl CallArgs {
    fn merge(&mut self, other: CallArgs) {
        self.dependency = self.dependency.take().or(other.dependency);
        self.operation = self.operation.take().or(other.operation);
        self.timeout = self.timeout.take().or(other.timeout);
        self.retry = self.retry.take().or(other.retry);
        self.fallback = self.fallback.take().or(other.fallback);
        self.classify = self.classify.take().or(other.classify);
        self.config = self.config.take().or(other.config);
        self.krate = self.krate.take().or(other.krate);
    }
}

/// `retry = false`, or `retry(..)` with fields that replace the dependency's.
#[derive(Debug, Clone)]
pub(crate) enum RetryArg {
    Off,
    Set(RetryFields),
}

#[derive(Debug, Clone, Default, FromMeta)]
pub(crate) struct RetryFields {
    pub(crate) max_attempts: Option<IntArg>,
    pub(crate) backoff: Option<StrArg>,
    pub(crate) initial: Option<StrArg>,
    pub(crate) max: Option<StrArg>,
    pub(crate) jitter: Option<BoolArg>,
}

impl FromMeta for RetryArg {
    fn from_expr(expr: &Expr) -> darling::Result<Self> {
        match unwrap_group(expr) {
            Expr::Lit(syn::ExprLit { lit: Lit::Bool(lit), .. }) if !lit.value => Ok(RetryArg::Off),
            Expr::Lit(syn::ExprLit { lit: Lit::Bool(lit), .. }) => Err(error(
                lit.span(),
                "`retry = true` changes nothing: calls already retry as `marty.toml` says",
                "remove it, or override fields with `retry(max_attempts = 5)`",
            )),
            other => Err(error(
                other.span(),
                "expected `false` or a list",
                "write `retry = false` or `retry(max_attempts = 5)`",
            )),
        }
    }

    fn from_list(items: &[NestedMeta]) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        let items = check_names("retry(..)", items, RETRY_ARGS, &mut errors);
        let fields = errors.handle(RetryFields::from_list(&items)).unwrap_or_default();
        errors.finish_with(RetryArg::Set(fields))
    }
}

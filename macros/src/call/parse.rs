//! Stage 1: the attribute's arguments as written, parsed with darling into spanned values. Names and
//! shapes are checked first so every message is in the house style; values are converted by the
//! `FromMeta` impls below. Nothing here reads the configuration or the fn.

use darling::ast::NestedMeta;
use darling::{Error, FromMeta};
use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Expr, Lit, Meta};

use crate::diagnostic::{did_you_mean, error};

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

#[derive(Clone, Copy)]
pub(crate) enum Shape {
    /// `name = value`
    Value(&'static str),
    /// `name = value` or `name(..)`
    ValueOrList(&'static str),
    /// `name(..)`
    List(&'static str),
    /// a bare `name`
    Word(&'static str),
}

/// Parses the attribute's tokens; `attribute` names it in messages.
pub(crate) fn parse_args(attribute: &str, tokens: TokenStream, errors: &mut darling::error::Accumulator) -> CallArgs {
    let items = match NestedMeta::parse_meta_list(tokens) {
        Ok(items) => items,
        Err(syn_error) => {
            let help =
                format!("write arguments as `name = value` pairs, e.g. `#[{attribute}(dependency = \"orders_db\")]`");
            errors.push(error(
                syn_error.span(),
                format!("cannot parse the arguments of `#[{attribute}]`: {syn_error}"),
                help,
            ));
            return CallArgs { dependency_reported: true, ..CallArgs::default() };
        }
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

/// Reports unknown, repeated and positional arguments and arguments of the wrong shape, and returns
/// the items that are left for darling to convert.
pub(crate) fn check_names(
    context: &str,
    items: &[NestedMeta],
    known: &[(&str, Shape)],
    errors: &mut darling::error::Accumulator,
) -> Vec<NestedMeta> {
    let names: Vec<&str> = known.iter().map(|(name, _)| *name).collect();
    // Each name given, with how it was first written (a repeat's help quotes it).
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut kept = Vec::new();
    for item in items {
        let meta = match item {
            NestedMeta::Meta(meta) => meta,
            NestedMeta::Lit(lit) => {
                let help = match lit {
                    Lit::Str(s) if context.ends_with("_call") => format!("name it: `dependency = \"{}\"`", s.value()),
                    _ => format!(
                        "write arguments as `name = value`; valid names: {}",
                        marty_config::suggest::list(names.iter().copied())
                    ),
                };
                errors.push(error(
                    lit.span(),
                    format!("unexpected positional argument in `{}`", display_context(context)),
                    help,
                ));
                continue;
            }
            NestedMeta::NameValueInvalidExpr(meta) => {
                let help = format!(
                    "write arguments as `name = value`; valid names: {}",
                    marty_config::suggest::list(names.iter().copied())
                );
                errors.push(error(meta.span(), "expected `name = value`", help));
                continue;
            }
        };
        let path = meta.path();
        let name = path_name(path);
        let Some(&(_, shape)) = known.iter().find(|(known_name, _)| *known_name == name) else {
            let help = did_you_mean(&name, &names, "valid arguments:");
            errors.push(error(
                path.span(),
                format!("unknown argument `{name}` in `{}`", display_context(context)),
                help,
            ));
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(seen_name, _)| *seen_name == name) {
            errors.push(error(
                path.span(),
                format!("`{name}` is given twice"),
                format!("remove one of them; the first is `{first}`"),
            ));
            continue;
        }
        seen.push((name.clone(), written(meta)));
        let shape_ok = matches!(
            (meta, shape),
            (Meta::NameValue(_), Shape::Value(_) | Shape::ValueOrList(_))
                | (Meta::List(_), Shape::ValueOrList(_) | Shape::List(_))
                | (Meta::Path(_), Shape::Word(_))
        );
        if !shape_ok {
            let (example, problem) = match shape {
                Shape::Word(example) => (example, "takes no value"),
                Shape::List(example) => (example, "takes a list"),
                Shape::Value(example) | Shape::ValueOrList(example) => (example, "needs a value"),
            };
            errors.push(error(meta.span(), format!("`{name}` {problem}"), format!("write `{example}`")));
            continue;
        }
        kept.push(item.clone());
    }
    kept
}

/// An argument as written, for messages: `group = "billing"`, `grpc(..)`, `key`.
fn written(meta: &Meta) -> String {
    match meta {
        Meta::NameValue(pair) => {
            let value = &pair.value;
            format!("{} = {}", path_name(&pair.path), quote::quote!(#value))
        }
        Meta::List(list) => format!("{}(..)", path_name(&list.path)),
        Meta::Path(path) => path_name(path),
    }
}

fn display_context(context: &str) -> String {
    if context.ends_with("_call") {
        format!("#[{context}]")
    } else {
        context.to_owned()
    }
}

fn path_name(path: &syn::Path) -> String {
    path.segments.iter().map(|segment| segment.ident.to_string()).collect::<Vec<_>>().join("::")
}

/// A string literal and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct StrArg {
    pub(crate) value: String,
    pub(crate) span: Span,
}

impl FromMeta for StrArg {
    fn from_expr(expr: &Expr) -> darling::Result<Self> {
        match unwrap_group(expr) {
            Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => Ok(StrArg { value: lit.value(), span: lit.span() }),
            Expr::Path(path) => {
                let name = path_name(&path.path);
                Err(error(expr.span(), "expected a string literal", format!("put it in quotes: `\"{name}\"`")))
            }
            other => Err(error(
                other.span(),
                "expected a string literal",
                "write the value in double quotes, e.g. `\"orders_db\"`",
            )),
        }
    }
}

/// A whole number and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct IntArg {
    pub(crate) value: u32,
    pub(crate) span: Span,
}

impl FromMeta for IntArg {
    fn from_expr(expr: &Expr) -> darling::Result<Self> {
        match unwrap_group(expr) {
            Expr::Lit(syn::ExprLit { lit: Lit::Int(lit), .. }) => match lit.base10_parse::<u32>() {
                Ok(value) => Ok(IntArg { value, span: lit.span() }),
                Err(_) => Err(error(
                    lit.span(),
                    format!("`{lit}` is not a whole number of attempts"),
                    "write a small whole number, e.g. `5`",
                )),
            },
            other => Err(error(other.span(), "expected a whole number", "write a number without quotes, e.g. `5`")),
        }
    }
}

/// `true` or `false` and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct BoolArg {
    pub(crate) value: bool,
}

impl FromMeta for BoolArg {
    fn from_expr(expr: &Expr) -> darling::Result<Self> {
        match unwrap_group(expr) {
            Expr::Lit(syn::ExprLit { lit: Lit::Bool(lit), .. }) => Ok(BoolArg { value: lit.value }),
            other => Err(error(
                other.span(),
                "expected `true` or `false`",
                "write a boolean without quotes, e.g. `jitter = false`",
            )),
        }
    }
}

/// A path to an item, written bare (`Self::cached`) or quoted (`"Self::cached"`).
#[derive(Debug, Clone)]
pub(crate) struct PathArg {
    pub(crate) path: syn::Path,
}

impl FromMeta for PathArg {
    fn from_expr(expr: &Expr) -> darling::Result<Self> {
        match unwrap_group(expr) {
            Expr::Path(path) if path.qself.is_none() => Ok(PathArg { path: path.path.clone() }),
            Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => {
                lit.parse::<syn::Path>().map(|path| PathArg { path }).map_err(|_| {
                    error(
                        lit.span(),
                        format!("`{}` is not a path", lit.value()),
                        "write a path such as `Self::cached_order` or `crate::errors::classify`",
                    )
                })
            }
            other => Err(error(
                other.span(),
                "expected a path",
                "write a path such as `Self::cached_order` or `crate::errors::classify`",
            )),
        }
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

fn unwrap_group(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => unwrap_group(&group.expr),
        other => other,
    }
}

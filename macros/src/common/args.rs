//! The argument values every attribute takes (spanned strings, numbers, booleans, paths), how each
//! argument is written (`Shape`), and the one checker of names and shapes that reports unknown,
//! repeated, positional and mis-shaped arguments in the house style before darling converts values.

use darling::ast::NestedMeta;
use darling::FromMeta;
use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Expr, Lit, Meta};

use super::diagnostic::{did_you_mean, error};

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

/// An attribute's argument list, or the error saying how to write one (`example` is a valid list).
pub(crate) fn parse_list(
    attribute: &str,
    example: &str,
    tokens: TokenStream,
    errors: &mut darling::error::Accumulator,
) -> Option<Vec<NestedMeta>> {
    match NestedMeta::parse_meta_list(tokens) {
        Ok(items) => Some(items),
        Err(syn_error) => {
            errors.push(error(
                syn_error.span(),
                format!("cannot parse the arguments of `#[{attribute}]`: {syn_error}"),
                format!("write `name = value` pairs, e.g. `#[{attribute}({example})]`"),
            ));
            None
        }
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

/// An array of string literals, `["admin", "clerk"]`, each with where it was written.
#[derive(Debug, Clone, Default)]
pub(crate) struct StrListArg(pub(crate) Vec<StrArg>);

impl FromMeta for StrListArg {
    fn from_expr(expr: &Expr) -> darling::Result<Self> {
        match unwrap_group(expr) {
            Expr::Array(array) => {
                let mut errors = darling::Error::accumulator();
                let items = array.elems.iter().filter_map(|item| errors.handle(StrArg::from_expr(item))).collect();
                errors.finish_with(StrListArg(items))
            }
            Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => Err(error(
                lit.span(),
                "expected an array of strings",
                format!("put it in brackets: `[\"{}\"]`", lit.value()),
            )),
            other => Err(error(other.span(), "expected an array of strings", "write it as `[\"admin\", \"clerk\"]`")),
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
            other => Err(error(other.span(), "expected `true` or `false`", "write `true` or `false`, without quotes")),
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
                        "write the path of a fn, without quotes, e.g. `Self::my_fn` or `my_fn`",
                    )
                })
            }
            other => Err(error(
                other.span(),
                "expected a path",
                "write the path of a fn, without quotes, e.g. `Self::my_fn` or `my_fn`",
            )),
        }
    }
}

pub(crate) fn unwrap_group(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => unwrap_group(&group.expr),
        other => other,
    }
}

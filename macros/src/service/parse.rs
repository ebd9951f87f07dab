//! Stage 1: `#[service(..)]`'s arguments (darling) and the route attributes on its methods, matched
//! by their last path segment (`get` or `marty::get`) and removed from the methods, with the
//! `#[public]` / `#[authorize]` that say what a route requires of its caller.

use darling::FromMeta;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::spanned::Spanned;

use super::event_handler::{self, is_event_handler, HandlerMethod};
use super::HttpMethod;
use crate::common::args::{check_names, parse_list, PathArg, Shape, StrArg, StrListArg};
use crate::common::cfg_attributes;
use crate::common::diagnostic::error;

#[derive(FromMeta, Default)]
pub(crate) struct ServiceArgs {
    pub(crate) name: Option<StrArg>,
    pub(crate) config: Option<StrArg>,
    #[darling(rename = "crate")]
    pub(crate) krate: Option<PathArg>,
    /// `grpc(OrdersServer, ..)`: tonic-generated servers the state implements.
    pub(crate) grpc: Option<darling::util::PathList>,
    /// `reflection = FILE_DESCRIPTOR_SET`: the encoded descriptors reflection serves.
    pub(crate) reflection: Option<PathArg>,
}

const SERVICE_ARGS: &[(&str, Shape)] = &[
    ("name", Shape::Value("name = \"orders\"")),
    ("config", Shape::Value("config = \"config/marty.toml\"")),
    ("crate", Shape::Value("crate = \"my_marty\"")),
    ("grpc", Shape::List("grpc(OrdersServer)")),
    ("reflection", Shape::Value("reflection = proto::FILE_DESCRIPTOR_SET")),
];

pub(crate) fn parse_args(tokens: TokenStream, errors: &mut darling::error::Accumulator) -> ServiceArgs {
    let Some(items) = parse_list("service", "name = \"orders\"", tokens, errors) else {
        return ServiceArgs::default();
    };
    let kept = check_names("#[service]", &items, SERVICE_ARGS, errors);
    errors.handle(ServiceArgs::from_list(&kept)).unwrap_or_default()
}

/// A route attribute as written on a method.
pub(crate) struct RouteAttr {
    pub(crate) method: HttpMethod,
    pub(crate) path: StrArg,
}

/// A method marked `#[health_check]`, with the attribute removed.
pub(crate) struct ProbeMethod {
    pub(crate) sig: syn::Signature,
    pub(crate) cfgs: Vec<syn::Attribute>,
}

fn is_probe(attr: &syn::Attribute) -> bool {
    attr.path().segments.last().is_some_and(|segment| segment.ident == "health_check")
}

/// A method that carried route attributes, with them removed.
pub(crate) struct RoutedMethod {
    pub(crate) routes: Vec<RouteAttr>,
    pub(crate) sig: syn::Signature,
    pub(crate) cfgs: Vec<syn::Attribute>,
    /// `#[public]` and `#[authorize(..)]`, as written (the check allows one).
    pub(crate) access: Vec<AccessAttr>,
    /// `#[audit]`, where it is.
    pub(crate) audit: Option<Span>,
    /// `#[undescribed]`, where it is: the OpenAPI description does not read its types.
    pub(crate) undescribed: Option<Span>,
    /// Its doc comment, the operation's summary and description.
    pub(crate) docs: String,
}

/// What a route's attributes say it requires of its caller.
pub(crate) enum AccessAttr {
    /// `#[public]`: anyone.
    Public(Span),
    /// `#[authorize(roles = [..], scopes = [..])]`: an authenticated caller with any of the roles and
    /// all of the scopes (`#[authorize]` alone: any authenticated caller).
    Authorize { span: Span, roles: Vec<StrArg>, scopes: Vec<StrArg> },
}

impl AccessAttr {
    pub(crate) fn span(&self) -> Span {
        match self {
            AccessAttr::Public(span) | AccessAttr::Authorize { span, .. } => *span,
        }
    }
}

#[derive(FromMeta, Default)]
struct AuthorizeArgs {
    #[darling(default)]
    roles: StrListArg,
    #[darling(default)]
    scopes: StrListArg,
}

const AUTHORIZE_ARGS: &[(&str, Shape)] = &[
    ("roles", Shape::Value("roles = [\"admin\", \"clerk\"]")),
    ("scopes", Shape::Value("scopes = [\"orders:write\"]")),
];

/// The bare markers a route may carry: `#[audit]` and `#[undescribed]`.
const AUDIT: &str = "audit";
const UNDESCRIBED: &str = "undescribed";

fn is_marker(attr: &syn::Attribute, name: &str) -> bool {
    attr.path().segments.last().is_some_and(|segment| segment.ident == name)
}

/// `#[audit]` or `#[undescribed]`, bare: where it is.
fn parse_marker(attr: &syn::Attribute, name: &str, errors: &mut darling::error::Accumulator) -> Option<Span> {
    let (problem, help) = (format!("`#[{name}]` takes no arguments"), format!("write it bare: `#[{name}]`"));
    match &attr.meta {
        syn::Meta::Path(path) => Some(path.segments.last().map_or_else(|| path.span(), |segment| segment.ident.span())),
        syn::Meta::List(list) => {
            errors.push(error(list.tokens.span(), problem, help));
            None
        }
        syn::Meta::NameValue(value) => {
            errors.push(error(value.eq_token.span(), problem, help));
            None
        }
    }
}

/// Removes the `#[name]` markers from `attrs` and answers where the first was.
fn take_marker(attrs: &mut Vec<syn::Attribute>, name: &str, errors: &mut darling::error::Accumulator) -> Option<Span> {
    let mut found = None;
    attrs.retain(|attr| {
        if !is_marker(attr, name) {
            return true;
        }
        found = found.or(parse_marker(attr, name, errors));
        false
    });
    found
}

/// The method's doc comment, its lines joined.
fn doc_comment(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value: syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(text), .. }),
                ..
            }) => Some(text.value()),
            _ => None,
        })
        .collect();
    let lines: Vec<&str> = lines.iter().map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end()).collect();
    lines.join("\n").trim().to_owned()
}

fn access_kind(attr: &syn::Attribute) -> Option<&'static str> {
    let last = attr.path().segments.last()?.ident.to_string();
    ["public", "authorize"].into_iter().find(|name| *name == last)
}

fn parse_access(attr: &syn::Attribute, errors: &mut darling::error::Accumulator) -> Option<AccessAttr> {
    // The attribute's own name (`authorize` of `marty::authorize`).
    let span = attr.path().segments.last().map_or_else(|| attr.path().span(), |segment| segment.ident.span());
    match (access_kind(attr)?, &attr.meta) {
        ("public", syn::Meta::Path(_)) => Some(AccessAttr::Public(span)),
        ("public", _) => {
            let help = "write it bare: `#[public]`; to require a caller, use `#[authorize(roles = [..])]`";
            errors.push(error(attr.meta.span(), "`#[public]` takes no arguments", help));
            None
        }
        (_, syn::Meta::Path(_)) => Some(AccessAttr::Authorize { span, roles: Vec::new(), scopes: Vec::new() }),
        (_, syn::Meta::List(list)) => {
            let items = parse_list("authorize", "roles = [\"admin\"]", list.tokens.clone(), errors)?;
            let kept = check_names("#[authorize]", &items, AUTHORIZE_ARGS, errors);
            let args = errors.handle(AuthorizeArgs::from_list(&kept))?;
            Some(AccessAttr::Authorize { span, roles: args.roles.0, scopes: args.scopes.0 })
        }
        (_, syn::Meta::NameValue(value)) => {
            let help = "write `#[authorize(roles = [\"admin\"], scopes = [\"orders:write\"])]`";
            errors.push(error(value.eq_token.span(), "`#[authorize]` takes a list of arguments", help));
            None
        }
    }
}

fn route_method(attr: &syn::Attribute) -> Option<HttpMethod> {
    let last = attr.path().segments.last()?.ident.to_string();
    HttpMethod::ALL.iter().find(|(name, _)| *name == last).map(|(_, method)| *method)
}

/// What `#[service]` found on the impl's methods.
pub(crate) struct Marked {
    pub(crate) routed: Vec<RoutedMethod>,
    pub(crate) probes: Vec<ProbeMethod>,
    pub(crate) handlers: Vec<HandlerMethod>,
}

/// Removes every route, `#[health_check]` and `#[event_handler]` attribute from the impl's methods
/// and returns them, parsed.
pub(crate) fn take_routes(
    mut item: syn::ItemImpl,
    errors: &mut darling::error::Accumulator,
) -> (syn::ItemImpl, Marked) {
    let mut routed = Vec::new();
    let mut probes = Vec::new();
    let mut handlers = Vec::new();
    for impl_item in &mut item.items {
        let syn::ImplItem::Fn(method) = impl_item else { continue };
        let marked: Vec<syn::Attribute> = method.attrs.iter().filter(|attr| is_event_handler(attr)).cloned().collect();
        method.attrs.retain(|attr| !is_event_handler(attr));
        for attr in &marked {
            handlers.extend(event_handler::parse(attr, method, errors));
        }
        let before = method.attrs.len();
        method.attrs.retain(|attr| !is_probe(attr));
        if method.attrs.len() != before {
            probes.push(ProbeMethod { sig: method.sig.clone(), cfgs: cfg_attributes(&method.attrs) });
        }
        let mut access = Vec::new();
        method.attrs.retain(|attr| {
            let Some(_) = access_kind(attr) else { return true };
            access.extend(parse_access(attr, errors));
            false
        });
        let audit = take_marker(&mut method.attrs, AUDIT, errors);
        let undescribed = take_marker(&mut method.attrs, UNDESCRIBED, errors);
        let mut routes = Vec::new();
        method.attrs.retain(|attr| {
            let Some(http_method) = route_method(attr) else { return true };
            match parse_route_path(attr, http_method) {
                Ok(path) => routes.push(RouteAttr { method: http_method, path }),
                Err(found) => errors.push(found),
            }
            false
        });
        if routes.is_empty() {
            let help = "put it on a method with a route attribute, e.g. `#[get(\"/orders\")]`";
            for attr in &access {
                errors.push(error(attr.span(), "only a route handler can require a caller", help));
            }
            if let Some(span) = audit {
                errors.push(error(span, "only a route handler's requests can be audited", help));
            }
            if let Some(span) = undescribed {
                errors.push(error(span, "only a route handler is described", help));
            }
        } else {
            let cfgs = cfg_attributes(&method.attrs);
            let docs = doc_comment(&method.attrs);
            routed.push(RoutedMethod { routes, sig: method.sig.clone(), cfgs, access, audit, undescribed, docs });
        }
    }
    (item, Marked { routed, probes, handlers })
}

fn parse_route_path(attr: &syn::Attribute, method: HttpMethod) -> darling::Result<StrArg> {
    let name = method.as_str();
    let help = format!("write the path as a string: `#[{name}(\"/orders/{{id}}\")]`");
    let syn::Meta::List(list) = &attr.meta else {
        return Err(error(attr.path().span(), format!("`#[{name}]` needs a path"), help));
    };
    match syn::parse2::<syn::LitStr>(list.tokens.clone()) {
        Ok(lit) => Ok(StrArg { value: lit.value(), span: lit.span() }),
        Err(_) => Err(error(list.tokens.span(), format!("`#[{name}(..)]` takes one string literal, the path"), help)),
    }
}

/// The item with route attributes removed, for the error path (so rustc does not also complain that
/// `get` is not an attribute).
pub(crate) fn strip_route_attributes(item: TokenStream) -> TokenStream {
    match syn::parse2::<syn::ItemImpl>(item.clone()) {
        Ok(mut item_impl) => {
            for impl_item in &mut item_impl.items {
                if let syn::ImplItem::Fn(method) = impl_item {
                    method.attrs.retain(|attr| {
                        route_method(attr).is_none()
                            && !is_probe(attr)
                            && !is_event_handler(attr)
                            && access_kind(attr).is_none()
                            && !is_marker(attr, AUDIT)
                            && !is_marker(attr, UNDESCRIBED)
                    });
                }
            }
            item_impl.into_token_stream()
        }
        Err(_) => item,
    }
}

//! Stage 2: the rules a service's routes and configuration must follow, one fn each.

use std::collections::HashMap;

use darling::error::Accumulator;
use proc_macro2::Span;
use syn::spanned::Spanned;

use super::parse::{AccessAttr, Marked, ProbeMethod, RoutedMethod, ServiceArgs};
use super::{event_handler, Requirement, Route, ServiceModel};
use crate::common::args::{PathArg, StrArg};
use crate::common::config_file::{self, ConfigFile};
use crate::common::diagnostic::{did_you_mean, error};

pub(super) fn validate(
    args: ServiceArgs,
    item: syn::ItemImpl,
    marked: Marked,
    errors: &mut Accumulator,
) -> Option<ServiceModel> {
    let Marked { routed, probes, handlers } = marked;
    check_not_generic(&item, errors);
    let config = config_file::load(args.config.as_ref().map(|arg| arg.value.as_str()));
    let config_span = args.config.as_ref().map_or(Span::call_site(), |arg| arg.span);
    let config_ok = config.require(config_span, errors);
    let routes = check_routes(routed, &config, errors);
    let described = check_described(&routes, &config, config_span, errors);
    check_rate_limited_routes(&routes, &config, config_span, errors);
    let name = args.name.map(|arg| arg.value).or_else(|| config.valid().and_then(|valid| valid.service.name.clone()));
    let name = name.unwrap_or_else(|| std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "service".to_owned()));
    let (grpc, reflection) = check_grpc(args.grpc, args.reflection, errors);
    let probes = probes
        .into_iter()
        .filter(|probe| check_probe(probe, errors))
        .map(|probe| (probe.sig.ident, probe.cfgs))
        .collect();
    let handlers = event_handler::check(handlers, &config, errors);
    config_ok.then_some(ServiceModel {
        name,
        config_path: config.path,
        krate: args.krate.map(|arg| arg.path),
        item,
        routes,
        grpc,
        reflection,
        probes,
        handlers,
        described,
    })
}

/// With `[openapi]`, the routes are described: marty's `openapi` feature is on, the description's
/// path is not a route, and each route's answer is a type (`impl IntoResponse` is not one; such a
/// route is marked `#[undescribed]`).
fn check_described(routes: &[Route], config: &ConfigFile, span: Span, errors: &mut Accumulator) -> bool {
    let Some(openapi) = config.valid().and_then(|valid| valid.openapi.as_ref()) else { return false };
    if !cfg!(feature = "openapi") {
        let help = "in Cargo.toml: `marty = { version = \"0.1\", features = [\"openapi\"] }`";
        errors.push(error(span, format!("`[openapi]` in {} needs marty's `openapi` feature", config.display), help));
        return false;
    }
    for path in std::iter::once(&openapi.path).chain(&openapi.ui) {
        if let Some(route) = routes.iter().find(|route| route.method == super::HttpMethod::Get && route.path == *path) {
            let problem = format!(
                "`GET {path}` is a route here and where `[openapi]` in {} serves the description",
                config.display
            );
            let help = format!("serve the description elsewhere, e.g. `path = \"/api-docs{path}\"` under `[openapi]`");
            errors.push(error(route.handler.span(), problem, help));
        }
    }
    for route in routes.iter().filter(|route| !route.undescribed) {
        if let Some(syn::Type::ImplTrait(answer)) = &route.output {
            let problem = "an `impl Trait` answer cannot be described in the OpenAPI description";
            let help =
                "return a type (`Json<Order>`, `Result<Json<Order>, StoreError>`), or mark the route `#[undescribed]`";
            errors.push(error(answer.span(), problem, help));
        }
    }
    true
}

/// Each route's path and handler, and no route twice (axum would panic at startup).
fn check_routes(routed: Vec<RoutedMethod>, config: &ConfigFile, errors: &mut Accumulator) -> Vec<Route> {
    let mut routes = Vec::new();
    // Each route's handler, by method and normalized path.
    let mut seen: HashMap<(super::HttpMethod, String), String> = HashMap::new();
    let mut spellings: HashMap<String, String> = HashMap::new();
    for method in routed {
        let handler_ok = check_handler(&method, errors);
        let requirement = check_access(&method.access, config, errors);
        let audit = method.audit.is_some_and(|span| {
            let built = cfg!(feature = "security");
            if !built {
                let help = "in Cargo.toml: `marty = { version = \"0.1\", features = [\"security\"] }`";
                errors.push(error(span, "`#[audit]` needs marty's `security` feature", help));
            }
            built
        });
        for route in &method.routes {
            let path_ok = check_path(&route.path.value, route.path.span, errors);
            let normalized = normalize(&route.path.value);
            // axum keys routes by their text: one shape spelled with two parameter names is a conflict.
            let spelling = spellings.entry(normalized.clone()).or_insert_with(|| route.path.value.clone());
            if *spelling != route.path.value {
                let problem = format!(
                    "`{}` and `{}` are the same route with different parameter names",
                    route.path.value, spelling
                );
                errors.push(error(route.path.span, problem, format!("spell it `{spelling}` here too")));
                continue;
            }
            if let Some(first) = seen.insert((route.method, normalized), method.sig.ident.to_string()) {
                let name = route.method.as_str().to_uppercase();
                let problem = format!("`{name} {}` is routed twice: `{first}` handles it already", route.path.value);
                let help = "each method and path may have one handler; remove or change one of them";
                errors.push(error(route.path.span, problem, help));
                continue;
            }
            if handler_ok && path_ok {
                routes.push(Route {
                    method: route.method,
                    path: route.path.value.clone(),
                    handler: method.sig.ident.clone(),
                    extractors: extractor_types(&method.sig),
                    output: match &method.sig.output {
                        syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
                        syn::ReturnType::Default => None,
                    },
                    cfgs: method.cfgs.clone(),
                    requirement: requirement.clone(),
                    audit,
                    undescribed: method.undescribed.is_some(),
                    docs: method.docs.clone(),
                });
            }
        }
    }
    routes
}

/// `[rate_limit.routes]` names routes this service has (reported at `span`: the limit is in the
/// file, the routes are here).
fn check_rate_limited_routes(routes: &[Route], config: &ConfigFile, span: Span, errors: &mut Accumulator) {
    let Some(rate_limit) = config.valid().and_then(|valid| valid.rate_limit.as_ref()) else { return };
    let served: Vec<String> =
        routes.iter().map(|route| format!("{} {}", route.method.as_str().to_uppercase(), route.path)).collect();
    for unknown in rate_limit.unknown_routes(&served) {
        let line = match unknown.origin {
            marty_config::Origin::Line(line) => format!("{}:{line}", config.display),
            _ => config.display.clone(),
        };
        let problem =
            format!("`[rate_limit.routes]` limits `{}` ({line}), a route this service does not have", unknown.name());
        let candidates: Vec<&str> = served.iter().map(String::as_str).collect();
        let help = match candidates.is_empty() {
            true => "remove the limit: this service has no HTTP routes".to_owned(),
            false => did_you_mean(&unknown.name(), &candidates, "the service's routes:"),
        };
        errors.push(error(span, problem, help));
    }
}

/// One of `#[public]` or `#[authorize]`, naming only the roles and scopes `[security]` declares, in
/// a service whose callers can authenticate.
fn check_access(access: &[AccessAttr], config: &ConfigFile, errors: &mut Accumulator) -> Requirement {
    let Some(first) = access.first() else { return Requirement::Default };
    if !cfg!(feature = "security") {
        let help = "in Cargo.toml: `marty = { version = \"0.1\", features = [\"security\"] }`";
        errors.push(error(first.span(), "`#[public]` and `#[authorize]` need marty's `security` feature", help));
        return Requirement::Default;
    }
    if let Some(second) = access.get(1) {
        let (problem, help) = match (first, second) {
            (AccessAttr::Authorize { .. }, AccessAttr::Authorize { .. }) => {
                ("`#[authorize]` is given twice", "merge them into one: `#[authorize(roles = [..], scopes = [..])]`")
            }
            (AccessAttr::Public(_), AccessAttr::Public(_)) => ("`#[public]` is given twice", "remove one"),
            _ => (
                "`#[public]` and `#[authorize]` contradict each other",
                "keep `#[authorize(..)]` to require a caller, or `#[public]` to let anyone in",
            ),
        };
        errors.push(error(second.span(), problem, help));
        return Requirement::Default;
    }
    let AccessAttr::Authorize { span, roles, scopes } = first else { return Requirement::Public };
    // An invalid file was reported where it was loaded.
    let Some(valid) = config.valid() else { return Requirement::Default };
    let Some(security) = valid.security.as_ref() else {
        let help = "declare how callers authenticate in marty.toml: `[security.jwt]` with `issuer`, `audiences` and `jwks_url`, and the `roles` and `scopes` routes may name under `[security]`";
        errors.push(error(*span, "`#[authorize]` needs `[security]` in marty.toml", help));
        return Requirement::Default;
    };
    if !security.can_authenticate() {
        let help = "add `[security.jwt]` with `issuer`, `audiences` and `jwks_url`, or `[security.api_keys]` with a keys `file`";
        errors.push(error(
            *span,
            "`#[authorize]` needs a caller, and `[security]` configures no way to authenticate one",
            help,
        ));
        return Requirement::Default;
    }
    let mut ok = true;
    for (kind, named, declared) in [("role", roles, &security.roles), ("scope", scopes, &security.scopes)] {
        let declared: Vec<&str> = declared.iter().map(String::as_str).collect();
        for name in named.iter().filter(|name| !declared.contains(&name.value.as_str())) {
            let help = match declared.is_empty() {
                true => format!("declare it in marty.toml: `[security] {kind}s = [\"{}\"]`", name.value),
                false => did_you_mean(
                    &name.value,
                    &declared,
                    &format!("or declare it under `[security] {kind}s`; declared:"),
                ),
            };
            errors.push(error(name.span, format!("{kind} `{}` is not declared in marty.toml", name.value), help));
            ok = false;
        }
    }
    let values = |names: &[StrArg]| names.iter().map(|name| name.value.clone()).collect();
    match ok {
        true => Requirement::Authorize { roles: values(roles), scopes: values(scopes) },
        false => Requirement::Default,
    }
}

/// `grpc(..)` needs its feature; `reflection` needs servers to describe.
fn check_grpc(
    grpc: Option<darling::util::PathList>,
    reflection: Option<PathArg>,
    errors: &mut Accumulator,
) -> (Vec<syn::Path>, Option<syn::Path>) {
    let mut grpc: Vec<syn::Path> = grpc.map(|paths| paths.iter().cloned().collect()).unwrap_or_default();
    if let (Some(server), false) = (grpc.first(), cfg!(feature = "grpc")) {
        let help = "in Cargo.toml: `marty = { version = \"0.1\", features = [\"grpc\"] }`";
        errors.push(error(server.span(), "`grpc(..)` needs marty's `grpc` feature", help));
        grpc.clear();
    }
    let reflection = reflection.map(|arg| arg.path);
    if let (Some(path), true) = (&reflection, grpc.is_empty()) {
        let help = "name the gRPC servers it describes: `grpc(OrdersServer), reflection = FILE_DESCRIPTOR_SET`";
        errors.push(error(path.span(), "`reflection` without `grpc(..)` has nothing to describe", help));
    }
    (grpc, reflection)
}

/// The expansion implements a trait for the self type; generic services would need bounds it cannot guess.
fn check_not_generic(item: &syn::ItemImpl, errors: &mut Accumulator) {
    if let Some(param) = item.generics.params.first() {
        errors.push(error(
            param.span(),
            "`#[service]` does not support generic impl blocks",
            "serve a concrete type: `impl Orders { .. }`",
        ));
    }
    if let Some((path, _)) = &item.trait_ {
        errors.push(error(
            path.span(),
            "`#[service]` goes on an inherent impl, not a trait impl",
            "move the routed methods to `impl Orders { .. }`",
        ));
    }
}

/// A probe is an async method taking only `&self` and returning a `Result`.
fn check_probe(probe: &ProbeMethod, errors: &mut Accumulator) -> bool {
    let sig = &probe.sig;
    let name = &sig.ident;
    if sig.asyncness.is_none() {
        let help = format!("add `async`: `async fn {name}(&self)`");
        errors.push(error(sig.fn_token.span(), format!("health check `{name}` must be an `async fn`"), help));
        return false;
    }
    let shared_self = matches!(sig.inputs.first(), Some(syn::FnArg::Receiver(receiver)) if matches!(receiver.kind, syn::ReceiverKind::Reference(_, _, None)));
    // At what is wrong: the receiver, else the first argument after it.
    let wrong = match (shared_self, sig.inputs.iter().nth(1)) {
        (false, _) => Some(sig.inputs.first().map_or(name.span(), Spanned::span)),
        (true, Some(extra)) => Some(extra.span()),
        (true, None) => None,
    };
    if let Some(span) = wrong {
        let help = format!("write `async fn {name}(&self)`: `/readyz` calls it with nothing else");
        errors.push(error(span, format!("health check `{name}` must take only `&self`"), help));
        return false;
    }
    true
}

/// A route's handler is an async method taking `&self`, then axum extractors.
fn check_handler(method: &RoutedMethod, errors: &mut Accumulator) -> bool {
    let sig = &method.sig;
    let name = &sig.ident;
    let mut ok = true;
    if sig.asyncness.is_none() {
        errors.push(error(
            sig.fn_token.span(),
            format!("route handler `{name}` must be an `async fn`"),
            format!("add `async`: `async fn {name}(&self, ..)`"),
        ));
        ok = false;
    }
    match sig.inputs.first() {
        Some(syn::FnArg::Receiver(receiver)) if matches!(receiver.kind, syn::ReceiverKind::Reference(_, _, None)) => {}
        Some(syn::FnArg::Receiver(receiver)) => {
            let help = "take `&self`: requests are served concurrently, so handlers share the service; keep mutable state behind a lock or in a database";
            errors.push(error(receiver.span(), format!("route handler `{name}` must take `&self`"), help));
            ok = false;
        }
        _ => {
            errors.push(error(
                name.span(),
                format!("route handler `{name}` must take `&self`"),
                format!(
                    "add the receiver: `async fn {name}(&self, ..)`; handlers reach the service's state through it"
                ),
            ));
            ok = false;
        }
    }
    for input in sig.inputs.iter().skip(1) {
        if let syn::FnArg::Typed(typed) = input {
            if let syn::Type::Reference(reference) = &*typed.ty {
                errors.push(error(
                    reference.span(),
                    "route handler arguments are axum extractors and cannot be references",
                    "take an owned extractor, e.g. `Path(id): Path<u64>` or `Json(body): Json<NewOrder>`",
                ));
                ok = false;
            }
        }
    }
    ok
}

/// The endpoints every service serves.
const RESERVED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Paths are axum 0.8 templates: `/orders/{id}`, `/files/{*rest}`.
fn check_path(path: &str, span: Span, errors: &mut Accumulator) -> bool {
    let fail = |errors: &mut Accumulator, problem: String, help: &str| {
        errors.push(error(span, problem, help));
        false
    };
    if !path.starts_with('/') {
        return fail(
            errors,
            format!("route path `{path}` must start with `/`"),
            "write it from the root, e.g. `\"/orders/{id}\"`",
        );
    }
    if RESERVED.contains(&path) {
        let help = "pick another path; `/healthz`, `/readyz` and `/metrics` are built in";
        return fail(errors, format!("`{path}` is served by Marty itself"), help);
    }
    let mut names = Vec::new();
    for segment in path.split('/').skip(1) {
        if let Some(name) = segment.strip_prefix(':') {
            return fail(
                errors,
                format!("`:{name}` is the old parameter syntax"),
                "write parameters in braces: `{id}`",
            );
        }
        let opens = segment.matches('{').count();
        let closes = segment.matches('}').count();
        if opens == 0 && closes == 0 {
            continue;
        }
        let whole = segment.starts_with('{') && segment.ends_with('}') && opens == 1 && closes == 1;
        if !whole {
            return fail(
                errors,
                format!("malformed parameter in `{path}`: `{segment}`"),
                "a parameter is a whole segment in braces, e.g. `/orders/{id}`",
            );
        }
        let name = segment[1..segment.len() - 1].trim_start_matches('*');
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return fail(
                errors,
                format!("`{{{name}}}` is not a valid parameter name"),
                "name parameters like identifiers, e.g. `{order_id}`",
            );
        }
        if names.contains(&name.to_owned()) {
            return fail(
                errors,
                format!("parameter `{{{name}}}` appears twice in `{path}`"),
                "give each parameter its own name",
            );
        }
        names.push(name.to_owned());
    }
    true
}

/// `/orders/{id}` and `/orders/{order_id}` are the same route to axum.
fn normalize(path: &str) -> String {
    path.split('/').map(|segment| if segment.starts_with('{') { "{}" } else { segment }).collect::<Vec<_>>().join("/")
}

fn extractor_types(sig: &syn::Signature) -> Vec<syn::Type> {
    sig.inputs
        .iter()
        .skip(1)
        .filter_map(|input| match input {
            syn::FnArg::Typed(typed) => Some((*typed.ty).clone()),
            syn::FnArg::Receiver(_) => None,
        })
        .collect()
}

//! What each route requires of its caller, as `#[public]` and `#[authorize]` say (a route without
//! either follows `[security] default`). The macros check the names against `marty.toml` when the
//! service compiles; [`check`] does it again at startup against the configuration in force.

use marty_config::{Config, ConfigError, ConfigErrors, Origin};

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requirement {
    /// No attribute: what `[security] default` says.
    #[default]
    Default,
    /// `#[public]`: anyone.
    Public,
    /// `#[authorize(roles = [..], scopes = [..])]`: an authenticated caller holding any of `roles`
    /// (none listed: no role needed) and all of `scopes`.
    Authorize {
        /// Any one of these.
        roles: &'static [&'static str],
        /// All of these.
        scopes: &'static [&'static str],
    },
}

/// The requirement of one route, by method and path as routed (`GET`, `/orders/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAccess {
    /// The HTTP method, upper case.
    pub method: &'static str,
    /// The path as routed.
    pub path: &'static str,
    /// What the route requires.
    pub requirement: Requirement,
    /// `#[audit]`: allowed requests are written to the audit trail too.
    pub audit: bool,
}

/// The routes' roles and scopes are declared under `[security]`, and callers can authenticate
/// where a route requires one: the same rules the macros applied, against the configuration in
/// force (which `MARTY_CONFIG` may have replaced).
///
/// And `[rate_limit.routes]` names only routes among `served`, when they are known.
pub(crate) fn check(config: &Config, routes: &[RouteAccess], served: Option<&[&str]>) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let mut error = |key: &str, problem: String, help: String| {
        errors.push(ConfigError {
            file: config.file.clone(),
            origin: Origin::Missing,
            key: key.to_owned(),
            problem,
            help: Some(help),
        })
    };
    for route in routes {
        let Requirement::Authorize { roles, scopes } = route.requirement else { continue };
        let name = format!("`{} {}`", route.method, route.path);
        let Some(security) = &config.security else {
            error(
                "security",
                format!("{name} has `#[authorize]`, and there is no `[security]`"),
                "declare `[security]` with `[security.jwt]`, as when the service was compiled".to_owned(),
            );
            continue;
        };
        if !security.can_authenticate() {
            error(
                "security.jwt",
                format!("{name} has `#[authorize]`, and `[security]` configures no way to authenticate a caller"),
                "add `[security.jwt]` with `issuer`, `audiences` and `jwks_url`".to_owned(),
            );
        }
        for (kind, named, declared) in [("roles", roles, &security.roles), ("scopes", scopes, &security.scopes)] {
            for missing in named.iter().filter(|name| !declared.iter().any(|declared| declared == *name)) {
                error(
                    &format!("security.{kind}"),
                    format!("{name} requires `{missing}`, which is not declared"),
                    format!("add `\"{missing}\"` to `[security] {kind}`"),
                );
            }
        }
    }
    let served_known = served.is_some();
    let served: Vec<String> = served.unwrap_or_default().iter().map(|name| (*name).to_owned()).collect();
    let limits = config.rate_limit.as_ref().filter(|_| served_known);
    for unknown in limits.iter().flat_map(|rate_limit| rate_limit.unknown_routes(&served)) {
        errors.push(ConfigError {
            file: config.file.clone(),
            origin: unknown.origin.clone(),
            key: format!("rate_limit.routes.\"{}\"", unknown.name()),
            problem: "a route this service does not have".to_owned(),
            help: Some(match marty_config::suggest::nearest(&unknown.name(), served.iter().map(String::as_str)) {
                Some(near) => format!("did you mean `{near}`?"),
                None => "remove the limit, or add the route".to_owned(),
            }),
        });
    }
    ConfigErrors::from_found(errors)
}

/// `[security.grpc]` names only methods the service serves: its services are those added (`names`),
/// their methods those in the descriptors given for reflection, without which no method can be
/// checked (an entry for a misspelled method would leave the real one at `default`).
#[cfg(feature = "grpc")]
pub(crate) fn check_grpc(config: &Config, names: &[&str], descriptors: &[&[u8]]) -> Result<(), ConfigErrors> {
    use prost::Message;
    let Some(security) = config.security.as_ref().filter(|security| !security.grpc.is_empty()) else { return Ok(()) };
    let served: Vec<String> = descriptors
        .iter()
        .filter_map(|bytes| prost_types::FileDescriptorSet::decode(*bytes).ok())
        .flat_map(|set| set.file)
        .flat_map(|file| {
            let package = file.package.clone().filter(|package| !package.is_empty());
            file.service.into_iter().flat_map(move |service| {
                let name = match &package {
                    Some(package) => format!("{package}.{}", service.name()),
                    None => service.name().to_owned(),
                };
                service.method.into_iter().map(move |method| format!("{name}/{}", method.name()))
            })
        })
        .collect();
    let mut errors = Vec::new();
    for entry in &security.grpc {
        let (problem, help) = if !names.contains(&entry.service()) {
            let help = match marty_config::suggest::nearest(entry.service(), names.iter().copied()) {
                Some(near) => format!(
                    "did you mean `{near}`? the service serves {}",
                    marty_config::suggest::list(names.iter().copied())
                ),
                None => "remove the entry: the service serves no gRPC service of that name".to_owned(),
            };
            (format!("the service has no gRPC service `{}`", entry.service()), help)
        } else if served.is_empty() {
            (
                "the service's gRPC methods are not known, so this one cannot be checked".to_owned(),
                "give the service its descriptors: `#[service(grpc(..), reflection = FILE_DESCRIPTOR_SET)]`".to_owned(),
            )
        } else if !served.contains(&entry.method) {
            let help = match marty_config::suggest::nearest(&entry.method, served.iter().map(String::as_str)) {
                Some(near) => format!("did you mean `{near}`?"),
                None => "remove the entry, or name a method of the service's proto".to_owned(),
            };
            (format!("`{}` is not a method of the service", entry.method), help)
        } else if entry.authorize.is_some() && !security.can_authenticate() {
            (
                "the method requires a caller, and `[security]` configures no way to authenticate one".to_owned(),
                "add `[security.jwt]` or `[security.api_keys]`".to_owned(),
            )
        } else {
            continue;
        };
        errors.push(ConfigError {
            file: config.file.clone(),
            origin: entry.origin.clone(),
            key: format!("security.grpc.\"{}\"", entry.method),
            problem,
            help: Some(help),
        });
    }
    ConfigErrors::from_found(errors)
}

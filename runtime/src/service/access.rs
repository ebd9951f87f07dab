//! What each route requires of its caller, as `#[public]` and `#[authorize]` say (a route without
//! either follows `[security] default`). The macros check the names against `marty.toml` when the
//! service compiles; [`check`] does it again at startup against the configuration in force.

use marty_config::{Config, ConfigError, ConfigErrors, Origin};

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
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
    match errors.is_empty() {
        true => Ok(()),
        false => Err(ConfigErrors(errors)),
    }
}

//! The document: the operations `#[service]` described, with what the configuration in force adds
//! (title, security schemes, each route's caller, rate limits) and the answers Marty gives itself.

use std::collections::BTreeMap;

use marty_config::{Access, Config, ConfigError, ConfigErrors, OpenApiConfig, Origin, SecurityConfig};
use serde_json::{json, Map, Value};

use super::{Operation, Operations};
use crate::service::{Requirement, RouteAccess};

/// The description of `service` (version `version`) as JSON, or why `[openapi]` cannot be served
/// beside these routes.
pub(crate) fn document(
    config: &Config,
    openapi: &OpenApiConfig,
    service: &str,
    version: &str,
    operations: &Operations,
    access: &[RouteAccess],
) -> Result<Vec<u8>, ConfigErrors> {
    check_paths(config, openapi, operations)?;
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut schemas = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    for operation in &operations.0 {
        let requirement = access
            .iter()
            .find(|route| route.method == operation.method && route.path == operation.path)
            .map_or(Requirement::Default, |route| route.requirement);
        let described = describe(operation, config, requirement);
        paths.entry(operation.path).or_default().insert(operation.method.to_lowercase(), Value::Object(described));
        schemas.extend(operation.schemas.iter().map(|(name, schema)| (name.clone(), schema.clone())));
    }
    let mut info = json!({ "title": openapi.title.as_deref().unwrap_or(service), "version": version });
    if let Some(description) = &openapi.description {
        info["description"] = json!(description);
    }
    let mut components = json!({ "schemas": schemas });
    if let Some(security) = &config.security {
        components["securitySchemes"] = security_schemes(security);
    }
    let document = json!({
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": components,
    });
    Ok(serde_json::to_vec(&document).expect("a JSON value serializes"))
}

/// The description and its page are served beside the routes: neither may be one of them.
fn check_paths(config: &Config, openapi: &OpenApiConfig, operations: &Operations) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (key, path) in [("openapi.path", Some(&openapi.path)), ("openapi.ui", openapi.ui.as_ref())] {
        let Some(path) = path else { continue };
        if let Some(route) = operations.0.iter().find(|operation| operation.path == path && operation.method == "GET") {
            errors.push(ConfigError {
                file: config.file.clone(),
                origin: Origin::Missing,
                key: key.to_owned(),
                problem: format!("`GET {path}` is a route of the service (`{}`)", route.id),
                help: Some(format!("serve it elsewhere, e.g. `{} = \"/api-docs{path}\"`", &key[8..])),
            });
        }
    }
    ConfigErrors::from_found(errors)
}

fn describe(operation: &Operation, config: &Config, requirement: Requirement) -> Map<String, Value> {
    let mut described = Map::new();
    described.insert("operationId".into(), json!(operation.id));
    let docs = operation.docs.trim();
    if !docs.is_empty() {
        let summary = docs.split("\n\n").next().unwrap_or(docs).replace('\n', " ");
        described.insert("summary".into(), json!(summary));
        described.insert("description".into(), json!(docs));
    }
    if !operation.parameters.is_empty() {
        described.insert("parameters".into(), json!(operation.parameters));
    }
    if let Some(body) = &operation.body {
        described.insert("requestBody".into(), body.clone());
    }
    let mut responses = operation.responses.clone();
    let mut marty = |status: &str, reason: &str| {
        responses.entry(status.to_owned()).or_insert_with(|| problem_response(reason));
    };
    marty("400", "Bad Request: the path, query or body could not be read");
    marty("413", "Content Too Large: the body is over `[http] max_body_bytes`");
    marty("422", "Unprocessable Content: the body was read and is not valid for the route");
    marty("500", "Internal Server Error");
    marty("503", "Service Unavailable: a dependency shed load or its circuit breaker is open; see `Retry-After`");
    marty("504", "Gateway Timeout: the request did not complete in time");
    if operation.body.is_some() && !operation.free_form {
        marty("415", "Unsupported Media Type: the body's content type is not the one the route reads");
    }
    let limited = config.rate_limit.as_ref().is_some_and(|limits| {
        limits.default.is_some()
            || limits.routes.iter().any(|route| route.method == operation.method && route.path == operation.path)
    });
    if limited {
        marty("429", "Too Many Requests: over the caller's rate limit; see `Retry-After` and `RateLimit`");
    }
    if let Some(security) = &config.security {
        let (required, roles, scopes): (bool, &[&str], &[&str]) = match requirement {
            Requirement::Public => (false, &[], &[]),
            Requirement::Default => (security.default == Access::Authenticated, &[], &[]),
            Requirement::Authorize { roles, scopes } => (true, roles, scopes),
        };
        if required {
            marty("401", "Unauthorized: no credentials, or credentials that are not valid; see `WWW-Authenticate`");
            if !roles.is_empty() || !scopes.is_empty() {
                marty("403", "Forbidden: the caller lacks the role or scope the route requires");
            }
            described.insert("security".into(), requirements(security, roles, scopes));
        } else {
            // Explicitly open: a client generator sends no credentials.
            described.insert("security".into(), json!([{}]));
        }
    }
    described.insert("responses".into(), json!(responses));
    described
}

/// An `application/problem+json` answer.
pub(crate) fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// RFC 9457, as [`crate::service::Problem`] writes it.
fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "An RFC 9457 problem: `type` says what kind (Marty's own are `urn:marty:problem:<name>`), `instance` is the request id",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": { "type": "string" },
            "title": { "type": "string" },
            "status": { "type": "integer", "minimum": 100, "maximum": 599 },
            "detail": { "type": "string" },
            "instance": { "type": "string" }
        },
        "additionalProperties": true
    })
}

fn security_schemes(security: &SecurityConfig) -> Value {
    let mut schemes = Map::new();
    if security.jwt.is_some() {
        schemes.insert("bearer".into(), json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }));
    }
    if let Some(api_keys) = &security.api_keys {
        schemes.insert("apiKey".into(), json!({ "type": "apiKey", "in": "header", "name": api_keys.header }));
    }
    if security.mtls.is_some() {
        schemes.insert("mutualTLS".into(), json!({ "type": "mutualTLS" }));
    }
    Value::Object(schemes)
}

/// Any of the schemes, each with any one of the roles (OpenAPI lists alternatives; the names in
/// one requirement must all hold) and all of the scopes.
fn requirements(security: &SecurityConfig, roles: &[&str], scopes: &[&str]) -> Value {
    let schemes = security_schemes(security);
    let names: Vec<&String> = schemes.as_object().map(|schemes| schemes.keys().collect()).unwrap_or_default();
    let mut alternatives = Vec::new();
    for scheme in names {
        if roles.is_empty() {
            alternatives.push(json!({ scheme.as_str(): scopes }));
        }
        for role in roles {
            let names: Vec<&str> = std::iter::once(*role).chain(scopes.iter().copied()).collect();
            alternatives.push(json!({ scheme.as_str(): names }));
        }
    }
    Value::Array(alternatives)
}

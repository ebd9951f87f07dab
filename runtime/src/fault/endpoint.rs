//! The management endpoint that changes faults while a service runs, served beside the probes when
//! `[faults] enabled = true` and `[faults] token` is set:
//!
//! - `GET /faults`: every dependency's fault in force (`null` for none);
//! - `PUT /faults/<dependency>` with `{"latency": "200ms", "error_rate": 0.3, "timeout_rate": 0.1}`
//!   (every key optional): puts that fault in force until it is deleted or the file is reloaded;
//! - `DELETE /faults/<dependency>`: no fault for it.
//!
//! Each request carries `Authorization: Bearer <token>`; anything else is a 401 problem.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use marty_config::{format_duration, parse_duration, ConfigError, ConfigErrors, FaultConfig, Origin};
use serde::Deserialize;

use super::FaultSource;
use crate::registry::DependencyRegistry;
use crate::service::health::json;
use crate::service::{Problem, ProblemType, RouteAccess};

/// The endpoint's token, when the configuration serves it: faults enabled, and a token set.
fn served_token(config: &marty_config::Config) -> Option<&str> {
    config.faults.token.as_deref().filter(|_| config.faults.enabled)
}

/// The routes, when the configuration serves them; every request shows the token first.
pub(crate) fn routes(registry: &Arc<DependencyRegistry>) -> Option<Router> {
    let token: Arc<str> = served_token(&registry.config())?.into();
    let state = FaultsState { registry: registry.clone(), token };
    Some(
        Router::new()
            .route("/faults", get(list))
            .route("/faults/{dependency}", get(show).put(put).delete(delete))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
            .with_state(state),
    )
}

/// The service's own routes leave `/faults` to the endpoint when it is served.
pub(crate) fn check_paths(config: &marty_config::Config, routes: &[RouteAccess]) -> Result<(), ConfigErrors> {
    if served_token(config).is_none() {
        return Ok(());
    }
    let errors = routes
        .iter()
        .filter(|route| route.path == "/faults" || route.path.starts_with("/faults/"))
        .map(|route| ConfigError {
            file: config.file.clone(),
            origin: Origin::Missing,
            key: "faults.token".to_owned(),
            problem: format!(
                "the fault endpoint is served at `/faults`, and the service routes `{} {}` there",
                route.method, route.path
            ),
            help: Some("move the route, or remove `[faults] token` to change faults by reload only".to_owned()),
        })
        .collect();
    ConfigErrors::from_found(errors)
}

#[derive(Clone)]
struct FaultsState {
    registry: Arc<DependencyRegistry>,
    token: Arc<str>,
}

/// A fault as the endpoint reads it: durations as `marty.toml` writes them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    latency: Option<String>,
    error_rate: Option<f64>,
    timeout_rate: Option<f64>,
}

async fn list(State(state): State<FaultsState>) -> Response {
    let config = state.registry.config();
    let faults: serde_json::Map<String, serde_json::Value> = config
        .dependencies
        .keys()
        .filter_map(|name| Some((name.clone(), describe(state.registry.dependency(name)?.faults().current()))))
        .collect();
    json(StatusCode::OK, serde_json::Value::Object(faults))
}

async fn show(State(state): State<FaultsState>, Path(name): Path<String>) -> Response {
    match state.registry.dependency(&name) {
        Some(dependency) => json(StatusCode::OK, describe(dependency.faults().current())),
        None => unknown(&state, &name),
    }
}

async fn put(State(state): State<FaultsState>, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(dependency) = state.registry.dependency(&name) else { return unknown(&state, &name) };
    if !state.registry.config().faults.enabled {
        // A reload turned faults off after the endpoint was served: it injects nothing more.
        let detail = "faults are disabled: `[faults] enabled` is not `true` in the configuration in force";
        return Problem::new(StatusCode::CONFLICT, detail).into_response();
    }
    let fault = match read_fault(&body) {
        Ok(fault) => fault,
        Err(problem) => return problem.into_response(),
    };
    tracing::warn!(dependency = %name, fault = ?fault, "fault injection changed by the management endpoint");
    dependency.faults().set(Some(fault), FaultSource::Endpoint);
    json(StatusCode::OK, describe(dependency.faults().current()))
}

async fn delete(State(state): State<FaultsState>, Path(name): Path<String>) -> Response {
    let Some(dependency) = state.registry.dependency(&name) else { return unknown(&state, &name) };
    tracing::warn!(dependency = %name, "fault injection cleared by the management endpoint");
    dependency.faults().set(None, FaultSource::Endpoint);
    StatusCode::NO_CONTENT.into_response()
}

fn read_fault(body: &[u8]) -> Result<FaultConfig, Box<Problem>> {
    let invalid =
        |detail: String| Box::new(Problem::marty(StatusCode::UNPROCESSABLE_ENTITY, ProblemType::Unprocessable, detail));
    let body: FaultBody = serde_json::from_slice(body).map_err(|error| {
        Box::new(Problem::marty(
            StatusCode::BAD_REQUEST,
            ProblemType::BadRequest,
            format!(
                "the body must be a JSON object with `latency` (e.g. \"200ms\"), `error_rate` and `timeout_rate` (0 to 1): {error}"
            ),
        ))
    })?;
    let mut fault = FaultConfig::default();
    if let Some(latency) = body.latency {
        fault.latency = parse_duration(&latency).map_err(|error| invalid(format!("`latency`: {}", error.problem)))?;
    }
    for (key, value, slot) in [
        ("error_rate", body.error_rate, &mut fault.error_rate),
        ("timeout_rate", body.timeout_rate, &mut fault.timeout_rate),
    ] {
        match value {
            Some(rate) if !(0.0..=1.0).contains(&rate) => {
                return Err(invalid(format!("`{key}` is {rate}: it must be a share from 0 to 1")))
            }
            Some(rate) => *slot = rate,
            None => {}
        }
    }
    if fault.error_rate + fault.timeout_rate > 1.0 {
        return Err(invalid("`error_rate` and `timeout_rate` add up to more than 1".to_owned()));
    }
    Ok(fault)
}

/// A fault as the endpoint and `/readyz` show it.
pub(crate) fn describe(current: Option<(FaultConfig, FaultSource)>) -> serde_json::Value {
    match current {
        None => serde_json::Value::Null,
        Some((fault, source)) => serde_json::json!({
            "latency": format_duration(fault.latency),
            "error_rate": fault.error_rate,
            "timeout_rate": fault.timeout_rate,
            "set_by": source.as_str(),
        }),
    }
}

/// Lets a request through only with the bearer token, compared in constant time so its bytes
/// cannot be guessed one by one from response times; else a 401 problem.
async fn authenticate(State(state): State<FaultsState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let detail = match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), state.token.as_bytes()) => {
            return next.run(request).await
        }
        Some(_) => "the token is not the one `[faults] token` sets",
        None => "changing faults needs `Authorization: Bearer <[faults] token>`",
    };
    let mut response = Problem::marty(StatusCode::UNAUTHORIZED, ProblemType::Unauthorized, detail).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"marty-faults\""));
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

fn unknown(state: &FaultsState, name: &str) -> Response {
    let config = state.registry.config();
    let declared = marty_config::suggest::list(config.dependencies.keys().map(String::as_str));
    let detail = format!("no dependency `{name}`; declared: {declared}");
    Problem::marty(StatusCode::NOT_FOUND, ProblemType::NotFound, detail).into_response()
}

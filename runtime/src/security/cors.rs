//! `[security.cors]` as tower-http's CORS layer, outside authentication: a browser's preflight
//! carries no credentials, and its answer says which origins, methods and headers may follow.

use axum::http::{HeaderName, HeaderValue, Method};
use marty_config::CorsConfig;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The layer `config` describes; the configuration checked every name already.
pub(crate) fn layer(config: &CorsConfig) -> CorsLayer {
    let origins = match config.allowed_origins.as_slice() {
        [any] if any == "*" => AllowOrigin::any(),
        origins => AllowOrigin::list(origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok())),
    };
    let methods: Vec<Method> = config.allowed_methods.iter().filter_map(|method| method.parse().ok()).collect();
    let names = |names: &[String]| -> Vec<HeaderName> {
        names.iter().filter_map(|name| HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()).collect()
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods(methods)
        .allow_headers(names(&config.allowed_headers))
        .expose_headers(names(&config.expose_headers))
        .allow_credentials(config.allow_credentials)
        .max_age(config.max_age)
}

//! `[openapi]`: the description of the routes `S` described when it compiled, served at
//! `[openapi] path` (and its page at `ui`), or written to the file `MARTY_OPENAPI_OUT` names
//! (`cargo marty openapi`) before the service builds its state.

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use marty_config::{Config, ConfigError, ConfigErrors, OpenApiConfig, Origin};

use super::{Routes, ServeError};
use crate::openapi::OUT_VARIABLE;

/// The routes serving the description, none without `[openapi]`.
pub(super) fn routes<S: Routes>(config: &Config) -> Result<Router, ServeError> {
    let Some(openapi) = &config.openapi else { return Ok(Router::new()) };
    let json = bytes::Bytes::from(document::<S>(config, openapi)?);
    let description = Router::new().route(
        &openapi.path,
        get(move || {
            let json = json.clone();
            async move { ([(CONTENT_TYPE, "application/json")], json) }
        }),
    );
    #[cfg(feature = "openapi-ui")]
    if let Some(ui) = &openapi.ui {
        let title = openapi.title.clone().unwrap_or_else(|| S::NAME.to_owned());
        let page = crate::openapi::ui_page(&title, &openapi.path);
        // The page runs Scalar's script from its CDN and reads the description from here.
        let policy = "default-src 'self'; script-src 'self' https://cdn.jsdelivr.net; \
                      style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.scalar.com; \
                      font-src 'self' data: https://cdn.jsdelivr.net https://fonts.scalar.com; img-src 'self' data: https:; \
                      connect-src 'self'; frame-ancestors 'none'";
        let headers =
            [(CONTENT_TYPE, "text/html; charset=utf-8"), (axum::http::header::CONTENT_SECURITY_POLICY, policy)];
        return Ok(description.route(
            ui,
            get(move || {
                let page = page.clone();
                async move { (headers, page) }
            }),
        ));
    }
    Ok(description)
}

/// With `MARTY_OPENAPI_OUT` set, writes the description there and ends the process: a client
/// generator's build needs the description, not a running service (nor its database).
pub(super) fn write_if_asked<S: Routes>(config: &Config) -> Result<(), ServeError> {
    let Some(out) = std::env::var_os(OUT_VARIABLE) else { return Ok(()) };
    let openapi = config.openapi.clone().unwrap_or_default();
    let json = document::<S>(config, &openapi)?;
    let written = match out.to_str() {
        Some("-") => std::io::Write::write_all(&mut std::io::stdout(), &json),
        _ => std::fs::write(&out, &json),
    };
    written.map_err(|error| {
        ServeError::Startup(format!("cannot write the description to {}: {error}", out.to_string_lossy()).into())
    })?;
    std::process::exit(0)
}

/// The description as JSON; an error when the routes were not described when they compiled.
fn document<S: Routes>(config: &Config, openapi: &OpenApiConfig) -> Result<Vec<u8>, ServeError> {
    if !S::DESCRIBED {
        let (compiled_with, _) = S::CONFIG;
        ConfigErrors::from_found(vec![ConfigError {
            file: config.file.clone(),
            origin: Origin::Missing,
            key: "openapi".to_owned(),
            problem: "the routes were not described when they compiled".to_owned(),
            help: Some(format!("add `[openapi]` to {compiled_with}, the configuration the macros read")),
        }])?;
    }
    let mut operations = crate::openapi::Operations::default();
    S::describe(&mut operations);
    Ok(crate::openapi::document(config, openapi, S::NAME, S::VERSION, &operations, S::ACCESS)?)
}

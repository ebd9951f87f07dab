//! Logs for a service: `tracing` events as JSON lines (for collectors) or pretty text (for a
//! terminal), filtered by `RUST_LOG` (default `info`), each line carrying its spans' fields, so a
//! request's lines share its `request_id`.
//!
//! OpenTelemetry export is not wired yet; `OTEL_EXPORTER_OTLP_ENDPOINT` and `otlp_endpoint` are
//! reported as ignored rather than silently dropped.

use marty_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber for `service`. Returns `false` (and changes nothing) when the
/// application installed its own first.
pub fn init(service: &str, config: &TelemetryConfig) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(true)
            .with_target(true)
            .try_init()
            .is_ok(),
        LogFormat::Pretty => tracing_subscriber::fmt().with_env_filter(filter).try_init().is_ok(),
    };
    if installed {
        tracing::info!(service, log_format = ?config.log_format, "telemetry initialised");
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().or_else(|| config.otlp_endpoint.clone());
        if let Some(endpoint) = endpoint {
            tracing::warn!(%endpoint, "OTLP export is not available in this version of Marty; traces stay in the logs");
        }
    }
    installed
}

//! Injected faults as a service meets them: through a registry built from configuration text, the
//! call policies, the metrics, reloads and the endpoint.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use marty_config::Config;
use tokio::time::Instant;

use crate::circuit_breaker::CircuitState;
use crate::error::{CallError, Error};
use crate::registry::DependencyRegistry;

const PAYMENTS: &str = r#"
[dependencies.payments]
kind = "api"
timeout = "1s"
retry = { max_attempts = 3, initial = "10ms", max = "10ms", jitter = false }
circuit_breaker = { window = 10, min_calls = 6, failure_rate = 0.5, open_for = "30s" }
"#;

fn registry(toml: &str) -> DependencyRegistry {
    DependencyRegistry::from_config(Config::parse(toml, "marty.toml").unwrap())
}

type Result<T> = std::result::Result<T, CallError<std::io::Error>>;

async fn call(registry: &DependencyRegistry, reached: &AtomicU32) -> Result<u32> {
    let policy = registry.call_policy("payments", "charge").unwrap();
    policy
        .call(|| async {
            reached.fetch_add(1, Ordering::SeqCst);
            Ok(7)
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn injected_errors_are_retried_and_open_the_breaker_like_real_ones() {
    let registry = registry(&format!("{PAYMENTS}\nfault = {{ error_rate = 1.0 }}\n\n[faults]\nenabled = true\n"));
    let reached = AtomicU32::new(0);
    let first = call(&registry, &reached).await;
    assert!(
        matches!(&first, Err(CallError::Resilience(Error::InjectedFault { dependency })) if &**dependency == "payments"),
        "{first:?}"
    );
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the call itself is never made");
    let second = call(&registry, &reached).await;
    assert!(second.is_err());
    let breaker = registry.dependency("payments").unwrap().circuit_breaker().clone();
    assert_eq!(breaker.state(), CircuitState::Open, "six failed attempts of ten open it");
    let metrics = registry.metrics().render();
    assert!(metrics.contains(r#"marty_faults_injected_total{dependency="payments",fault="error"} 6"#), "{metrics}");
    assert!(metrics.contains(r#"marty_fault_active{dependency="payments"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"marty_retries_total{dependency="payments",operation="charge"} 4"#), "{metrics}");
}

#[tokio::test(start_paused = true)]
async fn latency_is_added_within_the_timeout_and_hung_attempts_end_at_it() {
    let registry = registry(&format!("{PAYMENTS}\nfault = {{ latency = \"300ms\" }}\n\n[faults]\nenabled = true\n"));
    let reached = AtomicU32::new(0);
    let start = Instant::now();
    assert_eq!(call(&registry, &reached).await.unwrap(), 7);
    assert_eq!(start.elapsed(), Duration::from_millis(300));

    let faults = registry.dependency("payments").unwrap().faults();
    let hang = marty_config::FaultConfig::default().with_timeout_rate(1.0);
    faults.set(Some(hang), super::FaultSource::Endpoint);
    let start = Instant::now();
    let timed_out = call(&registry, &reached).await;
    assert!(matches!(timed_out, Err(CallError::Resilience(Error::Timeout { .. }))), "{timed_out:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(3 * 1000 + 2 * 10), "three attempts of 1s, two 10ms backoffs");
    assert_eq!(reached.load(Ordering::SeqCst), 1, "only the first call reached the dependency");
}

#[tokio::test(start_paused = true)]
async fn a_fault_table_does_nothing_unless_faults_are_enabled_and_a_reload_applies_the_file() {
    let with_fault = format!("{PAYMENTS}\nfault = {{ error_rate = 1.0 }}\n");
    let registry = registry(&with_fault);
    let reached = AtomicU32::new(0);
    assert_eq!(call(&registry, &reached).await.unwrap(), 7, "[faults] enabled is not set");
    assert!(registry.dependency("payments").unwrap().faults().current().is_none());
    assert!(registry.metrics().render().contains(r#"marty_fault_active{dependency="payments"} 0"#));

    let enabled = Config::parse(&format!("{with_fault}\n[faults]\nenabled = true\n"), "marty.toml").unwrap();
    registry.reload(enabled);
    assert!(call(&registry, &reached).await.is_err(), "a reload enables the file's faults");

    // The endpoint's fault lasts until the next reload, which puts the file's back in force.
    let faults = registry.dependency("payments").unwrap().faults();
    faults.set(None, super::FaultSource::Endpoint);
    assert_eq!(call(&registry, &reached).await.unwrap(), 7);
    registry.reload(Config::parse(&with_fault, "marty.toml").unwrap());
    assert!(faults.current().is_none(), "disabled again by the file");
    assert_eq!(call(&registry, &reached).await.unwrap(), 7);
}

#[cfg(feature = "http")]
mod endpoint {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "a-token-of-twenty-chars";

    fn routes() -> (Arc<DependencyRegistry>, axum::Router) {
        let text = format!("{PAYMENTS}\n[faults]\nenabled = true\ntoken = \"{TOKEN}\"\n");
        let registry = Arc::new(registry(&text));
        let routes = crate::fault::endpoint::routes(&registry).expect("served with a token");
        (registry, routes)
    }

    async fn send(
        routes: &axum::Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = routes.clone().oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_endpoint_sets_shows_and_clears_faults_for_the_token_only() {
        let (registry, routes) = routes();
        let fault = r#"{"latency": "250ms", "error_rate": 0.5}"#;
        for token in [None, Some("a-token-of-twenty-charz"), Some("short")] {
            let (status, body) = send(&routes, "PUT", "/faults/payments", token, fault).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
            assert!(body.contains("urn:marty:problem:unauthorized"), "{body}");
        }
        assert!(registry.dependency("payments").unwrap().faults().current().is_none());

        let (status, body) = send(&routes, "PUT", "/faults/payments", Some(TOKEN), fault).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(shown["latency"], "250ms");
        assert_eq!(shown["error_rate"], 0.5);
        assert_eq!(shown["set_by"], "endpoint");
        let (fault, _) = registry.dependency("payments").unwrap().faults().current().unwrap();
        assert_eq!((fault.latency, fault.error_rate), (Duration::from_millis(250), 0.5));

        let (status, body) = send(&routes, "GET", "/faults", Some(TOKEN), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["payments"]["latency"], "250ms");

        let (status, _) = send(&routes, "DELETE", "/faults/payments", Some(TOKEN), "").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(registry.dependency("payments").unwrap().faults().current().is_none());
        let (_, body) = send(&routes, "GET", "/faults/payments", Some(TOKEN), "").await;
        assert_eq!(body, "null");
    }

    #[tokio::test]
    async fn bad_faults_are_problems_that_change_nothing() {
        let (registry, routes) = routes();
        let cases = [
            ("/faults/payments", "not json", StatusCode::BAD_REQUEST, "JSON object"),
            ("/faults/payments", r#"{"latncy": "1s"}"#, StatusCode::BAD_REQUEST, "unknown field `latncy`"),
            ("/faults/payments", r#"{"latency": "soon"}"#, StatusCode::UNPROCESSABLE_ENTITY, "`latency`"),
            ("/faults/payments", r#"{"error_rate": 1.5}"#, StatusCode::UNPROCESSABLE_ENTITY, "from 0 to 1"),
            (
                "/faults/payments",
                r#"{"error_rate": 0.6, "timeout_rate": 0.6}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "more than 1",
            ),
            ("/faults/paymnts", r#"{"error_rate": 0.5}"#, StatusCode::NOT_FOUND, "declared: `payments`"),
        ];
        for (path, body, expected, says) in cases {
            let (status, answer) = send(&routes, "PUT", path, Some(TOKEN), body).await;
            assert_eq!(status, expected, "{body}: {answer}");
            assert!(answer.contains(says), "{body}: {answer}");
        }
        assert!(registry.dependency("payments").unwrap().faults().current().is_none());
    }

    #[tokio::test]
    async fn once_a_reload_disables_faults_the_endpoint_sets_none() {
        let (registry, routes) = routes();
        registry.reload(Config::parse(PAYMENTS, "marty.toml").unwrap());
        let (status, body) = send(&routes, "PUT", "/faults/payments", Some(TOKEN), r#"{"error_rate": 1.0}"#).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("faults are disabled"), "{body}");
        assert!(registry.dependency("payments").unwrap().faults().current().is_none());
    }

    #[test]
    fn the_endpoint_is_not_served_without_a_token_or_with_faults_disabled() {
        for extra in ["[faults]\nenabled = true\n", "[faults]\ntoken = \"a-token-of-twenty-chars\"\n"] {
            let registry = Arc::new(registry(&format!("{PAYMENTS}\n{extra}")));
            assert!(crate::fault::endpoint::routes(&registry).is_none(), "{extra}");
        }
    }
}

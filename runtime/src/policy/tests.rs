//! The composed call path, driven through a registry built from configuration text, as users get it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use marty_config::Config;
use tokio::time::Instant;

use super::*;
use crate::circuit_breaker::CircuitState;
use crate::error::CallError;
use crate::registry::DependencyRegistry;

fn registry(toml: &str) -> DependencyRegistry {
    DependencyRegistry::from_config(Config::parse(toml, "marty.toml").unwrap())
}

type Result<T> = std::result::Result<T, CallError<std::io::Error>>;

fn refused() -> Result<u32> {
    Err(CallError::Inner(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_up_to_max_attempts_with_bounded_backoff() {
    let registry = registry(
        r#"[dependencies.db]
        kind = "database"
        retry = { max_attempts = 4, initial = "100ms", max = "250ms", jitter = false }"#,
    );
    let policy = registry.call_policy("db", "load").unwrap();
    let attempts = AtomicU32::new(0);
    let start = Instant::now();
    let result = policy
        .call(|| async {
            attempts.fetch_add(1, Ordering::SeqCst);
            refused()
        })
        .await;
    assert!(matches!(result, Err(CallError::Inner(_))), "the last error is returned as is");
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    assert_eq!(start.elapsed(), Duration::from_millis(100 + 200 + 250), "waits 100ms, 200ms, then capped at 250ms");
    assert_eq!(policy.metrics().count(Outcome::Error), 4);
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_returns_the_success() {
    let registry = registry("[dependencies.db]\nkind = \"database\"\n");
    let policy = registry.call_policy("db", "load").unwrap();
    let attempts = AtomicU32::new(0);
    let result = policy
        .call(|| async {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                refused()
            } else {
                Ok(7)
            }
        })
        .await;
    assert_eq!(result.unwrap(), 7);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn expected_and_permanent_errors_are_not_retried() {
    let registry = registry("[dependencies.db]\nkind = \"database\"\n");
    let policy = registry.call_policy("db", "load").unwrap();
    for kind in [std::io::ErrorKind::NotFound, std::io::ErrorKind::Other] {
        let attempts = AtomicU32::new(0);
        let _ = policy
            .call(|| async {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CallError::Inner(std::io::Error::from(kind)))
            })
            .await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "{kind:?} must not be retried");
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_retries_when_everything_fails() {
    let registry = registry(
        r#"[dependencies.db]
        kind = "database"
        circuit_breaker = { enabled = false }
        retry = { max_attempts = 3, initial = "1ms", budget = 0.1 }"#,
    );
    let policy = registry.call_policy("db", "load").unwrap();
    let attempts = AtomicU32::new(0);
    for _ in 0..200 {
        let _ = policy
            .call(|| async {
                attempts.fetch_add(1, Ordering::SeqCst);
                refused()
            })
            .await;
    }
    let retries = attempts.load(Ordering::SeqCst) - 200;
    // Without a budget: 400 retries. With 10% of 200 calls plus the reserve of 10: at most 30.
    assert!(retries <= 30, "{retries} retries exceed the budget");
    assert!(retries >= 20, "{retries} retries: the budget should still allow its share");
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_times_out_and_the_timeout_is_retried() {
    let registry = registry(
        r#"[dependencies.api]
        kind = "api"
        timeout = "50ms"
        retry = { max_attempts = 2, initial = "10ms", jitter = false }"#,
    );
    let policy = registry.call_policy("api", "fetch").unwrap();
    let attempts = AtomicU32::new(0);
    let start = Instant::now();
    let result: Result<u32> = policy
        .call(|| async {
            attempts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(1)
        })
        .await;
    assert!(
        matches!(result, Err(CallError::Resilience(Error::Timeout { timeout, .. })) if timeout == Duration::from_millis(50))
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(50 + 10 + 50));
    assert_eq!(policy.metrics().count(Outcome::Timeout), 2);
}

#[tokio::test(start_paused = true)]
async fn configuration_from_a_file_really_installs_every_layer() {
    // A framework once shipped resilience config that parsed, said "enabled" and was never applied.
    // Each limit below is observed in behaviour, not read back from the config.
    let registry = registry(
        r#"[dependencies.db]
        kind = "database"
        max_concurrent = 2
        max_wait = "0ms"
        timeout = "30ms"
        circuit_breaker = { window = 3, min_calls = 3, failure_rate = 1.0, open_for = "1s", half_open_calls = 1 }
        retry = { max_attempts = 1 }"#,
    );
    let policy = Arc::new(registry.call_policy("db", "op").unwrap());

    // Bulkhead: with 2 calls parked inside, a third is rejected without running.
    let release = Arc::new(tokio::sync::Notify::new());
    let parked: Vec<_> = (0..2)
        .map(|_| {
            let (policy, release) = (policy.clone(), release.clone());
            tokio::spawn(async move {
                policy
                    .clone()
                    .with_timeout_for_test(Duration::from_secs(10))
                    .call(|| async {
                        release.notified().await;
                        Ok::<_, CallError<std::io::Error>>(())
                    })
                    .await
            })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(registry.dependency("db").unwrap().bulkhead().available(), 0);
    let ran = AtomicU32::new(0);
    let third: Result<u32> = policy
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(1)
        })
        .await;
    assert!(matches!(third, Err(CallError::Resilience(Error::Rejected { max_concurrent: 2, .. }))), "{third:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    release.notify_waiters();
    for call in parked {
        call.await.unwrap().unwrap();
    }

    // Timeout: 30ms from the file.
    let start = Instant::now();
    let slow: Result<u32> = policy
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(1)
        })
        .await;
    assert!(matches!(slow, Err(CallError::Resilience(Error::Timeout { .. }))));
    assert_eq!(start.elapsed(), Duration::from_millis(30));

    // Breaker: window 3, failure_rate 1.0; the timeout above was the first failure.
    let _ = policy.call(|| async { refused() }).await;
    assert_eq!(policy.dependency().circuit_breaker().state(), CircuitState::Closed);
    let _ = policy.call(|| async { refused() }).await;
    assert_eq!(policy.dependency().circuit_breaker().state(), CircuitState::Open);
    let short: Result<u32> = policy
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(1)
        })
        .await;
    assert!(matches!(short, Err(CallError::Resilience(Error::CircuitOpen { .. }))));
    assert_eq!(ran.load(Ordering::SeqCst), 0, "an open breaker does not call the dependency");
    assert_eq!(policy.metrics().count(Outcome::ShortCircuited), 1);
    assert_eq!(policy.metrics().count(Outcome::Rejected), 1);

    // open_for = 1s, half_open_calls = 1: one good trial closes it.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(policy.call(|| async { Ok::<_, CallError<std::io::Error>>(5) }).await.unwrap(), 5);
    assert_eq!(policy.dependency().circuit_breaker().state(), CircuitState::Closed);

    let text = registry.metrics().render();
    assert!(text.contains(r#"marty_calls_total{dependency="db",operation="op",outcome="rejected"} 1"#), "{text}");
    assert!(text.contains(r#"marty_circuit_state{dependency="db"} 0"#), "{text}");
    assert!(text.contains(r#"marty_bulkhead_available{dependency="db"} 2"#), "{text}");
    assert!(text.contains(r#"marty_bulkhead_capacity{dependency="db"} 2"#), "{text}");
    assert!(text.contains(r#"marty_call_duration_seconds_count{dependency="db",operation="op"}"#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_dependency_is_a_config_error_with_a_suggestion() {
    let registry = registry("[dependencies.orders_db]\nkind = \"database\"\n");
    let error = registry.call_policy("orders_dbb", "op").unwrap_err().to_string();
    assert!(
        error.contains("unknown dependency `orders_dbb`") && error.contains("did you mean `orders_db`?"),
        "{error}"
    );
    let error =
        registry.call_policy_of_kind("orders_db", marty_config::DependencyKind::Api, "op").unwrap_err().to_string();
    assert!(error.contains("`orders_db` is a `database` dependency but is called through `#[api_call]`"), "{error}");
}

impl CallPolicy {
    /// A copy with another timeout, so a test can park calls without tripping the file's 30ms.
    fn with_timeout_for_test(self: Arc<Self>, timeout: Duration) -> CallPolicy {
        CallPolicy {
            dependency: self.dependency.clone(),
            operation: self.operation.clone(),
            timeout: Some(timeout),
            retry: self.retry.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_changes_limits_for_new_calls_and_lets_calls_in_flight_finish() {
    let registry = registry("[dependencies.db]\nkind = \"database\"\nmax_concurrent = 1\ntimeout = \"10s\"\n");
    let policy = Arc::new(registry.call_policy("db", "op").unwrap());
    let release = Arc::new(tokio::sync::Notify::new());
    let in_flight = {
        let (policy, release) = (policy.clone(), release.clone());
        tokio::spawn(async move {
            policy
                .call(|| async {
                    release.notified().await;
                    Ok::<_, CallError<std::io::Error>>("finished")
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    let second: Result<u32> = policy.call(|| async { Ok(2) }).await;
    assert!(matches!(second, Err(CallError::Resilience(Error::Rejected { max_concurrent: 1, .. }))));

    let reloaded = "[dependencies.db]\nkind = \"database\"\nmax_concurrent = 2\ntimeout = \"20ms\"\nretry = { max_attempts = 1 }\n";
    let reloaded = Config::parse(reloaded, "marty.toml").unwrap();
    assert!(registry.reload(reloaded).is_empty(), "every change applies live");
    assert_eq!(
        policy.call(|| async { Ok::<_, CallError<std::io::Error>>(2) }).await.unwrap(),
        2,
        "the bulkhead grew to 2"
    );
    let start = Instant::now();
    let slow: Result<u32> = policy
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(3)
        })
        .await;
    assert!(matches!(slow, Err(CallError::Resilience(Error::Timeout { .. }))));
    assert_eq!(start.elapsed(), Duration::from_millis(20), "the new timeout, one attempt as the new retry says");

    release.notify_waiters();
    assert_eq!(in_flight.await.unwrap().unwrap(), "finished", "the call in flight during the reload completed");
}

#[test]
fn an_unset_bulkhead_takes_the_registered_pools_size_and_keeps_it_across_reloads_and_max_wait_is_a_share_of_the_timeout(
) {
    let registry = registry(
        r#"[dependencies.db]
        kind = "database"
        timeout = "2s"
        [dependencies.sized]
        kind = "database"
        max_concurrent = 5"#,
    );
    let db = registry.dependency("db").unwrap();
    assert_eq!(db.config().max_wait, Duration::from_millis(500), "a quarter of the timeout");
    assert_eq!(db.bulkhead().max_concurrent(), 10, "the kind's default until a pool is registered");
    db.size_from_pool(25);
    assert_eq!((db.bulkhead().max_concurrent(), db.config().max_concurrent), (25, 25));
    db.reconfigure(marty_config::DependencyConfig::with_defaults("db", marty_config::DependencyKind::Database))
        .unwrap();
    assert_eq!(db.bulkhead().max_concurrent(), 25, "a reload that leaves it unset keeps the pool's size");

    let sized = registry.dependency("sized").unwrap();
    sized.size_from_pool(25);
    assert_eq!(sized.bulkhead().max_concurrent(), 5, "a size written in marty.toml wins");
}

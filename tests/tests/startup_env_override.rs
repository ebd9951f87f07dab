//! At startup the runtime reads `marty.toml` again and applies `MARTY__...` overrides: a wrapped call
//! compiled against a 5s timeout and a bulkhead of 10 runs with what the environment says.
//! (Its own test binary: the global registry is loaded once per process.)

mod support;

use std::time::Duration;

use marty::database_call;
use support::DbError;

#[database_call(dependency = "orders_sqlite")]
async fn slow_query(sleep: Duration) -> Result<(), DbError> {
    tokio::time::sleep(sleep).await;
    Ok(())
}

#[tokio::test]
async fn environment_overrides_reach_a_macro_call_site() {
    std::env::set_var("MARTY_CONFIG", concat!(env!("CARGO_MANIFEST_DIR"), "/marty.toml"));
    std::env::set_var("MARTY__DEPENDENCIES__ORDERS_SQLITE__TIMEOUT", "50ms");
    std::env::set_var("MARTY__DEPENDENCIES__ORDERS_SQLITE__MAX_CONCURRENT", "1");

    match slow_query(Duration::from_secs(30)).await {
        Err(DbError::Resilience(marty::Error::Timeout { timeout, .. })) => {
            assert_eq!(timeout, Duration::from_millis(50))
        }
        other => panic!("expected the overridden 50ms timeout, got {other:?}"),
    }

    let (first, second) = tokio::join!(slow_query(Duration::from_millis(20)), async {
        tokio::task::yield_now().await;
        slow_query(Duration::ZERO).await
    });
    first.expect("the first call holds the only permit");
    assert!(
        matches!(second, Err(DbError::Resilience(marty::Error::Rejected { max_concurrent: 1, .. }))),
        "a bulkhead of 1 from the environment rejects the second call: {second:?}"
    );
}

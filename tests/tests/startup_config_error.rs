//! A configuration that does not load at startup fails every wrapped call with `marty::Error::Config`
//! naming file, line and key, instead of running with limits nobody chose.
//! (Its own test binary: the global registry is loaded once per process.)

mod support;

use marty::database_call;
use support::DbError;

#[database_call(dependency = "orders_sqlite")]
async fn count() -> Result<u32, DbError> {
    Ok(1)
}

#[tokio::test]
async fn a_bad_configuration_at_startup_fails_calls_with_a_precise_error() {
    let dir = std::env::temp_dir().join(format!("marty-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("marty.toml");
    std::fs::write(&path, "[dependencies.orders_sqlite]\nkind = \"database\"\ntimeout = \"${ORDERS_TIMEOUT}\"\n")
        .unwrap();
    std::env::set_var("MARTY_CONFIG", &path);
    std::env::remove_var("ORDERS_TIMEOUT");

    let error = match count().await {
        Err(DbError::Resilience(error @ marty::Error::Config(_))) => error.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let expected = format!(
        "{}:3: key `dependencies.orders_sqlite.timeout`: environment variable `ORDERS_TIMEOUT` is not set",
        path.display()
    );
    assert!(error.contains(&expected), "{error}");
    assert!(count().await.is_err(), "every call keeps failing until the configuration is fixed");
}

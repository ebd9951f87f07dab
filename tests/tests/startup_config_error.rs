//! A configuration that does not load at startup fails every wrapped call with `marty::Error::Config`
//! naming file, line and key, instead of running with limits nobody chose, until it is fixed; and a
//! service whose `main` returns `Result<(), ServeError>` prints those errors as text.
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

    // Fixed (here, the variable is set): the failure was not kept, the next calls load it.
    std::env::set_var("ORDERS_TIMEOUT", "2s");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while count().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the fixed configuration was never loaded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn a_service_whose_main_returns_serve_error_prints_the_configuration_errors_as_text() {
    let dir = std::env::temp_dir().join(format!("marty-startup-main-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("marty.toml");
    std::fs::write(&path, "[http]\naddr = \"127.0.0.1:0\"\n[dependencies.orders_db]\nkind = \"databse\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_readme_service"))
        .env("MARTY_CONFIG", &path)
        .output()
        .expect("run the service");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let expected = format!("{}:4: key `dependencies.orders_db.kind`: ", path.display());
    assert!(stderr.starts_with("Error: invalid Marty configuration:\n"), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("\n  help: "), "{stderr}");
    assert!(!stderr.contains("ConfigErrors(") && !stderr.contains("origin:"), "a Debug dump: {stderr}");
}

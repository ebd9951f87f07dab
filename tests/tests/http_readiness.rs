//! `/readyz` follows the dependencies and probes: 503 naming the dependency whose breaker is open,
//! 200 again once it recovers, 503 while a `#[health_check]` fails, and 503 "draining" once
//! shutdown begins.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use marty::axum::http::StatusCode;
use marty::axum::response::{IntoResponse, Response};
use marty::{database_call, service};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;
use support::{http, registry, DbError};

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        match self {
            DbError::Resilience(error) => error.into_response(),
            DbError::Sqlx(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

struct Orders {
    db: PathBuf,
}

/// What the `ledger_reachable` probe reports; a test flips it.
static LEDGER_UP: AtomicBool = AtomicBool::new(true);

#[service]
impl Orders {
    #[marty::get("/orders/count")]
    async fn count(&self) -> Result<String, DbError> {
        Ok(self.count_rows().await?.to_string())
    }

    /// A readiness probe: the service is not ready while the ledger is down.
    #[marty::health_check]
    async fn ledger_reachable(&self) -> Result<(), String> {
        if LEDGER_UP.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("the ledger refuses connections".to_owned())
        }
    }

    #[database_call(dependency = "orders_sqlite")]
    async fn count_rows(&self) -> Result<i64, DbError> {
        let mut connection = SqliteConnectOptions::new().filename(&self.db).create_if_missing(false).connect().await?;
        Ok(sqlx::query_scalar("select count(*) from orders").fetch_one(&mut connection).await?)
    }
}

#[tokio::test]
async fn readiness_reports_an_open_breaker_then_recovery_then_draining() {
    registry();
    let dir = std::env::temp_dir().join(format!("marty-readiness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("orders.db");
    let _ = std::fs::remove_file(&db);

    let server = marty::service::server(Orders { db: db.clone() }).expect("configuration loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();
    let addr = running.addr();

    let ready = http::get(addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");

    // The database file does not exist: every call fails until the breaker opens (window 4).
    for _ in 0..4 {
        assert_eq!(http::get(addr, "/orders/count").await.status, 500);
    }
    let short_circuited = http::get(addr, "/orders/count").await;
    assert_eq!(short_circuited.status, 503, "an open breaker answers 503: {short_circuited:?}");
    assert!(short_circuited.body.contains("short-circuited"), "{short_circuited:?}");
    let not_ready = http::get(addr, "/readyz").await;
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert!(
        not_ready.body.contains(r#""down":["orders_sqlite"]"#) && not_ready.body.contains(r#""status":"not_ready""#),
        "{}",
        not_ready.body
    );

    let mut setup = SqliteConnectOptions::new().filename(&db).create_if_missing(true).connect().await.unwrap();
    sqlx::query("create table orders (id integer primary key)").execute(&mut setup).await.unwrap();
    drop(setup);
    tokio::time::sleep(Duration::from_millis(600)).await; // open_for = 500ms
    assert_eq!(http::get(addr, "/orders/count").await.body, "0", "the trial call succeeds");
    assert_eq!(http::get(addr, "/readyz").await.status, 200, "ready again once the breaker closed");

    LEDGER_UP.store(false, Ordering::SeqCst);
    let probe_failing = http::get(addr, "/readyz").await;
    assert_eq!(probe_failing.status, 503, "{probe_failing:?}");
    assert!(probe_failing.body.contains(r#""failing_checks":["ledger_reachable"]"#), "{}", probe_failing.body);
    assert!(probe_failing.body.contains("the ledger refuses connections"), "{}", probe_failing.body);
    LEDGER_UP.store(true, Ordering::SeqCst);
    assert_eq!(http::get(addr, "/readyz").await.status, 200);

    running.readiness().start_draining();
    let draining = http::get(addr, "/readyz").await;
    assert_eq!(draining.status, 503);
    assert!(draining.body.contains(r#""status":"draining""#), "{}", draining.body);
    running.shutdown().await.unwrap();
}

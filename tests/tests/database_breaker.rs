//! `#[database_call]` against a real database that becomes unreachable: the breaker opens, rejects
//! fast without touching the database, and closes again after recovery. SQLite always; PostgreSQL on
//! `MARTY_TEST_POSTGRES_URL` through a proxy the test cuts and restores.

mod support;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use marty::circuit_breaker::CircuitState::{Closed, HalfOpen, Open};
use marty::database_call;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, PgPool};
use support::proxy::Proxy;
use support::{registry, watch_transitions, DbError};

/// How many times the body of a wrapped call actually ran (i.e. reached for the database).
static SQLITE_BODY_RUNS: AtomicU32 = AtomicU32::new(0);

#[database_call(dependency = "orders_sqlite")]
async fn count_orders(path: &Path) -> Result<i64, DbError> {
    SQLITE_BODY_RUNS.fetch_add(1, Ordering::SeqCst);
    // A fresh connection per call, opened read-write without create: when the file is gone the
    // database is unreachable, as a server would be.
    let mut connection = SqliteConnectOptions::new().filename(path).create_if_missing(false).connect().await?;
    Ok(sqlx::query_scalar("select count(*) from orders").fetch_one(&mut connection).await?)
}

fn sqlite_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("marty-breaker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("orders.db")
}

#[tokio::test]
async fn sqlite_unreachable_opens_the_breaker_which_rejects_fast_and_closes_after_recovery() {
    registry();
    let transitions = watch_transitions("orders_sqlite");
    let path = sqlite_file();
    let mut setup = SqliteConnectOptions::new().filename(&path).create_if_missing(true).connect().await.unwrap();
    sqlx::query("create table orders (id integer primary key)").execute(&mut setup).await.unwrap();
    sqlx::query("insert into orders (id) values (1), (2)").execute(&mut setup).await.unwrap();
    drop(setup);

    assert_eq!(count_orders(&path).await.unwrap(), 2, "healthy");

    let moved_away = path.with_extension("away");
    std::fs::rename(&path, &moved_away).unwrap();
    // With the healthy call, min_calls = 4 are recorded after 3 failures: 75% >= 50% opens it.
    for _ in 0..3 {
        let error = count_orders(&path).await.unwrap_err();
        assert!(matches!(error, DbError::Sqlx(_)), "the database's own error comes back while closed: {error:?}");
    }
    let breaker = registry().dependency("orders_sqlite").unwrap().circuit_breaker().clone();
    assert_eq!(breaker.state(), Open, "3 of 4 calls failed");

    let runs_before = SQLITE_BODY_RUNS.load(Ordering::SeqCst);
    for _ in 0..20 {
        let error = count_orders(&path).await.unwrap_err();
        assert!(matches!(error, DbError::Resilience(marty::Error::CircuitOpen { .. })), "{error:?}");
    }
    assert_eq!(SQLITE_BODY_RUNS.load(Ordering::SeqCst), runs_before, "an open breaker never reaches for the database");

    std::fs::rename(&moved_away, &path).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // open_for = 500ms
    assert_eq!(count_orders(&path).await.unwrap(), 2, "the trial call succeeds");
    assert_eq!(breaker.state(), Closed);
    assert_eq!(*transitions.lock().unwrap(), [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]);

    let metrics = registry().metrics().render();
    assert!(
        metrics.contains(
            r#"marty_calls_total{dependency="orders_sqlite",operation="count_orders",outcome="short_circuited"} 20"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"marty_calls_total{dependency="orders_sqlite",operation="count_orders",outcome="error"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"marty_calls_total{dependency="orders_sqlite",operation="count_orders",outcome="success"} 2"#),
        "{metrics}"
    );
}

#[database_call(dependency = "orders_postgres")]
async fn select_answer(pool: &PgPool) -> Result<i32, DbError> {
    Ok(sqlx::query_scalar("select 42").fetch_one(pool).await?)
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn postgres_behind_a_cut_proxy_opens_the_breaker_which_rejects_fast_and_closes_after_recovery() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    registry();
    let transitions = watch_transitions("orders_postgres");
    let direct = PgConnectOptions::from_str(&url).expect("MARTY_TEST_POSTGRES_URL is a postgres:// URL");
    let upstream = tokio::net::lookup_host((direct.get_host(), direct.get_port())).await.unwrap().next().unwrap();
    let proxy = Proxy::start(upstream).await;
    let through_proxy = direct.host("127.0.0.1").port(proxy.addr().port());
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(through_proxy)
        .await
        .expect("connect to PostgreSQL through the proxy");

    assert_eq!(select_answer(&pool).await.unwrap(), 42, "healthy");

    proxy.cut();
    // With the healthy call, min_calls = 4 are recorded after 3 failures: 75% >= 50% opens it.
    for _ in 0..3 {
        let error = select_answer(&pool).await.unwrap_err();
        assert!(matches!(error, DbError::Sqlx(_)), "the driver's error comes back while closed: {error:?}");
    }
    let breaker = registry().dependency("orders_postgres").unwrap().circuit_breaker().clone();
    assert_eq!(breaker.state(), Open, "3 of 4 calls failed");

    let connections_before = proxy.connections();
    for _ in 0..20 {
        let error = select_answer(&pool).await.unwrap_err();
        assert!(matches!(error, DbError::Resilience(marty::Error::CircuitOpen { .. })), "{error:?}");
    }
    assert_eq!(proxy.connections(), connections_before, "an open breaker never reaches for the database");

    proxy.restore();
    tokio::time::sleep(Duration::from_millis(600)).await; // open_for = 500ms
    assert_eq!(select_answer(&pool).await.unwrap(), 42, "the trial call succeeds after recovery");
    assert_eq!(breaker.state(), Closed);
    assert_eq!(*transitions.lock().unwrap(), [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]);
}

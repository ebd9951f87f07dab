//! Readiness as a kubelet drives it, probing `/readyz` (and gRPC health) with no other traffic: a
//! dependency's open breaker shows but does not make the service unready, unless the dependency is
//! declared `readiness = "required"`, and then only until `open_for` has passed, so trial calls can
//! come; a failing `#[health_check]` and draining make it unready. gRPC health follows the same rule.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use marty::axum::http::StatusCode;
use marty::axum::response::{IntoResponse, Response};
use marty::{database_call, service};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;
use support::{http, registry, DbError};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        match self {
            DbError::Resilience(error) => error.into_response(),
            DbError::Sqlx(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

struct Orders {
    orders: PathBuf,
    ledger: PathBuf,
}

/// What the `ledger_reachable` probe reports; a test flips it.
static LEDGER_UP: AtomicBool = AtomicBool::new(true);

#[service]
impl Orders {
    #[marty::get("/orders/count")]
    async fn count(&self) -> Result<String, DbError> {
        Ok(self.count_orders().await?.to_string())
    }

    #[marty::get("/ledger/count")]
    async fn ledger_count(&self) -> Result<String, DbError> {
        Ok(self.count_entries().await?.to_string())
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
    async fn count_orders(&self) -> Result<i64, DbError> {
        count_rows(&self.orders).await
    }

    #[database_call(dependency = "ledger_sqlite")]
    async fn count_entries(&self) -> Result<i64, DbError> {
        count_rows(&self.ledger).await
    }
}

/// Rows of `entries` in the SQLite file at `path`; fails while the file does not exist.
async fn count_rows(path: &Path) -> Result<i64, DbError> {
    let mut connection = SqliteConnectOptions::new().filename(path).create_if_missing(false).connect().await?;
    Ok(sqlx::query_scalar("select count(*) from entries").fetch_one(&mut connection).await?)
}

async fn grpc_health(addr: std::net::SocketAddr) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let status = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    ServingStatus::try_from(status.into_inner().status).unwrap()
}

/// Waits (2 s at most, gRPC health follows readiness every 100 ms) until gRPC health says `status`.
async fn grpc_health_becomes(addr: std::net::SocketAddr, status: ServingStatus) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while grpc_health(addr).await != status {
        assert!(std::time::Instant::now() < deadline, "gRPC health never turned {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails `get` until the dependency's breaker (window 4) opens, as traffic would.
async fn trip(addr: std::net::SocketAddr, get: &str) {
    for _ in 0..4 {
        assert_eq!(http::get(addr, get).await.status, 500);
    }
    let short_circuited = http::get(addr, get).await;
    assert_eq!(short_circuited.status, 503, "an open breaker answers 503: {short_circuited:?}");
    let body = &short_circuited.body;
    assert!(body.contains(r#""type":"urn:marty:problem:unavailable""#) && body.contains(r#""instance":""#), "{body}");
    assert!(!body.contains("sqlite") && !body.contains("breaker"), "no internals for clients: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_required_dependencies_probes_and_draining_never_a_mere_outage() {
    registry();
    let dir = std::env::temp_dir().join(format!("marty-readiness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (orders, ledger) = (dir.join("orders.db"), dir.join("ledger.db"));
    let _ = std::fs::remove_file(&orders);
    let _ = std::fs::remove_file(&ledger);

    let server = marty::service::server(Orders { orders: orders.clone(), ledger })
        .expect("configuration loads")
        .with_grpc(marty::service::GrpcServices::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();
    let addr = running.addr();
    let ready = http::get(addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");
    grpc_health_becomes(addr, ServingStatus::Serving).await;

    // An outage of a dependency that is only reported: its breaker opens, the service stays ready
    // (an unready replica would get no calls, and the breaker would never close).
    trip(addr, "/orders/count").await;
    let reported = http::get(addr, "/readyz").await;
    assert_eq!(reported.status, 200, "{reported:?}");
    assert!(reported.body.contains(r#""orders_sqlite":{"bulkhead_available":10,"circuit":"open","kind":"database","max_concurrent":10,"readiness":"reported"}"#), "{}", reported.body);
    assert!(reported.body.contains(r#""down":[]"#), "{}", reported.body);
    assert_eq!(grpc_health(addr).await, ServingStatus::Serving);

    // A required dependency's open breaker makes it unready, on both protocols...
    trip(addr, "/ledger/count").await;
    let not_ready = http::get(addr, "/readyz").await;
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert!(
        not_ready.body.contains(r#""down":["ledger_sqlite"]"#) && not_ready.body.contains(r#""status":"not_ready""#),
        "{}",
        not_ready.body
    );
    grpc_health_becomes(addr, ServingStatus::NotServing).await;
    // ... until `open_for` (500 ms) has passed, with nothing but probes: ready again, so trial calls
    // can come, though the breaker is still open (no call has arrived to half-open it).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let recovered = http::get(addr, "/readyz").await;
    assert_eq!(recovered.status, 200, "{recovered:?}");
    assert!(
        recovered.body.contains(r#""ledger_sqlite":{"bulkhead_available":10,"circuit":"open""#),
        "{}",
        recovered.body
    );
    grpc_health_becomes(addr, ServingStatus::Serving).await;

    // The reported dependency recovers with the first call once its database exists.
    let mut setup = SqliteConnectOptions::new().filename(&orders).create_if_missing(true).connect().await.unwrap();
    sqlx::query("create table entries (id integer primary key)").execute(&mut setup).await.unwrap();
    drop(setup);
    assert_eq!(http::get(addr, "/orders/count").await.body, "0", "the trial call succeeds");

    // A failing probe makes it unready, on both protocols.
    LEDGER_UP.store(false, Ordering::SeqCst);
    let probe_failing = http::get(addr, "/readyz").await;
    assert_eq!(probe_failing.status, 503, "{probe_failing:?}");
    assert!(probe_failing.body.contains(r#""failing_checks":["ledger_reachable"]"#), "{}", probe_failing.body);
    assert!(probe_failing.body.contains("the ledger refuses connections"), "{}", probe_failing.body);
    grpc_health_becomes(addr, ServingStatus::NotServing).await;
    LEDGER_UP.store(true, Ordering::SeqCst);
    assert_eq!(http::get(addr, "/readyz").await.status, 200);
    grpc_health_becomes(addr, ServingStatus::Serving).await;

    running.readiness().start_draining();
    let draining = http::get(addr, "/readyz").await;
    assert_eq!(draining.status, 503);
    assert!(draining.body.contains(r#""status":"draining""#), "{}", draining.body);
    grpc_health_becomes(addr, ServingStatus::NotServing).await;
    running.shutdown().await.unwrap();
}

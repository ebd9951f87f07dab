//! What real clients report when the other side fails, and what Marty makes of it: a refused
//! connection certainly did nothing; a request sent and then cut off may have taken effect; an
//! answer that says no did nothing. tonic against a real gRPC service (behind a proxy that drops
//! its reply after the service acted), reqwest against sockets that refuse, hang up or answer 503,
//! sqlx against PostgreSQL killing a connection mid-statement.

use std::net::SocketAddr;
use std::time::Duration;

use marty::{Classify, ErrorClass};
use marty_tests::reply_dropper::ReplyDropper;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A loopback port nothing listens on.
async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

/// The standard gRPC health service, served for real; `served` is its one healthy service.
async fn health_server() -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("served", tonic_health::ServingStatus::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    addr
}

async fn check(addr: SocketAddr, service: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let request = HealthCheckRequest { service: service.to_owned() };
    HealthClient::new(channel).check(request).await.map(drop)
}

#[tokio::test]
async fn tonic_a_refused_connection_is_transient_and_did_nothing() {
    let status = check(closed_port().await, "served").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.classify(), ErrorClass::Transient, "{status:?}");
    assert!(!status.may_have_applied(), "nothing was sent: {status:?}");
}

#[tokio::test]
async fn tonic_a_reply_lost_after_the_service_acted_is_transient_and_may_have_applied() {
    let server = health_server().await;
    check(server, "served").await.expect("the service answers directly");
    let proxy = ReplyDropper::start(server, 1000).await;
    let status = check(proxy.addr(), "served").await.unwrap_err();
    assert_eq!(proxy.dropped(), 1, "the service answered, and the answer was dropped");
    assert_eq!(status.classify(), ErrorClass::Transient, "{status:?}");
    assert!(status.may_have_applied(), "{status:?}");
}

#[tokio::test]
async fn tonic_an_answer_that_says_no_did_nothing() {
    let status = check(health_server().await, "not-served").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.classify(), ErrorClass::Expected);
    assert!(!status.may_have_applied());
}

/// Serves one connection: reads a request's head, then answers with `reply` (or hangs up without a word).
async fn http_server(reply: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = socket.read(&mut buffer).await.unwrap();
            if read == 0 {
                return;
            }
            request.extend_from_slice(&buffer[..read]);
        }
        if let Some(reply) = reply {
            socket.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    addr
}

async fn post(addr: SocketAddr) -> Result<reqwest::Response, reqwest::Error> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    client.post(format!("http://{addr}/charges")).body("{}").send().await?.error_for_status()
}

#[tokio::test]
async fn reqwest_tells_a_refused_connection_from_a_lost_reply() {
    let refused = post(closed_port().await).await.unwrap_err();
    assert_eq!(refused.classify(), ErrorClass::Transient, "{refused:?}");
    assert!(!refused.may_have_applied(), "{refused:?}");

    let hung_up = post(http_server(None).await).await.unwrap_err();
    assert_eq!(hung_up.classify(), ErrorClass::Transient, "{hung_up:?}");
    assert!(hung_up.may_have_applied(), "the request was sent: {hung_up:?}");

    let unavailable = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let proxy_503 = post(http_server(Some(unavailable)).await).await.unwrap_err();
    assert_eq!(proxy_503.classify(), ErrorClass::Transient, "{proxy_503:?}");
    assert!(proxy_503.may_have_applied(), "{proxy_503:?}");

    let conflict = "HTTP/1.1 409 Conflict\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let answered = post(http_server(Some(conflict)).await).await.unwrap_err();
    assert_eq!(answered.classify(), ErrorClass::Expected, "{answered:?}");
    assert!(!answered.may_have_applied(), "{answered:?}");
}

#[tokio::test]
async fn sqlx_a_refused_connection_is_transient_and_did_nothing() {
    use sqlx::Connection;
    let closed = format!("postgres://postgres@{}/test", closed_port().await);
    let refused = sqlx::PgConnection::connect(&closed).await.unwrap_err();
    assert_eq!(refused.classify(), ErrorClass::Transient, "{refused:?}");
    assert!(!refused.may_have_applied(), "{refused:?}");
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_POSTGRES_URL"]
async fn sqlx_a_statement_killed_mid_flight_may_have_applied() {
    let url = marty_tests::server_env("MARTY_TEST_POSTGRES_URL");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let mut victim = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut *victim).await.unwrap();
    let killer = pool.clone();
    tokio::spawn(async move {
        // Once the statement runs: killed mid-statement, not before it started.
        const RUNNING: &str =
            "select count(*) from pg_stat_activity where pid = $1 and query like '%pg_sleep%' and state = 'active'";
        while sqlx::query_scalar::<_, i64>(RUNNING).bind(pid).fetch_one(&killer).await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("select pg_terminate_backend($1)").bind(pid).execute(&killer).await.unwrap();
    });
    let killed = sqlx::query("select pg_sleep(10)").execute(&mut *victim).await.unwrap_err();
    assert_eq!(killed.classify(), ErrorClass::Transient, "{killed:?}");
    assert!(killed.may_have_applied(), "{killed:?}");

    let rejected = sqlx::query("select 1/0").execute(&pool).await.unwrap_err();
    assert_eq!(rejected.classify(), ErrorClass::Expected, "{rejected:?}");
    assert!(!rejected.may_have_applied(), "{rejected:?}");
}

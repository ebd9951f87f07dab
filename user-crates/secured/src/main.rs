//! A `#[service]` secured by `[security]`, from a crate with only the `security` feature: a
//! `#[public]` route answers anyone, an `#[authorize]` route refuses a caller without a token with
//! 401 and `WWW-Authenticate`, and a token that cannot be checked (the issuer is unreachable and no
//! key was ever fetched) gets 503, not 401; `[rate_limit]` (which comes with the same feature) answers
//! the catalog's third call in a minute with 429.

use marty::security::Principal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Orders;

#[marty::service]
impl Orders {
    #[get("/catalog")]
    #[public]
    async fn catalog(&self) -> &'static str {
        "[]"
    }

    #[post("/orders")]
    #[authorize(roles = ["clerk"])]
    async fn place(&self, caller: Principal) -> String {
        format!("placed by {}", caller.subject())
    }
}

async fn send(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::main]
async fn main() {
    let server = marty::service::server(Orders).expect("the configuration loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();
    let addr = running.addr();
    let catalog_request = "GET /catalog HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for _ in 0..2 {
        let catalog = send(addr, catalog_request).await;
        assert!(catalog.starts_with("HTTP/1.1 200") && catalog.to_lowercase().contains("ratelimit:"), "{catalog}");
    }
    let limited = send(addr, catalog_request).await;
    assert!(limited.starts_with("HTTP/1.1 429") && limited.to_lowercase().contains("retry-after"), "{limited}");
    let anonymous = send(addr, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(anonymous.to_lowercase().contains("www-authenticate: bearer"), "{anonymous}");
    let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJhZGEifQ.c2ln";
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let unchecked = send(addr, &request).await;
    assert!(unchecked.starts_with("HTTP/1.1 503") && unchecked.to_lowercase().contains("retry-after"), "{unchecked}");
    running.shutdown().await.unwrap();
    println!("secured: ok");
}

//! A `#[service]` with `[openapi]`, from a crate with only the `openapi` feature and utoipa's
//! derives: `GET /openapi.json` describes the route, its body's schema, its path parameter and the
//! problem answers, with the crate's version.

use marty::axum::extract::{Json, Path};
use marty::service::Problem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a client sends.
#[derive(serde::Deserialize, utoipa::ToSchema)]
struct NewLine {
    item: String,
    quantity: u32,
}

struct Orders;

#[marty::service]
impl Orders {
    /// Adds a line to an order.
    #[post("/orders/{id}/lines")]
    async fn add_line(&self, Path(id): Path<u64>, Json(line): Json<NewLine>) -> Result<String, Problem> {
        Ok(format!("{id}: {} x {}", line.quantity, line.item))
    }
}

#[tokio::main]
async fn main() {
    let server = marty::service::server(Orders).expect("the configuration loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();
    let mut stream = tokio::net::TcpStream::connect(running.addr()).await.unwrap();
    stream.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for expected in [
        r#""openapi":"3.1.0""#,
        r#""title":"Orders","version":"1.2.3""#,
        r#""/orders/{id}/lines":{"post":"#,
        r#""operationId":"add_line""#,
        r#""summary":"Adds a line to an order.""#,
        r#""name":"id","required":true"#,
        r#""required":["item","quantity"]"#,
        r#""422":{"content":{"application/problem+json""#,
    ] {
        assert!(response.contains(expected), "the description has {expected}: {response}");
    }
    running.shutdown().await.unwrap();
    println!("described: ok");
}

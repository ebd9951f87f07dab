//! A service with gRPC on its port (the standard health service) and traces exported over OTLP:
//! HTTP/1 and HTTP/2 are both answered, and the exporter reaches the collector it is given.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Hello;

#[marty::service]
impl Hello {
    #[get("/hello")]
    async fn hello(&self) -> &'static str {
        "hello"
    }
}

#[tokio::main]
async fn main() {
    // Where traces go: a socket that records that the exporter connected.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", collector.local_addr().unwrap()));
    // `server_with` starts telemetry, as `serve` does.
    let server = marty::service::server_with(|_| async { Ok::<_, std::convert::Infallible>(Hello) })
        .await
        .expect("marty.toml loads")
        .with_grpc(marty::service::GrpcServices::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();

    let mut http1 = tokio::net::TcpStream::connect(running.addr()).await.unwrap();
    http1.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    http1.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hello"), "{response}");

    // HTTP/2 with prior knowledge, as gRPC clients speak it: the server answers with its SETTINGS.
    let mut http2 = tokio::net::TcpStream::connect(running.addr()).await.unwrap();
    http2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), http2.read_exact(&mut frame)).await.unwrap().unwrap();
    assert_eq!(frame[3], 4, "a SETTINGS frame");

    running.shutdown().await.unwrap();
    let exported = tokio::time::timeout(Duration::from_secs(10), collector.accept()).await;
    assert!(matches!(exported, Ok(Ok(_))), "the OTLP exporter connects to the configured endpoint");
    println!("grpc-otel: ok");
}

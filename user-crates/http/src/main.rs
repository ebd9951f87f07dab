//! A `#[service]` with one route, started on an ephemeral port and called over a real socket:
//! the route, `/healthz`, and a problem+json 404. The greeting is the application's own setting,
//! from `[app]` in the configuration (`EXPECTED_GREETING` says which one this run should find).

use marty::axum::extract::Path;
use marty::CallError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Greetings {
    greeting: String,
}

#[derive(serde::Deserialize)]
struct Settings {
    greeting: String,
}

#[marty::service]
impl Greetings {
    #[get("/hello/{name}")]
    async fn hello(&self, Path(name): Path<String>) -> String {
        self.greeting(&name).await.unwrap_or_else(|error| error.to_string())
    }

    #[marty::database_call(dependency = "greetings_db")]
    async fn greeting(&self, name: &str) -> Result<String, CallError<std::io::Error>> {
        Ok(format!("{}, {name}", self.greeting))
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::main]
async fn main() {
    let server = marty::service::server_with(|registry| async move {
        let settings = registry.config().app.get::<Settings>()?;
        Ok::<_, marty::config::ConfigErrors>(Greetings { greeting: settings.greeting })
    })
    .await
    .expect("the configuration loads");
    let expected = std::env::var("EXPECTED_GREETING").unwrap_or_else(|_| "hello".to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = server.start(listener).unwrap();
    let hello = get(running.addr(), "/hello/ada").await;
    assert!(hello.starts_with("HTTP/1.1 200") && hello.ends_with(&format!("{expected}, ada")), "{hello}");
    assert!(get(running.addr(), "/healthz").await.starts_with("HTTP/1.1 200"));
    let missing = get(running.addr(), "/nothing").await;
    assert!(missing.starts_with("HTTP/1.1 404") && missing.contains("application/problem+json"), "{missing}");
    running.shutdown().await.unwrap();
    println!("http: ok");
}

//! `cargo marty new <name>`: a service crate that builds, passes its own tests and serves
//! `/healthz` and its OpenAPI description on first run; `--grpc` adds a gRPC service on the same
//! port.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::{shown, Outcome};

#[derive(Args)]
pub(crate) struct NewArgs {
    /// The crate's name (and its directory's).
    name: String,
    /// Add a gRPC service (tonic, from `proto/`) beside the HTTP routes, on the same port.
    #[arg(long)]
    grpc: bool,
    /// Publish and consume events through the transactional outbox, on this broker (not
    /// available yet: it says so).
    #[arg(long, value_name = "BROKER", value_parser = ["memory", "nats", "rabbitmq", "kafka"])]
    events: Option<String>,
    /// Add a persisted saga with a compensation (not available yet: it says so).
    #[arg(long)]
    saga: bool,
    /// Depend on Marty at this path (a checkout's `runtime/`) rather than on the version from
    /// crates.io. Defaults to the checkout this tool was built from, when it is still there.
    #[arg(long, value_name = "DIR")]
    marty_path: Option<PathBuf>,
}

pub(crate) fn run(args: &NewArgs) -> Result<Outcome, String> {
    check_name(&args.name)?;
    if args.events.is_some() || args.saga {
        // Said plainly rather than generating a crate that does less than asked.
        return Err("`--events` and `--saga` are not available yet: generate the service, then add them as \
                    README.md's \"Adding Marty to your crate\" shows"
            .to_owned());
    }
    let dir = PathBuf::from(&args.name);
    if dir.exists() {
        return Err(format!("{} already exists", shown(&dir)));
    }
    let marty = marty_dependency(args.marty_path.as_deref())?;
    let files = files(&args.name, args.grpc, &marty);
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| format!("{}: {error}", shown(parent)))?;
        }
        std::fs::write(&path, text).map_err(|error| format!("{}: {error}", shown(&path)))?;
    }
    println!("created {}: `cd {} && cargo run`, then `curl localhost:8080/openapi.json`", args.name, args.name);
    Ok(Outcome::Done)
}

/// A crate name cargo accepts, which is also a Rust identifier once `-` becomes `_`.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|first| first.is_ascii_alphabetic());
    if starts_well && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Ok(());
    }
    Err(format!("`{name}` is not a crate name: start with a letter, then letters, digits, `-` or `_`"))
}

/// The `marty = ..` dependency's source: a path, or the version on crates.io.
fn marty_dependency(path: Option<&Path>) -> Result<String, String> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime");
    let path = match path {
        Some(path) => Some(path.to_path_buf()),
        None => built_from.join("Cargo.toml").is_file().then_some(built_from),
    };
    match path {
        Some(path) => {
            let path = std::fs::canonicalize(&path).map_err(|error| format!("{}: {error}", shown(&path)))?;
            Ok(format!("path = {:?}", path.display().to_string()))
        }
        None => Ok(format!("version = \"{}\"", env!("CARGO_PKG_VERSION"))),
    }
}

/// `orders-api` -> `OrdersApi`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The crate's files, by path.
fn files(name: &str, grpc: bool, marty: &str) -> Vec<(String, String)> {
    let fill = |template: &str| {
        template
            .replace("__NAME__", name)
            .replace("__CRATE__", &name.replace('-', "_"))
            .replace("__TYPE__", &type_name(name))
            .replace("__MARTY__", marty)
    };
    let mut files = vec![
        (".gitignore", "/target\n"),
        ("marty.toml", MARTY_TOML),
        ("src/main.rs", MAIN_RS),
        ("tests/service.rs", TEST_RS),
    ];
    let grpc_manifest =
        CARGO_TOML.replace(r#"features = ["openapi"]"#, r#"features = ["openapi", "grpc"]"#) + CARGO_TOML_GRPC;
    match grpc {
        true => files.extend([
            ("Cargo.toml", grpc_manifest.as_str()),
            ("build.rs", BUILD_RS),
            ("proto/__CRATE__.proto", PROTO),
            ("src/lib.rs", LIB_RS_GRPC),
            ("tests/grpc.rs", TEST_GRPC_RS),
        ]),
        false => files.extend([("Cargo.toml", CARGO_TOML), ("src/lib.rs", LIB_RS)]),
    }
    files.into_iter().map(|(path, text)| (fill(path), fill(text))).collect()
}

const CARGO_TOML: &str = r#"[package]
name = "__NAME__"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
marty = { __MARTY__, features = ["openapi"] }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
serde = { version = "1", features = ["derive"] }
# The schemas of the routes' bodies and answers in the OpenAPI description.
utoipa = "5"
"#;

/// What `--grpc` adds to `CARGO_TOML`, whose last table is `[dependencies]`.
const CARGO_TOML_GRPC: &str = r#"# The code generated from proto/.
tonic = { version = "0.14", default-features = false, features = ["codegen"] }
tonic-prost = "0.14"
prost = "0.14"

[dev-dependencies]
# The tests call the service as a gRPC client.
tonic = { version = "0.14", default-features = false, features = ["codegen", "channel"] }

[build-dependencies]
# proto/ compiled in Rust: no `protoc` needed.
protox = "0.10"
prost = "0.14"
tonic-prost-build = { version = "0.14", default-features = false }
"#;

const MARTY_TOML: &str = r#"# Checked when the service compiles, and again at startup (with MARTY__... overrides from the
# environment): a mistake is an error naming file, line and key. `cargo marty check` runs the same.
[service]
name = "__NAME__"

[http]
addr = "127.0.0.1:8080"

# The routes' OpenAPI description at GET /openapi.json.
[openapi]
"#;

const LIB_RS: &str = r#"//! The __NAME__ service: its routes, described at `GET /openapi.json`.

use marty::axum::extract::{Json, Path};

/// What `GET /hello/{name}` answers.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Greeting {
    pub message: String,
}

/// The service's state: what its handlers share (pools, clients, settings).
pub struct __TYPE__;

#[marty::service]
impl __TYPE__ {
    /// Greets `name`.
    #[get("/hello/{name}")]
    async fn hello(&self, Path(name): Path<String>) -> Json<Greeting> {
        Json(Greeting { message: format!("Hello, {name}!") })
    }
}
"#;

const LIB_RS_GRPC: &str = r#"//! The __NAME__ service: its routes, described at `GET /openapi.json`, and the `Greeter` gRPC
//! service from `proto/__CRATE__.proto`, on the same port.

use marty::axum::extract::{Json, Path};
use tonic::{Request, Response, Status};

/// The code generated from `proto/__CRATE__.proto`.
pub mod proto {
    tonic::include_proto!("__CRATE__.v1");

    /// What gRPC reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}

use proto::greeter_server::{Greeter, GreeterServer};

/// What `GET /hello/{name}` answers.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Greeting {
    pub message: String,
}

/// The service's state: what its handlers share (pools, clients, settings).
pub struct __TYPE__;

#[marty::service(grpc(GreeterServer), reflection = proto::FILE_DESCRIPTOR_SET)]
impl __TYPE__ {
    /// Greets `name`.
    #[get("/hello/{name}")]
    async fn hello(&self, Path(name): Path<String>) -> Json<Greeting> {
        Json(Greeting { message: format!("Hello, {name}!") })
    }
}

#[tonic::async_trait]
impl Greeter for __TYPE__ {
    async fn greet(&self, request: Request<proto::GreetRequest>) -> Result<Response<proto::GreetReply>, Status> {
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("say who to greet"));
        }
        Ok(Response::new(proto::GreetReply { message: format!("Hello, {name}!") }))
    }
}
"#;

const MAIN_RS: &str = r#"//! `cargo run`, then:
//!
//! ```sh
//! curl -s localhost:8080/hello/world
//! curl -s localhost:8080/openapi.json
//! curl -s localhost:8080/healthz
//! ```

#[tokio::main]
async fn main() -> Result<(), marty::service::ServeError> {
    marty::service::serve(__CRATE__::__TYPE__).await
}
"#;

const TEST_RS: &str = r##"//! The service in this process, on a free port, called over HTTP as its clients call it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path`: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn it_is_alive_answers_its_route_and_describes_it() {
    let server = marty::service::server(__CRATE__::__TYPE__).expect("marty.toml loads");
    let running = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let addr = running.addr();

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (status, body) = get(addr, "/hello/world").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello, world!"), "{body}");
    let (status, description) = get(addr, "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(description.contains(r#""/hello/{name}""#), "{description}");

    running.shutdown().await.unwrap();
}
"##;

const BUILD_RS: &str = r#"//! Compiles `proto/` with protox, a protobuf compiler in Rust, so no `protoc` is needed.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(["__CRATE__.proto"], ["proto"])?;
    std::fs::write(out_dir.join("descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().build_transport(false).compile_fds(descriptors)?;
    Ok(())
}
"#;

const PROTO: &str = r#"syntax = "proto3";

package __CRATE__.v1;

service Greeter {
  rpc Greet(GreetRequest) returns (GreetReply);
}

message GreetRequest {
  string name = 1;
}

message GreetReply {
  string message = 1;
}
"#;

const TEST_GRPC_RS: &str = r#"//! The gRPC service in this process, on a free port, called as its clients call it.

use __CRATE__::proto::greeter_client::GreeterClient;
use __CRATE__::proto::GreetRequest;

#[tokio::test]
async fn it_greets_over_grpc_and_refuses_an_empty_name() {
    let server = marty::service::server(__CRATE__::__TYPE__).expect("marty.toml loads");
    let running = server.start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.addr()))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut client = GreeterClient::new(channel);

    let reply = client.greet(GreetRequest { name: "world".into() }).await.expect("a greeting");
    assert_eq!(reply.into_inner().message, "Hello, world!");
    let refused = client.greet(GreetRequest { name: String::new() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    running.shutdown().await.unwrap();
}
"#;

//! `cargo marty new <name>`: a service crate that builds, passes its own tests and serves
//! `/healthz` and its OpenAPI description on first run; `--grpc` adds a gRPC service on the same
//! port; `--events <broker>` an event written with its row through the outbox and a consumer that
//! records it through the inbox; `--saga` a persisted saga with a compensation (both on SQLite).
//! Its tests use `marty::testing`.

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
    /// Publish an event with each greeting through the transactional outbox, and consume it
    /// through the inbox, on this broker (SQLite holds the outbox; the tests run on the
    /// in-process broker).
    #[arg(long, value_name = "BROKER", value_parser = ["memory", "nats", "rabbitmq", "kafka"])]
    events: Option<String>,
    /// Add a persisted saga (reserve, then charge; a declined charge releases the reservation), on
    /// SQLite.
    #[arg(long)]
    saga: bool,
    /// Depend on Marty at this path (a checkout's `runtime/`) rather than on the version from
    /// crates.io. Defaults to the checkout this tool was built from, when it is still there.
    #[arg(long, value_name = "DIR")]
    marty_path: Option<PathBuf>,
}

pub(crate) fn run(args: &NewArgs) -> Result<Outcome, String> {
    check_name(&args.name)?;
    if args.grpc && (args.events.is_some() || args.saga) {
        // Said plainly rather than generating a crate that does less than asked.
        return Err("`--grpc` is not generated together with `--events` or `--saga`: generate one, then add the \
                    other as README.md's \"Adding Marty to your crate\" shows"
            .to_owned());
    }
    let dir = PathBuf::from(&args.name);
    if dir.exists() {
        return Err(format!("{} already exists", shown(&dir)));
    }
    let marty = marty_dependency(args.marty_path.as_deref())?;
    let shape = Shape { grpc: args.grpc, events: args.events.as_deref(), saga: args.saga };
    let files = files(&args.name, &shape, &marty);
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

/// What the generated service does beside its route.
struct Shape<'a> {
    grpc: bool,
    /// The broker of `--events`.
    events: Option<&'a str>,
    saga: bool,
}

/// The crate's files, by path.
fn files(name: &str, shape: &Shape<'_>, marty: &str) -> Vec<(String, String)> {
    let fill = |template: &str| {
        template
            .replace("__NAME__", name)
            .replace("__CRATE__", &name.replace('-', "_"))
            .replace("__TYPE__", &type_name(name))
            .replace("__MARTY__", marty)
    };
    let mut files: Vec<(&str, String)> = vec![(".gitignore", "/target\n".to_owned())];
    if shape.events.is_some() || shape.saga {
        let keep = |block: &str| match block {
            "events" => shape.events.is_some(),
            "saga" => shape.saga,
            _ => true,
        };
        let broker = shape.events.unwrap_or("memory");
        let features = match broker {
            "memory" => r#"["openapi", "sqlite"]"#.to_owned(),
            broker => format!(r#"["openapi", "sqlite", "{broker}"]"#),
        };
        let broker_url = match broker {
            "nats" => "\nurl = \"nats://127.0.0.1:4222\"                    # MARTY__EVENTS__URL",
            "rabbitmq" => "\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"  # MARTY__EVENTS__URL",
            "kafka" => "\nurl = \"127.0.0.1:9092\"                           # MARTY__EVENTS__URL",
            _ => "",
        };
        files.extend([
            ("Cargo.toml", CARGO_TOML.replace(r#"["openapi"]"#, &features)),
            (
                "marty.toml",
                MARTY_TOML.to_owned()
                    + &blocks(
                        &MARTY_TOML_DATA.replace("__BROKER__", broker).replace("__BROKER_URL__", broker_url),
                        keep,
                    ),
            ),
            ("src/lib.rs", blocks(LIB_RS_DATA, keep)),
            ("src/main.rs", MAIN_RS_DATA.to_owned()),
            ("tests/service.rs", blocks(TEST_RS_DATA, keep)),
        ]);
    } else if shape.grpc {
        let manifest = CARGO_TOML
            .replace(r#"features = ["openapi"]"#, r#"features = ["openapi", "grpc"]"#)
            .replace("\n[dev-dependencies]\n", &format!("{CARGO_TOML_GRPC_DEPENDENCIES}\n[dev-dependencies]\n"))
            + CARGO_TOML_GRPC;
        files.extend([
            ("Cargo.toml", manifest),
            ("marty.toml", MARTY_TOML.to_owned()),
            ("build.rs", BUILD_RS.to_owned()),
            ("proto/__CRATE__.proto", PROTO.to_owned()),
            ("src/lib.rs", LIB_RS_GRPC.to_owned()),
            ("src/main.rs", MAIN_RS.to_owned()),
            ("tests/service.rs", TEST_RS.to_owned()),
            ("tests/grpc.rs", TEST_GRPC_RS.to_owned()),
        ]);
    } else {
        files.extend([
            ("Cargo.toml", CARGO_TOML.to_owned()),
            ("marty.toml", MARTY_TOML.to_owned()),
            ("src/lib.rs", LIB_RS.to_owned()),
            ("src/main.rs", MAIN_RS.to_owned()),
            ("tests/service.rs", TEST_RS.to_owned()),
        ]);
    }
    files.into_iter().map(|(path, text)| (fill(path), fill(&text))).collect()
}

/// `template` without the blocks `keep` refuses: a block is the lines between `//@<name>{` (or
/// `#@<name>{`) and `//@}` (`#@}`), marker lines dropped.
fn blocks(template: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut kept = String::new();
    let mut inside: Option<bool> = None;
    for line in template.lines() {
        let marker = line.trim().trim_start_matches("//").trim_start_matches('#');
        if let Some(name) = marker.strip_prefix('@').and_then(|rest| rest.strip_suffix('{')) {
            inside = Some(keep(name));
            continue;
        }
        if marker == "@}" {
            inside = None;
            continue;
        }
        if inside != Some(false) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
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

[dev-dependencies]
# `marty::testing`: the tests serve the service in-process and call its routes.
marty = { __MARTY__, features = ["testing"] }
"#;

/// What `--grpc` adds to `CARGO_TOML`'s `[dependencies]`.
const CARGO_TOML_GRPC_DEPENDENCIES: &str = r#"# The code generated from proto/.
tonic = { version = "0.14", default-features = false, features = ["codegen"] }
tonic-prost = "0.14"
prost = "0.14"
"#;

/// What `--grpc` adds after `CARGO_TOML`, whose last table is `[dev-dependencies]`.
const CARGO_TOML_GRPC: &str = r#"# The tests call the service as a gRPC client.
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

const TEST_RS: &str = r##"//! The service served in this test, on a port of its own, called over HTTP as its clients call
//! it (`marty::testing`).

use marty::testing::TestService;

#[tokio::test]
async fn it_is_alive_answers_its_route_and_describes_it() {
    let service = TestService::start(__CRATE__::__TYPE__).await;

    assert_eq!(service.client().get("/healthz").send().await.status(), 200);
    let hello = service.client().get("/hello/world").send().await;
    assert_eq!(hello.status(), 200, "{}", hello.text());
    assert_eq!(hello.json::<__CRATE__::Greeting>().message, "Hello, world!");
    let description = service.client().get("/openapi.json").send().await;
    assert_eq!(description.status(), 200);
    assert!(description.text().contains(r#""/hello/{name}""#), "{}", description.text());

    service.stop().await;
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
    let service = marty::testing::TestService::start(__CRATE__::__TYPE__).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", service.addr()))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut client = GreeterClient::new(channel);

    let reply = client.greet(GreetRequest { name: "world".into() }).await.expect("a greeting");
    assert_eq!(reply.into_inner().message, "Hello, world!");
    let refused = client.greet(GreetRequest { name: String::new() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    service.stop().await;
}
"#;

/// What `--events` and `--saga` add after `MARTY_TOML`.
const MARTY_TOML_DATA: &str = r#"
# The service's database, created on first start; Marty's tables (outbox, inbox, sagas) live there too.
[dependencies.db]
kind = "database"
url = "sqlite://__NAME__.db?mode=rwc"            # MARTY__DEPENDENCIES__DB__URL
#@events{

[events]
broker = "__BROKER__"__BROKER_URL__

# Events written in a transaction with their rows are relayed from this database's outbox.
[outbox]
store = "db"
poll_interval = "100ms"
#@}
"#;

const LIB_RS_DATA: &str = r#"//! The __NAME__ service: its routes, described at `GET /openapi.json`, on its SQLite database.
//@events{
//! A greeting is written with its `Greeted` event in one transaction (the outbox); a consumer
//! tallies greetings through the inbox, so a redelivered event counts once.
//@}
//@saga{
//! An order runs a saga: reserve, then charge; a declined charge releases the reservation.
//@}

use marty::axum::extract::{Json, Path};
use marty::axum::http::StatusCode;
use marty::service::Problem;
use marty::sqlx::{self, SqlitePool};
//@saga{
use marty::saga::{Orchestrator, StepContext, StepError};
//@}

/// What `GET /hello/{name}` answers.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Greeting {
    pub message: String,
}
//@events{

/// Published with each greeting.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, marty::Event)]
#[event(topic = "__CRATE__.greeted")]
pub struct Greeted {
    #[event(key)]
    pub name: String,
}

/// How often someone was greeted, as the consumer counted.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Tally {
    pub name: String,
    pub greetings: i64,
}
//@}
//@saga{

/// An order's saga: its state is saved after every step.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PlaceOrder {
    pub order_id: i64,
    pub amount_cents: i64,
}

#[marty::saga(store = "db", timeout = "30s")]
impl PlaceOrder {
    #[saga_step(compensate = release)]
    async fn reserve(&mut self, ctx: &mut StepContext<SqlitePool>) -> Result<(), StepError> {
        record(ctx.env(), self.order_id, "reserved").await
    }

    async fn release(&mut self, ctx: &mut StepContext<SqlitePool>) -> Result<(), StepError> {
        record(ctx.env(), self.order_id, "released").await
    }

    #[saga_step]
    async fn charge(&mut self, ctx: &mut StepContext<SqlitePool>) -> Result<(), StepError> {
        if self.amount_cents > 10_000 {
            return Err(StepError::permanent("card declined"));
        }
        record(ctx.env(), self.order_id, "charged").await
    }
}

async fn record(pool: &SqlitePool, order_id: i64, what: &str) -> Result<(), StepError> {
    sqlx::query("insert into order_log (order_id, what) values (?, ?)")
        .bind(order_id)
        .bind(what)
        .execute(pool)
        .await
        .map(drop)
        .map_err(|error| StepError::transient(error.to_string()))
}

/// An order to place.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NewOrder {
    pub amount_cents: i64,
}

/// Where an order's saga is: `running`, `completed`, `compensated`, ...
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrderStatus {
    pub saga: String,
    pub status: String,
}
//@}

/// The service's state: what its handlers share.
pub struct __TYPE__ {
//@events{
    pool: SqlitePool,
//@}
//@saga{
    sagas: Orchestrator<PlaceOrder>,
//@}
}

/// The service's own tables.
const SCHEMA: &str = "
//@events{
    create table if not exists greetings (id integer primary key, name text not null);
    create table if not exists tally (name text primary key, greetings integer not null);
//@}
//@saga{
    create table if not exists order_log (order_id integer not null, what text not null);
//@}
";

impl __TYPE__ {
    /// Opens `[dependencies.db]`, creates the tables, and hands the database to Marty (its outbox,
    /// inbox and saga tables).
    pub async fn open(registry: &marty::DependencyRegistry) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let url = registry.dependency("db").and_then(|db| db.config().url).ok_or("[dependencies.db] has no url")?;
        let pool = SqlitePool::connect(&url).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        marty::store::register("db", pool.clone()).await?;
        Ok(__TYPE__ {
//@saga{
            sagas: Orchestrator::new(pool.clone()).await?,
//@}
//@events{
            pool,
//@}
        })
    }
}

//@events{
impl __TYPE__ {
    /// A call to the database under `[dependencies.db]`'s policies: bulkhead, breaker, timeout,
    /// retry, its span and metrics.
    #[marty::database_call(dependency = "db")]
    async fn greetings_of(&self, name: &str) -> Result<Option<i64>, marty::CallError<sqlx::Error>> {
        sqlx::query_scalar("select greetings from tally where name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(marty::CallError::Inner)
    }
}

//@}
fn failed(error: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

#[marty::service]
impl __TYPE__ {
    /// Greets `name`.
    #[get("/hello/{name}")]
    async fn hello(&self, Path(name): Path<String>) -> Json<Greeting> {
        Json(Greeting { message: format!("Hello, {name}!") })
    }
//@events{

    /// Greets `name`, and announces it: the row and the event commit together.
    #[post("/greetings/{name}")]
    async fn greet(&self, Path(name): Path<String>) -> Result<(StatusCode, Json<Greeting>), Problem> {
        let mut tx = self.pool.begin().await.map_err(failed)?;
        sqlx::query("insert into greetings (name) values (?)").bind(&name).execute(&mut *tx).await.map_err(failed)?;
        marty::outbox::publish(&mut tx, &Greeted { name: name.clone() }).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok((StatusCode::CREATED, Json(Greeting { message: format!("Hello, {name}!") })))
    }

    /// How often `name` was greeted, as the consumer counted.
    #[get("/greetings/{name}")]
    async fn tally(&self, Path(name): Path<String>) -> Result<Json<Tally>, Problem> {
        let greetings = self.greetings_of(&name).await?;
        Ok(Json(Tally { name, greetings: greetings.unwrap_or(0) }))
    }

    /// Counts a greeting, once per event (the inbox records it in the same transaction).
    #[event_handler(group = "tally", inbox = "db")]
    async fn count(&self, event: Greeted, tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "insert into tally (name, greetings) values (?, 1)
             on conflict (name) do update set greetings = tally.greetings + 1",
        )
        .bind(&event.name)
        .execute(&mut **tx)
        .await
        .map(drop)
    }
//@}
//@saga{

    /// Places order `id`: its saga runs in the background; the answer names it.
    #[post("/orders/{id}")]
    async fn place(&self, Path(id): Path<i64>, Json(order): Json<NewOrder>) -> Result<(StatusCode, Json<OrderStatus>), Problem> {
        let saga = self.sagas.start(PlaceOrder { order_id: id, amount_cents: order.amount_cents }).await.map_err(failed)?;
        Ok((StatusCode::ACCEPTED, Json(OrderStatus { saga, status: "running".to_owned() })))
    }

    /// Where the saga `saga` is.
    #[get("/sagas/{saga}")]
    async fn order_status(&self, Path(saga): Path<String>) -> Result<Json<OrderStatus>, Problem> {
        let status = self.sagas.status(&saga).await.map_err(failed)?;
        let status = status.ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no saga `{saga}`")))?;
        Ok(Json(OrderStatus { saga, status: status.status.to_string() }))
    }
//@}
}
"#;

const MAIN_RS_DATA: &str = r#"//! `cargo run`, then:
//!
//! ```sh
//! curl -s localhost:8080/hello/world
//! curl -s localhost:8080/openapi.json
//! curl -s localhost:8080/healthz
//! ```

#[tokio::main]
async fn main() -> Result<(), marty::service::ServeError> {
    let server = marty::service::server_with(__CRATE__::__TYPE__::open).await?;
    server.serve().await.map_err(marty::service::ServeError::Io)
}
"#;

const TEST_RS_DATA: &str = r##"//! The service served in this test on a database of its own, on a port of its own and the
//! in-process broker, called over HTTP as its clients call it (`marty::testing`).

use std::time::Duration;

use marty::testing::TestService;
use __CRATE__::__TYPE__;

async fn service(test: &str) -> TestService {
    let file = std::env::temp_dir().join(format!("__NAME__-{test}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&file);
    TestService::builder::<__TYPE__>()
        .env("MARTY__DEPENDENCIES__DB__URL", format!("sqlite://{}?mode=rwc", file.display()))
        .start_with(|registry| async move { __TYPE__::open(&registry).await })
        .await
}

#[tokio::test]
async fn it_is_alive_answers_its_route_and_describes_it() {
    let service = service("alive").await;
    assert_eq!(service.client().get("/healthz").send().await.status(), 200);
    let hello = service.client().get("/hello/world").send().await;
    assert_eq!(hello.json::<__CRATE__::Greeting>().message, "Hello, world!");
    let description = service.client().get("/openapi.json").send().await.text();
    assert!(description.contains(r#""/hello/{name}""#), "{description}");
    service.stop().await;
}
//@events{

#[tokio::test]
async fn a_greeting_is_announced_and_counted_once() {
    let service = service("greeted").await;
    let greeted = service.client().post("/greetings/ada").send().await;
    assert_eq!(greeted.status(), 201, "{}", greeted.text());
    let event = service.expect_event::<__CRATE__::Greeted>(|event| event.name == "ada").within(Duration::from_secs(10)).await;
    assert_eq!(event.name, "ada");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tally = service.client().get("/greetings/ada").send().await.json::<__CRATE__::Tally>();
        if tally.greetings == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the consumer never counted the greeting: {tally:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The database fails every attempt: retried, then answered 503; healed, it answers again.
    service.dependency("db").fail(1.0);
    assert_eq!(service.client().get("/greetings/ada").send().await.status(), 503);
    service.dependency("db").heal();
    assert_eq!(service.client().get("/greetings/ada").send().await.status(), 200);
    // Its breaker open: turned away at once.
    service.dependency("db").open_breaker();
    assert_eq!(service.client().get("/greetings/ada").send().await.status(), 503);
    service.stop().await;
}
//@}
//@saga{

async fn settled(service: &TestService, saga: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = service.client().get(&format!("/sagas/{saga}")).send().await.json::<__CRATE__::OrderStatus>();
        if status.status != "running" {
            return status.status;
        }
        assert!(tokio::time::Instant::now() < deadline, "saga {saga} never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_order_completes_and_a_declined_one_is_compensated() {
    let service = service("orders").await;
    let place = |id: i64, amount_cents: i64| {
        let request = service.client().post(&format!("/orders/{id}")).json(&__CRATE__::NewOrder { amount_cents });
        async move {
            let placed = request.send().await;
            assert_eq!(placed.status(), 202, "{}", placed.text());
            placed.json::<__CRATE__::OrderStatus>().saga
        }
    };
    let completed = place(1, 500).await;
    let declined = place(2, 50_000).await;
    assert_eq!(settled(&service, &completed).await, "completed");
    assert_eq!(settled(&service, &declined).await, "compensated");
    service.stop().await;
}
//@}
"##;

//! The hybrid example over real sockets: gRPC and REST on one port, the standard gRPC health service
//! following readiness, reflection listing the services, and gRPC errors as gRPC statuses.

mod support;

use marty_examples::proto::orders_client::OrdersClient;
use marty_examples::proto::{CreateOrderRequest, GetOrderRequest};
use support::Service;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const BINARY: &str = env!("CARGO_BIN_EXE_hybrid_orders");

/// Waits until gRPC health reports `service` serving: it says `NOT_SERVING` while the service is
/// still starting (its relay and consumers), as `/readyz` says "starting".
async fn wait_until_serving(channel: Channel, service: &str) {
    let mut health = HealthClient::new(channel);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let request = HealthCheckRequest { service: service.into() };
        let status = health.check(request).await.expect("gRPC health answers").into_inner().status;
        if status == ServingStatus::Serving as i32 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "gRPC health of {service:?} never turned SERVING: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_rest_share_one_port_with_health_and_reflection() {
    let service = tokio::task::spawn_blocking(|| Service::start(BINARY, "hybrid")).await.unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", service.addr)).unwrap().connect().await.expect("gRPC connects");

    let mut orders = OrdersClient::new(channel.clone());
    let created =
        orders.create_order(CreateOrderRequest { item: "book".into(), quantity: 2 }).await.unwrap().into_inner();
    assert_eq!((created.id, created.item.as_str(), created.quantity), (1, "book", 2));
    let fetched = orders.get_order(GetOrderRequest { id: 1 }).await.unwrap().into_inner();
    assert_eq!(fetched, created);

    let missing = orders.get_order(GetOrderRequest { id: 99 }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let invalid = orders.create_order(CreateOrderRequest { item: "pen".into(), quantity: 0 }).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");

    // The same order over REST, on the same port.
    let addr = service.addr;
    let rest =
        tokio::task::spawn_blocking(move || support::request(addr, "GET", "/orders/1", None).unwrap()).await.unwrap();
    assert_eq!((rest.status, rest.body.as_str()), (200, r#"{"id":1,"item":"book","quantity":2}"#));
    // The order created over gRPC published its event through the outbox to the audit consumer.
    let audit =
        tokio::task::spawn_blocking(move || support::wait_for_status(addr, "/orders/1/audit", 200)).await.unwrap();
    assert_eq!(audit.body, r#"{"order_id":1,"item":"book","applied":1}"#);

    for name in ["", "orders.v1.Orders"] {
        wait_until_serving(channel.clone(), name).await;
    }

    let names = reflected_services(channel).await.expect("reflection answers");
    assert!(
        names.contains(&"orders.v1.Orders".to_owned()) && names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let metrics = tokio::task::spawn_blocking(move || support::request(addr, "GET", "/metrics", None).unwrap())
        .await
        .unwrap()
        .body;
    // gRPC calls are measured per method and status, not as one HTTP route answered 200.
    let count = |method: &str, status: i32| {
        let labels =
            format!(r#"{{rpc_service="orders.v1.Orders",rpc_method="{method}",rpc_grpc_status_code="{status}"}}"#);
        let line = format!("rpc_server_call_duration_seconds_count{labels} ");
        metrics.lines().find_map(|text| text.strip_prefix(line.as_str())).map(|value| value.trim().to_owned())
    };
    assert_eq!(count("CreateOrder", 0).as_deref(), Some("1"), "{metrics}");
    assert_eq!(count("GetOrder", 0).as_deref(), Some("1"), "{metrics}");
    assert_eq!(count("GetOrder", 5).as_deref(), Some("1"), "NOT_FOUND: {metrics}");
    assert_eq!(count("CreateOrder", 3).as_deref(), Some("1"), "INVALID_ARGUMENT: {metrics}");
    assert!(!metrics.contains(r#"http_route="/orders.v1.Orders/{*rest}""#), "{metrics}");
}

/// The services gRPC reflection lists on `channel`.
async fn reflected_services(channel: Channel) -> Result<Vec<String>, tonic::Status> {
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::once(request)).await?.into_inner();
    let response = responses.message().await?.expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    Ok(list.service.into_iter().map(|service| service.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_management_port_reflection_and_health_endpoints_move_there() {
    let management = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let env = [("MARTY__MANAGEMENT__ADDR", management.to_string())];
    let service = tokio::task::spawn_blocking(move || {
        Service::start_with_env(BINARY, "hybrid-management", std::process::Stdio::null(), None, &env)
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || support::wait_for_status(management, "/readyz", 200)).await.unwrap();
    let api = Channel::from_shared(format!("http://{}", service.addr)).unwrap().connect().await.unwrap();
    let operations = Channel::from_shared(format!("http://{management}")).unwrap().connect().await.unwrap();
    let names = reflected_services(operations.clone()).await.expect("reflection answers on the management port");
    assert!(names.contains(&"orders.v1.Orders".to_owned()), "{names:?}");
    let gone = reflected_services(api.clone()).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::Unimplemented, "reflection left the API port: {gone:?}");
    wait_until_serving(operations, "orders.v1.Orders").await;
    wait_until_serving(api.clone(), "orders.v1.Orders").await;
    let created = OrdersClient::new(api).create_order(CreateOrderRequest { item: "lamp".into(), quantity: 1 }).await;
    assert!(created.is_ok(), "{created:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_is_also_served_on_the_grpc_port_the_configuration_names() {
    let grpc_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let env = [("MARTY__GRPC__ADDR", grpc_addr.to_string())];
    let _service = tokio::task::spawn_blocking(move || {
        Service::start_with_env(BINARY, "grpc-port", std::process::Stdio::null(), None, &env)
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let channel = loop {
        match Channel::from_shared(format!("http://{grpc_addr}")).unwrap().connect().await {
            Ok(channel) => break channel,
            Err(error) => assert!(std::time::Instant::now() < deadline, "nothing serves [grpc] addr: {error}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    wait_until_serving(channel, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_example_serves_orders_health_and_the_builtin_http_endpoints() {
    let service =
        tokio::task::spawn_blocking(|| Service::start(env!("CARGO_BIN_EXE_grpc_orders"), "grpc-only")).await.unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", service.addr)).unwrap().connect().await.expect("gRPC connects");
    let mut orders = OrdersClient::new(channel.clone());
    let created =
        orders.create_order(CreateOrderRequest { item: "pen".into(), quantity: 3 }).await.unwrap().into_inner();
    assert_eq!(orders.get_order(GetOrderRequest { id: created.id }).await.unwrap().into_inner(), created);
    wait_until_serving(channel, "orders.v1.Orders").await;
    let addr = service.addr;
    let ready =
        tokio::task::spawn_blocking(move || support::request(addr, "GET", "/readyz", None).unwrap()).await.unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_grpc_health_turns_not_serving_before_the_service_stops() {
    let env = [("MARTY__SERVICE__DRAIN_DELAY", "2s".to_owned())];
    let mut service = tokio::task::spawn_blocking(move || {
        Service::start_with_env(BINARY, "grpc-drain", std::process::Stdio::null(), None, &env)
    })
    .await
    .unwrap();
    let channel = Channel::from_shared(format!("http://{}", service.addr)).unwrap().connect().await.unwrap();
    wait_until_serving(channel.clone(), "orders.v1.Orders").await;
    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest { service: "orders.v1.Orders".into() };

    service.terminate();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let status = health.check(check.clone()).await.expect("still answering during drain_delay").into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "gRPC health never turned NOT_SERVING");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let exit = tokio::task::spawn_blocking(move || service.child.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "graceful shutdown exits 0");
}

/// Sends request messages as raw bytes, to see how the service answers ones no client would build.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = prost::bytes::Buf::chunk(src).to_vec();
        prost::bytes::Buf::advance(src, bytes.len());
        Ok(Some(bytes))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversized_messages_get_the_status_codes_the_grpc_spec_gives() {
    let service = tokio::task::spawn_blocking(|| Service::start(BINARY, "hybrid-bad-messages")).await.unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", service.addr)).unwrap().connect().await.expect("gRPC connects");
    let call = |message: Vec<u8>| {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        async move {
            grpc.ready().await.unwrap();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static("/orders.v1.Orders/CreateOrder");
            grpc.unary(tonic::Request::new(message), path, RawCodec).await.unwrap_err()
        }
    };
    let undecodable = call(vec![0xff, 0xff, 0xff]).await;
    assert_eq!(undecodable.code(), tonic::Code::InvalidArgument, "{undecodable:?}");
    let oversized = call(vec![0x0a; 5 * 1024 * 1024]).await;
    assert_eq!(oversized.code(), tonic::Code::ResourceExhausted, "{oversized:?}");
}

/// An HTTP/2 connection with no stream open is closed after `[http] idle_timeout` (with a GOAWAY),
/// as an idle HTTP/1 one is; pings do not count as activity.
#[test]
fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    use std::io::{Read, Write};
    let env = [("MARTY__HTTP__IDLE_TIMEOUT", "1s".to_owned()), ("MARTY__HTTP__HEADER_READ_TIMEOUT", "60s".to_owned())];
    let service = Service::start_with_env(BINARY, "hybrid-idle", std::process::Stdio::null(), None, &env);
    let mut stream = std::net::TcpStream::connect(service.addr).unwrap();
    // The client preface and an empty SETTINGS frame, then silence.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut received = Vec::new();
    let closed = stream.read_to_end(&mut received);
    assert!(closed.is_ok(), "closed by the server, not by the 20 s read timeout: {closed:?}");
    // Frame type 7 is GOAWAY: a 9-byte header whose fourth byte is the type.
    let mut frames = received.as_slice();
    let mut types = Vec::new();
    while frames.len() >= 9 {
        let length = usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        types.push(frames[3]);
        frames = &frames[(9 + length).min(frames.len())..];
    }
    assert!(types.contains(&7), "a GOAWAY before closing: frame types {types:?}");
}

/// The hybrid service's configuration with `[security]`: an API key for a clerk and one for a
/// guest, and `[security.grpc]` making `GetOrder` public and `CreateOrder` a clerk's. `grpc` replaces
/// that last table when given.
fn secured_config(name: &str, grpc: Option<&str>) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("marty-hybrid-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The keys `ord_clerk_5b1e2c` and `ord_guest_9d4f7a`, by their SHA-256.
    let keys = "[keys.clerk]\nsha256 = \"4c6747da4a0b4587a6381732cc0a6271fa0d86fc68c1c29796a736049bbacb27\"\n\
                roles = [\"clerk\"]\n\
                [keys.guest]\nsha256 = \"95fc241710e9440d4b16672655e6c72f5916cb038b32f08f367d691aee59f1b2\"\n";
    std::fs::write(dir.join("keys.toml"), keys).unwrap();
    let grpc = grpc.unwrap_or(
        "\"orders.v1.Orders/GetOrder\" = \"public\"\n\"orders.v1.Orders/CreateOrder\" = { roles = [\"clerk\"] }\n",
    );
    let security = format!(
        "\n[security]\nroles = [\"clerk\"]\n[security.api_keys]\nfile = \"{}\"\n[security.grpc]\n{grpc}",
        dir.join("keys.toml").display()
    );
    let path = dir.join("marty.toml");
    std::fs::write(&path, format!("{}{security}", include_str!("../marty.toml"))).unwrap();
    path
}

/// A call carrying the API key `key` in its metadata, as machine clients send it.
fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_need_the_caller_and_roles_the_configuration_says() {
    let config = secured_config("secured", None);
    let service = tokio::task::spawn_blocking(move || {
        Service::start_with(BINARY, "hybrid-secured", std::process::Stdio::null(), Some(&config))
    })
    .await
    .unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", service.addr)).unwrap().connect().await.expect("gRPC connects");
    // Health needs no credentials, as probes do not.
    wait_until_serving(channel.clone(), "orders.v1.Orders").await;

    let mut orders = OrdersClient::new(channel);
    let order = || CreateOrderRequest { item: "book".into(), quantity: 1 };
    let anonymous = orders.create_order(order()).await.unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated, "{anonymous:?}");
    let forged = orders.create_order(with_key(order(), "ord_clerk_5b1e2d")).await.unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");
    let guest = orders.create_order(with_key(order(), "ord_guest_9d4f7a")).await.unwrap_err();
    assert_eq!(guest.code(), tonic::Code::PermissionDenied, "a key without the clerk role: {guest:?}");
    let created = orders.create_order(with_key(order(), "ord_clerk_5b1e2c")).await.expect("a clerk may order");
    // `GetOrder` is public; the REST route, with no attribute, follows `default` (authenticated).
    let id = created.into_inner().id;
    assert_eq!(orders.get_order(GetOrderRequest { id }).await.expect("public").into_inner().item, "book");
    let addr = service.addr;
    let rest = tokio::task::spawn_blocking(move || support::request(addr, "GET", &format!("/orders/{id}"), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.status, 401, "{}", rest.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_method_the_service_does_not_serve_stops_startup() {
    let config = secured_config("misspelled", Some("\"orders.v1.Orders/CreateOrdr\" = { roles = [\"clerk\"] }\n"));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BINARY)
            .env("MARTY_CONFIG", &config)
            .env("MARTY__HTTP__ADDR", "127.0.0.1:0")
            .output()
            .expect("the example runs")
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "it started with a misspelled method");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        printed.contains("security.grpc.\"orders.v1.Orders/CreateOrdr\"")
            && printed.contains("did you mean `orders.v1.Orders/CreateOrder`"),
        "{printed}"
    );
}

//! `[events.nats]`, `[events.rabbitmq]` and `[events.kafka]` reach the brokers: JetStream streams get
//! the configured storage, replicas and age; RabbitMQ queues are quorum queues unless configured,
//! and a queue an earlier release declared as classic keeps working; a NATS server that requires
//! TLS with client certificates is reached with the configured CA and certificate, and refuses a
//! client without one; so does RabbitMQ over `amqps://` (behind a TLS proxy); a NATS server in
//! operator mode (JWT accounts) takes the configured credentials file and refuses a client without
//! one. Needs `MARTY_TEST_NATS_URL`, `MARTY_TEST_NATS_SERVER`,
//! `MARTY_TEST_RABBITMQ_URL` and `MARTY_TEST_RABBITMQCTL` (.ci/run sets them) and `openssl`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use marty::config::{Config, NatsConfig, RabbitMqConfig};
use marty::events::broker::{NatsBroker, RabbitMqBroker};
use marty::events::{Broker, Message, SubscribeOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, marty::Event)]
#[event(topic = "topology.placed")]
struct Placed {
    order_id: i64,
}

/// `[events.<broker>]` as a user writes it, read by the same code as at startup.
fn events_config(table: &str) -> marty::config::EventsConfig {
    let text = format!("[events]\nbroker = \"memory\"\n{table}");
    Config::parse(&text, "marty.toml").unwrap().events.unwrap()
}

/// A message with a trace context, whose headers must survive the trip too.
fn message(topic: &str) -> Message {
    Message {
        topic: topic.to_owned(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        tracestate: Some("vendor=abc".to_owned()),
        ..Message::from_event(&Placed { order_id: 1 }).unwrap()
    }
}

/// Publishes one message to `topic` and reads it back as `group`.
async fn round_trip(broker: &dyn Broker, topic: &str, group: &str) {
    let mut subscription = broker.subscribe(topic, group, SubscribeOptions::default()).await.unwrap();
    let sent = message(topic);
    let acks = broker.publish(std::slice::from_ref(&sent)).await;
    assert!(acks.iter().all(Result::is_ok), "{acks:?}");
    let delivery = tokio::time::timeout(Duration::from_secs(20), subscription.next()).await.unwrap().unwrap();
    assert_eq!(delivery.message, sent, "id, key, version, payload and trace context arrive as sent");
    delivery.ack().await.unwrap();
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_NATS_URL"]
async fn jetstream_streams_take_their_storage_replicas_and_age_from_the_configuration() {
    let url = marty_tests::server_env("MARTY_TEST_NATS_URL");
    let config = events_config("[events.nats]\nstorage = \"memory\"\nmax_age = \"2h\"\nreplicas = 1\n").nats;
    let broker = NatsBroker::connect_with(&url, &config).await.unwrap();
    let topic = format!("topology.nats{}", &marty::events::new_event_id()[24..]);
    round_trip(&broker, &topic, "audit").await;
    let jetstream = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut stream = jetstream.get_stream(NatsBroker::stream_name(&topic)).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.storage, async_nats::jetstream::stream::StorageType::Memory);
    assert_eq!(info.config.max_age, Duration::from_secs(7200));
    assert_eq!(info.config.num_replicas, 1);
}

/// The queues of the vhost and their types, as `rabbitmqctl` lists them.
fn queue_types(ctl: &str) -> Vec<(String, String)> {
    let output = Command::new(ctl).args(["-q", "list_queues", "name", "type"]).output().expect("run rabbitmqctl");
    assert!(output.status.success(), "rabbitmqctl: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t').map(|(name, kind)| (name.to_owned(), kind.trim().to_owned())))
        .collect()
}

#[tokio::test]
#[ignore = "needs MARTY_TEST_RABBITMQ_URL and MARTY_TEST_RABBITMQCTL"]
async fn rabbitmq_queues_are_quorum_unless_configured_and_a_classic_queue_from_before_is_kept() {
    let (url, ctl) =
        (marty_tests::server_env("MARTY_TEST_RABBITMQ_URL"), marty_tests::server_env("MARTY_TEST_RABBITMQCTL"));
    let run = &marty::events::new_event_id()[24..];
    let topic = format!("topology.rabbit{run}");
    let broker = RabbitMqBroker::connect_with(&url, &RabbitMqConfig::default()).await.unwrap();
    round_trip(&broker, &topic, &format!("quorum{run}")).await;

    // A queue an earlier release declared, classic, with its dead-letter exchange.
    let legacy = format!("legacy{run}");
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert("x-dead-letter-exchange".into(), lapin::types::AMQPValue::LongString("marty.dead_letter".into()));
    let queue = RabbitMqBroker::queue_name(&topic, &legacy);
    let durable = lapin::options::QueueDeclareOptions::durable();
    channel.queue_declare(queue.as_str().into(), durable, arguments).await.unwrap();
    round_trip(&broker, &topic, &legacy).await;

    let classic = events_config("[events.rabbitmq]\nqueue_type = \"classic\"\n").rabbitmq;
    let classic_broker = RabbitMqBroker::connect_with(&url, &classic).await.unwrap();
    round_trip(&classic_broker, &topic, &format!("classic{run}")).await;

    let types = queue_types(&ctl);
    let type_of = |group: &str| {
        let name = RabbitMqBroker::queue_name(&topic, &format!("{group}{run}"));
        types.iter().find(|(queue, _)| *queue == name).map(|(_, kind)| kind.clone())
    };
    assert_eq!(type_of("quorum").as_deref(), Some("quorum"), "{types:?}");
    assert_eq!(type_of("legacy").as_deref(), Some("classic"), "kept as it was: {types:?}");
    assert_eq!(type_of("classic").as_deref(), Some("classic"), "{types:?}");
}

/// A `nats-server` of the test's own, configured with `config` (`{port}` and `{dir}` filled in):
/// TLS with client certificates, or operator mode with JWTs.
struct TestNats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TestNats {
    /// A server of `binary` whose configuration `config` writes, given the port and a fresh
    /// directory (already holding the test certificates).
    fn start(binary: &str, name: &str, config: impl FnOnce(u16, &Path) -> String) -> TestNats {
        let dir = marty_tests::tls::certificates_in(&format!("nats-{name}"));
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{}",
            dir.join("js").display(),
            config(port, &dir)
        );
        std::fs::write(dir.join("nats.conf"), config).unwrap();
        let child = Command::new(binary)
            .args(["-c", &dir.join("nats.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TestNats { child, port, dir }
    }

    /// A server that requires TLS and verifies client certificates.
    fn tls(binary: &str) -> TestNats {
        TestNats::start(binary, "tls", |_, dir| {
            format!(
                "tls {{ cert_file: \"{d}/server.pem\", key_file: \"{d}/server-key.pem\", ca_file: \"{d}/ca.pem\", verify: true }}\n",
                d = dir.display()
            )
        })
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs MARTY_TEST_NATS_SERVER"]
async fn a_nats_server_that_requires_client_certificates_is_reached_with_the_configured_ones() {
    let server = tokio::task::block_in_place(|| TestNats::tls(&marty_tests::server_env("MARTY_TEST_NATS_SERVER")));
    let table = format!(
        "[events.nats]\ntls_ca = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"\n",
        server.path("ca.pem"),
        server.path("client.pem"),
        server.path("client-key.pem")
    );
    let broker = NatsBroker::connect_with(&server.url("tls"), &events_config(&table).nats).await.unwrap();
    round_trip(&broker, "topology.tls", "audit").await;

    // Trusting the CA is not enough: the server wants a client certificate.
    let mut only_ca: NatsConfig = events_config(&table).nats;
    only_ca.tls_client = None;
    let refused = NatsBroker::connect_with(&server.url("tls"), &only_ca).await.unwrap();
    let acks = refused.publish(&[message("topology.tls")]).await;
    assert!(matches!(&acks[0], Err(marty::events::BrokerError::Unavailable(_))), "{acks:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs MARTY_TEST_RABBITMQ_URL"]
async fn amqps_reaches_rabbitmq_with_a_private_ca_and_a_client_certificate() {
    let plain: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    assert!(
        marty_tests::server_env("MARTY_TEST_RABBITMQ_URL").contains("@127.0.0.1:5672/"),
        "the proxy forwards to 127.0.0.1:5672"
    );
    let dir = tokio::task::block_in_place(|| marty_tests::tls::certificates_in("amqps"));
    let proxy = marty_tests::tls::TlsProxy::start(plain, &dir, true).await;
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", proxy.addr.port());
    let path = |file: &str| dir.join(file).display().to_string();
    let table = format!(
        "[events.rabbitmq]\ntls_ca = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"\n",
        path("ca.pem"),
        path("client.pem"),
        path("client-key.pem")
    );
    let broker = RabbitMqBroker::connect_with(&url, &events_config(&table).rabbitmq).await.unwrap();
    let run = &marty::events::new_event_id()[24..];
    round_trip(&broker, &format!("topology.amqps{run}"), "audit").await;

    // Trusting the CA is not enough: the proxy wants a client certificate.
    let mut only_ca: RabbitMqConfig = events_config(&table).rabbitmq;
    only_ca.tls_client = None;
    let refused = RabbitMqBroker::connect_with(&url, &only_ca).await.unwrap();
    let acks = refused.publish(&[message("topology.amqps")]).await;
    assert!(matches!(&acks[0], Err(marty::events::BrokerError::Unavailable(_))), "{acks:?}");
    // And without the CA, the Mozilla roots do not know the server's certificate.
    let mut no_ca: RabbitMqConfig = events_config(&table).rabbitmq;
    no_ca.tls_ca = None;
    let untrusted = RabbitMqBroker::connect_with(&url, &no_ca).await.unwrap();
    let acks = untrusted.publish(&[message("topology.amqps")]).await;
    assert!(
        matches!(&acks[0], Err(marty::events::BrokerError::Unavailable(error)) if error.contains("certificate")),
        "{acks:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JWT of the NATS flavour (`ed25519-nkey`), issued by `issuer` for `subject` with `nats` claims.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let issued_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}{issued_at}"),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(format!("{header}.{claims}").as_bytes()).unwrap());
    format!("{header}.{claims}.{signature}")
}

/// A server in operator mode (as NATS accounts run in production) with one JetStream account, and a
/// credentials file for a user of it, as `nsc generate creds` writes one.
fn operator_mode_nats(binary: &str) -> (TestNats, String) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream in operator mode runs its internal subscriptions in a system account.
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1,
        "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "orders",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"limits": {"subs": -1, "data": -1, "payload": -1, "conn": -1}, "type": "account", "version": 2}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "orders-service",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let server = TestNats::start(binary, "operator", |_, _| {
        format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{ {account}: \"{account_jwt}\", {system}: \"{system_jwt}\" }}\n",
            system = system.public_key(),
            account = account.public_key(),
        )
    });
    let credentials = server.path("orders.creds");
    std::fs::write(
        &credentials,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    (server, credentials)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs MARTY_TEST_NATS_SERVER"]
async fn a_nats_server_of_jwt_accounts_is_reached_with_the_configured_credentials_file() {
    let (server, credentials) =
        tokio::task::block_in_place(|| operator_mode_nats(&marty_tests::server_env("MARTY_TEST_NATS_SERVER")));
    let config = events_config(&format!("[events.nats]\ncredentials = \"{credentials}\"\n")).nats;
    let broker = NatsBroker::connect_with(&server.url("nats"), &config).await.unwrap();
    round_trip(&broker, "topology.credentials", "audit").await;

    // Without the credentials the server knows no one.
    let anonymous = NatsBroker::connect_with(&server.url("nats"), &NatsConfig::default()).await.unwrap();
    let acks = anonymous.publish(&[message("topology.credentials")]).await;
    assert!(matches!(&acks[0], Err(marty::events::BrokerError::Unavailable(_))), "{acks:?}");
}

//! The `marty.toml` schema: typed sections with their defaults, and the rules that tie keys together.
//! Reading goes through [`Reader`], so every mistake is reported with its origin and a fix.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::app::AppSettings;
use crate::rate_limit::{read_rate_limit, RateLimitConfig};
use crate::read::{join, Reader, Table};
use crate::security::{read_security, SecurityConfig};
use crate::suggest;
use crate::tls::{read_tls, TlsConfig};

/// A validated `marty.toml`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The file the configuration was read from, as errors name it.
    pub file: String,
    /// `[service]`.
    pub service: ServiceConfig,
    /// `[http]`: where the service listens and the limits every connection gets (defaults when
    /// absent).
    pub http: HttpConfig,
    /// `[grpc]`, when gRPC has a port of its own (same limits as `[http]`).
    pub grpc: Option<ListenerConfig>,
    /// `[management]`, when `/healthz`, `/readyz`, `/metrics` and gRPC reflection have a port of
    /// their own, away from the API.
    pub management: Option<ListenerConfig>,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
    /// `[dependencies.<name>]`, by name.
    pub dependencies: BTreeMap<String, DependencyConfig>,
    /// `[events]`, when the service publishes or consumes events.
    pub events: Option<EventsConfig>,
    /// `[outbox]`, when the service uses the transactional outbox.
    pub outbox: Option<OutboxConfig>,
    /// `[sagas]`: how the saga orchestrator shares and retries work (defaults when absent).
    pub sagas: SagasConfig,
    /// `[storage]`: how Marty's tables are created and pruned (defaults when absent).
    pub storage: StorageConfig,
    /// `[security]`: how callers authenticate and what routes require (none when absent: every
    /// route is public).
    pub security: Option<SecurityConfig>,
    /// `[rate_limit]`: how many requests a caller may make (none when absent).
    pub rate_limit: Option<RateLimitConfig>,
    /// `[openapi]`: the routes' OpenAPI description, served at its `path` (none when absent).
    pub openapi: Option<OpenApiConfig>,
    /// `[faults]`: whether the faults under `[dependencies.<name>.fault]` are injected (never
    /// unless `enabled = true` here and marty's `faults` feature is on).
    pub faults: FaultsConfig,
    /// `[app]`: the application's own settings; read them with `config.app.get::<YourSettings>()`.
    pub app: AppSettings,
}

/// `[openapi]`: the service describes its routes (OpenAPI 3.1, built from `#[service]` when it
/// compiles) and serves the description.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OpenApiConfig {
    /// Where the description is served (default `/openapi.json`), without authentication.
    pub path: String,
    /// The description's title (default: the service's name).
    pub title: Option<String>,
    /// The description's summary of the API.
    pub description: Option<String>,
    /// Where a browsable page of the description is served (e.g. `/docs`; needs marty's
    /// `openapi-ui` feature); none when absent.
    pub ui: Option<String>,
}

impl Default for OpenApiConfig {
    fn default() -> Self {
        OpenApiConfig { path: "/openapi.json".to_owned(), title: None, description: None, ui: None }
    }
}

/// `[faults]`: the switch for injected faults, and how the management endpoint that changes them
/// is authenticated.
#[derive(Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct FaultsConfig {
    /// `enabled = true`: inject the faults under `[dependencies.<name>.fault]` (needs marty's
    /// `faults` feature; a service built without it refuses to start rather than run without them).
    pub enabled: bool,
    /// The bearer token `PUT`/`DELETE /faults/<dependency>` must present; without one the endpoint
    /// is not served and only the file (reloaded) changes faults. Never printed by `Debug`.
    pub token: Option<String>,
}

impl fmt::Debug for FaultsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultsConfig")
            .field("enabled", &self.enabled)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `[dependencies.<name>.fault]`: what is done to each attempt of a call to the dependency while
/// faults are enabled, as if the dependency misbehaved: the bulkhead, timeout, retry and breaker
/// see it as they would a real one.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct FaultConfig {
    /// Added before every attempt, counted against the attempt's `timeout`.
    pub latency: Duration,
    /// The share of attempts that fail with a transient error (0 to 1).
    pub error_rate: f64,
    /// The share of attempts that never answer, so they end at the attempt's `timeout` (0 to 1;
    /// with `error_rate`, at most 1 in all).
    pub timeout_rate: f64,
}

impl FaultConfig {
    /// Adds `latency` before every attempt.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Fails this share of attempts (0 to 1).
    pub fn with_error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// Hangs this share of attempts until their timeout (0 to 1).
    pub fn with_timeout_rate(mut self, rate: f64) -> Self {
        self.timeout_rate = rate.clamp(0.0, 1.0);
        self
    }

    /// A fault that does something.
    pub fn is_active(&self) -> bool {
        !self.latency.is_zero() || self.error_rate > 0.0 || self.timeout_rate > 0.0
    }
}

/// The shortest `[faults] token` accepted: a guessable token would let anyone break the service.
pub const MIN_FAULTS_TOKEN_LEN: usize = 16;

/// `[service]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The service's name in telemetry; defaults to the crate name where the macros know it.
    pub name: Option<String>,
    /// After SIGTERM, how long readiness reports 503 while requests are still served, so load
    /// balancers stop routing here before the listener closes. Unset, the runtime picks where the
    /// service runs: 5 s in Kubernetes (endpoints take a few seconds to drop a pod), 0 elsewhere
    /// (a terminal's Ctrl-C stops at once).
    pub drain_delay: Option<Duration>,
    /// How long in-flight requests get to finish once the listener closes (default `30s`).
    pub shutdown_timeout: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { name: None, drain_delay: None, shutdown_timeout: Duration::from_secs(30) }
    }
}

/// `[grpc]` or `[management]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// The socket address to listen on.
    pub addr: SocketAddr,
}

/// `[http]`: the listener and what it allows each client, so slow or silent clients cannot hold
/// the service's connections (slowloris) or memory.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The socket address to listen on (default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// How long a client has to send a complete request head, from its first byte (or from the
    /// connection's opening): default `10s`.
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive in full, from its head: default `30s`. gRPC
    /// streams are exempt (they are kept alive by HTTP/2 pings and `idle_timeout`).
    pub body_timeout: Duration,
    /// How long a connection with no request in flight is kept open: default `60s` (above the
    /// usual load balancer's idle timeout, so it is the balancer that closes first).
    pub idle_timeout: Duration,
    /// Connections served at once; more wait to be accepted. Unset: 10,000, or three quarters of the
    /// process's open-file limit when that is lower.
    pub max_connections: Option<usize>,
    /// The largest request body, in bytes (default 2 MiB); a larger declared `Content-Length` is
    /// refused before any of it is read.
    pub max_body_bytes: usize,
    /// The largest request head (request line and headers), in bytes (default 32 KiB).
    pub max_header_bytes: usize,
    /// Whether responses carry the usual security headers (`X-Content-Type-Options: nosniff`,
    /// `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and a `Content-Security-Policy`
    /// that loads nothing), where the handler did not set them: default `true`.
    pub security_headers: bool,
    /// `[http.tls]`: serve HTTPS (and gRPC over TLS); plain text when absent.
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_body_bytes: 2 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            security_headers: true,
            tls: None,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// How logs are written.
    pub log_format: LogFormat,
    /// Where OTLP traces go; `OTEL_EXPORTER_OTLP_ENDPOINT` also turns export on.
    pub otlp_endpoint: Option<String>,
    /// Upper bounds, in seconds, of every Marty histogram (calls, HTTP requests, handlers, saga
    /// steps); `None` keeps the defaults, 0.5 ms to 10 s.
    pub histogram_buckets: Option<Vec<f64>>,
}

/// `telemetry.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// What a dependency is; it picks the defaults and which attribute may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DependencyKind {
    /// Called through `#[database_call]`; default timeout 10s, bulkhead 10.
    Database,
    /// Called through `#[api_call]`; default timeout 15s, bulkhead 100.
    Api,
    /// Called through `#[cache_call]`; default timeout 2s, bulkhead 100.
    Cache,
}

impl DependencyKind {
    /// Every kind, in the order documentation lists them.
    pub const ALL: [DependencyKind; 3] = [DependencyKind::Database, DependencyKind::Api, DependencyKind::Cache];

    /// The name written in `marty.toml`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DependencyKind::Database => "database",
            DependencyKind::Api => "api",
            DependencyKind::Cache => "cache",
        }
    }

    /// The attribute that calls a dependency of this kind.
    pub const fn attribute(self) -> &'static str {
        match self {
            DependencyKind::Database => "database_call",
            DependencyKind::Api => "api_call",
            DependencyKind::Cache => "cache_call",
        }
    }

    /// Parses the name written in `marty.toml`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The timeout a dependency of this kind gets unless it sets one.
    pub const fn default_timeout(self) -> Duration {
        match self {
            DependencyKind::Database => Duration::from_secs(10),
            DependencyKind::Api => Duration::from_secs(15),
            DependencyKind::Cache => Duration::from_secs(2),
        }
    }

    /// The bulkhead size a dependency of this kind gets unless it sets one.
    pub const fn default_max_concurrent(self) -> usize {
        match self {
            DependencyKind::Database => 10,
            DependencyKind::Api | DependencyKind::Cache => 100,
        }
    }
}

impl fmt::Display for DependencyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[dependencies.<name>]`: the policies every call to one dependency shares.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct DependencyConfig {
    /// The key under `[dependencies]`.
    pub name: String,
    /// What the dependency is.
    pub kind: DependencyKind,
    /// Where it is, after `${VAR}` expansion; never printed by `Debug`, since it may carry a password.
    pub url: Option<String>,
    /// Bulkhead: how many calls may run at once. Unset, a database dependency takes the size of
    /// the pool the service hands Marty (`marty::store::register`, `register_pool`), so calls queue
    /// for a permit rather than for a connection; else the kind's default.
    pub max_concurrent: usize,
    /// `max_concurrent` was not written: the runtime may size the bulkhead from a registered pool.
    pub max_concurrent_unset: bool,
    /// Bulkhead: how long a call may wait for a permit before it is rejected (counts against
    /// `timeout`). Unset: a quarter of `timeout`, so a burst queues briefly instead of being shed.
    pub max_wait: Duration,
    /// How long one attempt may take, bulkhead wait included.
    pub timeout: Duration,
    /// `circuit_breaker = { ... }`, or `circuit_breaker = false`.
    pub circuit_breaker: CircuitBreakerConfig,
    /// `retry = { ... }`, or `retry = false` (one attempt).
    pub retry: RetryConfig,
    /// `readiness`: whether this dependency's open breaker makes the service unready.
    pub readiness: DependencyReadiness,
    /// `[dependencies.<name>.fault]`: faults injected into its calls while `[faults] enabled`.
    pub fault: Option<FaultConfig>,
}

/// What a dependency's state does to the service's readiness (`readiness = ..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DependencyReadiness {
    /// `"reported"` (the default): `/readyz` shows its breaker, and the service stays ready while
    /// it is open. One dependency's outage must not take every replica out of the load balancer:
    /// an unready replica gets no traffic, so no call would ever close the breaker again.
    #[default]
    Reported,
    /// `"required"`: the service is not ready while the breaker turns calls away; once `open_for`
    /// has passed it reads ready again, so that trial calls can come.
    Required,
}

impl DependencyReadiness {
    /// The name written in `marty.toml`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DependencyReadiness::Reported => "reported",
            DependencyReadiness::Required => "required",
        }
    }
}

impl fmt::Debug for DependencyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DependencyConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("max_concurrent", &self.max_concurrent)
            .field("max_wait", &self.max_wait)
            .field("timeout", &self.timeout)
            .field("circuit_breaker", &self.circuit_breaker)
            .field("retry", &self.retry)
            .field("readiness", &self.readiness)
            .field("fault", &self.fault)
            .finish()
    }
}

impl DependencyConfig {
    /// A dependency with every default of its kind, as if declared with only `kind = ..`.
    pub fn with_defaults(name: impl Into<String>, kind: DependencyKind) -> Self {
        let timeout = kind.default_timeout();
        DependencyConfig {
            name: name.into(),
            kind,
            url: None,
            max_concurrent: kind.default_max_concurrent(),
            max_concurrent_unset: true,
            max_wait: timeout / 4,
            timeout,
            circuit_breaker: CircuitBreakerConfig::defaults_for(timeout),
            retry: RetryConfig::default(),
            readiness: DependencyReadiness::Reported,
            fault: None,
        }
    }
}

/// `circuit_breaker = { ... }`: a count-based window over the last `window` calls.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// `false` turns the breaker off for this dependency.
    pub enabled: bool,
    /// Opens when this share of recorded calls failed (0 < rate <= 1).
    pub failure_rate: f64,
    /// Opens when this share of recorded calls was slow (0 < rate <= 1).
    pub slow_call_rate: f64,
    /// A call at least this long is slow.
    pub slow_call_duration: Duration,
    /// How many of the latest calls the rates are computed over.
    pub window: u32,
    /// How many calls must be recorded before the rates are trusted.
    pub min_calls: u32,
    /// How long the breaker stays open before letting trial calls through.
    pub open_for: Duration,
    /// How many trial calls, while half-open, decide between closing and opening again.
    pub half_open_calls: u32,
}

impl CircuitBreakerConfig {
    /// The defaults, with slow calls measured against the dependency's timeout.
    pub fn defaults_for(timeout: Duration) -> Self {
        CircuitBreakerConfig {
            enabled: true,
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: timeout,
            window: 100,
            min_calls: 20,
            open_for: Duration::from_secs(30),
            half_open_calls: 3,
        }
    }
}

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// `initial * 2^(attempt - 1)`, capped at `max`.
    Exponential,
    /// Always `initial`.
    Fixed,
}

/// `retry = { ... }`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 turns retry off.
    pub max_attempts: u32,
    /// How the wait grows.
    pub backoff: Backoff,
    /// The first wait.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Full jitter: wait a uniformly random time up to the computed backoff.
    pub jitter: bool,
    /// Retries may be at most this share of first attempts (plus a small reserve), so a failing
    /// dependency does not receive `max_attempts` times its normal traffic.
    pub budget: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            jitter: true,
            budget: 0.2,
        }
    }
}

/// The brokers `[events]` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// In-process, for tests and the quick start.
    Memory,
    /// NATS JetStream.
    Nats,
    /// RabbitMQ.
    RabbitMq,
    /// Kafka.
    Kafka,
}

/// `[events]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EventsConfig {
    /// Which broker carries events.
    pub broker: Broker,
    /// Where it is (not needed for `memory`).
    pub url: Option<String>,
    /// `[events.nats]`: the JetStream streams Marty creates, and how it authenticates.
    pub nats: NatsConfig,
    /// `[events.rabbitmq]`: the queues Marty declares.
    pub rabbitmq: RabbitMqConfig,
    /// `[events.kafka]`: the topics Marty creates, and librdkafka's own properties.
    pub kafka: KafkaConfig,
}

/// `[events.nats]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Copies of each stream in the JetStream cluster, 1 to 5 (default 1; 3 in a production cluster).
    pub replicas: u32,
    /// Where streams keep messages: `"file"` (default) or `"memory"`.
    pub storage: NatsStorage,
    /// How long a stream keeps a message (default `7d`): past it, an unconsumed event is gone.
    pub max_age: Duration,
    /// A NATS credentials file (JWT and NKey seed), for accounts that require one.
    pub credentials: Option<String>,
    /// The path of a CA certificate (PEM) to trust for `tls://` servers, beside the system roots.
    pub tls_ca: Option<String>,
    /// The paths of a client certificate and its key (PEM), for servers that verify clients (mTLS).
    pub tls_client: Option<(String, String)>,
}

/// Where a JetStream stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsStorage {
    /// On disk: survives a server restart.
    File,
    /// In memory: faster, lost with the server.
    Memory,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            replicas: 1,
            storage: NatsStorage::File,
            max_age: Duration::from_secs(7 * 86_400),
            credentials: None,
            tls_ca: None,
            tls_client: None,
        }
    }
}

/// `[events.rabbitmq]`.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct RabbitMqConfig {
    /// The type of the queues Marty declares (default quorum: replicated, and what RabbitMQ
    /// recommends for data that must not be lost). A queue that already exists keeps its type.
    pub queue_type: QueueType,
    /// The path of a CA certificate (PEM) to trust for `amqps://` servers, beside the Mozilla roots.
    pub tls_ca: Option<String>,
    /// The paths of a client certificate and its key (PEM), for servers that verify clients (mTLS).
    pub tls_client: Option<(String, String)>,
}

/// A RabbitMQ queue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Raft-replicated, durable (the default).
    #[default]
    Quorum,
    /// The classic queue.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument's value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// `[events.kafka]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Partitions of each topic Marty creates (default 3); existing topics are left as they are.
    pub partitions: i32,
    /// Replicas of each partition of a topic Marty creates (default 1; 3 in a production cluster).
    pub replication_factor: i32,
    /// librdkafka properties for every client Marty makes (producer, consumers, admin): TLS and SASL
    /// (`"security.protocol" = "SASL_SSL"`, `"sasl.mechanism" = "SCRAM-SHA-512"`, ...), tuning. `${VAR}`
    /// expands in values, for secrets.
    pub properties: Vec<(String, String)>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig { partitions: 3, replication_factor: 1, properties: Vec::new() }
    }
}

/// `[outbox]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// The database dependency whose transactions hold the outbox table.
    pub store: String,
    /// How many events the relay publishes per round.
    pub batch_size: u32,
    /// How often the relay looks for events when nothing woke it (PostgreSQL wakes it on commit).
    pub poll_interval: Duration,
    /// Publish attempts the broker may reject before an event is parked.
    pub max_attempts: u32,
    /// How long published events are kept in the table; 0 (the default) deletes each row once the
    /// broker acknowledged it, which is also the cheapest for the database.
    pub retention: Duration,
}

/// `[storage]`: operating Marty's tables (outbox, inbox, sagas) in the service's database.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StorageConfig {
    /// Whether Marty creates and upgrades its tables on first use (default `true`). Teams that own
    /// their migrations set `false`, apply `marty::schema`'s DDL with their tool, and Marty only
    /// checks at startup that the tables are at the version it needs.
    pub migrate: bool,
    /// How long the inbox remembers an event it handled, so a redelivery is recognised (default
    /// `7d`). Keep it longer than a broker may redeliver a message: past it, a redelivered event is
    /// handled again.
    pub inbox_retention: Duration,
    /// How long a finished saga (completed or compensated) and its history are kept (default `30d`).
    /// Running and parked sagas are never pruned.
    pub saga_retention: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            migrate: true,
            inbox_retention: Duration::from_secs(7 * 86_400),
            saga_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// `[sagas]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SagasConfig {
    /// How long a replica owns a saga without renewing; when the owner dies, another replica takes the
    /// saga over once this has passed (default `10s`).
    pub lease: Duration,
    /// How often each replica looks for sagas with no live owner, or due for a retry (default `1s`).
    pub poll_interval: Duration,
    /// How many times in a row the other side may refuse a compensation (answer with an error that
    /// says no, rather than fail) before the saga is parked for an operator (default 10). Other
    /// failures are retried until `compensation_deadline`; open breakers are waited out.
    pub compensation_attempts: u32,
    /// How long a compensation keeps being retried, whatever its errors, before the saga is parked:
    /// it outlasts an outage and the breakers that open during it. Longer than every dependency's
    /// `open_for` (default `5m`, or twice the longest `open_for` when that is longer).
    pub compensation_deadline: Duration,
    /// This replica's stable name (e.g. a pod name), unique among the replicas running at once: a
    /// replica that restarts under the same name takes back the sagas it owned once its previous run
    /// has missed two lease renewals, instead of waiting for the whole lease. Unset,
    /// `Orchestrator::new` uses `POD_NAME` or `HOSTNAME` from the environment, else a name of its
    /// own per start (and restarts wait for the lease).
    pub replica: Option<String>,
    /// The first retry delay of a step or compensation; it doubles per attempt, with full jitter
    /// (default `100ms`).
    pub backoff_initial: Duration,
    /// The longest retry delay (default `30s`).
    pub backoff_max: Duration,
}

impl Default for SagasConfig {
    fn default() -> Self {
        SagasConfig {
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            compensation_attempts: 10,
            compensation_deadline: DEFAULT_COMPENSATION_DEADLINE,
            replica: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

const ROOT_KEYS: &[&str] = &[
    "service",
    "http",
    "grpc",
    "management",
    "telemetry",
    "dependencies",
    "events",
    "outbox",
    "sagas",
    "storage",
    "security",
    "rate_limit",
    "openapi",
    "faults",
    "app",
];
const HTTP_KEYS: &[&str] = &[
    "addr",
    "header_read_timeout",
    "body_timeout",
    "idle_timeout",
    "max_connections",
    "max_body_bytes",
    "max_header_bytes",
    "security_headers",
    "tls",
];
const SAGAS_KEYS: &[&str] = &[
    "lease",
    "poll_interval",
    "compensation_attempts",
    "compensation_deadline",
    "replica",
    "backoff_initial",
    "backoff_max",
];
const DEFAULT_COMPENSATION_DEADLINE: Duration = Duration::from_secs(300);
const DEPENDENCY_KEYS: &[&str] =
    &["kind", "url", "max_concurrent", "max_wait", "timeout", "circuit_breaker", "retry", "readiness", "fault"];
const BREAKER_KEYS: &[&str] = &[
    "enabled",
    "failure_rate",
    "slow_call_rate",
    "slow_call_duration",
    "window",
    "min_calls",
    "open_for",
    "half_open_calls",
];
const RETRY_KEYS: &[&str] = &["max_attempts", "backoff", "initial", "max", "jitter", "budget"];
const KIND_NAMES: &[&str] = &["database", "api", "cache"];

pub(crate) fn read_config(reader: &mut Reader<'_>, root: &Table<'_>, file: &str) -> Config {
    reader.deny_unknown_keys(root, ROOT_KEYS);
    let service = match reader.table(root, "service") {
        Some(table) => {
            reader.deny_unknown_keys(&table, &["name", "drain_delay", "shutdown_timeout"]);
            let defaults = ServiceConfig::default();
            ServiceConfig {
                name: reader.string(&table, "name"),
                drain_delay: reader.duration(&table, "drain_delay").or(defaults.drain_delay),
                shutdown_timeout: reader.duration(&table, "shutdown_timeout").unwrap_or(defaults.shutdown_timeout),
            }
        }
        None => ServiceConfig::default(),
    };
    let http = read_http(reader, root);
    let grpc = read_listener(reader, root, "grpc");
    let management = read_listener(reader, root, "management");
    let telemetry = match reader.table(root, "telemetry") {
        Some(table) => {
            reader.deny_unknown_keys(&table, &["log_format", "otlp_endpoint", "histogram_buckets"]);
            let log_format = match reader.choice(&table, "log_format", &["json", "pretty"]).as_deref() {
                Some("pretty") => LogFormat::Pretty,
                _ => LogFormat::Json,
            };
            let histogram_buckets = reader.increasing_numbers(&table, "histogram_buckets", 30);
            TelemetryConfig { log_format, otlp_endpoint: reader.string(&table, "otlp_endpoint"), histogram_buckets }
        }
        None => TelemetryConfig::default(),
    };
    let mut dependencies = BTreeMap::new();
    if let Some(table) = reader.table(root, "dependencies") {
        for (name, node) in reader.named_entries(&table) {
            let Some(dependency) = reader.as_table(node, join("dependencies", name)) else {
                continue;
            };
            if let Some(config) = read_dependency(reader, &dependency, name) {
                dependencies.insert(name.clone(), config);
            }
        }
    }
    let events = reader.table(root, "events").and_then(|table| {
        reader.deny_unknown_keys(&table, &["broker", "url", "nats", "rabbitmq", "kafka"]);
        let nats = read_nats(reader, &table);
        let rabbitmq = read_rabbitmq(reader, &table);
        let kafka = read_kafka(reader, &table);
        let broker = match reader.choice(&table, "broker", &["memory", "nats", "rabbitmq", "kafka"])?.as_str() {
            "nats" => Broker::Nats,
            "rabbitmq" => Broker::RabbitMq,
            "kafka" => Broker::Kafka,
            _ => Broker::Memory,
        };
        Some(EventsConfig { broker, url: reader.string(&table, "url"), nats, rabbitmq, kafka })
    });
    let outbox = reader.table(root, "outbox").and_then(|table| {
        reader.deny_unknown_keys(&table, &["store", "batch_size", "poll_interval", "max_attempts", "retention"]);
        let batch_size = reader.integer(&table, "batch_size", 1, 10_000).unwrap_or(100) as u32;
        let poll_interval = reader.duration(&table, "poll_interval").unwrap_or(Duration::from_millis(500));
        let max_attempts = reader.integer(&table, "max_attempts", 1, 1_000).unwrap_or(10) as u32;
        let retention = reader.duration(&table, "retention").unwrap_or(Duration::ZERO);
        let Some(store) = reader.string(&table, "store") else {
            let origin = reader.origin_of(&table, "store").clone();
            let help = Some(
                "name the database dependency that holds the outbox table, e.g. `store = \"orders_db\"`".to_owned(),
            );
            reader.error(&origin, "outbox.store", "missing key", help);
            return None;
        };
        check_outbox_store(reader, &table, &store, &dependencies);
        Some(OutboxConfig { store, batch_size, poll_interval, max_attempts, retention })
    });
    let sagas = read_sagas(reader, root, &dependencies);
    let storage = read_storage(reader, root);
    let security = read_security(reader, root);
    let mtls = security.as_ref().and_then(|security| security.mtls.as_ref());
    if let (Some(mtls), None) = (mtls, http.tls.as_ref().and_then(|tls| tls.client_ca.as_ref())) {
        let help =
            Some("add `[http.tls]` with `cert`, `key` and `client_ca`, the CA client certificates chain to".to_owned());
        reader.error(&mtls.origin, "security.mtls", "client certificates as identities, and none are asked for", help);
    }
    let rate_limit = read_rate_limit(reader, root);
    let openapi = read_openapi(reader, root);
    let faults = read_faults(reader, root);
    let app = AppSettings::new(file, reader.free_form(root, "app"));
    Config {
        file: file.to_owned(),
        service,
        http,
        grpc,
        management,
        telemetry,
        dependencies,
        events,
        outbox,
        sagas,
        storage,
        security,
        rate_limit,
        openapi,
        faults,
        app,
    }
}

fn read_faults(reader: &mut Reader<'_>, root: &Table<'_>) -> FaultsConfig {
    let Some(table) = reader.table(root, "faults") else { return FaultsConfig::default() };
    reader.deny_unknown_keys(&table, &["enabled", "token"]);
    let token = reader.string(&table, "token");
    // When compiling, `${VAR}` is not expanded: the token is only known at startup.
    let known = token.as_deref() != reader.raw_string(&table, "token").filter(|raw| raw.contains("${"));
    if let Some(token) = token.as_deref().filter(|token| known && token.len() < MIN_FAULTS_TOKEN_LEN) {
        let origin = reader.origin_of(&table, "token").clone();
        let problem = format!("is {} characters; a token this short can be guessed", token.len());
        let help = Some(format!(
            "use at least {MIN_FAULTS_TOKEN_LEN} random characters from a secret, e.g. `token = \"${{MARTY_FAULTS_TOKEN}}\"`"
        ));
        reader.error(&origin, "faults.token", problem, help);
    }
    FaultsConfig { enabled: reader.boolean(&table, "enabled").unwrap_or(false), token }
}

fn read_fault(reader: &mut Reader<'_>, table: &Table<'_>) -> FaultConfig {
    reader.deny_unknown_keys(table, &["latency", "error_rate", "timeout_rate"]);
    let fault = FaultConfig {
        latency: reader.duration(table, "latency").unwrap_or_default(),
        error_rate: reader.rate(table, "error_rate", true).unwrap_or(0.0),
        timeout_rate: reader.rate(table, "timeout_rate", true).unwrap_or(0.0),
    };
    if fault.error_rate + fault.timeout_rate > 1.0 {
        let origin = reader.origin_of(table, "timeout_rate").clone();
        let problem = format!(
            "`error_rate` ({}) and `timeout_rate` ({}) add up to more than 1",
            fault.error_rate, fault.timeout_rate
        );
        let help = Some("they are shares of the same attempts: keep their sum at most 1".to_owned());
        reader.error(&origin, &join(&table.path, "timeout_rate"), problem, help);
    }
    fault
}

fn read_openapi(reader: &mut Reader<'_>, root: &Table<'_>) -> Option<OpenApiConfig> {
    let table = reader.table(root, "openapi")?;
    reader.deny_unknown_keys(&table, &["path", "title", "description", "ui"]);
    let defaults = OpenApiConfig::default();
    let route = |reader: &mut Reader<'_>, key: &str| {
        let path = reader.string(&table, key)?;
        if path.starts_with('/') && !path.contains(['{', '}', '*', '?', '#']) && !path.chars().any(char::is_whitespace)
        {
            return Some(path);
        }
        let origin = reader.origin_of(&table, key).clone();
        let help = Some(format!("write a literal path that starts with `/`, e.g. `{key} = \"/openapi.json\"`"));
        reader.error(&origin, &join(&table.path, key), format!("`{path}` is not a route path"), help);
        None
    };
    let path = route(reader, "path").unwrap_or(defaults.path);
    let ui = route(reader, "ui");
    if ui.as_deref() == Some(path.as_str()) {
        let origin = reader.origin_of(&table, "ui").clone();
        let help = Some("serve the page elsewhere, e.g. `ui = \"/docs\"`".to_owned());
        reader.error(&origin, &join(&table.path, "ui"), "the page and the description share a path", help);
    }
    Some(OpenApiConfig {
        path,
        title: reader.string(&table, "title"),
        description: reader.string(&table, "description"),
        ui,
    })
}

fn read_nats(reader: &mut Reader<'_>, events: &Table<'_>) -> NatsConfig {
    let defaults = NatsConfig::default();
    let Some(table) = reader.table(events, "nats") else { return defaults };
    reader.deny_unknown_keys(
        &table,
        &["replicas", "storage", "max_age", "credentials", "tls_ca", "tls_client_cert", "tls_client_key"],
    );
    let storage = match reader.choice(&table, "storage", &["file", "memory"]).as_deref() {
        Some("memory") => NatsStorage::Memory,
        _ => NatsStorage::File,
    };
    let (tls_ca, tls_client) = read_broker_tls(reader, &table, "events.nats");
    NatsConfig {
        replicas: reader.integer(&table, "replicas", 1, 5).map_or(defaults.replicas, |replicas| replicas as u32),
        storage,
        max_age: reader.duration(&table, "max_age").unwrap_or(defaults.max_age),
        credentials: reader.string(&table, "credentials"),
        tls_ca,
        tls_client,
    }
}

/// `tls_ca`, `tls_client_cert` and `tls_client_key` of a broker's table (`section` names it in
/// errors): a client certificate comes with its key.
fn read_broker_tls(
    reader: &mut Reader<'_>,
    table: &Table<'_>,
    section: &str,
) -> (Option<String>, Option<(String, String)>) {
    let tls_client = match (reader.string(table, "tls_client_cert"), reader.string(table, "tls_client_key")) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (cert, _) => {
            let (given, missing) = if cert.is_some() { ("cert", "key") } else { ("key", "cert") };
            let origin = reader.origin_of(table, &format!("tls_client_{given}")).clone();
            let help = Some(format!("add `tls_client_{missing} = \"/path/to/client-{missing}.pem\"`"));
            reader.error(
                &origin,
                &format!("{section}.tls_client_{given}"),
                format!("a client {given} without its {missing}"),
                help,
            );
            None
        }
    };
    (reader.string(table, "tls_ca"), tls_client)
}

fn read_rabbitmq(reader: &mut Reader<'_>, events: &Table<'_>) -> RabbitMqConfig {
    let Some(table) = reader.table(events, "rabbitmq") else { return RabbitMqConfig::default() };
    reader.deny_unknown_keys(&table, &["queue_type", "tls_ca", "tls_client_cert", "tls_client_key"]);
    let queue_type = match reader.choice(&table, "queue_type", &["quorum", "classic"]).as_deref() {
        Some("classic") => QueueType::Classic,
        _ => QueueType::Quorum,
    };
    let (tls_ca, tls_client) = read_broker_tls(reader, &table, "events.rabbitmq");
    RabbitMqConfig { queue_type, tls_ca, tls_client }
}

fn read_kafka(reader: &mut Reader<'_>, events: &Table<'_>) -> KafkaConfig {
    let defaults = KafkaConfig::default();
    let Some(table) = reader.table(events, "kafka") else { return defaults };
    reader.deny_unknown_keys(&table, &["partitions", "replication_factor", "properties"]);
    let properties = reader.table(&table, "properties").map_or_else(Vec::new, |properties| {
        let names: Vec<String> = reader.named_entries(&properties).iter().map(|(name, _)| name.clone()).collect();
        names.into_iter().filter_map(|name| Some((name.clone(), reader.scalar_text(&properties, &name)?))).collect()
    });
    // What Marty's delivery guarantees rest on: offsets stored only once settled, an idempotent
    // producer acknowledged by every in-sync replica.
    let reserved = [
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.idempotence",
        "acks",
    ];
    for (name, _) in properties.iter().filter(|(name, _)| reserved.contains(&name.as_str())) {
        let origin = reader.origin_of(&table, "properties").clone();
        let help = Some(
            "Marty sets it: `bootstrap.servers` comes from `[events] url`, the rest from how Marty delivers".to_owned(),
        );
        reader.error(&origin, &format!("events.kafka.properties.{name}"), "Marty sets this property itself", help);
    }
    KafkaConfig {
        partitions: reader.integer(&table, "partitions", 1, 100_000).map_or(defaults.partitions, |n| n as i32),
        replication_factor: reader
            .integer(&table, "replication_factor", 1, i64::from(i16::MAX))
            .map_or(defaults.replication_factor, |n| n as i32),
        properties,
    }
}

fn read_storage(reader: &mut Reader<'_>, root: &Table<'_>) -> StorageConfig {
    let defaults = StorageConfig::default();
    let Some(table) = reader.table(root, "storage") else { return defaults };
    reader.deny_unknown_keys(&table, &["migrate", "inbox_retention", "saga_retention"]);
    let mut retention = |key: &str, default: Duration| match reader.duration(&table, key) {
        Some(duration) if duration < Duration::from_secs(1) => {
            let origin = reader.origin_of(&table, key).clone();
            let help =
                Some(format!("keep them at least a second, e.g. `{key} = \"{}\"`", crate::format_duration(default)));
            reader.error(&origin, &join("storage", key), "must be at least one second", help);
            default
        }
        Some(duration) => duration,
        None => default,
    };
    let inbox_retention = retention("inbox_retention", defaults.inbox_retention);
    let saga_retention = retention("saga_retention", defaults.saga_retention);
    StorageConfig {
        migrate: reader.boolean(&table, "migrate").unwrap_or(defaults.migrate),
        inbox_retention,
        saga_retention,
    }
}

fn read_sagas(
    reader: &mut Reader<'_>,
    root: &Table<'_>,
    dependencies: &BTreeMap<String, DependencyConfig>,
) -> SagasConfig {
    // The longest time a breaker stays open: compensations must be retried for longer than that.
    let longest_open = dependencies
        .iter()
        .filter(|(_, dependency)| dependency.circuit_breaker.enabled)
        .map(|(name, dependency)| (name.as_str(), dependency.circuit_breaker.open_for))
        .max_by_key(|(_, open_for)| *open_for);
    let mut defaults = SagasConfig::default();
    if let Some((_, open_for)) = longest_open {
        defaults.compensation_deadline = defaults.compensation_deadline.max(open_for.saturating_mul(2));
    }
    let Some(table) = reader.table(root, "sagas") else { return defaults };
    reader.deny_unknown_keys(&table, SAGAS_KEYS);
    let positive = |reader: &mut Reader<'_>, key: &str, default: Duration| match reader.duration(&table, key) {
        Some(duration) if duration.is_zero() => {
            let origin = reader.origin_of(&table, key).clone();
            let help =
                Some(format!("give `{key}` a positive duration, e.g. `\"{}\"`", crate::format_duration(default)));
            reader.error(&origin, &join("sagas", key), "must be longer than zero", help);
            default
        }
        Some(duration) => duration,
        None => default,
    };
    let lease = positive(reader, "lease", defaults.lease);
    let poll_interval = positive(reader, "poll_interval", defaults.poll_interval);
    let backoff_initial = positive(reader, "backoff_initial", defaults.backoff_initial);
    let backoff_max = positive(reader, "backoff_max", defaults.backoff_max);
    let compensation_attempts = reader
        .integer(&table, "compensation_attempts", 1, 1_000_000)
        .map_or(defaults.compensation_attempts, |attempts| attempts as u32);
    let compensation_deadline = positive(reader, "compensation_deadline", defaults.compensation_deadline);
    if let Some((name, open_for)) = longest_open.filter(|(_, open_for)| compensation_deadline <= *open_for) {
        if reader.has(&table, "compensation_deadline") {
            let origin = reader.origin_of(&table, "compensation_deadline").clone();
            let problem = format!(
                "is not longer than `{name}`'s circuit breaker `open_for` ({}): a compensation would be parked \
                 while the breaker still turns its calls away",
                crate::format_duration(open_for)
            );
            let help = Some(format!(
                "make it longer than every `open_for`, e.g. `compensation_deadline = \"{}\"`",
                crate::format_duration(open_for.saturating_mul(2))
            ));
            reader.error(&origin, "sagas.compensation_deadline", problem, help);
        }
    }
    let replica = reader.string(&table, "replica");
    if let Some(name) = replica.as_deref().filter(|name| !is_replica_name(name)) {
        let origin = reader.origin_of(&table, "replica").clone();
        let problem = format!("`{name}` is not a replica name");
        let help = Some(
            "use 1 to 253 letters, digits, `-`, `.` or `_`, unique per replica (a pod name fits), e.g. `replica = \"orders-0\"`"
                .to_owned(),
        );
        reader.error(&origin, "sagas.replica", problem, help);
    }
    SagasConfig {
        lease,
        poll_interval,
        compensation_attempts,
        compensation_deadline,
        replica,
        backoff_initial,
        backoff_max,
    }
}

/// A replica name as the saga table's `owner` column holds it: what a hostname or pod name is made of.
pub fn is_replica_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_'))
}

fn read_listener(reader: &mut Reader<'_>, root: &Table<'_>, section: &str) -> Option<ListenerConfig> {
    let table = reader.table(root, section)?;
    reader.deny_unknown_keys(&table, &["addr"]);
    Some(ListenerConfig { addr: read_addr(reader, &table)? })
}

fn read_addr(reader: &mut Reader<'_>, table: &Table<'_>) -> Option<SocketAddr> {
    let text = reader.string(table, "addr")?;
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            let origin = reader.origin_of(table, "addr").clone();
            let help = Some("write an IP address and port, e.g. `addr = \"127.0.0.1:8080\"`".to_owned());
            reader.error(&origin, &join(&table.path, "addr"), format!("invalid socket address `{text}`"), help);
            None
        }
    }
}

fn read_http(reader: &mut Reader<'_>, root: &Table<'_>) -> HttpConfig {
    let defaults = HttpConfig::default();
    let Some(table) = reader.table(root, "http") else { return defaults };
    reader.deny_unknown_keys(&table, HTTP_KEYS);
    let limit = |reader: &mut Reader<'_>, key, min, max, default: usize| {
        reader.integer(&table, key, min, max).map_or(default, |value| value as usize)
    };
    HttpConfig {
        addr: read_addr(reader, &table).unwrap_or(defaults.addr),
        header_read_timeout: positive_duration(reader, &table, "header_read_timeout")
            .unwrap_or(defaults.header_read_timeout),
        body_timeout: positive_duration(reader, &table, "body_timeout").unwrap_or(defaults.body_timeout),
        idle_timeout: positive_duration(reader, &table, "idle_timeout").unwrap_or(defaults.idle_timeout),
        max_connections: reader.integer(&table, "max_connections", 1, 10_000_000).map(|value| value as usize),
        max_body_bytes: limit(reader, "max_body_bytes", 0, 1 << 40, defaults.max_body_bytes),
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: limit(reader, "max_header_bytes", 8192, 1 << 20, defaults.max_header_bytes),
        security_headers: reader.boolean(&table, "security_headers").unwrap_or(defaults.security_headers),
        tls: read_tls(reader, &table),
    }
}

fn read_dependency(reader: &mut Reader<'_>, table: &Table<'_>, name: &str) -> Option<DependencyConfig> {
    reader.deny_unknown_keys(table, DEPENDENCY_KEYS);
    let Some(kind_name) = reader.choice(table, "kind", KIND_NAMES) else {
        if !reader.has(table, "kind") {
            let origin = reader.origin_of(table, "kind").clone();
            let help =
                Some(format!("add `kind = \"database\"` (or `\"api\"`, `\"cache\"`) under `[dependencies.{name}]`"));
            reader.error(&origin, &join(&table.path, "kind"), "missing key", help);
        }
        return None;
    };
    let kind = DependencyKind::from_name(&kind_name).expect("choice() only returns listed kinds");
    let mut config = DependencyConfig::with_defaults(name, kind);
    config.url = reader.string(table, "url");
    if let Some(n) = reader.integer(table, "max_concurrent", 1, 1_000_000) {
        config.max_concurrent = n as usize;
        config.max_concurrent_unset = false;
    }
    if let Some(timeout) = positive_duration(reader, table, "timeout") {
        config.timeout = timeout;
        config.circuit_breaker.slow_call_duration = timeout;
    }
    config.max_wait = reader.duration(table, "max_wait").unwrap_or(config.timeout / 4);
    match reader.table_or_switch(table, "circuit_breaker") {
        Some(Ok(breaker)) => read_breaker(reader, &breaker, &mut config.circuit_breaker),
        Some(Err(enabled)) => config.circuit_breaker.enabled = enabled,
        None => {}
    }
    match reader.table_or_switch(table, "retry") {
        Some(Ok(retry)) => read_retry(reader, &retry, &mut config.retry),
        // `retry = false` is one attempt; `true` keeps the kind's defaults.
        Some(Err(false)) => config.retry.max_attempts = 1,
        Some(Err(true)) | None => {}
    }
    if let Some(readiness) = reader.choice(table, "readiness", &["reported", "required"]) {
        config.readiness =
            if readiness == "required" { DependencyReadiness::Required } else { DependencyReadiness::Reported };
    }
    config.fault = reader.table(table, "fault").map(|fault| read_fault(reader, &fault));
    Some(config)
}

fn read_breaker(reader: &mut Reader<'_>, table: &Table<'_>, breaker: &mut CircuitBreakerConfig) {
    reader.deny_unknown_keys(table, BREAKER_KEYS);
    if let Some(enabled) = reader.boolean(table, "enabled") {
        breaker.enabled = enabled;
    }
    if let Some(rate) = reader.rate(table, "failure_rate", false) {
        breaker.failure_rate = rate;
    }
    if let Some(rate) = reader.rate(table, "slow_call_rate", false) {
        breaker.slow_call_rate = rate;
    }
    if let Some(duration) = positive_duration(reader, table, "slow_call_duration") {
        breaker.slow_call_duration = duration;
    }
    if let Some(window) = reader.integer(table, "window", 1, 100_000) {
        breaker.window = window as u32;
    }
    if let Some(min_calls) = reader.integer(table, "min_calls", 1, 100_000) {
        breaker.min_calls = min_calls as u32;
    }
    if let Some(open_for) = positive_duration(reader, table, "open_for") {
        breaker.open_for = open_for;
    }
    if let Some(calls) = reader.integer(table, "half_open_calls", 1, 10_000) {
        breaker.half_open_calls = calls as u32;
    }
    // A breaker that needs more calls than its window holds can never open: say so rather than
    // ship a breaker that is "enabled" and inert.
    if breaker.min_calls > breaker.window {
        let origin = reader.origin_of(table, "min_calls").clone();
        let problem = format!(
            "`min_calls` ({}) is larger than `window` ({}), so the breaker could never open",
            breaker.min_calls, breaker.window
        );
        let help = Some(format!("lower `min_calls` to at most {} or raise `window`", breaker.window));
        reader.error(&origin, &join(&table.path, "min_calls"), problem, help);
    }
}

fn read_retry(reader: &mut Reader<'_>, table: &Table<'_>, retry: &mut RetryConfig) {
    reader.deny_unknown_keys(table, RETRY_KEYS);
    if let Some(attempts) = reader.integer(table, "max_attempts", 1, 100) {
        retry.max_attempts = attempts as u32;
    }
    if let Some(backoff) = reader.choice(table, "backoff", &["exponential", "fixed"]) {
        retry.backoff = if backoff == "fixed" { Backoff::Fixed } else { Backoff::Exponential };
    }
    if let Some(initial) = reader.duration(table, "initial") {
        retry.initial = initial;
    }
    if let Some(max) = reader.duration(table, "max") {
        retry.max = max;
    }
    if let Some(jitter) = reader.boolean(table, "jitter") {
        retry.jitter = jitter;
    }
    if let Some(budget) = reader.rate(table, "budget", true) {
        retry.budget = budget;
    }
    if retry.initial > retry.max {
        let origin = reader.origin_of(table, "initial").clone();
        let problem = "`initial` backoff is longer than `max`, the cap".to_owned();
        let help = Some("make `initial` at most `max`, e.g. `initial = \"50ms\", max = \"2s\"`".to_owned());
        reader.error(&origin, &join(&table.path, "initial"), problem, help);
    }
}

fn positive_duration(reader: &mut Reader<'_>, table: &Table<'_>, key: &str) -> Option<Duration> {
    let duration = reader.duration(table, key)?;
    if duration.is_zero() {
        let origin = reader.origin_of(table, key).clone();
        let help = Some(format!("give `{key}` a positive duration, e.g. `\"10s\"`"));
        reader.error(&origin, &join(&table.path, key), "the duration must be greater than zero", help);
        return None;
    }
    Some(duration)
}

fn check_outbox_store(
    reader: &mut Reader<'_>,
    table: &Table<'_>,
    store: &str,
    dependencies: &BTreeMap<String, DependencyConfig>,
) {
    let origin = reader.origin_of(table, "store").clone();
    match dependencies.get(store) {
        Some(dependency) if dependency.kind == DependencyKind::Database => {}
        Some(dependency) => {
            let problem = format!("`{store}` is a `{}` dependency; the outbox lives in a database", dependency.kind);
            let databases = databases(dependencies);
            let help =
                Some(format!("name a dependency with `kind = \"database\"`; declared: {}", suggest::list(databases)));
            reader.error(&origin, "outbox.store", problem, help);
        }
        None => {
            let databases: Vec<&str> = databases(dependencies).collect();
            let help = match suggest::nearest(store, databases.iter().copied()) {
                Some(near) => format!(
                    "did you mean `{near}`? database dependencies: {}",
                    suggest::list(databases.iter().copied())
                ),
                None => format!("declare `[dependencies.{store}]` with `kind = \"database\"`"),
            };
            reader.error(&origin, "outbox.store", format!("unknown dependency `{store}`"), Some(help));
        }
    }
}

fn databases(dependencies: &BTreeMap<String, DependencyConfig>) -> impl Iterator<Item = &str> {
    dependencies.values().filter(|d| d.kind == DependencyKind::Database).map(|d| d.name.as_str())
}

//! The `marty.toml` schema, its parsing and its validation.
//!
//! This crate is shared by `marty-macros` (which reads the file when your code compiles) and `marty`
//! (which reads it again at startup), so a configuration that compiles is a configuration that starts.
//! Every error names the file, the line (or the overriding environment variable) and the key, says
//! what is wrong and how to fix it, and validation reports every error, not just the first:
//!
//! ```text
//! marty.toml:12: key `dependencies.orders_db.max_concurent`: unknown key
//!   help: did you mean `max_concurrent`? valid keys here: `kind`, `url`, `max_concurrent`, ...
//! ```
//!
//! # Where the file is found
//!
//! `marty.toml` sits beside `Cargo.toml` (or `config = ".."` on the attribute, relative to
//! `Cargo.toml`, or `MARTY_CONFIG`). The macros check it as written; at startup the runtime reads it
//! again, from `MARTY_CONFIG`, else the path it was compiled against, else the text embedded at
//! compile time. **`MARTY_CONFIG` is the same path when compiling and when running**: an absolute
//! path, or one relative to the working directory. Cargo compiles in the workspace root (the package
//! root outside a workspace), which is where `cargo run` starts from that directory too; changing
//! `MARTY_CONFIG` rebuilds the crate. In a container, give an absolute path.
//!
//! Once logging is up, a service logs `configuration loaded` with `config.file` (the absolute path,
//! or the compiled-in text), `config.found` (`named by MARTY_CONFIG`, `the file checked at compile
//! time`, or `compiled in`) and `config.overrides` (the names of the `MARTY__` variables, never
//! their values).
//!
//! # At startup only: the environment
//!
//! - **Overrides** for any key: `MARTY__DEPENDENCIES__ORDERS_DB__MAX_CONCURRENT=20` (double
//!   underscores separate keys; values are read as TOML when they parse, as strings otherwise).
//! - **`${VAR}` expansion** in strings (`$$` for a literal `$`); an unset variable is an error, unless
//!   the value gives a default: `url = "${DATABASE_URL:-sqlite://orders.db?mode=rwc}"` (the default
//!   also stands in for an empty variable, as in a shell). When compiling, a duration made of
//!   variables with defaults is checked with its defaults.
//!
//! # The service's own settings
//!
//! `[app]` is free-form, and read into the service's serde type at startup ([`AppSettings::get`])
//! with the same errors as Marty's keys, overrides (`MARTY__APP__MAX_QUANTITY=50`) and expansion
//! included. A missing `[app]` reads as an empty table; the macros check only that it is a table.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct OrderLimits {
//!     max_quantity: i64,
//! }
//!
//! let config = marty_config::Config::parse("[app]\nmax_quantity = \"many\"\n", "marty.toml").unwrap();
//! let error = config.app.get::<OrderLimits>().err().unwrap().to_string();
//! assert!(error.starts_with("marty.toml:2: key `app.max_quantity`: invalid type: string \"many\", expected i64"), "{error}");
//! ```
//!
//! In a service, `registry.config().app.get::<OrderLimits>()?` inside
//! `marty::service::server_with(|registry| async move { .. })`.
//!
//! # Dependencies
//!
//! | key under `[dependencies.<name>]` | default (database / api / cache) |
//! |---|---|
//! | `kind` | required: `"database"`, `"api"` or `"cache"` |
//! | `url` | none; never printed by `Debug` |
//! | `max_concurrent` | the registered pool's size, else 10 / 100 / 100 |
//! | `max_wait` | a quarter of `timeout` |
//! | `timeout` | `"10s"` / `"15s"` / `"2s"` |
//! | `circuit_breaker` | `enabled = true, failure_rate = 0.5, slow_call_rate = 1.0, slow_call_duration = <timeout>, window = 100, min_calls = 20, open_for = "30s", half_open_calls = 3`; `false` turns it off |
//! | `retry` | `max_attempts = 3, backoff = "exponential", initial = "50ms", max = "2s", jitter = true, budget = 0.2`; `false` is one attempt |
//! | `readiness` | `"reported"` (shown in `/readyz`, never makes the service unready) or `"required"` |
//!
//! Durations are one whole number and a unit: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`. The other
//! tables, `[service]`, `[http]`, `[grpc]`, `[management]`, `[telemetry]`, `[events]`, `[outbox]`,
//! `[storage]`, `[sagas]` and `[openapi]`, are validated the same way; [`Config`]'s fields document each key.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod api_keys;
mod app;
mod duration;
mod error;
mod rate_limit;
mod read;
mod schema;
mod security;
pub mod suggest;
mod tls;
mod tree;

use std::path::Path;

pub use api_keys::{parse_api_keys, ApiKeyEntry};
pub use app::AppSettings;
pub use duration::{format_duration, parse_duration, DurationError, DURATION_HELP};
pub use error::{ConfigError, ConfigErrors, Origin};
pub use rate_limit::{ClientIpHeader, IpRange, Limit, LimitKey, RateLimitConfig, RouteLimit};
pub use schema::{
    is_replica_name, Backoff, Broker, CircuitBreakerConfig, Config, DependencyConfig, DependencyKind,
    DependencyReadiness, EventsConfig, FaultConfig, FaultsConfig, HttpConfig, KafkaConfig, ListenerConfig, LogFormat,
    NatsConfig, NatsStorage, OpenApiConfig, OutboxConfig, QueueType, RabbitMqConfig, RetryConfig, SagasConfig,
    ServiceConfig, StorageConfig, TelemetryConfig, MIN_FAULTS_TOKEN_LEN,
};
pub use security::{
    Access, ApiKeysConfig, ApiKeysSource, ClientCredentialsConfig, CorsConfig, GrpcMethodAccess, JwtConfig, KeySource,
    MtlsConfig, SecurityConfig, JWT_ALGORITHMS,
};
pub use tls::{ClientAuth, TlsConfig};
pub use tree::ENV_PREFIX;

/// The file name Marty looks for beside `Cargo.toml` (at compile time) or in the working directory.
pub const DEFAULT_FILE: &str = "marty.toml";

/// The environment variable that points the runtime at a configuration file.
pub const CONFIG_PATH_VAR: &str = "MARTY_CONFIG";

/// A snapshot of the environment variables that matter at startup, so loading is testable without
/// touching the process environment.
#[derive(Clone, Default)]
pub struct Environment {
    vars: Vec<(String, String)>,
}

impl std::fmt::Debug for Environment {
    // Values may be secrets: show names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.vars.iter().map(|(name, _)| name)).finish()
    }
}

impl Environment {
    /// The current process environment (variables that are not valid UTF-8 are skipped).
    pub fn from_process() -> Self {
        Environment {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// Exactly these variables; for tests and embedding.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Environment { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The names of the variables, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|(name, _)| name.as_str())
    }

    /// The value of one variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Config {
    /// Checks `text` exactly as written, as the macros do at compile time: no overrides, no `${VAR}` expansion.
    /// `file` is how errors name the source.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let root = tree::parse_toml(text, file).map_err(|error| ConfigErrors(vec![error]))?;
        finish(&root, file, None, Vec::new())
    }

    /// Reads `text` as the runtime does at startup: `MARTY__...` overrides from `env` are applied and
    /// `${VAR}` expands from `env`; the result is validated by the same rules as [`Config::parse`].
    pub fn parse_at_startup(text: &str, file: &str, env: &Environment) -> Result<Config, ConfigErrors> {
        let mut root = tree::parse_toml(text, file).map_err(|error| ConfigErrors(vec![error]))?;
        let override_errors = tree::apply_env_overrides(&mut root, &env.vars, file);
        let lookup = |name: &str| env.get(name).map(str::to_owned);
        finish(&root, file, Some(&lookup), override_errors)
    }

    /// Reads a file at startup, with the process environment; see [`Config::parse_at_startup`].
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                origin: Origin::Missing,
                key: String::new(),
                problem: format!("cannot read the configuration file: {error}"),
                help: Some(format!("create it, or point `{CONFIG_PATH_VAR}` at the service's configuration")),
            }])
        })?;
        Config::parse_at_startup(&text, &file, &Environment::from_process())
    }

    /// The dependency declared under `[dependencies.<name>]`.
    pub fn dependency(&self, name: &str) -> Option<&DependencyConfig> {
        self.dependencies.get(name)
    }
}

fn finish(
    root: &tree::Node,
    file: &str,
    expand: read::Expand<'_>,
    mut errors: Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    let mut reader = read::Reader::new(file, expand);
    let table = reader.root(root);
    let config = schema::read_config(&mut reader, &table, file);
    errors.append(&mut reader.errors);
    // Report in reading order: file lines top to bottom, then overriding variables by name.
    errors.sort_by(|a, b| origin_order(&a.origin).cmp(&origin_order(&b.origin)));
    ConfigErrors::from_found(errors).map(|()| config)
}

fn origin_order(origin: &Origin) -> (u8, usize, &str) {
    match origin {
        Origin::Line(line) => (0, *line, ""),
        Origin::EnvVar(var) => (1, 0, var),
        Origin::Missing => (2, 0, ""),
    }
}

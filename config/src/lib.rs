//! The `marty.toml` schema, its parsing and its validation.
//!
//! This crate is shared by `marty-macros` (which reads the file when your code compiles) and `marty`
//! (which reads it again at startup), so a configuration that compiles is a configuration that starts.
//! The two differ in one way only: at startup, `MARTY__...` environment variables override keys and
//! `${VAR}` (or `${VAR:-default}`) in strings expands from the environment; when compiling, the file
//! is checked as written. `[app]` holds the application's own settings, read into its serde type at
//! startup ([`AppSettings::get`]).
//!
//! Every error names the file, the line (or the overriding environment variable) and the key, says
//! what is wrong and how to fix it, and validation reports every error, not just the first.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod app;
mod duration;
mod error;
mod read;
mod schema;
pub mod suggest;
mod tree;

use std::path::Path;

pub use app::AppSettings;
pub use duration::{format_duration, parse_duration, DurationError, DURATION_HELP};
pub use error::{ConfigError, ConfigErrors, Origin};
pub use schema::{
    is_replica_name, Backoff, Broker, CircuitBreakerConfig, Config, DependencyConfig, DependencyKind,
    DependencyReadiness, EventsConfig, HttpConfig, KafkaConfig, ListenerConfig, LogFormat, NatsConfig, NatsStorage,
    OutboxConfig, QueueType, RabbitMqConfig, RetryConfig, SagasConfig, ServiceConfig, StorageConfig, TelemetryConfig,
};
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
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn origin_order(origin: &Origin) -> (u8, usize, &str) {
    match origin {
        Origin::Line(line) => (0, *line, ""),
        Origin::EnvVar(var) => (1, 0, var),
        Origin::Missing => (2, 0, ""),
    }
}

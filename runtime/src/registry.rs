//! [`DependencyRegistry`]: one shared policy per dependency named in `marty.toml`, and the metrics
//! they record into. The macros resolve a call site's policy from it once, then keep it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use marty_config::{Config, ConfigError, ConfigErrors, DependencyKind, Origin};

use crate::error::Error;
use crate::metrics::{Buckets, Metrics};
use crate::policy::{CallPolicy, Dependency};
use crate::runtime::Runtime;

/// The dependencies of one service, built from its configuration.
#[derive(Debug)]
pub struct DependencyRegistry {
    config: RwLock<Arc<Config>>,
    /// The file the configuration came from, re-read by [`Self::reload_from_source`].
    source: Option<PathBuf>,
    /// How the configuration was found and which `MARTY__` variables overrode it, for the startup log.
    provenance: Box<Provenance>,
    dependencies: HashMap<String, Arc<Dependency>>,
    metrics: Arc<Metrics>,
}

/// How a configuration was found, and what overrode it.
#[derive(Debug, Default)]
struct Provenance {
    found: &'static str,
    overrides: Vec<String>,
}

impl Provenance {
    fn of(env: &marty_config::Environment, found: &'static str) -> Self {
        let mut overrides: Vec<String> =
            env.names().filter(|name| name.starts_with(marty_config::ENV_PREFIX)).map(str::to_owned).collect();
        overrides.sort();
        Provenance { found, overrides }
    }
}

impl DependencyRegistry {
    /// Builds every `[dependencies.<name>]` of `config`, recording into a new [`Metrics`].
    pub fn from_config(config: Config) -> Self {
        crate::timeout::calibrate_counter_in_background();
        let buckets = config.telemetry.histogram_buckets.as_deref().map(Buckets::from_seconds).unwrap_or_default();
        let metrics = Arc::new(Metrics::with_buckets(buckets));
        let dependencies = config
            .dependencies
            .values()
            .map(|dependency_config| {
                let dependency = Arc::new(Dependency::new(dependency_config.clone()));
                metrics.watch_policies(dependency.name().clone(), dependency.circuit_breaker(), dependency.bulkhead());
                #[cfg(feature = "faults")]
                {
                    dependency.faults().count_into(metrics.fault_metrics(dependency.name()));
                    dependency.faults().configure(config.faults.enabled, dependency_config.fault.as_ref());
                }
                (dependency_config.name.clone(), dependency)
            })
            .collect();
        let provenance = Box::new(Provenance {
            found: "given by the service (`DependencyRegistry::from_config`)",
            overrides: Vec::new(),
        });
        DependencyRegistry { config: RwLock::new(Arc::new(config)), source: None, provenance, dependencies, metrics }
    }

    /// Loads a configuration file as at startup (with `MARTY__` overrides and `${VAR}` expansion); the
    /// registry can re-read it later with [`Self::reload_from_source`].
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let mut registry = Config::load(path).map(Self::from_config)?;
        registry.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_owned()));
        registry.provenance =
            Box::new(Provenance::of(&marty_config::Environment::from_process(), "loaded by the service"));
        Ok(registry)
    }

    /// Logs where the configuration came from: the file (as an absolute path) and how it was chosen,
    /// or the text compiled in, and the names of the `MARTY__` variables that overrode it (not their
    /// values: they may be secrets). The servers call it once logging is up.
    pub fn log_provenance(&self) {
        let Provenance { found, overrides } = &*self.provenance;
        let overrides = overrides.join(", ");
        match &self.source {
            Some(path) => {
                tracing::info!(config.file = %path.display(), config.found = found, config.overrides = %overrides, "configuration loaded")
            }
            None => tracing::info!(
                config.file = %self.config().file,
                config.found = found,
                config.overrides = %overrides,
                "configuration loaded, not from a file",
            ),
        }
    }

    /// The configuration in force (the latest one reloaded).
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// The file the configuration was loaded from, if it came from one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Applies a new configuration to the running dependencies: bulkhead sizes, timeouts, breaker
    /// thresholds and retry take effect for the next call, and calls in flight finish undisturbed.
    /// Returns what could not be applied without a restart (new or removed dependencies, a changed
    /// kind, `[service]`, `[http]` and other settings read once at startup).
    pub fn reload(&self, config: Config) -> Vec<String> {
        let mut needs_restart = Vec::new();
        for (name, dependency_config) in &config.dependencies {
            match self.dependencies.get(name) {
                Some(dependency) => {
                    if let Err(why) = dependency.reconfigure(dependency_config.clone()) {
                        needs_restart.push(why);
                    }
                    #[cfg(feature = "faults")]
                    dependency.faults().configure(config.faults.enabled, dependency_config.fault.as_ref());
                }
                None => needs_restart.push(format!("new dependency `{name}` is used after a restart")),
            }
        }
        for name in self.dependencies.keys().filter(|name| !config.dependencies.contains_key(*name)) {
            needs_restart.push(format!("dependency `{name}` was removed; it keeps its old settings until a restart"));
        }
        let previous = self.config();
        if previous.service != config.service
            || previous.http != config.http
            || previous.telemetry != config.telemetry
            || previous.security != config.security
            || previous.rate_limit != config.rate_limit
        {
            needs_restart.push(
                "[service], [http], [telemetry], [security] and [rate_limit] changes apply after a restart".to_owned(),
            );
        }
        if previous.faults.token != config.faults.token {
            needs_restart
                .push("[faults] token (whether the fault endpoint is served) applies after a restart".to_owned());
        }
        *self.config.write().unwrap_or_else(|poison| poison.into_inner()) = Arc::new(config);
        for warning in &needs_restart {
            tracing::warn!(%warning, "configuration reload");
        }
        tracing::info!("configuration reloaded");
        needs_restart
    }

    /// Re-reads the file the configuration came from (with the process environment) and applies it.
    /// An invalid file changes nothing and says why.
    pub fn reload_from_source(&self) -> Result<Vec<String>, ConfigErrors> {
        let Some(path) = &self.source else {
            return Err(ConfigErrors(vec![ConfigError {
                file: self.config().file.clone(),
                origin: Origin::Missing,
                key: String::new(),
                problem: "the configuration was compiled in, so there is no file to reload".to_owned(),
                help: Some(format!(
                    "point `{}` at a file to make the configuration reloadable",
                    marty_config::CONFIG_PATH_VAR
                )),
            }]));
        };
        let config = Config::load(path)?;
        Ok(self.reload(config))
    }

    /// The metrics every policy of this registry records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shared state of one dependency.
    pub fn dependency(&self, name: &str) -> Option<&Arc<Dependency>> {
        self.dependencies.get(name)
    }

    /// A call site's policy for `operation` on `dependency`, with the dependency's own timeout and retry.
    pub fn call_policy(&self, dependency: &str, operation: &str) -> Result<CallPolicy, Error> {
        let shared = self.dependency(dependency).ok_or_else(|| self.unknown_dependency(dependency))?;
        Ok(CallPolicy::new(shared.clone(), operation, &self.metrics))
    }

    /// Like [`Self::call_policy`], and checks the dependency is of `kind` (the attribute's).
    pub fn call_policy_of_kind(
        &self,
        dependency: &str,
        kind: DependencyKind,
        operation: &str,
    ) -> Result<CallPolicy, Error> {
        let policy = self.call_policy(dependency, operation)?;
        let declared = policy.dependency().kind();
        if declared != kind {
            return Err(self.config_error(
                format!("dependencies.{dependency}.kind"),
                format!("`{dependency}` is a `{declared}` dependency but is called through `#[{}]`", kind.attribute()),
                format!("set `kind = \"{kind}\"`, or call it through `#[{}]`", declared.attribute()),
            ));
        }
        Ok(policy)
    }

    /// Makes this registry the global runtime's ([`Runtime::global`]), the one the macros use. Call it
    /// at startup, before the first wrapped call; `Err` gives the registry back when one is already
    /// in place.
    pub fn install_global(self) -> Result<&'static DependencyRegistry, DependencyRegistry> {
        Runtime::global().install(self).map(|registry| &**registry)
    }

    /// The global runtime's registry, the one the macros use, if one is installed (or was loaded by
    /// a first wrapped call).
    pub fn global() -> Option<&'static DependencyRegistry> {
        Runtime::global().registry().map(|registry| &**registry)
    }

    /// The global runtime's registry, loading it on first use (see [`Runtime::registry_or_load`]).
    pub(crate) fn global_or_load(compiled_path: &str, embedded: &str) -> Result<&'static DependencyRegistry, Error> {
        Runtime::global().registry_or_load(compiled_path, embedded).map(|registry| &**registry)
    }

    /// Loads the configuration as a service starts: from the file `MARTY_CONFIG` names, else from
    /// `compiled_path` (the file the macros checked) if it exists, else from `embedded` (its text at
    /// compile time), always with `MARTY__` overrides and `${VAR}` expansion from the environment.
    pub(crate) fn load_for_startup(compiled_path: &str, embedded: &str) -> Result<Self, ConfigErrors> {
        let env = marty_config::Environment::from_process();
        let (loaded, found) = match env.get(marty_config::CONFIG_PATH_VAR) {
            Some(path) => (Self::load(Path::new(path)), "named by MARTY_CONFIG"),
            None if Path::new(compiled_path).exists() => {
                (Self::load(Path::new(compiled_path)), "the file checked at compile time")
            }
            None => (
                Config::parse_at_startup(embedded, compiled_path, &env).map(Self::from_config),
                "compiled in: the file checked at compile time is not on this machine",
            ),
        };
        let mut registry = loaded?;
        registry.provenance = Box::new(Provenance::of(&env, found));
        Ok(registry)
    }

    fn unknown_dependency(&self, name: &str) -> Error {
        let declared: Vec<&str> = self.dependencies.keys().map(String::as_str).collect();
        let help = match marty_config::suggest::nearest(name, declared.iter().copied()) {
            Some(near) => {
                format!("did you mean `{near}`? declared: {}", marty_config::suggest::list(declared.iter().copied()))
            }
            None => format!("declare `[dependencies.{name}]` in {}", self.config().file),
        };
        self.config_error(format!("dependencies.{name}"), format!("unknown dependency `{name}`"), help)
    }

    fn config_error(&self, key: String, problem: String, help: String) -> Error {
        Error::Config(Arc::new(ConfigErrors(vec![ConfigError {
            file: self.config().file.clone(),
            origin: Origin::Missing,
            key,
            problem,
            help: Some(help),
        }])))
    }
}

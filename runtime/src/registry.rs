//! [`DependencyRegistry`]: one shared policy per dependency named in `marty.toml`, and the metrics
//! they record into. The macros resolve a call site's policy from it once, then keep it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use marty_config::{Config, ConfigError, ConfigErrors, DependencyKind, Origin};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::policy::{CallPolicy, Dependency};

/// The dependencies of one service, built from its configuration.
#[derive(Debug)]
pub struct DependencyRegistry {
    config: Arc<Config>,
    dependencies: HashMap<String, Arc<Dependency>>,
    metrics: Arc<Metrics>,
}

static GLOBAL: OnceLock<Result<DependencyRegistry, Error>> = OnceLock::new();

impl DependencyRegistry {
    /// Builds every `[dependencies.<name>]` of `config`, recording into a new [`Metrics`].
    pub fn from_config(config: Config) -> Self {
        let metrics = Arc::new(Metrics::new());
        let dependencies = config
            .dependencies
            .values()
            .map(|dependency_config| {
                let dependency = Arc::new(Dependency::new(dependency_config.clone()));
                metrics.watch_policies(dependency.name().clone(), dependency.circuit_breaker(), dependency.bulkhead());
                (dependency_config.name.clone(), dependency)
            })
            .collect();
        DependencyRegistry { config: Arc::new(config), dependencies, metrics }
    }

    /// Loads a configuration file as at startup (with `MARTY__` overrides and `${VAR}` expansion).
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Config::load(path).map(Self::from_config)
    }

    /// The configuration the registry was built from.
    pub fn config(&self) -> &Config {
        &self.config
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
        let declared = policy.dependency().config().kind;
        if declared != kind {
            return Err(self.config_error(
                format!("dependencies.{dependency}.kind"),
                format!("`{dependency}` is a `{declared}` dependency but is called through `#[{}]`", kind.attribute()),
                format!("set `kind = \"{kind}\"`, or call it through `#[{}]`", declared.attribute()),
            ));
        }
        Ok(policy)
    }

    /// Makes this registry the one the macros use. Call it at startup, before the first wrapped call;
    /// `Err` gives the registry back when one is already in place.
    pub fn install_global(self) -> Result<&'static DependencyRegistry, DependencyRegistry> {
        let mut candidate = Some(self);
        let installed = GLOBAL.get_or_init(|| Ok(candidate.take().expect("runs at most once")));
        match (candidate, installed) {
            (None, Ok(registry)) => Ok(registry),
            (Some(rejected), _) => Err(rejected),
            (None, Err(_)) => unreachable!("this call just installed an Ok registry"),
        }
    }

    /// The registry the macros use, if one is installed (or was loaded by a first wrapped call).
    pub fn global() -> Option<&'static DependencyRegistry> {
        GLOBAL.get().and_then(|registry| registry.as_ref().ok())
    }

    /// The global registry, loading it on first use: from the file `MARTY_CONFIG` names, else from
    /// `compiled_path` (the file the macros checked) if it exists, else from `embedded` (its text at
    /// compile time), always with `MARTY__` overrides and `${VAR}` expansion from the environment.
    pub(crate) fn global_or_load(compiled_path: &str, embedded: &str) -> Result<&'static DependencyRegistry, Error> {
        GLOBAL
            .get_or_init(|| {
                let env = marty_config::Environment::from_process();
                let loaded = match env.get(marty_config::CONFIG_PATH_VAR) {
                    Some(path) => Config::load(Path::new(path)),
                    None if Path::new(compiled_path).exists() => Config::load(Path::new(compiled_path)),
                    None => Config::parse_at_startup(embedded, compiled_path, &env),
                };
                loaded.map(Self::from_config).map_err(|errors| {
                    tracing::error!(%errors, "invalid Marty configuration; wrapped calls will fail until it is fixed");
                    Error::Config(Arc::new(errors))
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn unknown_dependency(&self, name: &str) -> Error {
        let declared: Vec<&str> = self.dependencies.keys().map(String::as_str).collect();
        let help = match marty_config::suggest::nearest(name, declared.iter().copied()) {
            Some(near) => {
                format!("did you mean `{near}`? declared: {}", marty_config::suggest::list(declared.iter().copied()))
            }
            None => format!("declare `[dependencies.{name}]` in {}", self.config.file),
        };
        self.config_error(format!("dependencies.{name}"), format!("unknown dependency `{name}`"), help)
    }

    fn config_error(&self, key: String, problem: String, help: String) -> Error {
        Error::Config(Arc::new(ConfigErrors(vec![ConfigError {
            file: self.config.file.clone(),
            origin: Origin::Missing,
            key,
            problem,
            help: Some(help),
        }])))
    }
}

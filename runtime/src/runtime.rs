//! [`Runtime`]: what Marty keeps while a service runs — its configuration and dependencies (the
//! [`DependencyRegistry`] and its metrics), the databases of its outbox, inbox and sagas, its running
//! saga orchestrators and its in-process broker — in one handle instead of process-wide statics.
//!
//! A service runs on the global runtime ([`Runtime::global`]) unless it is given one: the macros'
//! call sites and `marty::service::serve` use the global, which loads `marty.toml` on first use. A
//! test, or a process running two services with different configurations, creates its own with
//! [`Runtime::new`] and hands it to the server ([`crate::service::server_in`]), the orchestrator
//! (`Orchestrator::new_in`) and the stores (`Runtime::register_store`).
//!
//! Event handlers run "in" their server's runtime: code they call that asks for
//! [`Runtime::current`] (the inbox, `marty::store::pool`) gets it; elsewhere `current` is the
//! global.
//!
//! What stays process-wide, and why: the tracing subscriber and OpenTelemetry exporters (tracing
//! has one dispatcher per process), the wake-up of the SQLite outbox relay (an outbox write in this
//! process cannot know which runtime's relay reads that table; waking one too many costs one
//! poll), the calibration of the timeout clock, throttling of repeated log lines, and per-thread
//! caches of labels.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::policy::CallPolicy;
use crate::registry::DependencyRegistry;

/// One service's Marty state; cloning it is cheap and shares it.
#[derive(Debug, Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    registry: OnceLock<Arc<DependencyRegistry>>,
    /// The last configuration that failed to load, and when (see [`Runtime::registry_or_load`]).
    load_failure: Mutex<Option<(Instant, Error)>>,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) stores: crate::store::Stores,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) sagas: crate::saga::Running,
    #[cfg(feature = "events")]
    memory_broker: OnceLock<Arc<crate::events::MemoryBroker>>,
    /// The policies of the wrapped calls made in this runtime, by call site (its address): a call
    /// site keeps the global runtime's itself.
    call_sites: RwLock<HashMap<usize, Arc<CallPolicy>>>,
}

/// Set once a runtime other than the global one is put in scope: until then, a wrapped call finds
/// its runtime with one load.
static OTHER_RUNTIMES_SCOPED: AtomicBool = AtomicBool::new(false);

/// A failed load is not kept for the life of the process (the file may be fixed, a variable set),
/// but calls made meanwhile re-read it at most once per this long.
const RELOAD_AFTER_FAILURE: Duration = Duration::from_secs(1);

static GLOBAL: LazyLock<Runtime> = LazyLock::new(|| Runtime { shared: Arc::default() });

tokio::task_local! {
    /// The runtime of the server whose event handler this task runs.
    static CURRENT: Runtime;
}

impl Runtime {
    /// A runtime of its own for `registry`'s configuration: nothing in it is shared with the global
    /// runtime or another one.
    pub fn new(registry: DependencyRegistry) -> Self {
        let runtime = Runtime { shared: Arc::default() };
        let _ = runtime.shared.registry.set(Arc::new(registry));
        runtime
    }

    /// The runtime the macros use, and `marty::service::serve`: its configuration is loaded by the
    /// first wrapped call or server, or installed beforehand with [`Runtime::install`].
    pub fn global() -> &'static Runtime {
        &GLOBAL
    }

    /// The runtime of the server whose event handler is running, else the global one.
    pub fn current() -> Runtime {
        CURRENT.try_with(Runtime::clone).unwrap_or_else(|_| GLOBAL.clone())
    }

    /// Runs `future` with `self` as [`Runtime::current`]: the wrapped calls it makes use this
    /// runtime's dependencies and metrics. Servers, consumers and saga orchestrators of a runtime
    /// run their handlers, steps and requests in it; a test scopes its own calls with this.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        if !self.is_global() {
            OTHER_RUNTIMES_SCOPED.store(true, Ordering::Relaxed);
        }
        CURRENT.scope(self, future)
    }

    /// Whether this is the global runtime.
    pub fn is_global(&self) -> bool {
        Arc::ptr_eq(&self.shared, &GLOBAL.shared)
    }

    /// The runtime in scope, when it is not the global one.
    #[inline]
    pub(crate) fn scoped_other() -> Option<Runtime> {
        if !OTHER_RUNTIMES_SCOPED.load(Ordering::Relaxed) {
            return None;
        }
        CURRENT.try_with(|runtime| (!runtime.is_global()).then(|| runtime.clone())).ok().flatten()
    }

    /// The policy of the call site at `site` in this runtime, resolved by `resolve` once.
    pub(crate) fn call_site_policy(
        &self,
        site: usize,
        resolve: impl FnOnce(&DependencyRegistry) -> Result<CallPolicy, Error>,
    ) -> Result<Arc<CallPolicy>, Error> {
        let read = |sites: &RwLock<HashMap<usize, Arc<CallPolicy>>>| {
            sites.read().unwrap_or_else(|poison| poison.into_inner()).get(&site).cloned()
        };
        if let Some(policy) = read(&self.shared.call_sites) {
            return Ok(policy);
        }
        let registry = self.registry().ok_or_else(no_configuration)?;
        let policy = Arc::new(resolve(registry)?);
        let mut sites = self.shared.call_sites.write().unwrap_or_else(|poison| poison.into_inner());
        Ok(sites.entry(site).or_insert(policy).clone())
    }

    /// The configuration and dependencies, once loaded (always, for a runtime made with [`Runtime::new`]).
    pub fn registry(&self) -> Option<&Arc<DependencyRegistry>> {
        self.shared.registry.get()
    }

    /// Makes `registry` this runtime's configuration, before anything loaded one; `Err` gives it back
    /// when the runtime already has one.
    pub fn install(&self, registry: DependencyRegistry) -> Result<&Arc<DependencyRegistry>, DependencyRegistry> {
        let mut offered = Some(registry);
        let installed = self.shared.registry.get_or_init(|| Arc::new(offered.take().expect("taken once")));
        match offered {
            None => Ok(installed),
            Some(refused) => Err(refused),
        }
    }

    /// The registry, loading it on first use: from the file `MARTY_CONFIG` names, else from
    /// `compiled_path` (the file the macros checked) if it exists, else from `embedded` (its text at
    /// compile time), always with `MARTY__` overrides and `${VAR}` expansion from the environment.
    /// A configuration that does not load fails with its errors; the next call after
    /// [`RELOAD_AFTER_FAILURE`] reads it again.
    pub(crate) fn registry_or_load(
        &self,
        compiled_path: &str,
        embedded: &str,
    ) -> Result<&Arc<DependencyRegistry>, Error> {
        if let Some(registry) = self.registry() {
            return Ok(registry);
        }
        let mut last_failure = self.shared.load_failure.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some((_, error)) = last_failure.as_ref().filter(|(at, _)| at.elapsed() < RELOAD_AFTER_FAILURE) {
            return Err(error.clone());
        }
        match DependencyRegistry::load_for_startup(compiled_path, embedded) {
            Ok(registry) => {
                *last_failure = None;
                Ok(self.shared.registry.get_or_init(|| Arc::new(registry)))
            }
            Err(errors) => {
                tracing::error!(%errors, "invalid Marty configuration; wrapped calls fail until it is fixed");
                let error = Error::Config(Arc::new(errors));
                *last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// `[storage]` from the configuration, or its defaults while none is loaded.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn storage_config(&self) -> marty_config::StorageConfig {
        self.registry().map(|registry| registry.config().storage.clone()).unwrap_or_default()
    }

    /// The in-process broker `[events] broker = "memory"` (or no `[events]`) means in this runtime.
    #[cfg(feature = "events")]
    pub fn memory_broker(&self) -> Arc<crate::events::MemoryBroker> {
        self.shared.memory_broker.get_or_init(Default::default).clone()
    }

    /// A reference that does not keep the runtime alive, for background tasks that should end with it.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.shared))
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// A [`Runtime`] that its background tasks hold without keeping it alive.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[derive(Debug, Clone)]
pub(crate) struct WeakRuntime(std::sync::Weak<Shared>);

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl WeakRuntime {
    /// The runtime, while anything else still holds it.
    pub(crate) fn upgrade(&self) -> Option<Runtime> {
        self.0.upgrade().map(|shared| Runtime { shared })
    }
}

/// A runtime in scope without a configuration: only the global one loads its own.
fn no_configuration() -> Error {
    Error::Config(Arc::new(marty_config::ConfigErrors(vec![marty_config::ConfigError {
        file: String::new(),
        origin: marty_config::Origin::Missing,
        key: String::new(),
        problem: "a wrapped call ran in a runtime that has no configuration".to_owned(),
        help: Some("make the runtime with `Runtime::new(registry)`".to_owned()),
    }])))
}

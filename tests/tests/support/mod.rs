//! What the integration tests share: the error type a service would write, the global registry they
//! install once, a breaker transition log, and a TCP proxy that can cut a database off and restore it.

#![allow(dead_code, unreachable_pub)]

pub mod http;
pub mod proxy;

use std::path::Path;
use std::sync::{Arc, Mutex};

use marty::circuit_breaker::CircuitState;
use marty::{Classify, DependencyRegistry, ErrorClass};

/// The error type of a data-access layer: the database's own errors and Marty's.
#[derive(Debug)]
pub enum DbError {
    Sqlx(sqlx::Error),
    Resilience(marty::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        DbError::Sqlx(error)
    }
}

impl From<marty::Error> for DbError {
    fn from(error: marty::Error) -> Self {
        DbError::Resilience(error)
    }
}

impl Classify for DbError {
    fn classify(&self) -> ErrorClass {
        match self {
            DbError::Sqlx(error) => error.classify(),
            DbError::Resilience(error) => error.classify(),
        }
    }
}

/// The registry the macros use in this test binary, loaded from this crate's `marty.toml` once.
pub fn registry() -> &'static DependencyRegistry {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("marty.toml");
        let registry = DependencyRegistry::load(&path).expect("tests/marty.toml is valid");
        registry.install_global().expect("installed before any wrapped call");
    });
    DependencyRegistry::global().expect("installed above")
}

/// Every (from, to) transition of one dependency's breaker, in order.
pub fn watch_transitions(dependency: &str) -> Arc<Mutex<Vec<(CircuitState, CircuitState)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let breaker = registry().dependency(dependency).expect("declared in tests/marty.toml").circuit_breaker();
    breaker.on_transition(move |transition| {
        println!("{}: {} -> {}", transition.dependency, transition.from, transition.to);
        sink.lock().unwrap().push((transition.from, transition.to));
    });
    log
}

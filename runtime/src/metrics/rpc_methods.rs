//! The gRPC methods a [`super::Metrics`] admits as labels: clients choose the path, and a flood of
//! made-up method names must grow neither the metrics nor memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A gRPC method, as its request's path names it.
#[derive(Debug, Clone)]
pub(crate) struct RpcMethod {
    pub(crate) service: Arc<str>,
    pub(crate) method: Arc<str>,
}

impl std::fmt::Display for RpcMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

/// Distinct `(service, method)` labels one metrics registry keeps; past it, methods read `_OTHER`.
pub(crate) const MAX_METHODS: usize = 1_000;

type Admitted = HashMap<(String, String), RpcMethod>;

/// The methods admitted as labels so far.
#[derive(Debug)]
pub(crate) struct RpcMethods {
    /// Tells this set's entries in the per-thread caches from another registry's.
    id: u64,
    admitted: Mutex<Admitted>,
}

thread_local! {
    /// Each thread's copy of the methods it has served, for the set whose `id` it holds: no lock on
    /// the request path. A thread serving another registry's requests starts its copy afresh.
    static CACHE: RefCell<(u64, Admitted)> = RefCell::new((0, HashMap::new()));
}

impl Default for RpcMethods {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        RpcMethods { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), admitted: Mutex::default() }
    }
}

impl RpcMethods {
    /// The labels of `service`/`method`: its own while fewer than [`MAX_METHODS`] are admitted,
    /// else `_OTHER`, remembered nowhere.
    pub(crate) fn label(&self, service: &str, method: &str) -> RpcMethod {
        let key = (service.to_owned(), method.to_owned());
        let cached = CACHE.with(|cache| {
            let cache = cache.borrow();
            if cache.0 == self.id {
                cache.1.get(&key).cloned()
            } else {
                None
            }
        });
        if let Some(known) = cached {
            return known;
        }
        let admitted = {
            let mut admitted = self.admitted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match admitted.get(&key) {
                Some(known) => Some(known.clone()),
                None if admitted.len() < MAX_METHODS => {
                    let label = RpcMethod { service: service.into(), method: method.into() };
                    admitted.insert(key.clone(), label.clone());
                    Some(label)
                }
                None => None,
            }
        };
        match admitted {
            Some(label) => {
                CACHE.with(|cache| {
                    let mut cache = cache.borrow_mut();
                    if cache.0 != self.id {
                        *cache = (self.id, HashMap::new());
                    }
                    cache.1.insert(key, label.clone());
                });
                label
            }
            None => RpcMethod { service: service.into(), method: "_OTHER".into() },
        }
    }

    #[cfg(test)]
    pub(crate) fn admitted(&self) -> usize {
        self.admitted.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_past_the_limit_read_other_and_are_not_kept() {
        let methods = RpcMethods::default();
        assert_eq!(methods.label("orders.v1.Orders", "GetOrder").to_string(), "orders.v1.Orders/GetOrder");
        for index in 0..MAX_METHODS + 50 {
            methods.label("flood.Service", &format!("Made{index}"));
        }
        assert_eq!(&*methods.label("orders.v1.Orders", "Late").method, "_OTHER");
        assert_eq!(&*methods.label("orders.v1.Orders", "GetOrder").method, "GetOrder", "admitted earlier");
        assert_eq!(methods.admitted(), MAX_METHODS);
        assert!(CACHE.with(|cache| cache.borrow().1.len()) <= MAX_METHODS);
    }

    #[test]
    fn each_registry_admits_its_own() {
        let (first, second) = (RpcMethods::default(), RpcMethods::default());
        for index in 0..MAX_METHODS {
            first.label("flood.Service", &format!("Made{index}"));
        }
        assert_eq!(&*first.label("orders.v1.Orders", "Get").method, "_OTHER");
        assert_eq!(
            &*second.label("orders.v1.Orders", "Get").method,
            "Get",
            "another registry's flood is not this one's"
        );
        assert_eq!(&*first.label("flood.Service", "Made0").method, "Made0", "the thread's cache moved, the set stays");
    }
}

//! Log lines for events that repeat with load (a request shed, a connection refused): the first is
//! written at once, then at most one per window, telling how many happened since the last. An
//! overloaded service logs a summary a window instead of a line per request (a line per shed
//! request wrote 324 MB in one minute of load).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a repeated event is written.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Counts one kind of event per key (`()` for one kind).
#[derive(Debug)]
pub(crate) struct Throttle<K = ()> {
    window: Duration,
    /// Per key: when the last line was written, and the events counted since.
    last_lines: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Hash + Eq> Throttle<K> {
    pub(crate) fn new(window: Duration) -> Self {
        Throttle { window, last_lines: Mutex::new(HashMap::new()) }
    }

    /// Counts one event of `key`: `Some(n)` when a line is due now, `n` being the events since the
    /// last line, this one included.
    pub(crate) fn hit_for(&self, key: K) -> Option<u64> {
        let now = Instant::now();
        let mut last_lines = self.last_lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match last_lines.get_mut(&key) {
            Some((written, count)) if now < *written + self.window => {
                *count += 1;
                None
            }
            Some((written, count)) => {
                let events = *count + 1;
                (*written, *count) = (now, 0);
                Some(events)
            }
            None => {
                last_lines.insert(key, (now, 0));
                Some(1)
            }
        }
    }
}

#[cfg(feature = "http")]
impl Throttle<()> {
    /// Counts one event; see [`Throttle::hit_for`].
    pub(crate) fn hit(&self) -> Option<u64> {
        self.hit_for(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_written_then_one_line_a_window_with_the_count() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.hit_for("orders_db"), Some(1));
        assert_eq!(throttle.hit_for("orders_db"), None);
        assert_eq!(throttle.hit_for("orders_db"), None);
        assert_eq!(throttle.hit_for("payments"), Some(1), "each key counts apart");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.hit_for("orders_db"), Some(3), "the two held back and this one");
        assert_eq!(throttle.hit_for("orders_db"), None);
    }
}

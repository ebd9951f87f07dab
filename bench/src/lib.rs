//! Shared by the benchmark binaries: medians, a counting allocator, the JSON line they print, and
//! the [`server`] processes the server benchmarks measure.
//! Benchmarks report ratios measured side by side in one run; they are never timed tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod server;

/// Counts allocations so a benchmark can report allocations per call.
pub struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

/// Allocations so far (all threads).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// The median of some samples.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len().is_multiple_of(2) {
        (samples[mid - 1] + samples[mid]) / 2.0
    } else {
        samples[mid]
    }
}

/// One JSON object from name/value pairs (numbers rounded to 3 decimals, strings quoted).
pub fn json(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(name, value)| match value {
            Value::Number(n) => format!("\"{name}\":{}", (n * 1000.0).round() / 1000.0),
            Value::Text(text) => format!("\"{name}\":\"{text}\""),
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON value.
pub enum Value {
    /// A number.
    Number(f64),
    /// A string.
    Text(String),
}

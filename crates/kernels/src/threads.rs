//! Process-wide worker-thread count for the kernels.
//!
//! The reference kernels split large products over scoped threads; the
//! persistent spinning pool of the fast kernels will read the same setting.

use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the worker count; 0 means "all available cores".
pub fn set(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The worker count in force (at least 1).
pub fn get() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
}

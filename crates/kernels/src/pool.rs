//! A persistent pool of spinning worker threads for the per-token kernels.
//!
//! Why not rayon or scoped threads: a decoded token runs a few hundred
//! matmuls of 4-15 us each; a fork-join costing ~14 us (rayon) or a thread
//! spawn (~20 us) per call would double the token time. Here a call costs a
//! store and a few cache-line transfers: workers spin on a generation
//! counter between calls, and fall asleep on a condition variable only after
//! [`SPIN_ROUNDS`] of idleness (between requests, or when the machine is
//! oversubscribed, as under `cargo test`).
//!
//! Protocol of one [`run`]:
//! 1. the caller stores the job (a lifetime-erased pointer to a closure on
//!    its stack) and publishes a new generation in `state`;
//! 2. a worker that sees the new generation *joins* it by incrementing the
//!    joined count in the same atomic word, unless the caller has already
//!    closed it; joined workers and the caller take task indices from one
//!    counter until none are left;
//! 3. the caller, out of tasks, *closes* the generation (a bit in the same
//!    word, so no worker can join afterwards) and waits until every worker
//!    that joined has left. Only then does the closure go out of scope.
//!
//! A worker woken late simply finds the generation closed and waits for the
//! next one; a slow or sleeping worker never delays a call.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

/// Idle spins (each a `spin_loop` hint, then a yield every 64) before a
/// worker sleeps: a few milliseconds, longer than the gaps inside a token.
const SPIN_ROUNDS: u32 = 1 << 16;
/// Bit of `state` marking the current generation closed.
const CLOSED: u64 = 1 << 31;
/// Low bits of `state`: workers that joined the current generation.
const JOINED: u64 = CLOSED - 1;

/// A task closure with its lifetime erased (see the module protocol for why
/// it outlives every use).
type Task = dyn Fn(usize) + Sync + 'static;

struct Job {
    task: *const Task,
    n_tasks: usize,
    next: AtomicUsize,
}

struct Shared {
    /// `generation << 32 | closed bit | joined count`.
    state: AtomicU64,
    /// Workers that finished the current generation.
    left: AtomicU32,
    job: AtomicPtr<Job>,
    /// Workers that have entered their loop (past the thread start-up,
    /// which allocates: the thread's name, its signal stack).
    started: AtomicUsize,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(n_workers: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            left: AtomicU32::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            started: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (0..n_workers)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("qmoe-worker-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a kernel worker thread")
            })
            .collect();
        // Return only once every worker runs its loop: a thread allocates
        // while it starts, and that must not fall into the first calls
        // (steady decoding allocates nothing; `tests/no_alloc.rs`).
        while shared.started.load(Acquire) < n_workers {
            std::thread::yield_now();
        }
        Pool { shared, workers }
    }

    fn run<'a>(&self, n_tasks: usize, task: &'a (dyn Fn(usize) + Sync + 'a)) {
        let s = &*self.shared;
        // SAFETY (lifetime erasure): the pointer is dereferenced only by
        // workers that joined this generation, and we wait for all of them
        // to leave before returning, so `task` outlives every use.
        let task: *const Task = unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Task>(task) };
        let job = Job { task, n_tasks, next: AtomicUsize::new(0) };
        s.job.store(&job as *const Job as *mut Job, SeqCst);
        s.left.store(0, SeqCst);
        let generation = (s.state.load(SeqCst) >> 32) + 1;
        s.state.store(generation << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        run_tasks(&job);
        let joined = (s.state.fetch_or(CLOSED, SeqCst) & JOINED) as u32;
        let mut spins = 0u32;
        while s.left.load(Acquire) < joined {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn run_tasks(job: &Job) {
    // SAFETY: see `Pool::run`; the closure is alive while the job is.
    let task = unsafe { &*job.task };
    loop {
        let i = job.next.fetch_add(1, Relaxed);
        if i >= job.n_tasks {
            return;
        }
        task(i);
    }
}

fn worker(s: &Shared) {
    s.started.fetch_add(1, Release);
    let mut seen = 0u64;
    loop {
        // Wait for a generation newer than the last one seen.
        let mut spins = 0u32;
        let state = loop {
            if s.shutdown.load(Relaxed) {
                return;
            }
            let st = s.state.load(Acquire);
            if st >> 32 != seen {
                break st;
            }
            spins += 1;
            if spins < SPIN_ROUNDS {
                if spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let mut g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            while s.state.load(SeqCst) >> 32 == seen && !s.shutdown.load(SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
            spins = 0;
        };
        seen = state >> 32;
        // Join unless the caller has closed this generation already.
        let mut st = state;
        let joined = loop {
            if st >> 32 != seen || st & CLOSED != 0 {
                break false;
            }
            match s.state.compare_exchange_weak(st, st + 1, SeqCst, SeqCst) {
                Ok(_) => break true,
                Err(now) => st = now,
            }
        };
        if !joined {
            continue;
        }
        // SAFETY: we joined an open generation, so the caller is inside
        // `Pool::run` and keeps the job alive until we bump `left`.
        let job = unsafe { &*s.job.load(SeqCst) };
        run_tasks(job);
        s.left.fetch_add(1, Release);
    }
}

/// The process-wide pool, sized to [`crate::threads::get`] at first use and
/// rebuilt when that setting changes.
fn pool() -> &'static Mutex<Option<Pool>> {
    static POOL: OnceLock<Mutex<Option<Pool>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(None))
}

/// A raw base pointer that [`run`]'s tasks share to write disjoint parts
/// of one buffer (output rows, per-head state, per-task scratch).
///
/// Constructing one is safe; using it is not: each task must touch only
/// elements no other task touches, and the buffer must outlive the call.
pub struct SharedMut<T>(*mut T);

impl<T> SharedMut<T> {
    pub fn new(buf: &mut [T]) -> Self {
        SharedMut(buf.as_mut_ptr())
    }

    /// Element `i`'s address (a method, so closures capture the whole
    /// wrapper rather than its raw field).
    pub fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: the wrapper only carries the address; every dereference is an
// `unsafe` block in a task that owns disjoint elements (see the type doc),
// and `run` returns only after all tasks have finished.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

/// Starts the workers for the current [`crate::threads::get`] setting now
/// rather than at the first parallel call (thread creation allocates; a
/// model load calls this so decoding never does).
pub fn start() {
    let threads = crate::threads::get();
    if threads <= 1 {
        return;
    }
    let mut guard = pool().lock().unwrap_or_else(|e| e.into_inner());
    sized(&mut guard, threads);
}

/// The pool in `slot`, (re)built for `threads` threads (the caller + workers).
fn sized(slot: &mut Option<Pool>, threads: usize) -> &Pool {
    if slot.as_ref().is_none_or(|p| p.workers.len() + 1 != threads) {
        *slot = None; // joins the old workers first
        *slot = Some(Pool::new(threads - 1));
    }
    slot.as_ref().expect("pool just built")
}

/// Runs `task(i)` for every `i` in `0..n_tasks` on the calling thread and
/// the pool's workers; returns when all are done. Tasks run in no
/// particular order and must write disjoint data.
///
/// One call at a time uses the pool: a call made while another is running
/// (another thread, or a task calling `run`) runs its tasks on the calling
/// thread alone, which is correct, only slower.
pub fn run(n_tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    let threads = crate::threads::get();
    if n_tasks <= 1 || threads <= 1 {
        (0..n_tasks).for_each(task);
        return;
    }
    let Ok(mut guard) = pool().try_lock() else {
        (0..n_tasks).for_each(task);
        return;
    };
    sized(&mut guard, threads).run(n_tasks, task);
}

/// `f(a, b)` for the consecutive pieces `a..b` of `0..n` items, on the pool
/// when there are at least `2 * min_items` (a few pieces per thread, each of
/// `min_items` or more), else in one call here. For the row-wise work
/// between products (activation quantization, norms) that a long prefill
/// would otherwise leave to one thread.
fn for_pieces(n: usize, min_items: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let threads = crate::threads::get();
    let pieces = (n / min_items.max(1)).min(4 * threads);
    if threads <= 1 || pieces < 2 {
        f(0, n);
        return;
    }
    let per = n.div_ceil(pieces);
    run(n.div_ceil(per), &|i| f(i * per, ((i + 1) * per).min(n)));
}

/// [`for_pieces`] over `data` in whole chunks of `chunk` values:
/// `f(first, piece)` with `piece` the mutable run of chunks from chunk
/// `first`, each piece disjoint from the others. For row-wise steps that
/// write rows of their own (norms, activation quantization, the MoE's
/// gather, SwiGLU and combine).
pub fn for_chunk_pieces<T: Send>(
    data: &mut [T],
    chunk: usize,
    min_chunks: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let chunk = chunk.max(1);
    debug_assert!(data.len().is_multiple_of(chunk), "for_chunk_pieces: a partial chunk");
    let n = data.len() / chunk;
    let d = SharedMut::new(data);
    for_pieces(n, min_chunks, &|a, b| {
        // SAFETY: pieces are disjoint chunk ranges inside `0..n`, and `data`
        // is borrowed for the whole call.
        let piece = unsafe { std::slice::from_raw_parts_mut(d.at(a * chunk), (b - a) * chunk) };
        f(a, piece)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_every_item_once() {
        crate::threads::set(0);
        for (n, min) in [(0usize, 4usize), (1, 4), (7, 4), (8, 4), (1000, 3), (1000, 1000), (4096, 64)] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_pieces(n, min, &|a, b| {
                assert!(a <= b && b <= n);
                for h in &hits[a..b] {
                    h.fetch_add(1, Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}, min = {min}");
        }
    }

    #[test]
    fn chunk_pieces_hand_out_whole_chunks_at_their_index() {
        crate::threads::set(0);
        for (chunks, chunk, min) in [(0usize, 3usize, 2usize), (1, 3, 2), (9, 3, 2), (1000, 5, 8), (64, 1, 4)] {
            let mut data = vec![0usize; chunks * chunk];
            for_chunk_pieces(&mut data, chunk, min, &|first, piece| {
                assert!(piece.len().is_multiple_of(chunk));
                for (i, v) in piece.iter_mut().enumerate() {
                    *v += first * chunk + i + 1;
                }
            });
            assert!(data.iter().enumerate().all(|(i, &v)| v == i + 1), "{chunks} chunks of {chunk}");
        }
    }

    #[test]
    fn every_task_runs_exactly_once() {
        crate::threads::set(0);
        for n in [0usize, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            run(n, &|i| {
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}");
        }
    }

    #[test]
    fn many_back_to_back_calls_and_concurrent_callers() {
        let total = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let total = Arc::clone(&total);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        run(8, &|i| {
                            total.fetch_add(i + 1, Relaxed);
                        });
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(total.load(Relaxed), 3 * 2000 * 36);
    }
}

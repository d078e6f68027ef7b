//! Steady decoding allocates nothing: after a warm-up, single-token forwards
//! (any weight format, pooled kernels included) make no heap allocation on
//! any thread. One test per binary, so no other test's allocations count.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::fixture;
use qmoe_model::{Logits, Model, Scratch};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_decode_allocates_nothing() {
    qmoe_kernels::threads::set(2);
    for path in
        [fixture("gguf_moe_dv16_q4_k_m").join("model.gguf"), fixture("mlx_q4"), fixture("next"), fixture("fp8_block")]
    {
        let model = Model::load(&path).unwrap();
        qmoe_kernels::pool::start();
        let mut cache = model.new_cache(64);
        let mut scratch = Scratch::default();
        let mut next = 1u32;
        for step in 0..24 {
            if step == 8 {
                COUNTING.store(true, Ordering::SeqCst);
            }
            let logits = model.forward(&[next], &mut cache, &mut scratch, Logits::Last).unwrap();
            next = (logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
                % 100) as u32;
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCATIONS.swap(0, Ordering::SeqCst);
        assert_eq!(n, 0, "{}: {n} allocations in 16 steady decode steps", path.display());
    }
}

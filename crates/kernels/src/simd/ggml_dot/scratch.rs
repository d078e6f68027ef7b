//! The per-thread buffer the x86 many-token kernels (AVX2 and AVX-512)
//! rearrange a token group's activations into: one buffer of 64-byte
//! chunks serves every prepared layout, it only grows (steady prefill and
//! decoding allocate nothing once it is warm), and a call borrows it and
//! hands it back on drop (also on unwind).

use std::cell::Cell;

/// Storage unit: 64-byte aligned, so every prepared layout (alignment at
/// most 64) can be laid over a run of them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

thread_local! {
    static SCRATCH: Cell<Vec<Chunk>> = const { Cell::new(Vec::new()) };
}

/// The thread's buffer, borrowed for one call.
pub(super) struct Scratch(Vec<Chunk>);

impl Default for Scratch {
    fn default() -> Self {
        Scratch(SCRATCH.with(|s| s.take()))
    }
}

impl Scratch {
    /// Room for `n` values of `X`, as a pointer to the first (valid until
    /// the next call of `room` or the drop; the contents are unspecified).
    pub(super) fn room<X>(&mut self, n: usize) -> *mut X {
        const { assert!(std::mem::align_of::<X>() <= 64) };
        let chunks = (n * std::mem::size_of::<X>()).div_ceil(64);
        if self.0.len() < chunks {
            self.0.resize(chunks, Chunk([0; 64]));
        }
        self.0.as_mut_ptr() as *mut X
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        SCRATCH.with(|s| s.set(v));
    }
}

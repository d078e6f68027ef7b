//! The per-thread buffers the x86 many-token kernels (ggml AVX2 and AVX-512,
//! MLX affine) rearrange activations into: one buffer of 64-byte chunks
//! serves every prepared layout, it only grows (steady prefill and decoding allocate
//! nothing once it is warm), and a call borrows it and hands it back on drop
//! (also on unwind).
//!
//! [`Scratch`] holds one token group for one call; [`Kept`] a call's weight
//! blocks as the first token group unpacked them, for the later groups (a
//! second buffer of the same kind: both are borrowed at once); [`Table`] a
//! call's small per-column tables (a third). [`Whole`]
//! holds a whole product's activations from call to call, named by the id
//! the matmul driver gives each quantized input: the driver runs a product
//! as several row tasks, and each task would otherwise rearrange every
//! token again (3-4% of a prefill's samples went to that).

use std::any::TypeId;
use std::cell::Cell;
use std::ops::Range;

/// Storage unit: 64-byte aligned, so every prepared layout (alignment at
/// most 64) can be laid over a run of them.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

thread_local! {
    static SCRATCH: [Cell<Vec<Chunk>>; 3] = const { [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())] };
    static WHOLE: Cell<(Key, Vec<Chunk>)> = const { Cell::new((None, Vec::new())) };
}

/// Room for `n` values of `X` at the start of `buf`, grown if need be.
fn room<X>(buf: &mut Vec<Chunk>, n: usize) -> *mut X {
    const { assert!(std::mem::align_of::<X>() <= 64) };
    let chunks = (n * std::mem::size_of::<X>()).div_ceil(64);
    if buf.len() < chunks {
        buf.resize(chunks, Chunk([0; 64]));
    }
    buf.as_mut_ptr() as *mut X
}

/// The thread's buffer number `SLOT`, borrowed for one call.
pub(super) struct Buffer<const SLOT: usize>(Vec<Chunk>);

/// The token group's rearranged activations.
pub(super) type Scratch = Buffer<0>;
/// The unpacked weight blocks kept for the later token groups.
pub(super) type Kept = Buffer<1>;
/// A call's per-column tables (the MLX runs' group maps).
pub(super) type Table = Buffer<2>;

impl<const SLOT: usize> Default for Buffer<SLOT> {
    fn default() -> Self {
        Buffer(SCRATCH.with(|s| s[SLOT].take()))
    }
}

impl<const SLOT: usize> Buffer<SLOT> {
    /// Room for `n` values of `X`, as a pointer to the first (valid until
    /// the next call of `room` or the drop; the contents are unspecified).
    pub(super) fn room<X>(&mut self, n: usize) -> *mut X {
        room(&mut self.0, n)
    }
}

impl<const SLOT: usize> Drop for Buffer<SLOT> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        SCRATCH.with(|s| s[SLOT].set(v));
    }
}

/// What a [`Whole`] holds: the input's id and the layout it was rearranged
/// to (one input can meet kernels of several layouts in turn).
type Key = Option<(u64, TypeId)>;

/// The thread's rearranged copy of one product's activations, borrowed for
/// one call.
pub(super) struct Whole {
    key: Key,
    buf: Vec<Chunk>,
}

impl Default for Whole {
    fn default() -> Self {
        let (key, buf) = WHOLE.with(|s| s.take());
        Whole { key, buf }
    }
}

impl Whole {
    /// `n` values of `X` holding the input named `id` (non-zero): `fill`
    /// writes them unless this buffer holds `id` as `X` already (valid until
    /// the next call of `get` or the drop). One id must always be filled
    /// with the same `n` for one `X`.
    pub(super) fn get<X: 'static>(&mut self, id: u64, n: usize, fill: impl FnOnce(*mut X)) -> *const X {
        debug_assert_ne!(id, 0);
        let p = room::<X>(&mut self.buf, n);
        let key = Some((id, TypeId::of::<X>()));
        if self.key != key {
            // Not valid while `fill` runs (nor if it unwinds).
            self.key = None;
            fill(p);
            self.key = key;
        }
        p
    }
}

impl Drop for Whole {
    fn drop(&mut self) {
        let v = (self.key.take(), std::mem::take(&mut self.buf));
        WHOLE.with(|s| s.set(v));
    }
}

/// Where a call's token groups find their prepared activations: a group's
/// own copy in the call's [`Scratch`], or, when the driver names the input,
/// every token's in the thread's [`Whole`] copy, made by the first call of
/// the product on this thread.
#[derive(Default)]
pub(super) struct Tokens {
    scratch: Scratch,
    whole: Whole,
}

impl Tokens {
    /// The units of tokens `t0..t0 + n` of an input of `n_tokens` tokens,
    /// `units` per token: `fill(tokens, dst)` writes the units of `tokens`
    /// at `dst` (all tokens once per thread and input when `id` names the
    /// input, else just these). One id must always come with the same
    /// input, `n_tokens` and `units` for one `X`.
    pub(super) fn group<X: 'static>(
        &mut self,
        id: u64,
        (n_tokens, units): (usize, usize),
        (t0, n): (usize, usize),
        mut fill: impl FnMut(Range<usize>, *mut X),
    ) -> *const X {
        debug_assert!(t0 + n <= n_tokens);
        if id != 0 {
            let all = self.whole.get::<X>(id, n_tokens * units, |p| fill(0..n_tokens, p));
            // SAFETY: `all` holds `n_tokens * units` values.
            unsafe { all.add(t0 * units) }
        } else {
            let p = self.scratch.room::<X>(n * units);
            fill(t0..t0 + n, p);
            p
        }
    }
}

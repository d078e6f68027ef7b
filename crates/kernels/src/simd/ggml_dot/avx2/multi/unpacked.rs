//! The shape every transposed many-token kernel shares: a unit of weight
//! blocks (one 256-value block, or a run of eight 32-value blocks) is
//! unpacked once, into registers, then each token of the group takes one
//! step against it ([`crate::simd::columns::steps`]).
//!
//! When a call has more than one token group, the first group also writes
//! each unit as it unpacked it to a per-thread buffer (`scratch::Kept`),
//! and the later groups load it from there instead of unpacking again.
//! Unpacking (nibble splits, transposes, scale shuffles and converts) runs
//! on the same vector ports as the steps: about a quarter of a Q4_K group's
//! port time (`llvm-mca -mcpu=znver3`: 68 cycles per block of eight tokens
//! unpacking, 56 loading the kept unit). Loading a kept unit costs loads
//! only, and the row task's kept units (about 2.4x its Q4_K bytes) stay in
//! L2 for the task's later groups.

use std::arch::x86_64::{__m256, _mm_prefetch, _MM_HINT_T0};
use std::ops::Range;

use super::super::super::scratch::Kept;
use super::super::{hsum, PREFETCH_BYTES};
use crate::simd::columns::chunk_units;

/// A weight type's transposed many-token kernel.
pub(super) trait Unpacks {
    /// One token's activation unit, as the group's prepared copy holds it.
    type X;
    /// A unit of weight blocks as the steps take it.
    type U;
    /// Bytes per weight block.
    const BYTES: usize;

    /// The unit `i` of the row at `row` (`nb` blocks).
    ///
    /// # Safety
    /// `row` points at `nb` blocks of the type, `i < Self::units(nb)`; the
    /// CPU runs AVX2 + FMA + F16C.
    unsafe fn unpack(row: *const u8, nb: usize, i: usize) -> Self::U;

    /// `acc += u · x` (per lane; the row's result is the lanes' sum).
    ///
    /// # Safety
    /// The CPU runs AVX2 + FMA + F16C.
    unsafe fn step(u: &Self::U, x: &Self::X, acc: &mut __m256);

    /// Units per row of `nb` blocks.
    fn units(nb: usize) -> usize;

    /// Units `units` of one row of `nb` blocks against `N` tokens, each
    /// unit unpacked here (and written to `keep[i]` unless `keep` is null).
    ///
    /// # Safety
    /// `row` points at `nb` blocks of the type, each `xs[t]` at
    /// `Self::units(nb)` activation units, `keep` (unless null) has room for
    /// as many weight units, `units` lies within them; the CPU runs AVX2 +
    /// FMA + F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<const N: usize>(
        row: *const u8,
        xs: [*const Self::X; N],
        nb: usize,
        units: Range<usize>,
        keep: *mut Self::U,
    ) -> [f32; N] {
        let mut acc = [std::arch::x86_64::_mm256_setzero_ps(); N];
        // Two loops, so that without `keep` the unit is a local whose parts
        // stay in registers (one reference to either would put it in memory).
        if keep.is_null() {
            for i in units {
                let u = Self::unpack(row, nb, i);
                for (t, a) in acc.iter_mut().enumerate() {
                    Self::step(&u, &*xs[t].add(i), a);
                }
            }
        } else {
            for i in units {
                // The steps read the kept copy, as the later groups will.
                keep.add(i).write(Self::unpack(row, nb, i));
                for (t, a) in acc.iter_mut().enumerate() {
                    Self::step(&*keep.add(i), &*xs[t].add(i), a);
                }
            }
        }
        acc.map(|a| hsum(a))
    }

    /// As [`Unpacks::dot`], on the units it kept for the row.
    ///
    /// # Safety
    /// `kept` points at the row's units, [`Unpacks::dot`] wrote those in
    /// `units`, each `xs[t]` points at as many activation units; the CPU runs
    /// AVX2 + FMA + F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_kept<const N: usize>(kept: *const Self::U, xs: [*const Self::X; N], units: Range<usize>) -> [f32; N] {
        let mut acc = [std::arch::x86_64::_mm256_setzero_ps(); N];
        for i in units {
            let u = &*kept.add(i);
            for (t, a) in acc.iter_mut().enumerate() {
                Self::step(u, &*xs[t].add(i), a);
            }
        }
        acc.map(|a| hsum(a))
    }
}

/// Most bytes of kept units per call: about L2.
const KEPT_BYTES: usize = 512 << 10;

/// The group prep of a type's activations: `(x, t0, n, nb, id, scratch)` to
/// the group's units and the distance from one token's to the next's.
pub(super) type Prep<B, X, S> = unsafe fn(&[B], usize, usize, usize, u64, &mut S) -> (*const X, usize);

/// `y[t * stride + r] = dot(row r of w, token t)` for `n_rows` rows of `nb`
/// blocks of `K` and `n_tokens` tokens of activations `x`, in token groups
/// of `max` (the rest in groups of at most 4), each group's activations
/// prepared once by `prep`. Token groups run outside, then column chunks
/// sized so that the group's activation units of a chunk stay in L1
/// ([`crate::simd::columns::L1_ACTS`]: a row of 4096 columns is two
/// chunks of Q4_K for 8 tokens, chunk partial sums added in `y`), then rows:
/// the driver's run of rows stays in L2. The first group streams the rows
/// from memory (with the single-token kernels' prefetch) and keeps their
/// unpacked units; the later groups load those. A call with more rows than
/// [`KEPT_BYTES`] of kept units (not the driver's: its row tasks are
/// smaller) runs in blocks of rows, each as a call of its own.
///
/// # Safety
/// The CPU runs AVX2 + FMA + F16C; `w` is `n_rows` rows of `nb` blocks of
/// `K` where `nb = x.len() / n_tokens`, `n_tokens >= 1`; `y` is valid for
/// writes at `t * stride + r`; `prep`'s contract holds for `x` and `id`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn groups<K: Unpacks, B, S: Default>(
    w: &[u8],
    n_rows: usize,
    x: &[B],
    n_tokens: usize,
    y: *mut f32,
    stride: usize,
    id: u64,
    max: usize,
    prep: Prep<B, K::X, S>,
) {
    let nb = x.len() / n_tokens;
    let units = K::units(nb);
    let block = (KEPT_BYTES / (units * std::mem::size_of::<K::U>()).max(1)).max(1);
    if n_rows > block {
        let row_bytes = nb * K::BYTES;
        for r0 in (0..n_rows).step_by(block) {
            let n = block.min(n_rows - r0);
            let wb = &w[r0 * row_bytes..(r0 + n) * row_bytes];
            groups::<K, B, S>(wb, n, x, n_tokens, y.add(r0), stride, id, max, prep);
        }
        return;
    }
    // Kept only when a later group reads them.
    let first = if n_tokens >= max { max } else { n_tokens.min(4) };
    let mut kept = Kept::default();
    let keep: *mut K::U = if n_tokens > first { kept.room(n_rows * units) } else { std::ptr::null_mut() };
    let chunk = chunk_units(units, max * std::mem::size_of::<K::X>());
    let rows = Rows { w, n_rows, nb, units, chunk, keep, y, stride };
    let mut scratch = S::default();
    let mut t0 = 0;
    while t0 < n_tokens {
        let left = n_tokens - t0;
        let n = if left >= max { max } else { left.min(4) };
        let (xg, xstride) = prep(x, t0, n, nb, id, &mut scratch);
        match n {
            8 => rows.group::<K, 8>(xg, xstride, t0),
            4 => rows.group::<K, 4>(xg, xstride, t0),
            3 => rows.group::<K, 3>(xg, xstride, t0),
            2 => rows.group::<K, 2>(xg, xstride, t0),
            _ => rows.group::<K, 1>(xg, xstride, t0),
        }
        t0 += n;
    }
}

/// What every token group of [`groups`] shares.
struct Rows<'a, U> {
    w: &'a [u8],
    n_rows: usize,
    nb: usize,
    units: usize,
    chunk: usize,
    keep: *mut U,
    y: *mut f32,
    stride: usize,
}

impl<U> Rows<'_, U> {
    /// Every row against the `N` tokens from `t0` (their units at `xg`,
    /// `xstride` apart), chunk by chunk.
    ///
    /// # Safety
    /// As [`groups`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group<K: Unpacks<U = U>, const N: usize>(&self, xg: *const K::X, xstride: usize, t0: usize) {
        let xs: [*const K::X; N] = std::array::from_fn(|t| xg.add(t * xstride));
        let row_bytes = self.nb * K::BYTES;
        let base = self.w.as_ptr();
        let mut u0 = 0;
        while u0 < self.units {
            let cols = u0..(u0 + self.chunk).min(self.units);
            // Only the first pass reads the rows from memory: prefetch for it.
            let prefetch = t0 == 0 && u0 == 0;
            let mut fetched = 0;
            for r in 0..self.n_rows {
                if prefetch {
                    let until = ((r + 1) * row_bytes + PREFETCH_BYTES).min(self.w.len());
                    while fetched < until {
                        _mm_prefetch::<_MM_HINT_T0>(base.add(fetched) as *const i8);
                        fetched += 64;
                    }
                }
                let kept = if self.keep.is_null() { self.keep } else { self.keep.add(r * self.units) };
                let out: [f32; N] = if t0 == 0 {
                    K::dot(base.add(r * row_bytes), xs, self.nb, cols.clone(), kept)
                } else {
                    K::dot_kept(kept, xs, cols.clone())
                };
                for (t, v) in out.into_iter().enumerate() {
                    let at = self.y.add((t0 + t) * self.stride + r);
                    *at = if u0 == 0 { v } else { *at + v };
                }
            }
            u0 = cols.end;
        }
    }
}

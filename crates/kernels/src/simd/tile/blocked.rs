//! The cache-blocked f32 many-token product (AVX2 + FMA).
//!
//! `y[t][r] = Σ_k W[r][k] x[t][k]` with both operands stored along `k`, so
//! a micro-tile keeps `R x T` accumulators of eight `k` lanes each and
//! reduces them once at the end of its slice. Blocking, from the outside:
//! * a chunk of rows widened to f32 (at most [`CHUNK_BYTES`], in L2), so
//!   every token's activations stream from memory once per chunk rather
//!   than once per row;
//! * a slice of [`KB`] columns, so that a row triple's part (6 KiB) stays in
//!   L1 while a block of tokens passes over it;
//! * a block of [`TB`] tokens, whose slices (64 KiB) stay in L2 across the
//!   chunk's rows;
//! * the 3 x 4 micro-tile: per 8 columns, 3 weight and 4 activation loads
//!   feed 12 FMAs, and the twelve accumulators, three weight vectors and
//!   one activation vector fill AVX2's 16 registers.
//!
//! Slices after the first add their sums to the output, so the result is
//! the twin's up to summation order.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::widen_row;
use crate::linear::MatRef;
use crate::simd::Level;

/// Widened rows per chunk, in bytes (the chunk stays in L2 beside the
/// token block).
const CHUNK_BYTES: usize = 192 << 10;
/// Columns per slice.
const KB: usize = 512;
/// Tokens per block.
const TB: usize = 32;

thread_local! {
    /// The widened chunk (grow-only; each pool worker has its own).
    static CHUNK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// As [`super::rows_many_tokens`].
///
/// # Safety
/// The CPU runs AVX2 + FMA; `rows` lies inside `w`'s rows, `x` holds
/// `n_tokens` rows of `w.cols`; `y` is valid for writes of `n_tokens *
/// w.rows` floats and no other thread writes rows `rows` of it meanwhile.
pub(super) unsafe fn rows(level: Level, w: &MatRef, rows: Range<usize>, x: &[f32], n_tokens: usize, y: *mut f32) {
    let (cols, ldy) = (w.cols, w.rows);
    let per_chunk = (CHUNK_BYTES / (4 * cols.max(1))).max(1);
    let room = per_chunk.min(rows.len()) * cols;
    CHUNK.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < room {
            buf.resize(room, 0.0);
        }
        let mut r0 = rows.start;
        while r0 < rows.end {
            let nr = per_chunk.min(rows.end - r0);
            for (i, out) in buf.chunks_exact_mut(cols).take(nr).enumerate() {
                widen_row(level, w, r0 + i, out);
            }
            for k0 in (0..cols).step_by(KB) {
                let kb = KB.min(cols - k0);
                for t0 in (0..n_tokens).step_by(TB) {
                    let nt = TB.min(n_tokens - t0);
                    // SAFETY: every tile lies inside the chunk's `nr` rows,
                    // tokens `t0..t0 + nt` and columns `k0..k0 + kb`; its
                    // outputs are rows `r0..r0 + nr` of those tokens.
                    unsafe {
                        block(
                            buf.as_ptr().add(k0),
                            cols,
                            nr,
                            x.as_ptr().add(t0 * cols + k0),
                            nt,
                            kb,
                            y.add(t0 * ldy + r0),
                            ldy,
                            k0 > 0,
                        )
                    };
                }
            }
            r0 += nr;
        }
    });
}

/// `nr` rows (`ldw` apart) against `nt` tokens (`ldw` apart too: both are
/// `cols` long) over `kb` columns, in micro-tiles; `y[t ldy + r]` gets the
/// sum, or adds it when `add`.
///
/// # Safety
/// As [`rows`] for these extents.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn block(
    w: *const f32,
    ldw: usize,
    nr: usize,
    x: *const f32,
    nt: usize,
    kb: usize,
    y: *mut f32,
    ldy: usize,
    add: bool,
) {
    let mut i = 0;
    while i < nr {
        let rr = (nr - i).min(3);
        let wi = w.add(i * ldw);
        let mut t = 0;
        while t < nt {
            let tt = (nt - t).min(4);
            let (xt, yt) = (x.add(t * ldw), y.add(t * ldy + i));
            // SAFETY: rows i..i + rr and tokens t..t + tt are inside the block.
            match (rr, tt) {
                (3, 4) => tile::<3, 4>(wi, ldw, xt, kb, yt, ldy, add),
                (3, 3) => tile::<3, 3>(wi, ldw, xt, kb, yt, ldy, add),
                (3, 2) => tile::<3, 2>(wi, ldw, xt, kb, yt, ldy, add),
                (3, _) => tile::<3, 1>(wi, ldw, xt, kb, yt, ldy, add),
                (2, 4) => tile::<2, 4>(wi, ldw, xt, kb, yt, ldy, add),
                (2, 3) => tile::<2, 3>(wi, ldw, xt, kb, yt, ldy, add),
                (2, 2) => tile::<2, 2>(wi, ldw, xt, kb, yt, ldy, add),
                (2, _) => tile::<2, 1>(wi, ldw, xt, kb, yt, ldy, add),
                (_, 4) => tile::<1, 4>(wi, ldw, xt, kb, yt, ldy, add),
                (_, 3) => tile::<1, 3>(wi, ldw, xt, kb, yt, ldy, add),
                (_, 2) => tile::<1, 2>(wi, ldw, xt, kb, yt, ldy, add),
                (_, _) => tile::<1, 1>(wi, ldw, xt, kb, yt, ldy, add),
            }
            t += tt;
        }
        i += rr;
    }
}

/// One `R x T` micro-tile over `kb` columns (`ld` apart for rows and tokens
/// alike); the last `kb % 8` columns are added one by one.
///
/// # Safety
/// As [`block`] for `R` rows and `T` tokens.
// Indexed loops over the accumulators: this form compiles to the 3 x 4
// step of 7 loads and 12 register FMAs (checked with `llvm-mca`).
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const T: usize>(
    w: *const f32,
    ld: usize,
    x: *const f32,
    kb: usize,
    y: *mut f32,
    ldy: usize,
    add: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let body = kb / 8 * 8;
    let mut k = 0;
    while k < body {
        let wv: [__m256; R] = std::array::from_fn(|r| _mm256_loadu_ps(w.add(r * ld + k)));
        for t in 0..T {
            let xv = _mm256_loadu_ps(x.add(t * ld + k));
            for r in 0..R {
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
        k += 8;
    }
    for r in 0..R {
        for t in 0..T {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][t]);
            for c in body..kb {
                lanes[c - body] += *w.add(r * ld + c) * *x.add(t * ld + c);
            }
            let s = crate::vecops::fold8(lanes);
            let out = y.add(t * ldy + r);
            *out = if add { *out + s } else { s };
        }
    }
}

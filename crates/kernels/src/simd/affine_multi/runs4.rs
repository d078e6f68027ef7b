//! MLX affine 4-bit many-token kernel (AVX2) on transposed runs of eight
//! 32-value blocks, as the ggml k-quant kernels (`ggml_dot/avx2/multi`) do
//! with their sub-blocks: u32 lane `k` of every register belongs to one
//! block of the run throughout, so a (run, token) step sums its 256 products
//! as i16 and widens, converts and scales them once (`d_x · scale_g` per
//! lane), and the bias term is one FMA of the lanes' `bias_g` against the
//! token's block sums: the Q4_K step ([`steps::q4_k`]) with unit sub-block
//! scales. The per-pair kernel this replaces converted and scaled every two
//! blocks (28 vector operations per 256 products and token, against 20).
//!
//! Layout: a run's 128 weight bytes are four 32-byte loads, load `p` holding
//! blocks `2p` (low 128 bits) and `2p + 1`; their u32 transpose gives, in
//! register `i`, word `i` of every block, block [`ORDER`]`[k]` in lane `k`,
//! and each word's low and high nibbles are values `8i + 2j` and `8i + 2j +
//! 1` (`j` its byte). The activations are laid out to match once per token
//! group ([`prepare`]): column `2i` holds values `8i, 8i + 2, 8i + 4, 8i + 6`
//! of each block, column `2i + 1` the odd ones. Absent blocks of a last
//! partial run are zero codes with zero scale and sum on the activation side.
//!
//! Each block's integer dot is the single-token kernel's; the f32 scaling
//! and the order of the sums differ, so results agree with it to rounding.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::x86::{for_rows, load8, Mat};
use crate::simd::act::BlockQ8x32;
use crate::simd::columns::steps::{self, Cols};
use crate::simd::columns::{transpose4, transpose8};
use crate::simd::float_dot::x86::hsum;

/// The block of the run in u32 lane `k` (low 128 bits: blocks 0, 2, 4, 6).
const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Tokens per weight unpacking: each step keeps its accumulator in memory,
/// so the group size costs no registers.
const GROUP: usize = 8;

/// One token's run of eight blocks, as the steps read it.
#[repr(C, align(32))]
struct Run {
    cols: [__m256i; 8],
    /// Lane `k`: the exact input sum of block `ORDER[k]` (the bias term).
    sums: __m256,
    /// Lane `k`: the activation scale of block `ORDER[k]`.
    d: __m256,
}

/// Where a run's lanes find their group values (scales, biases): the run
/// spans groups `g0 .. g0 + n` (at most 8: one per block), and lane `k`
/// takes value `idx[k]` of those (any of them for an absent block, whose
/// activations are zero).
#[derive(Clone, Copy)]
struct RunGroups {
    g0: usize,
    n: usize,
    idx: [i32; 8],
}

/// A run of weight blocks as the first token group unpacked it, kept for the
/// later groups (as `ggml_dot/avx2/multi/unpacked.rs` does, which says why).
#[repr(C, align(32))]
struct Unpacked {
    w: [__m256i; 8],
    neg_bias: __m256,
    scale: __m256,
}

thread_local! {
    /// A token group's runs, every run's groups and the kept weight runs
    /// (grow-only; each pool worker has its own).
    static RUNS: RefCell<(Vec<Run>, Vec<RunGroups>, Vec<Unpacked>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// As `x86::run::<4>`.
///
/// # Safety
/// AVX2 + FMA + F16C; `m` checked against its shape with 4 bits, `rows`
/// inside it, `x` `n_tokens` rows of `cols / 32` blocks, `y` valid for
/// writes at `t * y_stride + i`, `i < rows.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn run(m: &Mat, rows: Range<usize>, x: &[BlockQ8x32], n_tokens: usize, y: *mut f32, y_stride: usize) {
    let nb = m.groups * m.per_group;
    let runs = nb.div_ceil(8);
    RUNS.with(|cell| {
        let (buf, groups, kept) = &mut *cell.borrow_mut();
        groups.clear();
        groups.extend((0..runs).map(|run| {
            let (b0, here) = (8 * run, (nb - 8 * run).min(8));
            let g0 = b0 / m.per_group;
            let idx = ORDER.map(|j| ((b0 + j.min(here - 1)) / m.per_group - g0) as i32);
            RunGroups { g0, n: (b0 + here - 1) / m.per_group - g0 + 1, idx }
        }));
        if buf.len() < GROUP.min(n_tokens) * runs {
            buf.resize_with(GROUP.min(n_tokens) * runs, || Run {
                cols: [_mm256_setzero_si256(); 8],
                sums: _mm256_setzero_ps(),
                d: _mm256_setzero_ps(),
            });
        }
        // Kept only when a later group reads them.
        let first = if n_tokens >= GROUP { GROUP } else { n_tokens.min(4) };
        let keep = if n_tokens > first {
            let need = rows.len() * runs;
            if kept.len() < need {
                kept.resize_with(need, || Unpacked {
                    w: [_mm256_setzero_si256(); 8],
                    neg_bias: _mm256_setzero_ps(),
                    scale: _mm256_setzero_ps(),
                });
            }
            kept.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        };
        let mut t0 = 0;
        while t0 < n_tokens {
            // Groups of GROUP, the rest in groups of at most 4.
            let left = n_tokens - t0;
            let n = if left >= GROUP { GROUP } else { left.min(4) };
            for t in 0..n {
                prepare(&x[(t0 + t) * nb..(t0 + t + 1) * nb], &mut buf[t * runs..(t + 1) * runs]);
            }
            let (xp, yg, first) = (buf.as_ptr(), y.add(t0 * y_stride), t0 == 0);
            let xs = |t: usize| xp.add(t * runs);
            // Row `r`: unpacked here in the first group (and kept), else as kept.
            let r0 = rows.start;
            let unit = move |r: usize| if keep.is_null() { keep } else { keep.add((r - r0) * runs) };
            macro_rules! tokens {
                ($n:literal) => {
                    for_rows(m, rows.clone(), yg, y_stride, first, |r| {
                        let xs = std::array::from_fn(xs);
                        if first {
                            row::<$n>(m, r, xs, groups, unit(r))
                        } else {
                            row_kept::<$n>(unit(r), xs, runs)
                        }
                    })
                };
            }
            // SAFETY (each arm): `xp` holds `n` tokens' runs; the rest is the contract.
            match n {
                8 => tokens!(8),
                4 => tokens!(4),
                3 => tokens!(3),
                2 => tokens!(2),
                _ => tokens!(1),
            }
            t0 += n;
        }
    });
}

/// One token's blocks as runs (see the module doc).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare(x: &[BlockQ8x32], out: &mut [Run]) {
    // Per 128-bit lane: even bytes of 0..8, odd bytes of 0..8, then of 8..16.
    let split = _mm256_setr_epi8(
        0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15, //
        0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
    );
    for (blocks, run) in x.chunks(8).zip(out.iter_mut()) {
        let rows = ORDER.map(|j| match blocks.get(j) {
            Some(b) => _mm256_shuffle_epi8(_mm256_loadu_si256(b.qs.as_ptr() as *const __m256i), split),
            None => _mm256_setzero_si256(),
        });
        let lane = |f: fn(&BlockQ8x32) -> f32| {
            let v: [f32; 8] = ORDER.map(|j| blocks.get(j).map_or(0.0, f));
            _mm256_loadu_ps(v.as_ptr())
        };
        *run = Run { cols: transpose8(rows), sums: lane(|b| b.sum), d: lane(|b| b.d) };
    }
}

/// Row `r` against `N` tokens' runs, writing its unpacked runs to `keep`
/// unless it is null.
///
/// # Safety
/// As [`run`], with `xs` holding `N` tokens' runs and `keep` (unless null)
/// room for the row's runs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row<const N: usize>(
    m: &Mat,
    r: usize,
    xs: [*const Run; N],
    groups: &[RunGroups],
    keep: *mut Unpacked,
) -> [f32; N] {
    let nb = m.groups * m.per_group;
    let words = m.words.as_ptr().add(r * m.row_bytes);
    let es = m.dt.size();
    let (srow, brow) = (m.scales.as_ptr().add(r * m.groups * es), m.biases.as_ptr().add(r * m.groups * es));
    let nib = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    for (run, rg) in groups.iter().enumerate() {
        let here = (nb - 8 * run).min(8);
        let b = words.add(128 * run);
        let q: [__m256i; 4] = if here == 8 {
            std::array::from_fn(|p| _mm256_loadu_si256(b.add(32 * p) as *const __m256i))
        } else {
            // The row's last, partial run: its blocks, then zeros.
            let mut pad = [0u8; 128];
            std::ptr::copy_nonoverlapping(b, pad.as_mut_ptr(), 16 * here);
            std::array::from_fn(|p| _mm256_loadu_si256(pad.as_ptr().add(32 * p) as *const __m256i))
        };
        let (c0, c1, c2, c3) = transpose4(q[0], q[1], q[2], q[3]);
        let mut w = [_mm256_setzero_si256(); 8];
        for (i, c) in [c0, c1, c2, c3].into_iter().enumerate() {
            w[2 * i] = _mm256_and_si256(c, nib);
            w[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(c), nib);
        }
        // Eight values from the run's first group (one load; lanes past the
        // run's groups, from the next row, are never picked), unless that
        // would read past the matrix: then its `n`, padded.
        let n = if (r * m.groups + rg.g0 + 8) * es <= m.scales.len() { 8 } else { rg.n };
        let idx = _mm256_loadu_si256(rg.idx.as_ptr() as *const __m256i);
        let scale = _mm256_permutevar8x32_ps(load8(m.dt, srow, rg.g0, n), idx);
        // The step subtracts `mins · sums`: the bias, negated, adds it.
        let bias = _mm256_permutevar8x32_ps(load8(m.dt, brow, rg.g0, n), idx);
        let neg_bias = _mm256_sub_ps(_mm256_setzero_ps(), bias);
        let mut u = Unpacked { w, neg_bias, scale };
        // The steps read the kept copy, as the later groups will.
        let u: &Unpacked = if keep.is_null() {
            &mut u
        } else {
            keep.add(run).write(u);
            &*keep.add(run)
        };
        token_steps(u, &xs, run, &mut acc);
    }
    acc.map(|a| hsum(a))
}

/// As [`row`], on the runs it kept.
///
/// # Safety
/// `kept` holds the `runs` runs [`row`] wrote, `xs` `N` tokens' runs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_kept<const N: usize>(kept: *const Unpacked, xs: [*const Run; N], runs: usize) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for run in 0..runs {
        token_steps(&*kept.add(run), &xs, run, &mut acc);
    }
    acc.map(|a| hsum(a))
}

/// Each token's step against the weight run `u` (the run `run` of the row).
///
/// # Safety
/// `xs` holds `N` tokens' runs, more than `run` each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn token_steps<const N: usize>(u: &Unpacked, xs: &[*const Run; N], run: usize, acc: &mut [__m256; N]) {
    let ones = _mm256_set1_epi16(1);
    for (t, a) in acc.iter_mut().enumerate() {
        let xr = &*xs[t].add(run);
        let x = Cols { cols: xr.cols.as_ptr(), sums: &xr.sums, d: &xr.d };
        steps::q4_k(&u.w, ones, u.neg_bias, u.scale, x, a);
    }
}

//! AVX2 many-token kernels: each weight unit (a 256-value block, or a run
//! of eight 32-value blocks) is unpacked to byte codes once, in registers,
//! and multiplied with the int8 activations of a group of 8 tokens (one
//! accumulator per token, in memory), weights and activations both
//! transposed in 4-byte columns ([`kquants`], [`runs32`]); the loop, the
//! kept units and the column chunks are [`crate::simd::columns::unpacked`]'s
//! (shared with the MLX affine kernels).
//!
//! Loop order: token groups outside, rows inside. The driver hands a run of
//! rows sized to stay in L2, so the first group streams the rows from DRAM
//! (with the single-token kernels' software prefetch) and later groups read
//! their kept units from L2, while the group's activations stay in L1.
//!
//! Per (block, token) the integer sums are those of the single-token kernels
//! in [`super`], and so is the f32 scaling of each block; the 256-wide types
//! spread each block's sum over the eight lanes differently, and the 32-wide
//! ones give each of eight consecutive blocks a lane of its own, so results
//! agree with it to float rounding.

use std::arch::x86_64::__m256;

use qmoe_core::GgmlType;

use crate::simd::act::{BlockQ8K, BlockQ8x32};
use crate::simd::columns::unpacked::avx2::{groups, Unpacks};
use crate::simd::scratch::Tokens;

mod kquants;
pub(crate) mod runs32;

use kquants::{transpose_blocks, IQ4XS, Q2K, Q3K, Q45K, Q6K};
use runs32::{transpose_runs, transpose_runs_neg, IQ4NLRuns, Q40Runs, Q41Runs, Q50Runs, Q51Runs, Q80Runs};

/// Tokens per group: each block's unpacking (or its kept copy) is shared by
/// the group, and the steps keep their f32 accumulators in memory (touched
/// once per block), so the group costs no registers. Measured on Zen 3
/// before the kernels were transposed: 1.1-1.2x over groups of 4 for the
/// k-quants, 1.02-1.05x for Q8_0.
const GROUP: usize = 8;

/// # Safety
/// The CPU runs AVX2, FMA and F16C; `ty` takes Q8K activations; `x` holds
/// `n_tokens >= 1` rows of `nb` blocks; `w` is exactly `n_rows` rows of `nb`
/// blocks of `ty`; `y` is valid for writes at `t * y_stride + r` for every
/// `t < n_tokens`, `r < n_rows`; an `acts_id` other than 0 always comes with
/// the same `x` contents (see `scratch::Whole`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_q8k(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8K],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q2K => rows::<Q2K, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_blocks),
        GgmlType::Q3K => rows::<Q3K, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_blocks),
        GgmlType::Q4K => rows::<Q45K<false>, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_blocks),
        GgmlType::Q5K => rows::<Q45K<true>, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_blocks),
        GgmlType::Q6K => rows::<Q6K, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_blocks),
        GgmlType::IQ4XS => rows::<IQ4XS, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_blocks),
        _ => unreachable!("gemm_q8k: {ty} (checked by the caller)"),
    }
}

/// # Safety
/// As [`gemm_q8k`], for a type taking Q8x32 activations.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_q8x32(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q8_0 => rows::<Q80Runs, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_runs),
        GgmlType::Q4_0 => rows::<Q40Runs, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_runs_neg::<3>),
        GgmlType::Q4_1 => rows::<Q41Runs, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_runs),
        GgmlType::Q5_0 => rows::<Q50Runs, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_runs_neg::<4>),
        GgmlType::Q5_1 => rows::<Q51Runs, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_runs),
        GgmlType::IQ4NL => rows::<IQ4NLRuns, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, transpose_runs),
        _ => unreachable!("gemm_q8x32: {ty} (checked by the caller)"),
    }
}

/// A ggml type's units, read from one row of its fixed-size blocks.
pub(crate) trait BlockUnits {
    /// As [`Unpacks::X`].
    type X;
    /// As [`Unpacks::U`].
    type U;
    /// Bytes per weight block.
    const BYTES: usize;

    /// Units per row of `nb` blocks.
    fn units(nb: usize) -> usize;

    /// The unit `i` of the row at `row` (`nb` blocks).
    ///
    /// # Safety
    /// `row` points at `nb` blocks of the type, `i < Self::units(nb)`; the
    /// CPU runs AVX2 + FMA + F16C.
    unsafe fn unpack(row: *const u8, nb: usize, i: usize) -> Self::U;

    /// As [`Unpacks::step`].
    ///
    /// # Safety
    /// The CPU runs AVX2 + FMA + F16C.
    unsafe fn step(u: &Self::U, x: &Self::X, acc: &mut __m256);
}

/// A call's rows: `w` holds rows of `nb` blocks each.
pub(crate) struct BlockRows<'a> {
    pub(super) w: &'a [u8],
    pub(super) nb: usize,
}

impl<K: BlockUnits> Unpacks for K {
    type X = K::X;
    type U = K::U;
    type A = __m256;
    type M<'a> = BlockRows<'a>;

    fn units(m: &BlockRows) -> usize {
        K::units(m.nb)
    }

    fn stream<'a>(m: &Self::M<'a>) -> (&'a [u8], usize) {
        (m.w, m.nb * K::BYTES)
    }

    #[inline(always)]
    unsafe fn unpack(m: &BlockRows, r: usize, i: usize) -> K::U {
        K::unpack(m.w.as_ptr().add(r * m.nb * K::BYTES), m.nb, i)
    }

    #[inline(always)]
    unsafe fn step(u: &K::U, x: &K::X, acc: &mut __m256) {
        K::step(u, x, acc)
    }
}

/// A type's activation layout: `(x, nb, p)` writes the units of the tokens'
/// blocks `x` (`nb` per token) at `p`.
type Fill<B, X> = unsafe fn(&[B], usize, *mut X);

/// `y[t * stride + r] = dot(row r of w, token t)` for `n_rows` rows of `K`
/// and the `n_tokens` tokens of `x`, in token groups of [`GROUP`], each
/// group's activations laid out by `fill` ([`Tokens`]).
///
/// # Safety
/// As [`gemm_q8k`], with `fill` the layout of `K`'s activations.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows<K: BlockUnits, B>(
    w: &[u8],
    n_rows: usize,
    x: &[B],
    n_tokens: usize,
    y: *mut f32,
    stride: usize,
    id: u64,
    fill: Fill<B, K::X>,
) where
    K::X: 'static,
{
    let nb = x.len() / n_tokens;
    let units = K::units(nb);
    let mut tokens = Tokens::default();
    let mut prep = |t0: usize, n: usize| {
        // SAFETY (closure): `p` has room for the tokens' units.
        let fill = |ts: std::ops::Range<usize>, p| unsafe { fill(&x[ts.start * nb..ts.end * nb], nb, p) };
        (tokens.group(id, (n_tokens, units), (t0, n), fill), units)
    };
    groups::<K>(&BlockRows { w, nb }, 0..n_rows, n_tokens, GROUP, y, stride, &mut prep)
}

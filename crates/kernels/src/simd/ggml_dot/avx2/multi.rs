//! AVX2 many-token kernels: each weight unit (a 256-value block, or a run
//! of eight 32-value blocks) is unpacked to byte codes once, in registers,
//! and multiplied with the int8 activations of a group of 8 tokens (one
//! accumulator per token, in memory), weights and activations both
//! transposed in 4-byte columns ([`kquants`], [`runs32`]); the loop, the
//! kept units and the column chunks are [`unpacked::groups`]'s.
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

use qmoe_core::GgmlType;

use crate::simd::act::{BlockQ8K, BlockQ8x32};

mod kquants;
mod runs32;
mod unpacked;

use kquants::{transposed, IQ4XS, Q2K, Q3K, Q45K, Q6K};
use runs32::{transposed32, IQ4NLRuns, Q40Runs, Q41Runs, Q50Runs, Q51Runs, Q80Runs};
use unpacked::groups;

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
        GgmlType::Q2K => groups::<Q2K, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed),
        GgmlType::Q3K => groups::<Q3K, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed),
        GgmlType::Q4K => groups::<Q45K<false>, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed),
        GgmlType::Q5K => groups::<Q45K<true>, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed),
        GgmlType::Q6K => groups::<Q6K, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed),
        GgmlType::IQ4XS => groups::<IQ4XS, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed),
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
        GgmlType::Q8_0 => groups::<Q80Runs, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed32),
        GgmlType::Q4_0 => groups::<Q40Runs, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed32),
        GgmlType::Q4_1 => groups::<Q41Runs, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed32),
        GgmlType::Q5_0 => groups::<Q50Runs, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed32),
        GgmlType::Q5_1 => groups::<Q51Runs, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed32),
        GgmlType::IQ4NL => groups::<IQ4NLRuns, _, _>(w, n_rows, x, n_tokens, y, y_stride, acts_id, GROUP, transposed32),
        _ => unreachable!("gemm_q8x32: {ty} (checked by the caller)"),
    }
}

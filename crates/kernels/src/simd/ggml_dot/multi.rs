//! Many-token products of ggml weight blocks with int8 activations (prefill).
//!
//! `y[t * y_stride + i] = dot(row i of w, x[t])` for `n_rows` rows stored
//! contiguously in `w` and `n_tokens` tokens, `x` holding each token's
//! blocks one token after the other. The AVX2 level unpacks each weight
//! block once per group of tokens ([`avx2::multi`](super::avx2)) instead of
//! once per token, and reads a run of rows from memory once for all tokens.
//!
//! The AVX-512 level (F/BW/VL + VNNI, `multi/avx512.rs`) has its own
//! kernels for every quantized ggml type, with the same structure: one
//! `vpdpbusd` does 64 int8 multiply-adds straight into i32 lanes where AVX2
//! needs `vpmaddubsw` + `vpmaddwd` per 32.
//!
//! The scalar twin runs the single-token scalar kernel per token (the NEON
//! level likewise runs the single-token NEON kernel per token): the same
//! integer sums per (sub-)block, so the levels agree to float rounding, and
//! the AVX2 level agrees with [`super::gemv_q8k`] / [`super::gemv_q8x32`]
//! per token to float rounding (the k-quants and IQ4_XS add sub-block sums
//! in a transposed order, see `avx2/multi/kquants.rs`). The AVX-512 kernels
//! scale each group's exact integer sum per lane in f32: they too agree to
//! float rounding.

use qmoe_core::GgmlType;

#[cfg(target_arch = "x86_64")]
use super::avx512_usable;
use super::{act_kind, avx2_usable, check_bytes};
use crate::simd::act::{BlockQ8K, BlockQ8x32};
use crate::simd::{ActKind, Level};

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Whether `ty` has a many-token int8 kernel (every quantized ggml type).
pub fn has_multi(ty: GgmlType) -> bool {
    act_kind(ty).is_some()
}

/// `y[t * y_stride + i] = dot(row i of w, x[t])` for `i < n_rows`,
/// `t < n_tokens`; `x` holds `n_tokens` rows of `blocks_per_row` blocks.
///
/// # Panics
/// If `ty` does not take Q8K activations, or the lengths of `w`, `x`, `y`
/// do not match the shapes.
#[allow(clippy::too_many_arguments)] // weights, activations, output: each with its shape
pub fn gemm_q8k(
    level: Level,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8K],
    n_tokens: usize,
    y: &mut [f32],
    y_stride: usize,
) {
    check_y(y.len(), n_rows, n_tokens, y_stride);
    // SAFETY: `check_y` proved every `t * y_stride + i` inside `y`.
    unsafe { gemm_q8k_raw(level, ty, w, n_rows, x, n_tokens, y.as_mut_ptr(), y_stride, 0) }
}

/// As [`gemm_q8k`], for the 32-wide types (Q8x32 activations).
#[allow(clippy::too_many_arguments)]
pub fn gemm_q8x32(
    level: Level,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: &mut [f32],
    y_stride: usize,
) {
    check_y(y.len(), n_rows, n_tokens, y_stride);
    // SAFETY: as in `gemm_q8k`.
    unsafe { gemm_q8x32_raw(level, ty, w, n_rows, x, n_tokens, y.as_mut_ptr(), y_stride, 0) }
}

/// [`gemm_q8k`] into a raw output, so that threads can fill disjoint rows
/// of one product. `acts_id`, when not 0, names the contents of `x` for the
/// whole product: the AVX2 kernels that rearrange the activations then do it
/// once per thread and product, not once per call (row task).
///
/// # Safety
/// `y` is valid for writes at `t * y_stride + i` for every `t < n_tokens`,
/// `i < n_rows`, and nothing else accesses those elements during the call;
/// an `acts_id` other than 0 always comes with the same `x` contents.
#[allow(clippy::too_many_arguments)]
// `acts_id` names the input for the AVX2 kernels only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) unsafe fn gemm_q8k_raw(
    level: Level,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8K],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    assert_eq!(act_kind(ty), Some(ActKind::Q8K), "gemm_q8k: {ty} does not take Q8K activations");
    let nb = blocks_per_row(x.len(), n_tokens);
    check_bytes(ty, w.len(), nb, n_rows);
    if n_rows == 0 || n_tokens == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx512_usable(level) && avx512::has_kernel(ty) {
        // SAFETY: the CPU has AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C
        // (checked just above) and `ty` has a kernel there; `w` is exactly
        // `n_rows` rows of `nb` blocks, `x` `n_tokens` rows of `nb`; `y` is
        // the caller's contract.
        unsafe { avx512::gemm_q8k(ty, w, n_rows, x, n_tokens, y, y_stride, acts_id) };
        return;
    }
    if avx2_usable(level) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); `w`
        // is exactly `n_rows` rows of `nb` blocks, `x` `n_tokens` rows of
        // `nb`; `y` is the caller's contract.
        unsafe {
            super::avx2::multi::gemm_q8k(ty, w, n_rows, x, n_tokens, y, y_stride, acts_id)
        };
        return;
    }
    // Other levels (scalar, NEON): the single-token kernel per token.
    for t in 0..n_tokens {
        // SAFETY: the caller's contract covers `t * y_stride + 0 .. n_rows`.
        let yt = unsafe { std::slice::from_raw_parts_mut(y.add(t * y_stride), n_rows) };
        super::gemv_q8k(level, ty, w, &x[t * nb..(t + 1) * nb], yt);
    }
}

/// [`gemm_q8x32`] into a raw output.
///
/// # Safety
/// As [`gemm_q8k_raw`].
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) unsafe fn gemm_q8x32_raw(
    level: Level,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    assert_eq!(act_kind(ty), Some(ActKind::Q8x32), "gemm_q8x32: {ty} does not take Q8x32 activations");
    let nb = blocks_per_row(x.len(), n_tokens);
    check_bytes(ty, w.len(), nb, n_rows);
    if n_rows == 0 || n_tokens == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx512_usable(level) && avx512::has_q8x32_kernel(ty) {
        // SAFETY: as in `gemm_q8k_raw`'s AVX-512 branch (the CPU has
        // AVX-512 F/BW/VL + VNNI, checked just above; `ty` has a kernel there).
        unsafe { avx512::gemm_q8x32(ty, w, n_rows, x, n_tokens, y, y_stride, acts_id) };
        return;
    }
    if avx2_usable(level) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gemm_q8k_raw`.
        unsafe {
            super::avx2::multi::gemm_q8x32(ty, w, n_rows, x, n_tokens, y, y_stride, acts_id)
        };
        return;
    }
    for t in 0..n_tokens {
        // SAFETY: the caller's contract covers `t * y_stride + 0 .. n_rows`.
        let yt = unsafe { std::slice::from_raw_parts_mut(y.add(t * y_stride), n_rows) };
        super::gemv_q8x32(level, ty, w, &x[t * nb..(t + 1) * nb], yt);
    }
}

/// Blocks per token: `x` must split evenly over the tokens.
fn blocks_per_row(blocks: usize, n_tokens: usize) -> usize {
    if n_tokens == 0 {
        assert_eq!(blocks, 0, "ggml gemm: {blocks} activation blocks for 0 tokens");
        return 0;
    }
    assert_eq!(blocks % n_tokens, 0, "ggml gemm: {blocks} activation blocks for {n_tokens} tokens");
    blocks / n_tokens
}

/// `y` must hold element `t * y_stride + i` for every token and row, and the
/// tokens' rows must not overlap.
fn check_y(len: usize, n_rows: usize, n_tokens: usize, y_stride: usize) {
    if n_rows == 0 || n_tokens == 0 {
        return;
    }
    assert!(n_tokens == 1 || y_stride >= n_rows, "ggml gemm: stride {y_stride} < {n_rows} rows");
    let need = (n_tokens - 1).checked_mul(y_stride).and_then(|v| v.checked_add(n_rows));
    assert!(need.is_some_and(|n| n <= len), "ggml gemm: y of {len} for {n_tokens} tokens of stride {y_stride}");
}

//! AArch64 Advanced SIMD (NEON) kernels: the [`super::Level::Neon`] level.
//!
//! Baseline ARMv8.0 NEON only. The `sdot` dot-product instructions (the
//! `dotprod` extension) would do a 16-byte int8 dot product in one
//! instruction, but their intrinsics (`vdotq_s32`) are still unstable in
//! Rust (`stdarch_neon_dotprod`), so the int8 core here is the baseline
//! widening multiply: `smull` + `smlal2` (16 products summed in pairs to
//! i16) then `sadalp` (pairs summed into i32 lanes). F16 is widened with
//! `fcvtl`, which every ARMv8 core has.
//!
//! No software prefetch: `prfm` has no stable intrinsic, and the cores this
//! targets detect sequential row streams on their own.

pub(crate) mod act;
pub(crate) mod affine;
pub(crate) mod float;

use std::arch::aarch64::*;

/// Whether this CPU runs the NEON kernels (every AArch64 Linux CPU does;
/// checked anyway so the level is only reported when detected).
pub(crate) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// `acc + Σ w[i] x[i]` over 16 int8 lanes, as 4 i32 lanes (which lane holds
/// which products is unspecified; only their total matters).
///
/// Exact as long as `|w[i] x[i] + w[i+8] x[i+8]| < 2^15`: activation codes
/// lie in `-127..=127` (both quantizers guarantee it) and weight codes in
/// `-128..=127`, so each pair is at most `2 · 128 · 127 = 32512`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot16(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    vpadalq_s16(acc, vmlal_high_s8(p, w, x))
}

/// The integer sum `Σ w[i] x[i]` of 32 codes: `w` two 16-lane halves, `x`
/// at `x` (32 readable bytes).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot32(w0: int8x16_t, w1: int8x16_t, x: *const i8) -> int32x4_t {
    let s = dot16(vdupq_n_s32(0), w0, vld1q_s8(x));
    dot16(s, w1, vld1q_s8(x.add(16)))
}

/// The f16 with bits `bits`, widened exactly (`fcvtl`).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn f16_to_f32(bits: u16) -> f32 {
    vgetq_lane_f32::<0>(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(bits))))
}

/// The little-endian f16 at `p`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    f16_to_f32((p as *const u16).read_unaligned())
}

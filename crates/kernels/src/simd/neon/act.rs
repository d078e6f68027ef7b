//! NEON twins of the activation quantizers in [`crate::simd::act`]: the
//! same bytes as the scalar versions, bit for bit (a test compares them).
//!
//! What makes them identical: `fmaxnm` ignores NaN as `f32::max` and the
//! scalar `>` scan do; `fcvtns` rounds half to even as `round_ties_even`
//! and saturates as `as i32` does; the saturating narrows (`sqxtn`) clamp
//! to the i8 range as the scalar `as i8` / `min(127)` do (the scaled values
//! never go below -127.5, so nothing else is clamped); the per-16 sums are
//! exact in i16; and the f32 lane sums are added in the scalar order.

use std::arch::aarch64::*;

use crate::simd::act::{BlockQ8K, BlockQ8x32};

/// `round_half_even(v * scale)` for 16 values (four vectors), narrowed
/// with saturation to 16 i8.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn round_narrow16(v: [float32x4_t; 4], scale: float32x4_t) -> int8x16_t {
    // A fn, not a closure: closures do not inherit `target_feature`.
    #[inline(always)]
    unsafe fn q(v: float32x4_t, scale: float32x4_t) -> int32x4_t {
        vcvtnq_s32_f32(vmulq_f32(v, scale))
    }
    let q = |v| q(v, scale);
    let lo = vqmovn_high_s32(vqmovn_s32(q(v[0])), q(v[1]));
    let hi = vqmovn_high_s32(vqmovn_s32(q(v[2])), q(v[3]));
    vqmovn_high_s16(vqmovn_s16(lo), hi)
}

/// # Safety
/// The CPU runs NEON (every AArch64 CPU this builds for does).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q8k_block(xb: &[f32; 256], b: &mut BlockQ8K) {
    let p = xb.as_ptr();
    let mut m = vdupq_n_f32(0.0);
    for i in 0..64 {
        m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(p.add(4 * i))));
    }
    let amax = vmaxnmvq_f32(m);
    if amax == 0.0 {
        *b = BlockQ8K::default();
        return;
    }
    // The first value whose magnitude is amax: its sign sets the scale's.
    let target = vdupq_n_f32(amax);
    let mut max = amax;
    for i in 0..64 {
        let hit = vceqq_f32(vabsq_f32(vld1q_f32(p.add(4 * i))), target);
        if vmaxvq_u32(hit) != 0 {
            let at = xb[4 * i..4 * i + 4].iter().position(|v| v.abs() == amax);
            max = xb[4 * i + at.expect("a lane compared equal")];
            break;
        }
    }
    let iscale = -127.0 / max;
    let s = vdupq_n_f32(iscale);
    let q = b.qs.as_mut_ptr();
    for j in 0..16 {
        let v = std::array::from_fn(|k| vld1q_f32(p.add(16 * j + 4 * k)));
        let codes = round_narrow16(v, s);
        vst1q_s8(q.add(16 * j), codes);
        // |Σ| <= 16 · 127: exact in i16.
        b.bsums[j] = vaddlvq_s8(codes);
    }
    b.d = 1.0 / iscale;
}

/// # Safety
/// As [`q8k_block`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn q8x32_block(xb: &[f32; 32], b: &mut BlockQ8x32) {
    let p = xb.as_ptr();
    let v: [float32x4_t; 8] = std::array::from_fn(|k| vld1q_f32(p.add(4 * k)));
    let mut m = vdupq_n_f32(0.0);
    for &v in &v {
        m = vmaxnmq_f32(m, vabsq_f32(v));
    }
    let amax = vmaxnmvq_f32(m);
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let s = vdupq_n_f32(id);
    vst1q_s8(b.qs.as_mut_ptr(), round_narrow16([v[0], v[1], v[2], v[3]], s));
    vst1q_s8(b.qs.as_mut_ptr().add(16), round_narrow16([v[4], v[5], v[6], v[7]], s));
    // The scalar lanes `((x[l] + x[8+l]) + x[16+l]) + x[24+l]`, l = 0..8:
    // vectors 0, 2, 4, 6 hold lanes 0..4 of the four rows, 1, 3, 5, 7 lanes 4..8.
    let lo = vaddq_f32(vaddq_f32(vaddq_f32(v[0], v[2]), v[4]), v[6]);
    let hi = vaddq_f32(vaddq_f32(vaddq_f32(v[1], v[3]), v[5]), v[7]);
    let mut lanes = [0.0f32; 8];
    vst1q_f32(lanes.as_mut_ptr(), lo);
    vst1q_f32(lanes.as_mut_ptr().add(4), hi);
    b.d = d;
    b.sum = crate::vecops::fold8(lanes);
}

//! NEON gemv for MLX affine 4- and 8-bit weights against int8 activation
//! blocks ([`BlockQ8x32`]); the other widths run the scalar twin.
//!
//! Each 32-value block's integer sum `Σ q_i qs_i` is exact, and the f32 work
//! around it (per group `fsum += d_b isum_b`, `scaled += scale_g fsum`,
//! `biased += bias_g xsum_g`) is the scalar twin's, in its order, so this
//! level returns the twin's bits. One horizontal add per block is the price;
//! the integer work per block is a handful of instructions either way.

use std::arch::aarch64::*;
use std::ops::Range;

use qmoe_core::dtype::DType;

use super::{dot16, f16_at};
use crate::simd::act::BlockQ8x32;
use crate::simd::affine_dot::AffineMat;

/// Whether this level has a kernel for `bits`-bit weights.
pub(crate) fn supports(bits: u32) -> bool {
    matches!(bits, 4 | 8)
}

/// # Safety
/// NEON available; `m` checked against its shape, `rows.end <=` its rows,
/// `x` `[cols / 32]`, `y.len() == rows.len()`, [`supports`]`(m.bits)`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemv(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
    match m.bits {
        4 => rows_of::<4>(m, rows, x, y),
        8 => rows_of::<8>(m, rows, x, y),
        b => unreachable!("{b} bits checked by the caller"),
    }
}

#[target_feature(enable = "neon")]
unsafe fn rows_of<const B: usize>(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
    for (yi, r) in y.iter_mut().zip(rows) {
        *yi = row::<B>(m, r, x);
    }
}

/// Element `i` of a little-endian F32 / F16 / BF16 array at `p`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn scale_at(dt: DType, p: *const u8, i: usize) -> f32 {
    match dt {
        DType::F32 => (p.add(4 * i) as *const f32).read_unaligned(),
        DType::F16 => f16_at(p.add(2 * i)),
        _ => f32::from_bits(((p.add(2 * i) as *const u16).read_unaligned() as u32) << 16),
    }
}

/// Row `r`: the scalar twin's arithmetic with vector block sums.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn row<const B: usize>(m: &AffineMat, r: usize, x: &[BlockQ8x32]) -> f32 {
    // SAFETY: row r exists (the caller's contract), so its words, scales and
    // biases lie inside the checked slices; block k < x.len() = cols / 32
    // is `4 B` bytes inside the row.
    let words = m.words.as_ptr().add(r * m.row_bytes);
    let srow = m.scales.as_ptr().add(r * m.scale_row);
    let brow = m.biases.as_ptr().add(r * m.scale_row);
    let per_group = m.group_size / 32;
    let (mut scaled, mut biased) = (0.0f32, 0.0f32);
    for g in 0..m.groups {
        let (mut fsum, mut xsum) = (0.0f32, 0.0f32);
        for (k, xb) in x.iter().enumerate().skip(g * per_group).take(per_group) {
            let isum = if B == 4 { block4(words.add(16 * k), xb) } else { block8(words.add(32 * k), xb) };
            fsum += xb.d * isum as f32;
            xsum += xb.sum;
        }
        scaled += scale_at(m.scale_dtype, srow, g) * fsum;
        biased += scale_at(m.scale_dtype, brow, g) * xsum;
    }
    scaled + biased
}

/// A 4-bit block (16 bytes): value `2i` is the low nibble of byte `i`,
/// `2i + 1` the high one. `ld2` splits the activations the same way (even
/// and odd indices), so the nibbles need no reordering.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block4(p: *const u8, xb: &BlockQ8x32) -> i32 {
    let v = vld1q_u8(p);
    let lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
    let xs = vld2q_s8(xb.qs.as_ptr());
    vaddvq_s32(dot16(dot16(vdupq_n_s32(0), lo, xs.0), hi, xs.1))
}

/// An 8-bit block (32 bytes of codes 0..=255). The codes do not fit i8, so
/// they are flipped to `q - 128` (an xor of the top bit) for the signed
/// dot product, and `128 Σ qs` is added back.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block8(p: *const u8, xb: &BlockQ8x32) -> i32 {
    let top = vdupq_n_u8(0x80);
    let w0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), top));
    let w1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p.add(16)), top));
    let x0 = vld1q_s8(xb.qs.as_ptr());
    let x1 = vld1q_s8(xb.qs.as_ptr().add(16));
    let s = vaddvq_s32(dot16(dot16(vdupq_n_s32(0), w0, x0), w1, x1));
    s + 128 * (vaddlvq_s8(x0) as i32 + vaddlvq_s8(x1) as i32)
}

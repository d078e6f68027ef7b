//! NEON float gemv (F32, F16, BF16 weights, f32 activations): the
//! [`crate::simd::float_dot`] summation order with 4-lane registers, each of
//! the scalar twin's four 8-lane partial sums held as two vectors (lanes
//! 0..4 and 4..8), so the only difference from the twin is FMA rounding.

use std::arch::aarch64::*;

use qmoe_core::dtype::DType;

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// Four weights from element `i` of `row`, widened to f32: F16 by `fcvtl`,
/// BF16 by shifting the 16 bits to the top of each u32 (both exact).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load4<const DT: u8>(row: *const u8, i: usize) -> float32x4_t {
    match DT {
        F32 => vld1q_f32(row.add(4 * i) as *const f32),
        F16 => vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(row.add(2 * i) as *const u16))),
        _ => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(row.add(2 * i) as *const u16))),
    }
}

/// # Safety
/// NEON available; `bytes` is `y.len()` rows of `cols` elements of `dt`;
/// `x.len() == cols`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gemv(dt: DType, bytes: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    match dt {
        DType::F32 => rows::<F32>(bytes, cols, x, y),
        DType::F16 => rows::<F16>(bytes, cols, x, y),
        DType::BF16 => rows::<BF16>(bytes, cols, x, y),
        other => unreachable!("{other} checked to be float"),
    }
}

#[target_feature(enable = "neon")]
unsafe fn rows<const DT: u8>(bytes: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    let es = if DT == F32 { 4 } else { 2 };
    let row_bytes = cols * es;
    let dt = match DT {
        F32 => DType::F32,
        F16 => DType::F16,
        _ => DType::BF16,
    };
    let xp = x.as_ptr();
    for (r, yr) in y.iter_mut().enumerate() {
        // SAFETY: row r lies inside `bytes`; every load reads elements
        // below `cols` of that row and of `x`.
        let row = bytes.as_ptr().add(r * row_bytes);
        // acc[k][h]: lanes 4h..4h+4 of the twin's partial sum k.
        let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
        let mut c = 0;
        while c + 32 <= cols {
            for (k, a) in acc.iter_mut().enumerate() {
                for (h, ah) in a.iter_mut().enumerate() {
                    let i = c + 8 * k + 4 * h;
                    *ah = vfmaq_f32(*ah, load4::<DT>(row, i), vld1q_f32(xp.add(i)));
                }
            }
            c += 32;
        }
        while c + 8 <= cols {
            for (h, ah) in acc[0].iter_mut().enumerate() {
                let i = c + 4 * h;
                *ah = vfmaq_f32(*ah, load4::<DT>(row, i), vld1q_f32(xp.add(i)));
            }
            c += 8;
        }
        // (a0 + a1) + (a2 + a3), then the twin's fold: h = lanes 0..4 +
        // lanes 4..8, then (h0 + h2) + (h1 + h3).
        let half = |h: usize| vaddq_f32(vaddq_f32(acc[0][h], acc[1][h]), vaddq_f32(acc[2][h], acc[3][h]));
        let h = vaddq_f32(half(0), half(1));
        let pair = vadd_f32(vget_low_f32(h), vget_high_f32(h));
        let mut s = vpadds_f32(pair);
        let rs = std::slice::from_raw_parts(row, row_bytes);
        for (i, xi) in x.iter().enumerate().skip(c) {
            s += super::super::float_dot::elem(dt, rs, i) * xi;
        }
        *yr = s;
    }
}

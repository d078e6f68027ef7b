//! Activations quantized to int8, once per matmul, for the integer dot
//! products of quantized weights.
//!
//! Two block shapes, matching the weight block families:
//! * [`BlockQ8K`]: 256 values with one f32 scale and 16 partial sums of the
//!   codes (llama.cpp's `block_q8_K` layout and rounding), for the k-quants
//!   and IQ4_XS, whose minimums need the per-16 sums;
//! * [`BlockQ8x32`]: 32 values with an f32 scale and the exact f32 sum of
//!   the original values, for the 32-wide ggml types and MLX affine groups
//!   (a group's bias multiplies the sum of its inputs: taking it exactly
//!   keeps the bias term free of quantization error).

/// 256 activations: `x[i] ≈ d * qs[i]`, `bsums[j] = Σ qs[16j .. 16j+16]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K { d: 0.0, qs: [0; 256], bsums: [0; 16] }
    }
}

/// 32 activations: `x[i] ≈ d * qs[i]`, `sum = Σ x[i]` (exact f32 sum).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8x32 {
    pub d: f32,
    pub sum: f32,
    pub qs: [i8; 32],
}

/// Quantizes `x` (a multiple of 256 long) into `out` (`x.len() / 256`
/// blocks). The first value of largest magnitude maps to -127 exactly, as
/// in llama.cpp's `quantize_row_q8_K_ref` (round half to even); an all-zero
/// block gets `d = 0`. Runs at [`super::level`]; every level gives the same
/// bytes.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    quantize_q8k_at(super::level(), x, out)
}

/// [`quantize_q8k`] at a given level (tests compare the levels).
pub fn quantize_q8k_at(level: super::Level, x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * 256, "quantize_q8k: length");
    for (xb, b) in x.chunks_exact(256).zip(out.iter_mut()) {
        let xb: &[f32; 256] = xb.try_into().expect("256 values");
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2.
            super::Level::Avx2 | super::Level::Avx512 => unsafe { avx2::q8k_block(xb, b) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `Level::Neon` is only reported when the CPU has NEON.
            super::Level::Neon => unsafe { super::neon::act::q8k_block(xb, b) },
            _ => q8k_block(xb, b),
        }
    }
}

fn q8k_block(xb: &[f32; 256], b: &mut BlockQ8K) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        *b = BlockQ8K::default();
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in b.qs.iter_mut().zip(xb) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = qs.iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
}

/// Quantizes `x` (a multiple of 32 long) into `out` (`x.len() / 32`
/// blocks): symmetric, `d = max|x| / 127`, round half to even; `sum` is the
/// f32 sum of the 32 values in eight lanes (`x[l] + x[8+l] + x[16+l] +
/// x[24+l]`, then pairwise), the order the vector version uses.
pub fn quantize_q8x32(x: &[f32], out: &mut [BlockQ8x32]) {
    quantize_q8x32_at(super::level(), x, out)
}

/// [`quantize_q8x32`] at a given level (tests compare the levels).
pub fn quantize_q8x32_at(level: super::Level, x: &[f32], out: &mut [BlockQ8x32]) {
    assert_eq!(x.len(), out.len() * 32, "quantize_q8x32: length");
    for (xb, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        let xb: &[f32; 32] = xb.try_into().expect("32 values");
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2.
            super::Level::Avx2 | super::Level::Avx512 => unsafe { avx2::q8x32_block(xb, b) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `Level::Neon` is only reported when the CPU has NEON.
            super::Level::Neon => unsafe { super::neon::act::q8x32_block(xb, b) },
            _ => q8x32_block(xb, b),
        }
    }
}

fn q8x32_block(xb: &[f32; 32], b: &mut BlockQ8x32) {
    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in b.qs.iter_mut().zip(xb) {
        *q = (v * id).round_ties_even() as i8;
    }
    let mut lanes = [0.0f32; 8];
    for (l, lane) in lanes.iter_mut().enumerate() {
        *lane = ((xb[l] + xb[8 + l]) + xb[16 + l]) + xb[24 + l];
    }
    b.d = d;
    b.sum = crate::vecops::fold8(lanes);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ8K, BlockQ8x32};
    use std::arch::x86_64::*;

    /// `|v|` lane-wise (clears the sign bit).
    #[inline(always)]
    unsafe fn abs(v: __m256) -> __m256 {
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), v) }
    }

    /// Horizontal max of eight lanes.
    #[inline(always)]
    unsafe fn hmax(v: __m256) -> f32 {
        unsafe {
            let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
            _mm_cvtss_f32(m)
        }
    }

    /// Rounds `v * scale` half to even and packs 32 lanes (four vectors) to
    /// i8 in order, saturating (the scalar version clamps the one value that
    /// can exceed 127 the same way).
    #[inline(always)]
    unsafe fn round_pack32(v: [__m256; 4], scale: __m256, out: *mut i8) {
        unsafe {
            // An inlined fn, not a closure: a closure here gets no AVX2
            // target feature, so its intrinsics became calls (seen in perf).
            // `cvtps` rounds as MXCSR says, which Rust leaves at its default:
            // to nearest, ties to even (no separate `round_ps`).
            #[inline(always)]
            unsafe fn q(x: __m256, scale: __m256) -> __m256i {
                unsafe { _mm256_cvtps_epi32(_mm256_mul_ps(x, scale)) }
            }
            let i = [q(v[0], scale), q(v[1], scale), q(v[2], scale), q(v[3], scale)];
            // packs interleave 128-bit lanes; the permute restores order.
            let w01 = _mm256_packs_epi32(i[0], i[1]);
            let w23 = _mm256_packs_epi32(i[2], i[3]);
            let b = _mm256_packs_epi16(w01, w23);
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(out as *mut __m256i, b);
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q8k_block(xb: &[f32; 256], b: &mut BlockQ8K) {
        unsafe {
            let p = xb.as_ptr();
            // The largest and the smallest value, each in four independent
            // chains (one chain waited on each op's latency). The extreme of
            // larger magnitude gives the sign; only a tie (`a` and `-a` both
            // there) needs the search for the first of them.
            let (mut hi, mut lo) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
            for i in (0..32).step_by(4) {
                for k in 0..4 {
                    let v = _mm256_loadu_ps(p.add(8 * (i + k)));
                    hi[k] = _mm256_max_ps(hi[k], v);
                    lo[k] = _mm256_min_ps(lo[k], v);
                }
            }
            let top = hmax(_mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3])));
            let bottom = -hmax(abs(_mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3]))));
            let max = if top > -bottom {
                top
            } else if -bottom > top {
                bottom
            } else if top == 0.0 {
                *b = BlockQ8K::default();
                return;
            } else {
                let target = _mm256_set1_ps(top);
                let mut first = top;
                for i in 0..32 {
                    let v = _mm256_loadu_ps(p.add(8 * i));
                    let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs(v), target));
                    if hit != 0 {
                        first = xb[8 * i + hit.trailing_zeros() as usize];
                        break;
                    }
                }
                first
            };
            let iscale = -127.0 / max;
            let s = _mm256_set1_ps(iscale);
            for j in 0..8 {
                let v = std::array::from_fn(|k| _mm256_loadu_ps(p.add(32 * j + 8 * k)));
                round_pack32(v, s, b.qs.as_mut_ptr().add(32 * j));
            }
            b.bsums = group_sums(&b.qs);
            b.d = 1.0 / iscale;
        }
    }

    /// The sums of the 16 runs of 16 codes (`BlockQ8K::bsums`).
    ///
    /// A 32-byte load holds runs `2c` (low half) and `2c + 1` (high); codes
    /// summed in pairs, then fours, leave a run's sum in four i32 lanes of
    /// its half. Two rounds of horizontal adds over four loads put runs
    /// `[0, 2, 4, 6 | 1, 3, 5, 7]` in one register (and `8..16` likewise in
    /// a second); packing and interleaving the halves restores the order.
    /// (A widening and a horizontal sum per run took about eight
    /// instructions a run.)
    #[inline(always)]
    unsafe fn group_sums(qs: &[i8; 256]) -> [i16; 16] {
        unsafe {
            let ones8 = _mm256_set1_epi8(1);
            let ones16 = _mm256_set1_epi16(1);
            let fours: [__m256i; 8] = std::array::from_fn(|c| {
                let q = _mm256_loadu_si256(qs.as_ptr().add(32 * c) as *const __m256i);
                _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16)
            });
            let runs = |a: usize| {
                let h01 = _mm256_hadd_epi32(fours[a], fours[a + 1]);
                let h23 = _mm256_hadd_epi32(fours[a + 2], fours[a + 3]);
                _mm256_hadd_epi32(h01, h23)
            };
            // [0, 2, .., 14 | 1, 3, .., 15] as i16 (each sum is at most 16 * 127).
            let v = _mm256_packs_epi32(runs(0), runs(4));
            let (even, odd) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let mut out = [0i16; 16];
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, _mm_unpacklo_epi16(even, odd));
            _mm_storeu_si128(out.as_mut_ptr().add(8) as *mut __m128i, _mm_unpackhi_epi16(even, odd));
            out
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn q8x32_block(xb: &[f32; 32], b: &mut BlockQ8x32) {
        unsafe {
            let p = xb.as_ptr();
            let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(p.add(8 * k)));
            let m = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
            let amax = hmax(m);
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            round_pack32(v, _mm256_set1_ps(id), b.qs.as_mut_ptr());
            let lanes_v = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), v[2]), v[3]);
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), lanes_v);
            b.d = d;
            b.sum = crate::vecops::fold8(lanes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_gives_the_same_bytes() {
        let mut seed = 9u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for case in 0..40 {
            let mut x: Vec<f32> = (0..1024).map(|_| next() * 3.0).collect();
            match case % 5 {
                4 => {
                    // Ties: with -127 the extreme, codes are the values, all halfway.
                    x.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 200) as f32 - 99.5);
                    x.iter_mut().step_by(256).for_each(|v| *v = -127.0);
                }
                1 => x[300] = -50.0, // a unique extreme, negative
                2 => {
                    x[10] = 7.0; // tied magnitudes, opposite signs: the first wins
                    x[20] = -7.0;
                }
                3 => {
                    x[256..512].fill(0.0); // an all-zero block
                    x[512..768].iter_mut().for_each(|v| *v = v.abs()); // no negative value
                    x[768..].iter_mut().for_each(|v| *v = -v.abs()); // no positive one
                }
                _ => {}
            }
            let mut want = vec![BlockQ8K::default(); 4];
            quantize_q8k_at(crate::simd::Level::Scalar, &x, &mut want);
            let mut want32 = vec![BlockQ8x32::default(); 32];
            quantize_q8x32_at(crate::simd::Level::Scalar, &x, &mut want32);
            for level in crate::simd::available() {
                let mut got = vec![BlockQ8K::default(); 4];
                quantize_q8k_at(level, &x, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(
                        (g.d.to_bits(), g.qs, g.bsums),
                        (w.d.to_bits(), w.qs, w.bsums),
                        "{level:?} q8k case {case}"
                    );
                }
                let mut got32 = vec![BlockQ8x32::default(); 32];
                quantize_q8x32_at(level, &x, &mut got32);
                for (g, w) in got32.iter().zip(&want32) {
                    assert_eq!(
                        (g.d.to_bits(), g.sum.to_bits(), g.qs),
                        (w.d.to_bits(), w.sum.to_bits(), w.qs),
                        "{level:?} q8x32 case {case}"
                    );
                }
            }
        }
    }

    #[test]
    fn q8k_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let mut b = vec![BlockQ8K::default(); 2];
        quantize_q8k(&x, &mut b);
        for (i, &v) in x.iter().enumerate() {
            let blk = &b[i / 256];
            let back = blk.d * blk.qs[i % 256] as f32;
            assert!((back - v).abs() <= blk.d.abs() * 0.5 + 1e-7, "{i}: {v} vs {back}");
        }
        for blk in &b {
            for j in 0..16 {
                let s: i16 = blk.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
                assert_eq!(blk.bsums[j], s);
            }
        }
        let zero = vec![0.0; 256];
        quantize_q8k(&zero, &mut b[..1]);
        assert_eq!(b[0].d, 0.0);
    }

    #[test]
    fn q8x32_round_trips_and_sums_exactly() {
        let x: Vec<f32> = (0..96).map(|i| ((i * 29 % 61) as f32 - 30.0) * 0.021).collect();
        let mut b = vec![BlockQ8x32::default(); 3];
        quantize_q8x32(&x, &mut b);
        for (i, &v) in x.iter().enumerate() {
            let blk = &b[i / 32];
            assert!((blk.d * blk.qs[i % 32] as f32 - v).abs() <= blk.d * 0.5 + 1e-7);
        }
        for (j, blk) in b.iter().enumerate() {
            let exact: f64 = x[32 * j..32 * j + 32].iter().map(|&v| v as f64).sum();
            assert!((blk.sum as f64 - exact).abs() < 1e-5, "block {j}: {} vs {exact}", blk.sum);
        }
    }
}

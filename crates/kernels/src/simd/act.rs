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
/// blocks). The value of largest magnitude maps to -127 exactly, as in
/// llama.cpp's `quantize_row_q8_K_ref`; an all-zero block gets `d = 0`.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * 256, "quantize_q8k: length");
    for (xb, b) in x.chunks_exact(256).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K::default();
            continue;
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
}

/// Quantizes `x` (a multiple of 32 long) into `out` (`x.len() / 32`
/// blocks): symmetric, `d = max|x| / 127`, round half away from zero.
pub fn quantize_q8x32(x: &[f32], out: &mut [BlockQ8x32]) {
    assert_eq!(x.len(), out.len() * 32, "quantize_q8x32: length");
    for (xb, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
        b.d = d;
        b.sum = xb.iter().sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(blk.sum, x[32 * j..32 * j + 32].iter().sum::<f32>());
        }
    }
}

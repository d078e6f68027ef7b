//! RMS normalisation.
//!
//! `weight` is always the *effective multiplier*: the loader has already
//! turned zero-centred checkpoint weights into `1 + w` (in f32), exactly once.
//! The sum of squares accumulates in f64 so long rows do not drift.

/// `out = x / sqrt(mean(x^2) + eps) * weight`, over rows of `weight.len()`.
/// `x`, `out`: `[n_rows, dim]`. Many rows (a prefill's) go to the pool in
/// pieces: on the calling thread alone the two norms of every layer took
/// 0.9% of a Q4_K_M prefill's samples, with the other thread idle.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    assert!(x.len() == out.len() && x.len().is_multiple_of(dim), "rms_norm: lengths");
    crate::pool::for_chunk_pieces(out, dim, rows_a_piece(dim), &|a, out| {
        let x = &x[a * dim..][..out.len()];
        for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let inv = inv_rms(xr, eps);
            for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
                *o = v * inv * w;
            }
        }
    });
}

/// In-place variant of [`rms_norm`].
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(x.len().is_multiple_of(dim), "rms_norm_inplace: lengths");
    crate::pool::for_chunk_pieces(x, dim, rows_a_piece(dim), &|_, x| {
        for xr in x.chunks_exact_mut(dim) {
            let inv = inv_rms(xr, eps);
            for (v, &w) in xr.iter_mut().zip(weight) {
                *v = *v * inv * w;
            }
        }
    });
}

/// The whole groups of eight of one gated row: the scalar steps' order
/// (`x inv`, times `w`, times `g sigmoid(g)`) with the vectorised `exp`, as
/// the SwiGLU's. Returns how many values it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2(x: &mut [f32], z: &[f32], weight: &[f32], inv: f32) -> usize {
    use std::arch::x86_64::*;
    let n = x.len() / 8 * 8;
    unsafe {
        let inv = _mm256_set1_ps(inv);
        for i in (0..n).step_by(8) {
            let g = _mm256_loadu_ps(z.as_ptr().add(i));
            let silu = _mm256_mul_ps(g, crate::act::sigmoid8(g));
            let p = x.as_mut_ptr().add(i);
            let v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p), inv), _mm256_loadu_ps(weight.as_ptr().add(i)));
            _mm256_storeu_ps(p, _mm256_mul_ps(v, silu));
        }
    }
    n
}

/// Rows of `dim` values a pool piece of the norms: at least 16K values, so
/// a decode step's one row (or a head's few) stays on the calling thread.
fn rows_a_piece(dim: usize) -> usize {
    (16 << 10) / dim.max(1)
}

/// GDN output norm: `x <- rms(x) * weight * silu(z)` per row of `weight.len()`
/// (the weight is plain, not zero-centred). `x`, `z`: `[n_rows, dim]`.
///
/// Rows go to the pool in pieces when there are many (a prefill's: on one
/// thread it took 1.2% of a Q4_K_M prefill's samples, the other idle).
pub fn rms_norm_gated_inplace(x: &mut [f32], z: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(x.len() == z.len() && x.len().is_multiple_of(dim), "rms_norm_gated: lengths");
    crate::pool::for_chunk_pieces(x, dim, rows_a_piece(dim), &|a, x| {
        let z = &z[a * dim..][..x.len()];
        for (xr, zr) in x.chunks_exact_mut(dim).zip(z.chunks_exact(dim)) {
            let inv = inv_rms(xr, eps);
            #[cfg(target_arch = "x86_64")]
            let done = if crate::simd::level().runs_avx2() {
                // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
                unsafe { gated_avx2(xr, zr, weight, inv) }
            } else {
                0
            };
            #[cfg(not(target_arch = "x86_64"))]
            let done = 0;
            for ((v, &w), &g) in xr[done..].iter_mut().zip(&weight[done..]).zip(&zr[done..]) {
                *v = *v * inv * w * crate::act::silu(g);
            }
        }
    });
}

/// `1 / sqrt(mean(x^2) + eps)`. Each square of an f32 is exact in f64; they
/// are summed in eight f64 lanes (independent chains the compiler turns
/// into vector adds) rather than one, whose add latency made a 2048-value
/// row cost about 4 cycles a value.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f64; 8];
    let mut eights = x.chunks_exact(8);
    for c in &mut eights {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += (v as f64) * (v as f64);
        }
    }
    let tail: f64 = eights.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    let ss = lanes.iter().sum::<f64>() + tail;
    (1.0 / (ss / x.len() as f64 + eps as f64).sqrt()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_weight_gives_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 1.0, 2.0, 2.0];
        let mut out = [0.0; 6];
        rms_norm(&x, &[1.0, 1.0, 1.0], 0.0, &mut out);
        for row in out.chunks(3) {
            let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 3.0;
            assert!((ms - 1.0).abs() < 1e-6);
        }
        let mut y = x;
        rms_norm_inplace(&mut y, &[1.0, 1.0, 1.0], 0.0);
        assert_eq!(y, out);
    }

    #[test]
    fn gated_rows_match_the_scalar_steps() {
        // Rows of 19: two groups of eight at the SIMD level, three scalar.
        let dim = 19;
        let mut uniform = crate::act::uniform(0x2545_F491_4F6C_DD1D);
        let mut next = move || 4.0 * uniform();
        let x: Vec<f32> = (0..5 * dim).map(|_| next()).collect();
        let z: Vec<f32> = (0..5 * dim).map(|_| next() * 3.0).collect();
        let w: Vec<f32> = (0..dim).map(|_| next()).collect();
        let mut got = x.clone();
        rms_norm_gated_inplace(&mut got, &z, &w, 1e-6);
        for (r, row) in x.chunks_exact(dim).enumerate() {
            let inv = inv_rms(row, 1e-6);
            for i in 0..dim {
                let want = row[i] * inv * w[i] * crate::act::silu(z[r * dim + i]);
                let a = got[r * dim + i];
                assert!((a - want).abs() <= 1e-30 + 4.0 * f32::EPSILON * want.abs(), "[{r}][{i}]: {a} vs {want}");
            }
        }
    }

    #[test]
    fn gated_multiplies_by_silu_of_gate() {
        let mut x = [1.0f32, 1.0];
        rms_norm_gated_inplace(&mut x, &[0.0, 2.0], &[1.0, 2.0], 0.0);
        assert_eq!(x[0], 0.0);
        assert!((x[1] - 2.0 * crate::act::silu(2.0)).abs() < 1e-6);
    }
}

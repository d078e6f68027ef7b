//! Scalar activations and small vector ops used between the matmuls.
//!
//! All in f32; `exp` of large negative arguments underflows to 0 cleanly.

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `log(1 + e^x)`; above 20 it returns `x` itself, as PyTorch's softplus does.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// SwiGLU combine: `out[i] = silu(gate[i]) * up[i]`, at the best SIMD level.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_at(crate::simd::level(), gate, up, out)
}

/// [`swiglu`] at `level`. The AVX2 level does the scalar steps in the same
/// order (sigmoid, times gate, times up) with the vectorised `exp` (within
/// 2 ulp of libm's): a prefill's experts need millions of exponentials.
pub fn swiglu_at(level: crate::simd::Level, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "swiglu: lengths");
    // How many leading values a SIMD level wrote; the scalar loop does the rest.
    #[cfg(target_arch = "x86_64")]
    let done = if level.runs_avx2() {
        // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
        unsafe { swiglu_avx2(gate, up, out) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = level;
        0
    };
    for ((o, &g), &u) in out[done..].iter_mut().zip(&gate[done..]).zip(&up[done..]) {
        *o = silu(g) * u;
    }
}

/// The whole groups of eight; returns how many values it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = out.len() / 8 * 8;
    unsafe {
        for i in (0..n).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let sig = sigmoid8(g);
            let o = _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), o);
        }
    }
    n
}

/// `out[i] *= sigmoid(gate[i])` (the gated attention's output gate), at
/// the best SIMD level; the AVX2 level as [`swiglu_at`] takes its sigmoid.
pub fn mul_sigmoid(out: &mut [f32], gate: &[f32]) {
    assert_eq!(out.len(), gate.len(), "mul_sigmoid: lengths");
    #[cfg(target_arch = "x86_64")]
    let done = if crate::simd::level().runs_avx2() {
        // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
        unsafe { mul_sigmoid_avx2(out, gate) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (o, &g) in out[done..].iter_mut().zip(&gate[done..]) {
        *o *= sigmoid(g);
    }
}

/// The whole groups of eight of [`mul_sigmoid`]; returns how many values it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn mul_sigmoid_avx2(out: &mut [f32], gate: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = out.len() / 8 * 8;
    unsafe {
        for i in (0..n).step_by(8) {
            let sig = sigmoid8(_mm256_loadu_ps(gate.as_ptr().add(i)));
            let o = out.as_mut_ptr().add(i);
            _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_loadu_ps(o), sig));
        }
    }
    n
}

/// `1 / (1 + e^-g)` per lane, as [`sigmoid`] with the vectorised `exp`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sigmoid8(g: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let e = unsafe { crate::simd::expf::exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g)) };
    _mm256_div_ps(one, _mm256_add_ps(one, e))
}

/// In-place numerically stable softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Indices of the `k` largest values, largest first; ties keep the lower index
/// first (a stable order, so routing is deterministic).
pub fn top_k(x: &[f32], k: usize, out: &mut [usize]) {
    assert!(k <= x.len() && out.len() == k, "top_k: k");
    for slot in 0..k {
        let mut best = usize::MAX;
        for (i, &v) in x.iter().enumerate() {
            if out[..slot].contains(&i) {
                continue;
            }
            if best == usize::MAX || v > x[best] {
                best = i;
            }
        }
        out[slot] = best;
    }
}

/// Test values uniform in `[-1, 1)` from an xorshift stream seeded by `seed`.
#[cfg(test)]
pub(crate) fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_sigmoid_matches_the_scalar_steps() {
        let mut next = uniform(0x9E37_79B9_7F4A_7C15);
        for n in [0usize, 1, 7, 8, 9, 31, 517] {
            let mut gate: Vec<f32> = (0..n).map(|_| next() * 12.0).collect();
            if n > 8 {
                gate[..6].copy_from_slice(&[-100.0, 100.0, -87.5, 88.5, 0.0, -0.0]);
            }
            let out: Vec<f32> = (0..n).map(|_| next() * 3.0).collect();
            let want: Vec<f32> = out.iter().zip(&gate).map(|(&o, &g)| o * sigmoid(g)).collect();
            let mut got = out.clone();
            mul_sigmoid(&mut got, &gate);
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-30 + 4.0 * f32::EPSILON * b.abs(), "n={n} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn swiglu_levels_match_the_scalar_twin() {
        let mut next = uniform(0x2545_F491_4F6C_DD1D);
        for n in [0usize, 1, 7, 8, 9, 31, 64, 517] {
            let mut gate: Vec<f32> = (0..n).map(|_| next() * 12.0).collect();
            if n > 8 {
                gate[..6].copy_from_slice(&[-100.0, 100.0, -87.5, 88.5, 0.0, -0.0]);
            }
            let up: Vec<f32> = (0..n).map(|_| next() * 3.0).collect();
            let mut want = vec![0.0; n];
            swiglu_at(crate::simd::Level::Scalar, &gate, &up, &mut want);
            for level in crate::simd::available() {
                let mut got = vec![f32::NAN; n];
                swiglu_at(level, &gate, &up, &mut got);
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-30 + 4.0 * f32::EPSILON * b.abs(), "{level:?} n={n} [{i}]: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x = [1.0, 3.0, -2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] == x[3] && x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn top_k_picks_largest_with_stable_ties() {
        let x = [0.1, 0.5, 0.3, 0.5, 0.05];
        let mut idx = [0usize; 3];
        top_k(&x, 3, &mut idx);
        assert_eq!(idx, [1, 3, 2]);
    }

    #[test]
    fn softplus_matches_formula_and_threshold() {
        for &x in &[-30.0f32, -1.0, 0.0, 2.5, 19.9] {
            let want = (1.0f64 + (x as f64).exp()).ln() as f32;
            assert!((softplus(x) - want).abs() < 1e-6, "{x}");
        }
        assert_eq!(softplus(25.0), 25.0);
    }
}

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

/// SwiGLU combine: `out[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "swiglu: lengths");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

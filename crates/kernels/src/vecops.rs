//! Small vector helpers shared by the f32 kernels, written so the compiler
//! vectorises them at whatever instruction set the caller is compiled for.
//!
//! Float addition is not associative, so a compiler may not split a plain
//! `sum()` into vector lanes: it stays one serial chain of adds (4 cycles
//! each). [`dot`] keeps eight independent partial sums instead, which is
//! exactly one AVX register (two SSE registers); every kernel that calls it
//! therefore has one fixed summation order at every SIMD level.

/// `sum a_i b_i` over `min(a.len(), b.len())` with eight lane sums, added
/// pairwise at the end.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(n / 8 * 8);
    let (bc, br) = b.split_at(n / 8 * 8);
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    fold8(acc)
}

/// The sum of eight lane partials in the order every eight-lane kernel here
/// uses (`dot`, the prefill tile, the activation block sums), so scalar and
/// vector versions agree bit for bit: `((l0+l4)+(l1+l5)) + ((l2+l6)+(l3+l7))`.
#[inline(always)]
pub fn fold8(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// `y <- y + alpha x`.
#[inline(always)]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y_i, &x_i) in y.iter_mut().zip(x) {
        *y_i += alpha * x_i;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dot_equals_f64_sum_for_every_tail_length() {
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((super::dot(&a, &b) as f64 - want).abs() < 1e-5, "n = {n}");
        }
    }
}

//! Linear layers over weights still in their stored encoding.
//!
//! A [`MatRef`] borrows the checkpoint's bytes (row-major `[rows, cols]`,
//! i.e. HF `[out, in]`) and is widened to f32 a block of columns at a time on
//! the stack, so no call allocates and no weight is ever copied whole.
//! These are the reference versions: plain loops, f32 accumulation.

use qmoe_core::dtype::{to_f32, DType};

/// Columns widened per step; fits comfortably on the stack.
const BLOCK: usize = 256;

/// A borrowed weight matrix `[rows, cols]` in a float storage type.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

impl<'a> MatRef<'a> {
    /// Wraps bytes, checking the byte count (callers validate shapes first, so
    /// a mismatch here is a loader bug, not bad input).
    pub fn new(dtype: DType, rows: usize, cols: usize, bytes: &'a [u8]) -> Self {
        assert!(dtype.is_float(), "MatRef: {dtype} is not a float type");
        assert_eq!(bytes.len(), rows * cols * dtype.size(), "MatRef: byte count");
        MatRef { dtype, rows, cols, bytes }
    }

    fn row_bytes(&self, r: usize) -> &'a [u8] {
        let w = self.cols * self.dtype.size();
        &self.bytes[r * w..(r + 1) * w]
    }

    /// Widen row `r` into `out` (`[cols]`): embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        to_f32(self.dtype, self.row_bytes(r), out);
    }
}

/// `y = W x`: `x` `[cols]`, `y` `[rows]`.
pub fn matvec(w: &MatRef, x: &[f32], y: &mut [f32]) {
    matmul(w, x, y, 1);
}

/// Multiply-adds below which a matmul stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// `y[t] = W x[t]` for `n_tokens` rows: `x` `[T, cols]`, `y` `[T, rows]`.
///
/// Each weight block is widened once and applied to every token, so a prefill
/// reads the weights once however many tokens it carries. Large products are
/// split by weight rows over [`crate::threads`] scoped threads.
pub fn matmul(w: &MatRef, x: &[f32], y: &mut [f32], n_tokens: usize) {
    assert_eq!(x.len(), n_tokens * w.cols, "matmul: x length");
    assert_eq!(y.len(), n_tokens * w.rows, "matmul: y length");
    let n_threads = crate::threads::get().min(w.rows);
    if n_threads <= 1 || w.rows * w.cols * n_tokens < PARALLEL_MIN_WORK {
        matmul_rows(w, x, YOut(y.as_mut_ptr()), n_tokens, 0..w.rows);
        return;
    }
    let out = YOut(y.as_mut_ptr());
    let per = w.rows.div_ceil(n_threads);
    std::thread::scope(|s| {
        for i in 1..n_threads {
            let rows = (i * per).min(w.rows)..((i + 1) * per).min(w.rows);
            s.spawn(move || matmul_rows(w, x, out, n_tokens, rows));
        }
        matmul_rows(w, x, out, n_tokens, 0..per.min(w.rows));
    });
}

/// Output pointer shared by the row-splitting threads.
#[derive(Clone, Copy)]
struct YOut(*mut f32);
// SAFETY: every thread writes only `y[t * rows + r]` for its own disjoint row
// range `r`, and the scope joins all threads before `y` is used again.
unsafe impl Send for YOut {}
unsafe impl Sync for YOut {}

fn matmul_rows(w: &MatRef, x: &[f32], y: YOut, n_tokens: usize, rows: std::ops::Range<usize>) {
    let es = w.dtype.size();
    let mut buf = [0.0f32; BLOCK];
    let at = |t: usize, r: usize| {
        // SAFETY: t < n_tokens and r < w.rows, so the index is inside the
        // caller's `[T, rows]` slice; rows are disjoint between threads.
        unsafe { &mut *y.0.add(t * w.rows + r) }
    };
    for r in rows {
        let row = w.row_bytes(r);
        for t in 0..n_tokens {
            *at(t, r) = 0.0;
        }
        let mut c0 = 0;
        while c0 < w.cols {
            let n = BLOCK.min(w.cols - c0);
            let wb = &mut buf[..n];
            to_f32(w.dtype, &row[c0 * es..(c0 + n) * es], wb);
            for t in 0..n_tokens {
                let xs = &x[t * w.cols + c0..t * w.cols + c0 + n];
                *at(t, r) += dot(wb, xs);
            }
            c0 += n;
        }
    }
}

/// Dot product with four independent partial sums (keeps the reference fast
/// enough for tests without changing accuracy meaningfully).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let (ac, ar) = a.split_at(a.len() / 4 * 4);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(4).zip(bc.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_matches_f64_for_each_dtype_and_odd_sizes() {
        let mut s = 7u64;
        for &(rows, cols, t) in &[(1, 1, 1), (5, 300, 3), (17, 513, 2), (3, 7, 4)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let x: Vec<f32> = (0..t * cols).map(|_| lcg(&mut s)).collect();
            let encodings: [(DType, Vec<u8>, Vec<f32>); 3] = [
                (DType::F32, w.iter().flat_map(|v| v.to_le_bytes()).collect(), w.clone()),
                (
                    DType::F16,
                    w.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                    w.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
                ),
                (
                    DType::BF16,
                    w.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                    w.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
                ),
            ];
            for (dt, bytes, wq) in encodings.iter() {
                let m = MatRef::new(*dt, rows, cols, bytes);
                let mut y = vec![0.0; t * rows];
                matmul(&m, &x, &mut y, t);
                for tt in 0..t {
                    for r in 0..rows {
                        let want: f64 = (0..cols)
                            .map(|c| wq[r * cols + c] as f64 * x[tt * cols + c] as f64)
                            .sum();
                        let got = y[tt * rows + r] as f64;
                        assert!((got - want).abs() < 1e-4, "{dt} {rows}x{cols} t{tt} r{r}: {got} vs {want}");
                    }
                }
                let mut y1 = vec![0.0; rows];
                matvec(&m, &x[..cols], &mut y1);
                assert_eq!(&y1[..], &y[..rows]);
            }
        }
    }
}

#[cfg(test)]
mod thread_tests {
    use super::*;

    #[test]
    fn threaded_matmul_equals_single_thread() {
        let (rows, cols, t) = (1031, 1100, 2);
        let w: Vec<u8> = (0..rows * cols).flat_map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes()).collect();
        let x: Vec<f32> = (0..t * cols).map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5).collect();
        let m = MatRef::new(DType::F32, rows, cols, &w);
        let mut y1 = vec![0.0; t * rows];
        let mut y4 = vec![0.0; t * rows];
        crate::threads::set(1);
        matmul(&m, &x, &mut y1, t);
        crate::threads::set(4);
        matmul(&m, &x, &mut y4, t);
        crate::threads::set(0);
        assert_eq!(y1, y4);
    }
}

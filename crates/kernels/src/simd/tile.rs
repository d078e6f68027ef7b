//! The many-token product (prefill) on f32 activations: float and FP8
//! weights, and any encoding under `with_f32_activations`. Each weight row
//! is widened to f32 once, through the encoding's exact decoder (the
//! reference's), so a prefill computes the f32-activation function of the
//! stored weights.
//!
//! At the AVX2 level the widened rows go through a cache-blocked FMA kernel
//! ([`blocked`]): a chunk of rows widened into L2, then for each 512-column
//! slice and block of 32 tokens, micro-tiles of 3 rows x 4 tokens (twelve
//! accumulators; each step loads 3 weight and 4 activation vectors for 12
//! FMAs). The portable form (the twin, at the other levels) widens one row
//! and multiplies it with four tokens at a time; on AVX2 that form read
//! every token's activations once per row, from L3 for a 512-token prompt,
//! and ran at 25-37 GFLOP/s per core.

use std::cell::RefCell;
use std::ops::Range;

use super::Level;
use crate::linear::MatRef;
use crate::vecops::fold8;

#[cfg(target_arch = "x86_64")]
mod blocked;

thread_local! {
    /// One widened weight row (grow-only; each pool worker has its own).
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y[t * w.rows + r] = row r · x[t]` for `r` in `rows` and every token;
/// `y` points at the product's `[T, rows]` output.
///
/// # Safety
/// `y` must be valid for writes of `n_tokens * w.rows` floats, and no other
/// thread may write rows `rows` of it during the call.
pub(crate) unsafe fn rows_many_tokens(
    level: Level,
    w: &MatRef,
    rows: Range<usize>,
    x: &[f32],
    n_tokens: usize,
    y: *mut f32,
) {
    assert!(rows.end <= w.rows && x.len() == n_tokens * w.cols, "rows_many_tokens: shapes");
    #[cfg(target_arch = "x86_64")]
    if level.runs_avx2() {
        // SAFETY: the CPU has AVX2 + FMA (the level says so); the shapes were
        // checked above and `y` is the caller's contract.
        unsafe { blocked::rows(level, w, rows, x, n_tokens, y) };
        return;
    }
    // The portable form (the twin): one widened row at a time, four tokens
    // per pass.
    let cols = w.cols;
    ROW.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < cols {
            buf.resize(cols, 0.0);
        }
        let wr = &mut buf[..cols];
        for r in rows {
            widen_row(level, w, r, wr);
            let mut t = 0;
            while t < n_tokens {
                let n = (n_tokens - t).min(4);
                let xs: [&[f32]; 4] = std::array::from_fn(|i| {
                    let tt = t + i.min(n - 1); // repeat the last token to fill the group
                    &x[tt * cols..(tt + 1) * cols]
                });
                let d = dot4_at(level, wr, xs);
                for (i, &v) in d.iter().enumerate().take(n) {
                    // SAFETY: `t + i < n_tokens` and `r < w.rows` (caller contract).
                    unsafe { *y.add((t + i) * w.rows + r) = v };
                }
                t += n;
            }
        }
    });
}

/// Row `r` of `w` as f32: float rows through the vector unit, every other
/// encoding through its exact decoder.
fn widen_row(level: Level, w: &MatRef, r: usize, out: &mut [f32]) {
    use crate::linear::Encoding;
    use qmoe_core::{DType, GgmlType};
    let half = match w.enc {
        Encoding::Float(DType::BF16) | Encoding::Ggml(GgmlType::BF16) => Some(true),
        Encoding::Float(DType::F16) | Encoding::Ggml(GgmlType::F16) => Some(false),
        _ => None,
    };
    match (level, half) {
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2 | Level::Avx512, Some(bf16)) => {
            let bytes = &w.bytes[r * w.cols * 2..(r + 1) * w.cols * 2];
            // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 +
            // F16C; `bytes` holds exactly `out.len()` 16-bit values.
            unsafe { widen16_avx2(bytes, out, bf16) }
        }
        _ => w.row_to_f32(r, out),
    }
}

/// Widens 16-bit floats (`bf16`: bfloat16, else IEEE half) to f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen16_avx2(bytes: &[u8], out: &mut [f32], bf16: bool) {
    use std::arch::x86_64::*;
    let n = out.len();
    assert_eq!(bytes.len(), 2 * n);
    let body = n / 8 * 8;
    let mut c = 0;
    while c < body {
        // SAFETY: c + 8 <= n: 16 bytes in `bytes` and 8 floats in `out`.
        unsafe {
            let h = _mm_loadu_si128(bytes.as_ptr().add(2 * c) as *const __m128i);
            let v = if bf16 {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            } else {
                _mm256_cvtph_ps(h)
            };
            _mm256_storeu_ps(out.as_mut_ptr().add(c), v);
        }
        c += 8;
    }
    let dt = if bf16 { qmoe_core::DType::BF16 } else { qmoe_core::DType::F16 };
    qmoe_core::dtype::to_f32(dt, &bytes[2 * body..], &mut out[body..]);
}

fn dot4_at(level: Level, w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
        Level::Avx2 | Level::Avx512 => unsafe { dot4_avx2(w, xs) },
        _ => dot4(w, xs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2(w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = w.len();
    assert!(xs.iter().all(|x| x.len() >= n));
    let body = n / 8 * 8;
    let (wp, xp) = (w.as_ptr(), xs.map(|x| x.as_ptr()));
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    while c < body {
        // SAFETY: c + 8 <= body <= n, and every slice holds at least n floats.
        unsafe {
            let wv = _mm256_loadu_ps(wp.add(c));
            for i in 0..4 {
                acc[i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp[i].add(c)), acc[i]);
            }
        }
        c += 8;
    }
    let mut out = [0.0f32; 4];
    for i in 0..4 {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i]) };
        for c in body..n {
            lanes[c - body] += w[c] * xs[i][c];
        }
        out[i] = fold8(lanes);
    }
    out
}

/// Four dot products of `w` with `xs[i]`, eight lane sums each (the same
/// order as [`crate::vecops::dot`]): the portable twin of `dot4_avx2`, which
/// differs only by fusing each multiply-add.
fn dot4(w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
    let n = w.len();
    let xs = xs.map(|x| &x[..n]);
    let mut acc = [[0.0f32; 8]; 4];
    let body = n / 8 * 8;
    for c in (0..body).step_by(8) {
        let wc = &w[c..c + 8];
        for (a, x) in acc.iter_mut().zip(&xs) {
            let xc = &x[c..c + 8];
            for l in 0..8 {
                a[l] += wc[l] * xc[l];
            }
        }
    }
    for c in body..n {
        for (a, x) in acc.iter_mut().zip(&xs) {
            a[c - body] += w[c] * x[c];
        }
    }
    acc.map(fold8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmoe_core::DType;

    fn next(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Each level's product against the portable twin over shapes that leave
    /// every remainder (rows of 3, tokens of 4, columns of 8 and of a slice),
    /// several row chunks (wide rows) and a row range not starting at 0.
    #[test]
    fn every_level_matches_the_twin() {
        let mut state = 7u64;
        for (rows, cols, n_tokens) in [(1, 8, 4), (5, 13, 5), (7, 600, 9), (25, 512, 33), (4, 13_000, 6), (9, 1100, 70)]
        {
            let x: Vec<f32> = (0..n_tokens * cols).map(|_| next(&mut state)).collect();
            let vals: Vec<f32> = (0..rows * cols).map(|_| next(&mut state)).collect();
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let bytes: Vec<u8> = match dt {
                    DType::BF16 => vals.iter().flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                    DType::F16 => vals.iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                    _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                };
                let w = MatRef::new(dt, rows, cols, &bytes);
                let mut wide = vec![0.0; cols];
                let mag: Vec<f32> = (0..n_tokens * rows)
                    .map(|i| {
                        let (t, r) = (i / rows, i % rows);
                        w.row_to_f32(r, &mut wide);
                        wide.iter().zip(&x[t * cols..]).map(|(a, b)| (a * b).abs()).sum()
                    })
                    .collect();
                for range in [0..rows, rows / 2..rows] {
                    let mut want = vec![f32::NAN; n_tokens * rows];
                    // SAFETY: `want` holds `n_tokens * rows` floats; one thread.
                    unsafe { rows_many_tokens(Level::Scalar, &w, range.clone(), &x, n_tokens, want.as_mut_ptr()) };
                    for level in crate::simd::available() {
                        let mut got = vec![f32::NAN; n_tokens * rows];
                        // SAFETY: as above.
                        unsafe { rows_many_tokens(level, &w, range.clone(), &x, n_tokens, got.as_mut_ptr()) };
                        for t in 0..n_tokens {
                            for r in range.clone() {
                                let i = t * rows + r;
                                assert!(
                                    (got[i] - want[i]).abs() <= 1e-5 * mag[i] + 1e-6,
                                    "{dt} {rows}x{cols}, {n_tokens} tokens, {level:?}: token {t} row {r}: {} vs {}",
                                    got[i],
                                    want[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

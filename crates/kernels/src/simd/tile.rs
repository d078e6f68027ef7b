//! The many-token product (prefill): each weight row is widened to f32
//! once, into a buffer that stays in L1, and then multiplied with the
//! activations of four tokens at a time, so the per-row decode cost is
//! shared by every token and each weight load feeds four FMAs.
//!
//! This runs every encoding through its exact decoder (the reference's), so
//! a prefill computes the f32-activation function of the stored weights.

use std::cell::RefCell;
use std::ops::Range;

use super::Level;
use crate::linear::MatRef;
use crate::vecops::fold8;

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
    let cols = w.cols;
    assert!(rows.end <= w.rows && x.len() == n_tokens * cols, "rows_many_tokens: shapes");
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

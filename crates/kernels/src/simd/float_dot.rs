//! Decode matvec on float weights (F32, F16, BF16) with f32 activations.
//!
//! `y[i] = row(rows.start + i) · x`, reading the stored elements directly and
//! widening them in registers: BF16 by moving the 16 bits to the top of a
//! u32 (exact), F16 by `vcvtph2ps` (exact), F32 as is.
//!
//! Summation order (shared by every level, so the twins agree up to FMA
//! rounding; the NEON level is in `simd/neon/float.rs`): four 8-lane
//! partial sums over steps of 32 columns, then steps of 8 into the first,
//! the 8 lanes folded as `(l + h)` halves (4, 2, 1), then the remaining
//! `cols % 8` columns added one by one.

use std::ops::Range;

use qmoe_core::dtype::DType;

use crate::linear::{Encoding, MatRef};
use crate::simd::Level;

/// `y[i] = dot(row rows.start + i, x)`: `x` `[w.cols]`, `y` `[rows.len()]`.
/// `w.enc` must be `Encoding::Float(F32 | F16 | BF16)`.
pub fn gemv_float(level: Level, w: &MatRef, rows: Range<usize>, x: &[f32], y: &mut [f32]) {
    let Encoding::Float(dt) = w.enc else { panic!("gemv_float: encoding {:?} is not float", w.enc) };
    assert!(dt.is_float(), "gemv_float: {dt} is not a float type");
    assert!(rows.start <= rows.end && rows.end <= w.rows, "gemv_float: rows {rows:?} of {}", w.rows);
    assert_eq!(x.len(), w.cols, "gemv_float: x length");
    assert_eq!(y.len(), rows.len(), "gemv_float: y length");
    let row_bytes = w.cols * dt.size();
    assert_eq!(w.bytes.len(), w.rows * row_bytes, "gemv_float: byte count");
    let bytes = &w.bytes[rows.start * row_bytes..rows.end * row_bytes];
    match level {
        Level::Scalar => {
            for (yi, row) in y.iter_mut().zip(bytes.chunks_exact(row_bytes.max(1))) {
                *yi = scalar_row(dt, row, x);
            }
            if row_bytes == 0 {
                y.fill(0.0);
            }
        }
        Level::Avx2 | Level::Avx512 => {
            #[cfg(target_arch = "x86_64")]
            {
                assert!(x86::available(), "gemv_float: AVX2/FMA/F16C level on a CPU without them");
                // SAFETY: the CPU supports avx2, fma and f16c (checked just
                // above); `bytes` holds `y.len()` rows of `w.cols` elements of
                // `dt` and `x` holds `w.cols` floats (asserted at entry).
                unsafe { x86::gemv(dt, bytes, w.cols, x, y) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            gemv_float(Level::Scalar, w, rows, x, y)
        }
        Level::Neon => {
            #[cfg(target_arch = "aarch64")]
            {
                assert!(super::neon::available(), "gemv_float: NEON level on a CPU without it");
                // SAFETY: the CPU runs NEON (checked just above); shapes as
                // in the AVX2 arm.
                unsafe { super::neon::float::gemv(dt, bytes, w.cols, x, y) }
            }
            #[cfg(not(target_arch = "aarch64"))]
            gemv_float(Level::Scalar, w, rows, x, y)
        }
    }
}

/// Element `i` of a float row, widened to f32.
#[inline]
pub(crate) fn elem(dt: DType, row: &[u8], i: usize) -> f32 {
    match dt {
        DType::F32 => f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
        DType::F16 => half::f16::from_bits(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])).to_f32(),
        DType::BF16 => f32::from_bits((u16::from_le_bytes([row[2 * i], row[2 * i + 1]]) as u32) << 16),
        other => unreachable!("{other} checked to be float"),
    }
}

/// The scalar twin of one AVX2 row (same partial sums, same fold order).
fn scalar_row(dt: DType, row: &[u8], x: &[f32]) -> f32 {
    let cols = x.len();
    let mut acc = [[0.0f32; 8]; 4];
    let mut c = 0;
    while c + 32 <= cols {
        for (k, a) in acc.iter_mut().enumerate() {
            for (l, al) in a.iter_mut().enumerate() {
                let i = c + 8 * k + l;
                *al += elem(dt, row, i) * x[i];
            }
        }
        c += 32;
    }
    while c + 8 <= cols {
        for (l, al) in acc[0].iter_mut().enumerate() {
            *al += elem(dt, row, c + l) * x[c + l];
        }
        c += 8;
    }
    let mut s = fold8(sum4(&acc));
    for (i, xi) in x.iter().enumerate().skip(c) {
        s += elem(dt, row, i) * xi;
    }
    s
}

/// `(a0 + a1) + (a2 + a3)` lane by lane.
pub(crate) fn sum4(acc: &[[f32; 8]; 4]) -> [f32; 8] {
    std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]))
}

/// Horizontal sum in the order of [`x86::hsum`]: halves, then pairs, then one.
pub(crate) fn fold8(v: [f32; 8]) -> f32 {
    let h: [f32; 4] = std::array::from_fn(|l| v[l] + v[l + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use qmoe_core::dtype::DType;

    /// Bytes ahead of the read pointer that each step prefetches (into L1).
    /// Rows are contiguous, so this runs on into the next rows.
    const PREFETCH: usize = 1024;

    /// Whether this CPU runs the AVX2 + FMA + F16C kernels (cached by std).
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// Sum of the 8 lanes: halves, then pairs, then one (see [`super::fold8`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn hsum(v: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let p = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
    }

    /// Issues a prefetch of the line `PREFETCH` bytes past `p`; the address
    /// is only computed (wrapping), never dereferenced, so it may lie past
    /// the end of the weights.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn prefetch(p: *const u8, ahead: usize) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead) as *const i8);
    }

    /// Element `i` of a little-endian F32 / F16 / BF16 array at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn float_at(dt: DType, p: *const u8, i: usize) -> f32 {
        match dt {
            DType::F32 => (p.add(4 * i) as *const f32).read_unaligned(),
            DType::F16 => {
                let h = (p.add(2 * i) as *const u16).read_unaligned();
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
            }
            _ => f32::from_bits(((p.add(2 * i) as *const u16).read_unaligned() as u32) << 16),
        }
    }

    /// Eight weights starting at element `i` of `row`, widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const DT: u8>(row: *const u8, i: usize) -> __m256 {
        match DT {
            F32 => _mm256_loadu_ps(row.add(4 * i) as *const f32),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * i) as *const __m128i)),
            _ => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(row.add(2 * i) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            }
        }
    }

    const F32: u8 = 0;
    const F16: u8 = 1;
    const BF16: u8 = 2;

    /// # Safety
    /// avx2, fma and f16c available; `bytes` is `y.len()` rows of `cols`
    /// elements of `dt`; `x.len() == cols`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemv(dt: DType, bytes: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
        match dt {
            DType::F32 => rows::<F32>(bytes, cols, x, y),
            DType::F16 => rows::<F16>(bytes, cols, x, y),
            DType::BF16 => rows::<BF16>(bytes, cols, x, y),
            other => unreachable!("{other} checked to be float"),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<const DT: u8>(bytes: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
        let es = if DT == F32 { 4 } else { 2 };
        let row_bytes = cols * es;
        let xp = x.as_ptr();
        for (r, yr) in y.iter_mut().enumerate() {
            // SAFETY: row r lies inside `bytes` (r < y.len(), `bytes` holds
            // y.len() rows of row_bytes); every load below reads elements
            // c .. c + 8 <= cols of that row and of `x`.
            let row = bytes.as_ptr().add(r * row_bytes);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c + 32 <= cols {
                // One prefetch per 64 bytes consumed.
                let mut b = 0;
                while b < 32 * es {
                    prefetch(row.add(c * es + b), PREFETCH);
                    b += 64;
                }
                for (k, a) in acc.iter_mut().enumerate() {
                    let i = c + 8 * k;
                    *a = _mm256_fmadd_ps(load8::<DT>(row, i), _mm256_loadu_ps(xp.add(i)), *a);
                }
                c += 32;
            }
            while c + 8 <= cols {
                acc[0] = _mm256_fmadd_ps(load8::<DT>(row, c), _mm256_loadu_ps(xp.add(c)), acc[0]);
                c += 8;
            }
            let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(v);
            let rs = std::slice::from_raw_parts(row, row_bytes);
            let dt = match DT {
                F32 => DType::F32,
                F16 => DType::F16,
                _ => DType::BF16,
            };
            for (i, xi) in x.iter().enumerate().skip(c) {
                s += super::elem(dt, rs, i) * xi;
            }
            *yr = s;
        }
    }
}

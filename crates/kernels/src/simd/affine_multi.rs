//! Many-token products of MLX affine weights with int8 activations (prefill).
//!
//! `y[t * y_stride + i] = dot(row rows.start + i, x[t])` with `x` holding
//! `n_tokens` tokens' [`BlockQ8x32`] blocks one after the other. The math is
//! [`super::affine_dot`]'s: per 32-block an exact integer dot `Σ q_i qs_i`,
//! scaled by `d_b · scale_g`, plus `bias_g` times the group's exact input sum.
//!
//! The AVX2 level (4- and 8-bit) unpacks each run of eight weight blocks
//! once per call and multiplies it with eight tokens at a time, on
//! transposed runs ([`runs`]); the AVX-512 + VNNI level on units of sixteen
//! blocks of two rows, four tokens at a time, with `vpdpbusd` ([`avx512`]).
//! Token groups run outside, rows inside: the driver's run of rows stays in
//! L2 for every group after the first. Other widths run the single-token
//! kernel per token.
//!
//! The scalar twin is the single-token scalar kernel per token: the same
//! integer block sums, so the levels (and the per-token kernels) agree to
//! float rounding.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use crate::linear::Encoding;
use crate::linear::MatRef;
use crate::simd::act::BlockQ8x32;
use crate::simd::affine_dot::{gemv_affine, supports_affine};
use crate::simd::Level;

/// Whether the many-token kernel is worth taking for `bits`-bit weights in
/// groups of `group_size`: 4 and 8 bits, and 2, 3, 5 and 6 where the
/// AVX-512 kernel unpacks them (at the process's SIMD level; elsewhere they
/// keep the f32 tile, which dequantizes each row once per token group).
pub fn has_multi(bits: u32, group_size: usize) -> bool {
    has_width(crate::simd::level(), bits) && supports_affine(bits, group_size)
}

/// Whether a many-token kernel at `level` takes `bits`-bit codes: 4 and 8
/// bits, and at the AVX-512 level those it unpacks (2, 3, 5, 6 bits with
/// VBMI).
fn has_width(level: Level, bits: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && super::affine_dot::avx512::unpacks(bits) {
        return true;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    matches!(bits, 4 | 8)
}

/// `y[t * y_stride + i] = dot(row rows.start + i, x[t])` for `i < rows.len()`,
/// `t < n_tokens`; `x` `[n_tokens, w.cols / 32]` blocks.
///
/// # Panics
/// If `w` is not an affine matrix [`supports_affine`] takes, or the lengths
/// do not match the shapes.
pub fn gemm_affine(
    level: Level,
    w: &MatRef,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: &mut [f32],
    y_stride: usize,
) {
    let n_rows = rows.len();
    if n_rows > 0 && n_tokens > 0 {
        assert!(n_tokens == 1 || y_stride >= n_rows, "gemm_affine: stride {y_stride} < {n_rows} rows");
        let need = (n_tokens - 1).checked_mul(y_stride).and_then(|v| v.checked_add(n_rows));
        assert!(need.is_some_and(|n| n <= y.len()), "gemm_affine: y of {} for {n_tokens} tokens", y.len());
    }
    // SAFETY: every `t * y_stride + i` lies inside `y` (checked just above).
    unsafe { gemm_affine_raw(level, w, rows, x, n_tokens, y.as_mut_ptr(), y_stride, 0) }
}

/// [`gemm_affine`] into a raw output, so that threads can fill disjoint rows
/// of one product. `acts_id` (0: none) names `x` for the AVX2 kernel's
/// per-thread copy of its rearranged runs (the matmul driver's id, as for
/// the ggml kernels).
///
/// # Safety
/// `y` is valid for writes at `t * y_stride + i` for every `t < n_tokens`,
/// `i < rows.len()`, and nothing else accesses those elements during the call;
/// an `acts_id` other than 0 always comes with the same `x` contents.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) unsafe fn gemm_affine_raw(
    level: Level,
    w: &MatRef,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    let nb = w.cols / 32;
    assert_eq!(x.len(), n_tokens * nb, "gemm_affine: {} blocks for {n_tokens} tokens of {} columns", x.len(), w.cols);
    assert!(rows.start <= rows.end && rows.end <= w.rows, "gemm_affine: rows {rows:?} of {}", w.rows);
    if n_tokens == 0 || rows.is_empty() {
        return;
    }
    // The single-token kernel's checks of `w` against its shape and of the
    // activation blocks, on no rows.
    gemv_affine(Level::Scalar, w, rows.start..rows.start, &x[..nb], &mut []);
    let per_token = |t: usize, level: Level| {
        // SAFETY: the caller's contract covers `t * y_stride + 0 .. rows.len()`.
        let yt = unsafe { std::slice::from_raw_parts_mut(y.add(t * y_stride), rows.len()) };
        gemv_affine(level, w, rows.clone(), &x[t * nb..(t + 1) * nb], yt);
    };
    #[cfg(target_arch = "x86_64")]
    if let Encoding::Affine { bits, group_size, scales, biases, scale_dtype } = w.enc {
        if level != Level::Scalar && has_width(level, bits) {
            assert!(crate::simd::float_dot::x86::available(), "gemm_affine: AVX2 level on a CPU without AVX2/FMA/F16C");
            assert!(
                level != Level::Avx512 || crate::simd::avx512_detected(),
                "gemm_affine: Level::Avx512 on a CPU without AVX-512 F/BW/VL + VNNI"
            );
            let m = x86::Mat {
                words: w.bytes,
                row_bytes: w.cols * bits as usize / 8,
                scales,
                biases,
                dt: scale_dtype,
                groups: w.cols / group_size,
                per_group: group_size / 32,
            };
            // SAFETY: the CPU runs AVX2 + FMA + F16C, and AVX-512 + VNNI for
            // that level (checked just above);
            // the shapes of `w` were checked by `gemv_affine` and `MatRef`,
            // `rows` lies inside it, `x` holds `n_tokens` rows of `nb`
            // blocks; `y` and `acts_id` are the caller's contract.
            unsafe {
                match (level, bits) {
                    (Level::Avx512, 4) => avx512::run::<avx512::Four>(&m, rows, x, n_tokens, y, y_stride, acts_id),
                    (Level::Avx512, 8) => avx512::run::<avx512::Eight>(&m, rows, x, n_tokens, y, y_stride, acts_id),
                    // VBMI checked by `has_width`.
                    (Level::Avx512, 2) => {
                        avx512::run::<avx512::Unpacked<2>>(&m, rows, x, n_tokens, y, y_stride, acts_id)
                    }
                    (Level::Avx512, 3) => {
                        avx512::run::<avx512::Unpacked<3>>(&m, rows, x, n_tokens, y, y_stride, acts_id)
                    }
                    (Level::Avx512, 5) => {
                        avx512::run::<avx512::Unpacked<5>>(&m, rows, x, n_tokens, y, y_stride, acts_id)
                    }
                    (Level::Avx512, _) => {
                        avx512::run::<avx512::Unpacked<6>>(&m, rows, x, n_tokens, y, y_stride, acts_id)
                    }
                    (_, 4) => runs::run::<runs::Four>(&m, rows, x, n_tokens, y, y_stride, acts_id),
                    _ => runs::run::<runs::Eight>(&m, rows, x, n_tokens, y, y_stride, acts_id),
                }
            }
            return;
        }
    }
    for t in 0..n_tokens {
        per_token(t, level);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod runs;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use qmoe_core::dtype::DType;
    use std::arch::x86_64::*;

    use crate::simd::scratch::Table;

    /// A checked affine matrix.
    pub(super) struct Mat<'a> {
        /// `[rows, row_bytes]` packed codes.
        pub words: &'a [u8],
        pub row_bytes: usize,
        /// `[rows, groups]` each, of `dt`.
        pub scales: &'a [u8],
        pub biases: &'a [u8],
        pub dt: DType,
        pub groups: usize,
        /// 32-blocks per group.
        pub per_group: usize,
    }

    impl Mat<'_> {
        /// 32-value blocks per row.
        pub(super) fn blocks(&self) -> usize {
            self.groups * self.per_group
        }
    }

    /// A call's matrix in units of `N` blocks (a lane each), with where
    /// every unit's lanes find their group values: what the many-token
    /// kernels of both levels take as their matrix.
    pub(super) struct Units<'a, const N: usize> {
        pub m: &'a Mat<'a>,
        /// One per unit, in a per-thread table.
        groups: *const LaneGroups<N>,
    }

    impl<'a, const N: usize> Units<'a, N> {
        /// `m` in units whose lane `k` holds block `lanes[k]` of the unit,
        /// the group table written to `table` (which must outlive the value).
        pub(super) fn new(m: &'a Mat<'a>, lanes: [usize; N], table: &mut Table) -> Self {
            let nb = m.blocks();
            let units = nb.div_ceil(N);
            let at = table.room::<LaneGroups<N>>(units);
            for u in 0..units {
                let (b0, here) = (N * u, (nb - N * u).min(N));
                let g0 = b0 / m.per_group;
                let idx = lanes.map(|j| ((b0 + j.min(here - 1)) / m.per_group - g0) as i32);
                let groups = LaneGroups { g0, n: (b0 + here - 1) / m.per_group - g0 + 1, idx };
                // SAFETY: `at` has room for `units` values.
                unsafe { at.add(u).write(groups) };
            }
            Units { m, groups: at }
        }

        /// Units per row.
        pub(super) fn count(&self) -> usize {
            self.m.blocks().div_ceil(N)
        }

        /// Blocks of unit `u` that the row has (`N` but in a last, partial unit).
        pub(super) fn here(&self, u: usize) -> usize {
            (self.m.blocks() - N * u).min(N)
        }

        /// The rows' code bytes and bytes per row (for the loop's prefetch).
        pub(super) fn stream(&self) -> (&'a [u8], usize) {
            (self.m.words, self.m.row_bytes)
        }

        /// Rows of the matrix.
        pub(super) fn rows(&self) -> usize {
            self.m.words.len() / self.m.row_bytes
        }

        /// Unit `u`'s group lanes.
        ///
        /// # Safety
        /// `u < self.count()` (and the table this was built with is alive).
        pub(super) unsafe fn groups(&self, u: usize) -> &LaneGroups<N> {
            &*self.groups.add(u)
        }
    }

    /// Where a unit of `N` blocks finds its group values (scales, biases):
    /// the unit spans groups `g0 .. g0 + n` (at most `N`: one per block), and
    /// lane `k` takes value `idx[k]` of those (the last present block's for
    /// an absent one, whose activations are zero).
    #[derive(Clone, Copy)]
    pub(super) struct LaneGroups<const N: usize> {
        g0: usize,
        n: usize,
        pub idx: [i32; N],
    }

    impl<const N: usize> LaneGroups<N> {
        /// Where row `r`'s values for the unit start in `m.scales` and
        /// `m.biases` (element index), and how many to load: `N` (lanes past
        /// the unit's groups, from the next row, are never picked) unless
        /// that would read past the matrix, then the unit's own count.
        pub(super) fn at_row(&self, m: &Mat, r: usize) -> (usize, usize) {
            let g = r * m.groups + self.g0;
            (g, if (g + N) * m.dt.size() <= m.scales.len() { N } else { self.n })
        }
    }

    /// `n <= 8` floats of `dt` from element `i` of `p`, zero-padded to 8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn load8(dt: DType, p: *const u8, i: usize, n: usize) -> __m256 {
        let es = dt.size();
        let mut pad = [0u8; 32];
        let src = if n == 8 {
            p.add(i * es)
        } else {
            std::ptr::copy_nonoverlapping(p.add(i * es), pad.as_mut_ptr(), n * es);
            pad.as_ptr()
        };
        match dt {
            DType::F32 => _mm256_loadu_ps(src as *const f32),
            DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(src as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                src as *const __m128i,
            )))),
        }
    }
}

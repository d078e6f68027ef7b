//! Everything between the GDN input projections and the delta rule, in one
//! pass (spec 2.5.3-2.5.4): the causal conv + SiLU of `[q | k | v]`, the
//! l2-norm of each q and k head (q also scaled by `1/sqrt(Dk)`), and the
//! gates `beta = sigmoid(b)`, `g = -exp(A_log) * softplus(a + dt_bias)`.
//!
//! The unfused steps ([`crate::conv::causal_conv1d_silu`], a copy into
//! per-head tensors, [`crate::gdn::l2_normalize`], the gate loop) each walk
//! the whole `[T, conv_dim]` activation; here each head slice of the conv
//! output is written straight into its destination tensor and normalised
//! while it is still in cache. Tokens are independent (the conv reads the
//! raw input and the old state), so prefill runs them on the pool in runs
//! of [`TOKENS_A_TASK`].
//!
//! The scalar twin performs the unfused steps' arithmetic in the same order
//! (bit-identical to them, see the tests). The AVX2 level computes the conv
//! sums identically (multiply, then add, taps in order) and differs only in
//! its `exp` (a polynomial within 2 ulp of libm's) and in the order of the
//! f64 sum of squares of the l2-norm.

use crate::act::{sigmoid, softplus};
use crate::gdn::GdnShape;
use crate::pool::SharedMut;
use crate::simd::Level;
use std::ops::Range;

/// The layer's small weights the preparation needs.
#[derive(Clone, Copy)]
pub struct PrepWeights<'a> {
    /// `[conv_dim, kernel]`, tap `kernel - 1` multiplies the current token.
    pub conv: &'a [f32],
    pub kernel: usize,
    /// `[Hv]`: `-exp(A_log)`.
    pub a_neg_exp: &'a [f32],
    /// `[Hv]`.
    pub dt_bias: &'a [f32],
}

/// Where the prepared inputs of the delta rule go.
pub struct PrepOut<'a> {
    /// `[T, Hk * Dk]`, l2-normalised and scaled by `1/sqrt(Dk)`.
    pub q: &'a mut [f32],
    /// `[T, Hk * Dk]`, l2-normalised.
    pub k: &'a mut [f32],
    /// `[T, Hv * Dv]`.
    pub v: &'a mut [f32],
    /// `[T, Hv]`.
    pub beta: &'a mut [f32],
    /// `[T, Hv]`.
    pub g: &'a mut [f32],
}

/// One head's channels of the conv output and where they go.
#[derive(Clone, Copy)]
struct Slice {
    /// First channel in `[q | k | v]`.
    first: usize,
    width: usize,
    /// Destination row length (`Hk * Dk` or `Hv * Dv`) and column offset.
    dst_row: usize,
    dst_col: usize,
    /// `Some(scale)`: l2-normalise each token's slice, then multiply by
    /// `scale` unless it is 1.
    norm: Option<f32>,
}

/// Everything one slice task reads.
struct Inputs<'a> {
    w: &'a [f32],
    kernel: usize,
    channels: usize,
    mixed: &'a [f32],
    state: &'a [f32],
}

/// Tokens a pool task of [`gdn_prep`] takes through every slice.
const TOKENS_A_TASK: usize = 32;

impl Inputs<'_> {
    /// Input row `r` of `[state; mixed]` (`r < kernel - 1`: from the state).
    fn row(&self, r: usize) -> &[f32] {
        let hist = self.kernel - 1;
        if r < hist {
            &self.state[r * self.channels..][..self.channels]
        } else {
            &self.mixed[(r - hist) * self.channels..][..self.channels]
        }
    }
}

/// Prepares `n_tokens` tokens and advances the conv `state`
/// (`[kernel - 1, conv_dim]`, oldest row first).
///
/// * `mixed`: `[T, conv_dim]` raw `in_proj_qkv` output.
/// * `b`, `a`: `[T, Hv]` raw `in_proj_b` / `in_proj_a` outputs.
///
/// # Panics
/// If a buffer length does not match the shape (caller contract).
#[allow(clippy::too_many_arguments)]
pub fn gdn_prep(
    level: Level,
    w: PrepWeights,
    shape: GdnShape,
    mixed: &[f32],
    b: &[f32],
    a: &[f32],
    state: &mut [f32],
    n_tokens: usize,
    out: PrepOut,
) {
    let (hk, hv, dk, dv) = (shape.n_k_heads, shape.n_v_heads, shape.head_k_dim, shape.head_v_dim);
    let (kd, vd) = (hk * dk, hv * dv);
    let channels = 2 * kd + vd;
    let t = n_tokens;
    assert!(w.kernel > 0, "gdn_prep: kernel must be > 0");
    assert_eq!(w.conv.len(), channels * w.kernel, "gdn_prep: conv weight length");
    assert_eq!(state.len(), (w.kernel - 1) * channels, "gdn_prep: conv state length");
    assert_eq!(mixed.len(), t * channels, "gdn_prep: mixed length");
    assert!(b.len() == t * hv && a.len() == t * hv, "gdn_prep: b / a length");
    assert!(w.a_neg_exp.len() == hv && w.dt_bias.len() == hv, "gdn_prep: gate weight length");
    assert!(out.q.len() == t * kd && out.k.len() == t * kd && out.v.len() == t * vd, "gdn_prep: q/k/v length");
    assert!(out.beta.len() == t * hv && out.g.len() == t * hv, "gdn_prep: beta / g length");

    let q_scale = 1.0 / (dk as f32).sqrt();
    let slice = |i: usize| -> Slice {
        if i < hk {
            Slice { first: i * dk, width: dk, dst_row: kd, dst_col: i * dk, norm: Some(q_scale) }
        } else if i < 2 * hk {
            let h = i - hk;
            Slice { first: kd + h * dk, width: dk, dst_row: kd, dst_col: h * dk, norm: Some(1.0) }
        } else {
            let h = i - 2 * hk;
            Slice { first: 2 * kd + h * dv, width: dv, dst_row: vd, dst_col: h * dv, norm: None }
        }
    };
    let n_slices = 2 * hk + hv;
    let inputs = Inputs { w: w.conv, kernel: w.kernel, channels, mixed, state };
    let (q, k, v) = (SharedMut::new(out.q), SharedMut::new(out.k), SharedMut::new(out.v));
    // A task is a run of tokens through every slice: it reads whole input
    // rows in order and writes whole output rows (a slice down every token
    // read one 32 KiB-strided piece of each row).
    let n_runs = t.div_ceil(TOKENS_A_TASK);
    let task = |run: usize| {
        let tokens = run * TOKENS_A_TASK..((run + 1) * TOKENS_A_TASK).min(t);
        for i in 0..n_slices {
            let dst = if i < hk {
                q
            } else if i < 2 * hk {
                k
            } else {
                v
            };
            // SAFETY: this task alone writes rows `tokens` of the outputs.
            unsafe { run_slice(level, &inputs, slice(i), dst, tokens.clone()) };
        }
    };
    // One token's conv is a few microseconds: only prefill pays for the pool.
    if n_runs > 1 {
        crate::pool::run(n_runs, &task);
    } else {
        task(0);
    }

    for (be, &bv) in out.beta.iter_mut().zip(b) {
        *be = sigmoid(bv);
    }
    for (row_g, row_a) in out.g.chunks_exact_mut(hv).zip(a.chunks_exact(hv)) {
        for h in 0..hv {
            row_g[h] = w.a_neg_exp[h] * softplus(row_a[h] + w.dt_bias[h]);
        }
    }
    crate::conv::advance_state(mixed, state, t, channels, w.kernel);
}

/// Slice `s` of tokens `tokens`.
///
/// # Safety
/// `dst` must address `[n_tokens, s.dst_row]` floats, and no other thread may
/// touch columns `s.dst_col..s.dst_col + s.width` of rows `tokens` during the call.
unsafe fn run_slice(level: Level, inp: &Inputs, s: Slice, dst: SharedMut<f32>, tokens: Range<usize>) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 if inp.kernel == 4 && s.width.is_multiple_of(8) && s.width <= avx2::MAX_WIDTH => {
            // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 +
            // FMA; the destination contract is the caller's.
            unsafe { avx2::slice(inp, s, dst, tokens) }
        }
        _ => unsafe { slice_scalar(inp, s, dst, tokens) },
    }
}

/// The twin: the unfused steps' arithmetic, one token at a time.
unsafe fn slice_scalar(inp: &Inputs, s: Slice, dst: SharedMut<f32>, tokens: Range<usize>) {
    let k = inp.kernel;
    for t in tokens {
        // SAFETY: columns of this slice in row t (caller contract).
        let out = unsafe { std::slice::from_raw_parts_mut(dst.at(t * s.dst_row + s.dst_col), s.width) };
        for (i, o) in out.iter_mut().enumerate() {
            let c = s.first + i;
            let mut acc = 0.0f32;
            for j in 0..k {
                acc += inp.w[c * k + j] * inp.row(t + j)[c];
            }
            *o = crate::conv::silu(acc);
        }
        if let Some(scale) = s.norm {
            crate::gdn::l2_normalize(out, 1e-6);
            if scale != 1.0 {
                out.iter_mut().for_each(|e| *e *= scale);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Inputs, Slice};
    use crate::pool::SharedMut;
    use crate::simd::expf::exp_avx2;
    use std::arch::x86_64::*;

    /// `x / (1 + e^-x)`, as the scalar conv's SiLU.
    #[inline(always)]
    unsafe fn silu(x: __m256) -> __m256 {
        unsafe {
            let e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
            _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
        }
    }

    /// Taps of channels `c..c + 8` from the `[channels, 4]` weight: four
    /// vectors, tap `j` of the eight channels in order.
    #[inline(always)]
    unsafe fn taps8(w: *const f32) -> [__m256; 4] {
        unsafe {
            // Each load holds two channels' four taps.
            let (a, b) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
            let (c, d) = (_mm256_loadu_ps(w.add(16)), _mm256_loadu_ps(w.add(24)));
            // A 4x4 transpose inside each 128-bit half: the low half gets
            // channels 0, 2, 4, 6 and the high half 1, 3, 5, 7.
            let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
            let j = [
                _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2),
                _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2),
                _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3),
                _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3),
            ];
            // Lane l holds channel [0, 2, 4, 6, 1, 3, 5, 7][l]: put them in order.
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            [
                _mm256_permutevar8x32_ps(j[0], order),
                _mm256_permutevar8x32_ps(j[1], order),
                _mm256_permutevar8x32_ps(j[2], order),
                _mm256_permutevar8x32_ps(j[3], order),
            ]
        }
    }

    /// Widest slice [`slice`] takes with its taps on the stack (heads of
    /// 128 in the released models).
    pub(super) const MAX_WIDTH: usize = 256;

    /// Slice `s` of tokens `tokens`, for a kernel of 4 taps and a width
    /// that is a multiple of 8 (at most [`MAX_WIDTH`]): the taps transposed
    /// once, then token by token, each token's slice computed from the four
    /// input rows it needs (the last three still in L1 from the token
    /// before), its sum of squares taken as it is written, then normalised
    /// while it is in L1.
    ///
    /// Eight channels at a time down every token of the call, as this used
    /// to run, read a new cache line of the `[T, channels]` input per token
    /// and tap (its rows are 32 KiB apart at 8192 channels): 3.2% of a
    /// Q4_K_M prefill's samples, against 2.5% token by token with a slice a
    /// task and 1.1% in runs of tokens through every slice.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn slice(inp: &Inputs, s: Slice, dst: SharedMut<f32>, tokens: std::ops::Range<usize>) {
        unsafe {
            debug_assert!(s.width <= MAX_WIDTH && s.width.is_multiple_of(8));
            // taps[j][i]: tap j of channel first + i.
            let mut taps = [[0f32; MAX_WIDTH]; 4];
            for c8 in (0..s.width).step_by(8) {
                let w = taps8(inp.w.as_ptr().add(4 * (s.first + c8)));
                for (j, wj) in w.iter().enumerate() {
                    _mm256_storeu_ps(taps[j].as_mut_ptr().add(c8), *wj);
                }
            }
            for t in tokens {
                let rows = [inp.row(t), inp.row(t + 1), inp.row(t + 2), inp.row(t + 3)];
                let p = dst.at(t * s.dst_row + s.dst_col);
                let mut ss = _mm256_setzero_pd();
                for c8 in (0..s.width).step_by(8) {
                    // Multiply, then add, taps in order: the scalar sums exactly.
                    let mut acc = _mm256_setzero_ps();
                    for (tap, row) in taps.iter().zip(rows) {
                        let x = _mm256_loadu_ps(row.as_ptr().add(s.first + c8));
                        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(tap.as_ptr().add(c8)), x));
                    }
                    let y = silu(acc);
                    _mm256_storeu_ps(p.add(c8), y);
                    // The l2-norm's f64 sum: values i..i + 4, then i + 4..i + 8.
                    let (lo, hi) =
                        (_mm256_cvtps_pd(_mm256_castps256_ps128(y)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(y)));
                    ss = _mm256_fmadd_pd(hi, hi, _mm256_fmadd_pd(lo, lo, ss));
                }
                if let Some(scale) = s.norm {
                    scale_by_norm(p, s.width, ss, scale);
                }
            }
        }
    }

    /// `x /= sqrt(sum x^2 + 1e-6)` for the `n` values at `p`, `ss` their
    /// sum of squares in four f64 lanes, then `x *= scale` unless it is 1
    /// (two roundings, as the scalar steps).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale_by_norm(p: *mut f32, n: usize, ss: __m256d, scale: f32) {
        unsafe {
            let mut lanes = [0.0f64; 4];
            _mm256_storeu_pd(lanes.as_mut_ptr(), ss);
            let total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            let inv = _mm256_set1_ps((1.0 / (total + 1e-6f32 as f64).sqrt()) as f32);
            let sc = _mm256_set1_ps(scale);
            for i in (0..n).step_by(8) {
                let mut v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv);
                if scale != 1.0 {
                    v = _mm256_mul_ps(v, sc);
                }
                _mm256_storeu_ps(p.add(i), v);
            }
        }
    }
}

/// `e^x` at `level` for eight lanes (tests compare the fast `exp` with libm).
#[doc(hidden)]
pub fn exp8(level: Level, x: [f32; 8]) -> [f32; 8] {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => {
            let mut out = [0.0f32; 8];
            // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
            unsafe { exp8_avx2(&x, &mut out) };
            out
        }
        _ => x.map(f32::exp),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8_avx2(x: &[f32; 8], out: &mut [f32; 8]) {
    use std::arch::x86_64::*;
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), crate::simd::expf::exp_avx2(_mm256_loadu_ps(x.as_ptr()))) }
}

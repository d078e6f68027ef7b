//! AVX-512 many-token kernels (F/BW/VL + VNNI) for Q8_0, Q4_K, Q5_K and
//! Q6_K; every other type runs the AVX2 many-token kernel at this level.
//!
//! Why a separate level: on AVX2 an int8 product costs `vpmaddubsw` (u8 x
//! s8, pairs to i16) plus `vpmaddwd` (to i32) per 32 multiply-adds, and the
//! i16 step bounds how much can be summed before widening. VNNI's
//! `vpdpbusd` does 64 u8 x s8 multiply-adds straight into sixteen i32 lanes
//! (each lane adds a run of four products), with no intermediate
//! saturation, so a lane can sum a whole group of a block exactly.
//!
//! Structure as at the AVX2 level (`avx2/multi.rs`): token groups outside
//! ([`GROUP`], the rest in groups of at most 4), rows inside; each weight
//! block is unpacked to byte codes once per group and multiplied with every
//! token of the group; the group's activations are rearranged once into a
//! per-thread scratch copy that every row of the run reads.
//!
//! Layouts, chosen so that every `vpdpbusd` of a block leaves each i32 lane
//! with values of one scale only:
//! * k-quants ([`KBlock`]): a 256-value block is 16 groups of 16 (the groups
//!   of `bsums`). Codes and activations are both held as four 64-byte
//!   registers where u32 lane `k` of register `r` is values `4r..4r + 4` of
//!   group `k`. After the four `vpdpbusd` of a (block, token), lane `k`
//!   holds the exact integer dot of group `k`, and one per-lane f32 vector
//!   scales it: `d sc_{k/2}` for Q4_K / Q5_K (32-value sub-blocks), `d sc_k`
//!   for Q6_K.
//! * Q8_0 ([`QPair`]): two 32-value blocks per register (lanes 0..8 and
//!   8..16), scaled by a vector holding each block's `d_w d_x` on its lanes.
//!
//! `vpdpbusd` multiplies unsigned bytes (first operand) by signed ones:
//! * Q4_K / Q5_K codes are unsigned; their mins go through `bsums` in f32;
//! * Q6_K codes `0..64` are multiplied unsigned; the accumulator starts at
//!   `-32 * bsums[k]` (prepared once per group), so the `- 32` offset is
//!   taken in the exact integer sum, as the other levels take it;
//! * Q8_0 weights are signed, so the roles swap: the activations (`-127..=
//!   127`) get `+128` in the prepared copy (u8 `1..=255`), and each weight
//!   block's `128 Σ w`, one `vpdpbusd` against 128s shared by the group's
//!   tokens, is subtracted by starting the accumulator at its negation.
//!
//! Every (block, token) integer sum equals the single-token kernels'; only
//! the f32 scaling and summation order differ, so results agree with
//! [`crate::simd::ggml_dot::gemv_q8k`] / `gemv_q8x32` to float rounding.

use std::arch::x86_64::*;

use qmoe_core::GgmlType;

use super::super::avx512::{f16_at, load256, load512};
use super::super::scales_mins_k4;
use crate::simd::act::{BlockQ8K, BlockQ8x32};
use crate::simd::scratch::Scratch;

/// Tokens multiplied per weight-block unpacking: eight float accumulators,
/// the block's four code registers and its scale vectors leave room in the
/// 32 zmm registers for the unpacking constants (the AVX2 level measured 8
/// as better than 4 for these types).
const GROUP: usize = 8;

// Software prefetch lead of the first group's row stream (the AVX2 level's
// measured value: the row stream is the same).
use crate::simd::PREFETCH_BYTES;

/// Whether `ty` has a kernel here.
pub(super) fn has_kernel(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
}

/// # Safety
/// The CPU runs AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C; `ty` is Q4_K,
/// Q5_K or Q6_K; `x` holds `n_tokens >= 1` rows of `nb` blocks; `w` is
/// exactly `n_rows` rows of `nb` blocks of `ty`; `y` is valid for writes at
/// `t * y_stride + r` for every `t < n_tokens`, `r < n_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm_q8k(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8K],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q4K => gemm::<Q4K>(w, n_rows, x, n_tokens, y, y_stride),
        GgmlType::Q5K => gemm::<Q5K>(w, n_rows, x, n_tokens, y, y_stride),
        GgmlType::Q6K => gemm::<Q6K>(w, n_rows, x, n_tokens, y, y_stride),
        _ => unreachable!("avx512 gemm_q8k: {ty} (checked by the caller)"),
    }
}

/// # Safety
/// As [`gemm_q8k`], for Q8_0 with Q8x32 activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm_q8x32(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
) {
    match ty {
        // SAFETY: the caller's contract, passed on unchanged.
        GgmlType::Q8_0 => gemm::<Q8_0>(w, n_rows, x, n_tokens, y, y_stride),
        _ => unreachable!("avx512 gemm_q8x32: {ty} (checked by the caller)"),
    }
}

// ---- the group driver -----------------------------------------------------------

/// One weight type: how its activations are prepared and how a row is
/// multiplied with a group of prepared tokens.
trait Kernel {
    /// Activation block as it comes (`BlockQ8K` or `BlockQ8x32`).
    type Src;
    /// Prepared activation unit: 64-byte aligned, a multiple of 64 bytes
    /// (it lives in the [`Chunk`] scratch).
    type X;
    /// Weight block bytes.
    const TS: usize;
    /// Prepared units per token of `nb` blocks.
    fn units(nb: usize) -> usize;
    /// Writes the `units(src.len())` units of one token's blocks at `dst`.
    ///
    /// # Safety
    /// The CPU runs this file's features; `dst` is valid for those writes.
    unsafe fn prep(src: &[Self::Src], dst: *mut Self::X);
    /// One row (`nb` blocks at `row`) against `N` prepared tokens.
    ///
    /// # Safety
    /// The CPU runs this file's features; `row` points at `nb` blocks, each
    /// `xs[t]` at `units(nb)` prepared units.
    unsafe fn dot<const N: usize>(row: *const u8, xs: [*const Self::X; N], nb: usize) -> [f32; N];
}

/// Token groups outside, rows inside (see the module doc).
///
/// # Safety
/// As [`gemm_q8k`] for `K`'s type and activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemm<K: Kernel>(w: &[u8], n_rows: usize, x: &[K::Src], n_tokens: usize, y: *mut f32, stride: usize) {
    let nb = x.len() / n_tokens;
    let units = K::units(nb);
    let mut scratch = Scratch::default();
    let xp = scratch.room::<K::X>(GROUP.min(n_tokens) * units);
    let mut t0 = 0;
    while t0 < n_tokens {
        // Groups of GROUP, the rest in groups of at most 4 (fewer instances
        // of each kernel than one per remainder).
        let left = n_tokens - t0;
        let n = if left >= GROUP { GROUP } else { left.min(4) };
        for t in 0..n {
            let tok = t0 + t;
            K::prep(&x[tok * nb..(tok + 1) * nb], xp.add(t * units));
        }
        let yg = y.add(t0 * stride);
        // Only the first group reads the rows from memory: prefetch for it.
        let fetch = t0 == 0;
        match n {
            8 => rows::<K, 8>(w, n_rows, nb, xp, units, yg, stride, fetch),
            4 => rows::<K, 4>(w, n_rows, nb, xp, units, yg, stride, fetch),
            3 => rows::<K, 3>(w, n_rows, nb, xp, units, yg, stride, fetch),
            2 => rows::<K, 2>(w, n_rows, nb, xp, units, yg, stride, fetch),
            _ => rows::<K, 1>(w, n_rows, nb, xp, units, yg, stride, fetch),
        }
        t0 += n;
    }
}

/// Every row against the `N` prepared tokens at `xp` (`units` apart); the
/// results to `y[t * stride + r]`.
///
/// # Safety
/// As [`gemm`], with `xp` holding `N` prepared tokens.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows<K: Kernel, const N: usize>(
    w: &[u8],
    n_rows: usize,
    nb: usize,
    xp: *const K::X,
    units: usize,
    y: *mut f32,
    stride: usize,
    fetch: bool,
) {
    let mut xs = [xp; N];
    for (t, p) in xs.iter_mut().enumerate() {
        *p = xp.add(t * units);
    }
    let row_bytes = nb * K::TS;
    let base = w.as_ptr();
    let mut fetched = 0;
    for r in 0..n_rows {
        if fetch {
            // A cache line at a time, up to PREFETCH_BYTES past this row.
            let until = ((r + 1) * row_bytes + PREFETCH_BYTES).min(w.len());
            while fetched < until {
                _mm_prefetch::<_MM_HINT_T0>(base.add(fetched) as *const i8);
                fetched += 64;
            }
        }
        let out = K::dot::<N>(base.add(r * row_bytes), xs, nb);
        for (t, v) in out.into_iter().enumerate() {
            *y.add(t * stride + r) = v;
        }
    }
}

// ---- helpers ------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn hsum(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let h = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Eight u8 (a little-endian u64, as [`scales_mins_k4`] gives them) to 16
/// f32 lanes, each value twice: lane `k` = byte `k / 2` (group `k` belongs
/// to 32-value sub-block `k / 2`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pairs_u8_ps(v: u64) -> __m512 {
    let b = _mm_cvtsi64_si128(v as i64);
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b)))
}

// ---- k-quants: 256-value blocks, 16 groups of 16 ------------------------------------

/// One prepared Q8K activation block: `qs[r]` lane `k` = codes `4r..4r + 4`
/// of group `k` (values `16k + 4r..`); `bs` the group sums, as f32 for
/// Q4_K / Q5_K (their mins are applied in f32) or as `-32 * sum` i32 for
/// Q6_K (the start of its integer accumulator); `d` the block scale.
#[repr(C, align(64))]
struct KBlock {
    qs: [__m512i; 4],
    bs: __m512i,
    d: f32,
}

/// The group-major transpose of one token's blocks (see [`KBlock`]).
///
/// # Safety
/// The CPU runs this file's features; `dst` is valid for `src.len()` writes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prep_k<const Q6: bool>(src: &[BlockQ8K], dst: *mut KBlock) {
    // Word 4k + r of the codes is register r's lane k; 64-byte load a holds
    // words 16a..16a + 16 (groups 4a..4a + 4). Lanes 0..8 come from loads
    // 0, 1 and lanes 8..16 from 2, 3 with the same indices.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    for (i, b) in src.iter().enumerate() {
        let p = b.qs.as_ptr() as *const u8;
        let z = [load512(p), load512(p.add(64)), load512(p.add(128)), load512(p.add(192))];
        let mut qs = [_mm512_setzero_si512(); 4];
        for (r, q) in qs.iter_mut().enumerate() {
            let ix = _mm512_add_epi32(idx, _mm512_set1_epi32(r as i32));
            let lo = _mm512_permutex2var_epi32(z[0], ix, z[1]);
            let hi = _mm512_permutex2var_epi32(z[2], ix, z[3]);
            *q = _mm512_inserti64x4::<1>(lo, _mm512_castsi512_si256(hi));
        }
        let sums = _mm512_cvtepi16_epi32(load256(b.bsums.as_ptr() as *const u8));
        let bs = if Q6 {
            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<5>(sums))
        } else {
            _mm512_castps_si512(_mm512_cvtepi32_ps(sums))
        };
        dst.add(i).write(KBlock { qs, bs, d: b.d });
    }
}

/// Q4_K (`FIVE` false) / Q5_K rows against prepared tokens.
///
/// Codes: 128 bytes of nibbles, 32-byte chunk `p` holding sub-block `2p`
/// (low nibbles) and `2p + 1` (high), byte `l` = value `l` of each; group
/// `k` is half `k % 2` of sub-block `k / 2`. Register r's lane k therefore
/// takes code word `8 (k / 4) + 4 (k % 2) + r`, shifted right by 4 when
/// `k / 2` is odd. Q5_K's fifth bit of value `l` of sub-block `s` is bit
/// `s` of `qh[l]`: qh word `4 (k % 2) + r`, rotated so that bit `k / 2` of
/// each byte lands on bit 4 (a rotate keeps each byte's bits in that byte:
/// bit `8j + s` goes to `8j + 4`).
///
/// Per lane: `d sc S - dmin m B` with `S` the group's code dot and `B` its
/// activation sum, both exact integers, then `x_d` times that.
///
/// # Safety
/// As [`Kernel::dot`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q45_k<const FIVE: bool, const N: usize>(row: *const u8, xs: [*const KBlock; N], nb: usize) -> [f32; N] {
    let (ts, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let idx = _mm512_setr_epi32(0, 4, 0, 4, 8, 12, 8, 12, 16, 20, 16, 20, 24, 28, 24, 28);
    let shift = _mm512_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4);
    let m4 = _mm512_set1_epi8(0x0F);
    let hidx = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    // (4 - k / 2) mod 32.
    let hrot = _mm512_setr_epi32(4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 31, 31, 30, 30, 29, 29);
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = [_mm512_setzero_ps(); N];
    for i in 0..nb {
        let b = row.add(i * ts);
        let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
        let (sc, m) = scales_mins_k4(&*(b.add(4) as *const [u8; 12]));
        let scale = _mm512_mul_ps(_mm512_set1_ps(d), pairs_u8_ps(sc));
        let mins = _mm512_mul_ps(_mm512_set1_ps(dmin), pairs_u8_ps(m));
        let (q0, q1) = (load512(b.add(qs_at)), load512(b.add(qs_at + 64)));
        // Q5_K: the 32 qh bytes in the low half (the indices stay below 8).
        let qh = if FIVE { _mm512_castsi256_si512(load256(b.add(16))) } else { _mm512_setzero_si512() };
        let mut wq = [_mm512_setzero_si512(); 4];
        for (r, wr) in wq.iter_mut().enumerate() {
            let rr = _mm512_set1_epi32(r as i32);
            let c = _mm512_permutex2var_epi32(q0, _mm512_add_epi32(idx, rr), q1);
            let mut v = _mm512_and_si512(_mm512_srlv_epi32(c, shift), m4);
            if FIVE {
                let h = _mm512_rolv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(hidx, rr), qh), hrot);
                // v | (h & 0x10)
                v = _mm512_ternarylogic_epi32::<0xF8>(v, h, bit4);
            }
            *wr = v;
        }
        for t in 0..N {
            let xb = &*xs[t].add(i);
            let mut s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[0], xb.qs[0]);
            s = _mm512_dpbusd_epi32(s, wq[1], xb.qs[1]);
            s = _mm512_dpbusd_epi32(s, wq[2], xb.qs[2]);
            s = _mm512_dpbusd_epi32(s, wq[3], xb.qs[3]);
            let offs = _mm512_mul_ps(_mm512_castsi512_ps(xb.bs), mins);
            let v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(s), scale, offs);
            acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(xb.d), acc[t]);
        }
    }
    let mut out = [0.0; N];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
    out
}

/// Q6_K rows against prepared tokens.
///
/// Half `n = k / 8` of the block holds group `k`, as half `k % 2` of its
/// 32-value run `j = (k % 8) / 2`; value `l` of run `j` has its low four
/// bits in `ql[64n + 32 (j % 2) + l]` (high nibble when `j >= 2`) and its
/// top two in bits `2j, 2j + 1` of `qh[32n + l]`. So register r's lane k
/// takes ql word `16n + 8 (j % 2) + 4 (k % 2) + r` and qh word
/// `8n + 4 (k % 2) + r`, the latter rotated so bits `2j, 2j + 1` of each
/// byte land on 4, 5.
///
/// Per lane: `d sc_k (S - 32 B)`, the offset in the integer sum.
///
/// # Safety
/// As [`Kernel::dot`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q6_k<const N: usize>(row: *const u8, xs: [*const KBlock; N], nb: usize) -> [f32; N] {
    let lidx = _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 16, 20, 24, 28, 16, 20, 24, 28);
    let lshift = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 0, 0, 0, 0, 4, 4, 4, 4);
    let hidx = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 8, 12, 8, 12, 8, 12, 8, 12);
    // (4 - 2j) mod 32.
    let hrot = _mm512_setr_epi32(4, 4, 2, 2, 0, 0, 30, 30, 4, 4, 2, 2, 0, 0, 30, 30);
    let m4 = _mm512_set1_epi8(0x0F);
    let bits45 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); N];
    for i in 0..nb {
        let b = row.add(i * 210);
        let d = f16_at(b.add(208));
        let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(192) as *const __m128i)));
        let scale = _mm512_mul_ps(_mm512_set1_ps(d), sc);
        let (l0, l1, qh) = (load512(b), load512(b.add(64)), load512(b.add(128)));
        let mut wq = [_mm512_setzero_si512(); 4];
        for (r, wr) in wq.iter_mut().enumerate() {
            let rr = _mm512_set1_epi32(r as i32);
            let lo = _mm512_permutex2var_epi32(l0, _mm512_add_epi32(lidx, rr), l1);
            let lo = _mm512_and_si512(_mm512_srlv_epi32(lo, lshift), m4);
            let h = _mm512_rolv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(hidx, rr), qh), hrot);
            // lo | (h & 0x30)
            *wr = _mm512_ternarylogic_epi32::<0xF8>(lo, h, bits45);
        }
        for t in 0..N {
            let xb = &*xs[t].add(i);
            let mut s = _mm512_dpbusd_epi32(xb.bs, wq[0], xb.qs[0]);
            s = _mm512_dpbusd_epi32(s, wq[1], xb.qs[1]);
            s = _mm512_dpbusd_epi32(s, wq[2], xb.qs[2]);
            s = _mm512_dpbusd_epi32(s, wq[3], xb.qs[3]);
            let sx = _mm512_mul_ps(scale, _mm512_set1_ps(xb.d));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sx, acc[t]);
        }
    }
    let mut out = [0.0; N];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
    out
}

/// Q4_K, Q5_K and Q6_K as [`Kernel`]s.
struct Q4K;
struct Q5K;
struct Q6K;

macro_rules! k_kernel {
    ($name:ident, $ts:expr, $q6:expr, $dot:expr) => {
        impl Kernel for $name {
            type Src = BlockQ8K;
            type X = KBlock;
            const TS: usize = $ts;
            fn units(nb: usize) -> usize {
                nb
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn prep(src: &[BlockQ8K], dst: *mut KBlock) {
                prep_k::<$q6>(src, dst)
            }
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn dot<const N: usize>(row: *const u8, xs: [*const KBlock; N], nb: usize) -> [f32; N] {
                $dot(row, xs, nb)
            }
        }
    };
}

k_kernel!(Q4K, 144, false, dot_q45_k::<false, N>);
k_kernel!(Q5K, 176, false, dot_q45_k::<true, N>);
k_kernel!(Q6K, 210, true, dot_q6_k::<N>);

// ---- Q8_0: 32-value blocks, two per register --------------------------------------

/// Two prepared Q8x32 blocks (`2p`, `2p + 1`): codes plus 128 as u8 (the
/// unsigned operand of `vpdpbusd`), and each block's `d` on its eight
/// lanes. A missing second block (odd count) has codes 128 and `d = 0`.
#[repr(C, align(64))]
struct QPair {
    qs: __m512i,
    d: __m512,
}

/// `[a; 8]` then `[b; 8]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn halves(a: f32, b: f32) -> __m512 {
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
}

/// 32 code bytes of two blocks, the second absent (zero) when `hi` is null.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn two_blocks(lo: *const u8, hi: *const u8) -> __m512i {
    let v = _mm512_inserti64x4::<0>(_mm512_setzero_si512(), load256(lo));
    if hi.is_null() {
        v
    } else {
        _mm512_inserti64x4::<1>(v, load256(hi))
    }
}

struct Q8_0;

impl Kernel for Q8_0 {
    type Src = BlockQ8x32;
    type X = QPair;
    const TS: usize = 34;

    fn units(nb: usize) -> usize {
        nb.div_ceil(2)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prep(src: &[BlockQ8x32], dst: *mut QPair) {
        let flip = _mm512_set1_epi8(-128);
        for (p, pair) in src.chunks(2).enumerate() {
            let a = &pair[0];
            let (hi, db) = match pair.get(1) {
                Some(b) => (b.qs.as_ptr() as *const u8, b.d),
                None => (std::ptr::null(), 0.0),
            };
            // -127..=127 to 1..=255 (the missing block's zeros to 128).
            let qs = _mm512_xor_si512(two_blocks(a.qs.as_ptr() as *const u8, hi), flip);
            dst.add(p).write(QPair { qs, d: halves(a.d, db) });
        }
    }

    /// Per pair of blocks: `S = Σ (x + 128) w - 128 Σ w = Σ x w` per lane,
    /// exact; scaled by `d_w d_x` per block (the single-token kernel's
    /// product, same rounding) and accumulated per lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn dot<const N: usize>(row: *const u8, xs: [*const QPair; N], nb: usize) -> [f32; N] {
        let u128s = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); N];
        for p in 0..nb.div_ceil(2) {
            let b = row.add(2 * p * 34);
            // The second block of the last pair may be past the row's end.
            let (hi, dw1) = if 2 * p + 1 < nb { (b.add(36), f16_at(b.add(34))) } else { (std::ptr::null(), 0.0) };
            let w = two_blocks(b.add(2), hi);
            let dw = halves(f16_at(b), dw1);
            // -128 Σ w per lane, shared by the group's tokens.
            let neg = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), u128s, w));
            for t in 0..N {
                let xp = &*xs[t].add(p);
                let s = _mm512_dpbusd_epi32(neg, xp.qs, w);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, xp.d), acc[t]);
            }
        }
        let mut out = [0.0; N];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        out
    }
}

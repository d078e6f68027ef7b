//! AVX2 + FMA + F16C kernels (Haswell / Zen and later).
//!
//! The integer core of every type: weight codes as unsigned bytes (or signed
//! ones made unsigned with the sign trick: `|w| · sign(x, w)`) times
//! activation codes in `vpmaddubsw` (pairs summed to i16), then `vpmaddwd`
//! against the (sub-)block scale as i16 (pairs summed to i32), so a block
//! leaves 8 i32 lanes that are converted and accumulated with one FMA.
//! Rows are streamed in order with software prefetch
//! [`crate::simd::ggml_gemv_lead`] bytes ahead, so the next rows are in
//! flight while this one is multiplied.

mod blocks32;
pub(super) mod multi;

use std::arch::x86_64::*;

use qmoe_core::GgmlType;

use super::scales_mins_k4;
use super::xiq4::{self, XIQ4};
use crate::ggml::IQ4_LEVELS;
use crate::simd::act::{BlockQ8K, BlockQ8x32};
use crate::simd::float_dot::x86::hsum;

/// # Safety
/// The CPU runs AVX2, FMA and F16C; `w` is exactly `y.len()` rows of
/// `x.len()` blocks of `ty`, which takes Q8K activations; `acts_id` names
/// `x` as [`super::gemv_q8k_named`] says.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemv_q8k(ty: GgmlType, w: &[u8], x: &[BlockQ8K], y: &mut [f32], acts_id: u64) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    gemv_table!(q8k: ty, w, x, y, GgmlType::IQ4XS => {
        let mut tokens = crate::simd::scratch::Tokens::default();
        let xp = xiq4::laid_out(&mut tokens, x, acts_id);
        rows!(w, x, y, 136, dot_iq4_xs, xp)
    })
}

/// # Safety
/// As [`gemv_q8k`], for a type taking Q8x32 activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemv_q8x32(ty: GgmlType, w: &[u8], x: &[BlockQ8x32], y: &mut [f32], acts_id: u64) {
    use super::group32::{Q4_0, Q4_1, Q5_0, Q5_1};
    use blocks32::Small32;
    /// Every row of `K` against the call's activations, laid out once.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<K: Small32>(w: &[u8], x: &[BlockQ8x32], y: &mut [f32], acts_id: u64) {
        let mut tokens = crate::simd::scratch::Tokens::default();
        let groups = super::group32::laid_out(&mut tokens, x, acts_id);
        rows!(w, x, y, K::TS, blocks32::dot::<K>, groups)
    }
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q8_0 => rows!(w, x, y, 34, dot_q8_0),
        GgmlType::Q4_0 => run::<Q4_0>(w, x, y, acts_id),
        GgmlType::Q4_1 => run::<Q4_1>(w, x, y, acts_id),
        GgmlType::Q5_0 => run::<Q5_0>(w, x, y, acts_id),
        GgmlType::Q5_1 => run::<Q5_1>(w, x, y, acts_id),
        GgmlType::IQ4NL => rows!(w, x, y, 18, dot_iq4_nl),
        ty => unreachable!("avx2::gemv_q8x32: {ty} (checked by the caller)"),
    }
}

// ---- helpers ------------------------------------------------------------------

/// The little-endian f16 at `p`, widened exactly.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load128(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

/// Signed codes `w` times signed `x`, pairs summed to i16 (`|w| ≤ 128`,
/// `|x| ≤ 127`: no saturation).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_i8(w: __m256i, x: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// i16 pairs times i16 `s`, summed to 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn madd(p: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(p, s)
}

/// 16 nibbles of `q` widened: low nibbles in bytes 0..16, high in 16..32
/// (the 32-value block layout: value `j` low, value `j + 16` high).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn split_nibbles(q: __m128i) -> __m256i {
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), _mm256_set1_epi8(0x0F))
}

/// Byte `j` = 0xFF where bit `j` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn spread_bits(bits: u32) -> __m256i {
    // Byte j takes byte j / 8 of `bits`, then tests bit j % 8 of it.
    let pick = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let v = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), pick);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask)
}

/// i16 vector `[s[a] × 8, s[b] × 8]` from 16 i8 `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_i8(s: __m128i, a: i64, b: i64) -> __m256i {
    const ONES: i64 = 0x0101_0101_0101_0101;
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s, _mm_set_epi64x(b * ONES, a * ONES)))
}

/// Broadcast of i16 element `j` (0..8) of each 128-bit half of `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast_i16(s: __m256i, j: i16) -> __m256i {
    _mm256_shuffle_epi8(s, _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j)))
}

// ---- 32-value blocks (Q8x32 activations) --------------------------------------

/// The pair loop of Q8_0 and IQ4_NL (whose codes as unsigned bytes would
/// saturate `vpmaddubsw`; the other 32-value types take `blocks32`):
/// `code(b)` gives a block's signed weight codes, `d` its scale.
macro_rules! dot32 {
    ($row:expr, $x:expr, $ts:expr, |$b:ident| $codes:expr, $d:expr) => {{
        let (row, x): (*const u8, &[BlockQ8x32]) = ($row, $x);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let ones = _mm256_set1_epi16(1);
        let mut i = 0;
        // Two blocks per step into two accumulators (independent FMA chains).
        while i + 2 <= x.len() {
            for (k, acc) in [&mut acc0, &mut acc1].into_iter().enumerate() {
                let xb = &x[i + k];
                let $b = row.add((i + k) * $ts);
                let p = madd(mul_i8($codes, load256(xb.qs.as_ptr() as *const u8)), ones);
                *acc = _mm256_fmadd_ps(_mm256_set1_ps($d * xb.d), _mm256_cvtepi32_ps(p), *acc);
            }
            i += 2;
        }
        if i < x.len() {
            let xb = &x[i];
            let $b = row.add(i * $ts);
            let p = madd(mul_i8($codes, load256(xb.qs.as_ptr() as *const u8)), ones);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps($d * xb.d), _mm256_cvtepi32_ps(p), acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }};
}

/// Unsigned codes times signed `x`, pairs summed to i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_u8(w: __m256i, x: __m256i) -> __m256i {
    _mm256_maddubs_epi16(w, x)
}

// Each `dot_*` below: # Safety: `row` points at `x.len()` readable blocks of
// the type, and the CPU runs AVX2 + FMA + F16C.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    dot32!(row, x, 34, |b| load256(b.add(2)), f16_at(b))
}

/// Q4_0 codes of the block at `b`, signed: nibbles minus 8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_codes(b: *const u8) -> __m256i {
    _mm256_sub_epi8(split_nibbles(load128(b.add(2))), _mm256_set1_epi8(8))
}

/// Q4_1 codes of the block at `b`, unsigned (the offset is the block's `m`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_codes(b: *const u8) -> __m256i {
    split_nibbles(load128(b.add(4)))
}

/// Q5 codes: nibbles with the fifth bit from the u32 at `b + at`; with
/// `signed`, minus 16 (bit clear: the byte's top nibble set, i.e. `q - 16`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_codes(b: *const u8, at: usize, qs_at: usize, signed: bool) -> __m256i {
    let q = split_nibbles(load128(b.add(qs_at)));
    let hi = spread_bits((b.add(at) as *const u32).read_unaligned());
    if signed {
        _mm256_or_si256(q, _mm256_andnot_si256(hi, _mm256_set1_epi8(0xF0u8 as i8)))
    } else {
        _mm256_or_si256(q, _mm256_and_si256(hi, _mm256_set1_epi8(0x10)))
    }
}

/// The IQ4 level table in both 128-bit halves, for `vpshufb` lookups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_table() -> __m256i {
    let t = load128(IQ4_LEVELS.as_ptr() as *const u8);
    _mm256_set_m128i(t, t)
}

/// 32 IQ4 levels (signed) from the 16 bytes of nibbles at `p` (low nibbles
/// values 0..16, high 16..32), `table` from [`iq4_table`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_codes(table: __m256i, p: *const u8) -> __m256i {
    _mm256_shuffle_epi8(table, split_nibbles(load128(p)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_nl(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    let table = iq4_table();
    dot32!(row, x, 18, |b| iq4_codes(table, b.add(2)), f16_at(b))
}

// ---- 256-value super-blocks (Q8K activations) -----------------------------------

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bsums(xb: &BlockQ8K) -> __m256i {
    _mm256_loadu_si256(xb.bsums.as_ptr() as *const __m256i)
}

/// Q4_K / Q5_K: per pair of 32-value sub-blocks, 32 bytes of nibbles (low
/// nibble: sub-block 2p, high: 2p + 1), plus Q5_K's fifth bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q45_k<const FIVE: bool>(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let (ts, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * ts);
        let xq = xb.qs.as_ptr() as *const u8;
        // d and dmin widened together and times x's scale in one multiply.
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
        let dd = _mm_mul_ps(dd, _mm_set1_ps(xb.d));
        let (sc, m) = scales_mins_k4(&*(b.add(4) as *const [u8; 12]));
        // Mins: [m0, m0, m1, m1, ..] as i16 against the 16 group sums.
        let m8 = _mm_cvtsi64_si128(m as i64);
        let summ = madd(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)), bsums(xb));
        let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
        let sc = _mm256_set_m128i(sc16, sc16);
        let qh = if FIVE { load256(b.add(16)) } else { _mm256_setzero_si256() };
        let mut sumi = _mm256_setzero_si256();
        for p in 0..4 {
            let q = load256(b.add(qs_at + 32 * p));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if FIVE {
                // Bit 2p of qh[l] tops value l of sub-block 2p, bit 2p + 1 of 2p + 1.
                let hl = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * p as i32)), one);
                let hh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * p as i32 + 1)), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hl));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(hh));
            }
            let plo = mul_u8(lo, load256(xq.add(64 * p)));
            let phi = mul_u8(hi, load256(xq.add(64 * p + 32)));
            let j = 2 * p as i16;
            sumi = _mm256_add_epi32(sumi, madd(plo, bcast_i16(sc, j)));
            sumi = _mm256_add_epi32(sumi, madd(phi, bcast_i16(sc, j + 1)));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
        acc = _mm256_fnmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), _mm256_cvtepi32_ps(summ), acc);
    }
    hsum(acc)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    dot_q45_k::<false>(row, x)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    dot_q45_k::<true>(row, x)
}

/// Bits 0..2 of each byte of `h`, moved to bits 4..6.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn top2(h: __m256i) -> __m256i {
    _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(3)))
}

/// Q6_K: per 128-value half, 64 bytes of low nibbles and 32 of bit pairs
/// make four 32-value runs of 6-bit codes (0..64), multiplied unsigned; the
/// `- 32` comes off through the group sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    // Run r's scales, [sc[2r] x 8 | sc[2r + 1] x 8] as i16, are one byte
    // shuffle (`pick[r]`) of the block's scales laid out as [even | odd]
    // (`split`). Through `black_box`: with the masks as constants, LLVM
    // rewrote each shuffle as two (`vpshuflw`/`vpshufhw` + `vpshufd`) plus a
    // widening, and this loop is bound by the shuffle pipes.
    let split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    let pick: [__m256i; 8] = std::hint::black_box(std::array::from_fn(|r| {
        let lo = 2 * r as i16;
        _mm256_set1_epi16(((lo + 1) << 8) | lo)
    }));
    let mut acc = _mm256_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 210);
        let xq = xb.qs.as_ptr() as *const u8;
        let d = f16_at(b.add(208)) * xb.d;
        let sc = load128(b.add(192));
        let offs = madd(_mm256_cvtepi8_epi16(sc), bsums(xb));
        let split_sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, split));
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let ql0 = load256(b.add(64 * n));
            let ql1 = load256(b.add(64 * n + 32));
            let qh = load256(b.add(128 + 32 * n));
            let runs = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), top2(qh)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), top2(_mm256_srli_epi16::<2>(qh))),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), top2(_mm256_srli_epi16::<4>(qh))),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), top2(_mm256_srli_epi16::<6>(qh))),
            ];
            for (k, q) in runs.into_iter().enumerate() {
                let p = mul_u8(q, load256(xq.add(128 * n + 32 * k)));
                sumi = _mm256_add_epi32(sumi, madd(p, _mm256_shuffle_epi8(split_sc, pick[4 * n + k])));
            }
        }
        let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(offs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// Q2_K: per 128-value half, 32 bytes hold four 32-value runs of 2-bit
/// codes (bit pairs 0..4); each run is two 16-value groups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q2_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m2 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 84);
        let xq = xb.qs.as_ptr() as *const u8;
        let (d, dmin) = (f16_at(b.add(80)) * xb.d, f16_at(b.add(82)) * xb.d);
        let raw = load128(b);
        let sc = _mm_and_si128(raw, _mm_set1_epi8(0x0F));
        let mins = _mm_and_si128(_mm_srli_epi16::<4>(raw), _mm_set1_epi8(0x0F));
        let summ = madd(_mm256_cvtepu8_epi16(mins), bsums(xb));
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let qv = load256(b.add(16 + 32 * n));
            let runs = [
                _mm256_and_si256(qv, m2),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qv), m2),
                _mm256_and_si256(_mm256_srli_epi16::<4>(qv), m2),
                _mm256_and_si256(_mm256_srli_epi16::<6>(qv), m2),
            ];
            for (k, q) in runs.into_iter().enumerate() {
                let g = (8 * n + 2 * k) as i64;
                let p = mul_u8(q, load256(xq.add(128 * n + 32 * k)));
                sumi = _mm256_add_epi32(sumi, madd(p, pair_i8(sc, g, g + 1)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(summ), acc);
    }
    hsum(acc)
}

/// Q3_K: Q2_K's code layout plus a high bit per value from `hmask` (bit
/// `4n + k` for run `k` of half `n`), codes `q2 + 4h` multiplied unsigned;
/// the `- 4` comes off through the group sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q3_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m2 = _mm256_set1_epi8(3);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 110);
        let xq = xb.qs.as_ptr() as *const u8;
        let d = f16_at(b.add(108)) * xb.d;
        let sc = q3_k_scales_vec(b);
        let offs = madd(_mm256_cvtepi8_epi16(sc), bsums(xb));
        let hm = load256(b);
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let qv = load256(b.add(32 + 32 * n));
            for k in 0..4 {
                let shift = _mm_cvtsi32_si128(2 * k as i32);
                let q2 = _mm256_and_si256(_mm256_srl_epi16(qv, shift), m2);
                let h = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * n + k) as i32)), one);
                let q = _mm256_or_si256(q2, _mm256_slli_epi16::<2>(h));
                let g = (8 * n + 2 * k) as i64;
                let p = mul_u8(q, load256(xq.add(128 * n + 32 * k)));
                sumi = _mm256_add_epi32(sumi, madd(p, pair_i8(sc, g, g + 1)));
            }
        }
        let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(offs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// The block at `b`'s sixteen group scales `s_g - 32` as i8, as the scalar
/// twin's `q3_k_scales` reads them (the low nibbles of scale bytes 0..8
/// are groups 0..8, their high nibbles groups 8..16; byte `8 + g % 4` holds
/// group `g`'s top two bits at bit pair `g / 4`), in a few 128-bit
/// operations: that word-at-a-time scalar form took half of the AVX-512
/// Q3_K gemv's time (`gemv_ggml 1024k`: 10.2 GB/s with it, 20.0 with
/// constant scales). Shared by the x86 Q3_K kernels.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q3_k_scales_vec(b: *const u8) -> __m128i {
    // Bytes 94..110 (the block's last 16): the 12 scale bytes from byte 2.
    let v = _mm_loadu_si128(b.add(94) as *const __m128i);
    // Scale bytes 0..8 twice; the second copy's high nibbles.
    let t = _mm_shuffle_epi8(v, _mm_setr_epi8(2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9));
    let low = _mm_and_si128(_mm_srlv_epi64(t, _mm_set_epi64x(4, 0)), _mm_set1_epi8(0x0F));
    // Byte g: scale byte 8 + g % 4, shifted down by 2 (g / 4) (a dword
    // shift: the two bits taken stay inside their byte).
    let u = _mm_shuffle_epi8(v, _mm_setr_epi8(10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13));
    let top = _mm_and_si128(_mm_srlv_epi32(u, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
    _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16::<4>(top)), _mm_set1_epi8(32))
}

/// IQ4_XS's eight sub-block scales `ls - 32` as i32, sub-block `j` in lane
/// `j`: `ls_j` is nibble `j` of the u32 `scales_l` topped by bit pair `j` of
/// the u16 `scales_h`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs_ls32(b: *const u8) -> __m256i {
    let h = (b.add(2) as *const u16).read_unaligned() as i32;
    let l = (b.add(4) as *const u32).read_unaligned() as i32;
    let lo = _mm256_srlv_epi32(_mm256_set1_epi32(l), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
    let hi = _mm256_srlv_epi32(_mm256_set1_epi32(h), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    let ls = _mm256_or_si256(
        _mm256_and_si256(lo, _mm256_set1_epi32(0xF)),
        _mm256_slli_epi32::<4>(_mm256_and_si256(hi, _mm256_set1_epi32(3))),
    );
    _mm256_sub_epi32(ls, _mm256_set1_epi32(32))
}

/// The scales of [`iq4_xs_ls32`] as i16, all eight in each 128-bit half
/// (for [`bcast_i16`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs_scales(b: *const u8) -> __m256i {
    let ls = iq4_xs_ls32(b);
    // packs works per half: [ls0..4, ls0..4 | ls4..8, ls4..8]; reorder the
    // 64-bit quarters to [ls0..4, ls4..8 | ls0..4, ls4..8].
    _mm256_permute4x64_epi64::<0b10_00_10_00>(_mm256_packs_epi32(ls, ls))
}

/// IQ4_XS: per pair of 32-value sub-blocks, 32 bytes of nibbles (16 per
/// sub-block: low nibbles values 0..16, high 16..32) looked up in the level
/// table, times the sub-block scale, against the activations laid out in
/// the same order ([`XIQ4`]: one load each for the low and the high
/// nibbles, where gathering them from the plain layout took two loads and
/// a lane insert each).
///
/// # Safety
/// `xp` holds [`xiq4::laid_out`] of `x`; the rest as the other dots.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_xs(row: *const u8, x: &[BlockQ8K], xp: *const XIQ4) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let table = iq4_table();
    // vpshufb indices of i16 element 0 (low half) and 1 (high half); pair p adds 2p.
    let pick = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
    );
    let mut acc = _mm256_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 136);
        // `lo[0], lo[1], hi[0], hi[1]`, 64 bytes each.
        let xq = xp.add(i) as *const u8;
        let d = f16_at(b) * xb.d;
        let ls = iq4_xs_scales(b);
        let mut sumi = _mm256_setzero_si256();
        for p in 0..4 {
            let q = load256(b.add(8 + 32 * p));
            // lo: values 0..16 of sub-blocks 2p | 2p + 1; hi: values 16..32.
            let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(q, m4));
            let hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4));
            let (x_lo, x_hi) = (load256(xq.add(32 * p)), load256(xq.add(128 + 32 * p)));
            // i16 lanes: low half sub-block 2p, high half 2p + 1.
            let sc = _mm256_shuffle_epi8(
                ls,
                _mm256_add_epi16(pick, _mm256_set1_epi16(((4 * p as i16) << 8) | (4 * p as i16))),
            );
            sumi = _mm256_add_epi32(sumi, madd(mul_i8(lo, x_lo), sc));
            sumi = _mm256_add_epi32(sumi, madd(mul_i8(hi, x_hi), sc));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

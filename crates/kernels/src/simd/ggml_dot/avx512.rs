//! AVX-512 F/BW/VL + VNNI gemv kernels (Ice Lake, Sapphire Rapids, Zen 4
//! and later) for the 32-value types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL),
//! Q2_K ([`q2_k`]), Q3_K ([`q3_k`]), Q4_K, Q5_K, Q6_K ([`q6_k`]) and IQ4_XS
//! ([`has_kernel`] tells the caller which types have one here).
//!
//! Q6_K took three tries. The first (chunks of 64 codes in their stored
//! order, each scaled by a permute and a `vpdpwssd`) lost to the AVX2 kernel
//! on a Zen 4 (`examples/gemv_ggml.rs 256 q6_k`, 1 thread, mean of 5 runs:
//! 17.2 GB/s against 21.1). The second took the many-token kernel's layout
//! (`multi/avx512.rs`: lanes of 16-value groups, four `vpdpbusd` a block):
//! faster on weights in L2 (31.5-31.9 GB/s against 26.2-26.8) but slower
//! from DRAM (14.7-16.0 against 21.0-22.2), and Q4_K_M decode no faster.
//! The third, [`q6_k`], builds the codes in their value order: in L2 on the
//! Zen 4 35.4-35.8 GB/s against 27.0, but from DRAM on one thread 22.0-23.0
//! against 24.0-24.1 (at every prefetch lead from 0 to 8 KiB) and no
//! different at two threads, so the AVX2 kernel kept the level there. A Zen
//! 5 (512-bit operations whole, not split in two) runs it at 73-75 GB/s in
//! L2 against the AVX2 kernel's 39.5-40.4, and Q4_K_M decode 2-6% faster at
//! two threads and 6% at one (alternating `qmoe bench`), so it is the level's
//! kernel now. The Q4_K kernel here showed the Zen 4 pattern too: faster
//! than its AVX2 twin in L2, slower from DRAM on one thread in 12 of 13
//! runs that day (17.2-20.2 against 17.9-22.2 GB/s); on the Zen 5 it is
//! the faster from DRAM as well (34.2-35.8 against 31.1-31.8).
//!
//! The integer core is `vpdpbusd`: unsigned weight bytes times signed
//! activation codes, four adjacent products summed into each i32 lane and
//! added to an accumulator, in one instruction where AVX2 needs
//! `vpmaddubsw` + `vpmaddwd`. Its u8 × s8 asymmetry is met by making the
//! weight codes unsigned with an offset and taking the offset back through
//! a sum of activation codes, so the integer sums equal the scalar twin's:
//! * the 32-value types (Q8_0 `w + 128`, Q4_0 `q + 8`, Q5_0 `q + 16`,
//!   IQ4_NL its level `+ 128`; Q4_1 and Q5_1 need no offset): the call lays
//!   the activations out once with `-128 Σ x` per lane, which shifted right
//!   is the `-offset Σ x` the accumulator of `vpdpbusd` starts from
//!   ([`blocks32`], which takes sixteen blocks a step);
//! * IQ4_XS looks its nibbles up in the level table plus 128 (1..=241) and
//!   takes `128 Σ_j ls_j B_j` off through `bsums`;
//! * Q3_K (`q2 + 4h`, value `- 4`) takes `4 Σ_g s_g B_g` off through
//!   `bsums` ([`q3_k`]);
//! * Q2_K, Q4_K and Q5_K codes are unsigned already (their mins go through
//!   `bsums` in the f32 step).
//!
//! 512-bit registers hold 64 values: two 32-value blocks (each half scaled
//! in f32 by its own block's `d_w d_x`) or a quarter of a
//! 256-value super-block. The k-quants' per-(sub-)block integer scales are
//! applied with `vpdpwssd`: the sums of a `vpdpbusd` on Q4_K / Q5_K codes
//! fit in i16 (at most `8 · 31 · 127 = 31496`: two `vpdpbusd` add up per
//! lane in [`dot_q45_k`]), so two registers of them pack exactly into i16
//! pairs (`vpackssdw`) that one `vpdpwssd` multiplies by their scales and
//! adds. IQ4_XS's sums do not fit i16 (`4 · 241 · 127`), so its scales go
//! through `vpmulld`.
//!
//! Rows are streamed in order with software prefetch, as the AVX2 level does.
//!
//! `tests/simd_ggml.rs` checks these kernels against the scalar twin on any
//! CPU that has the level, and `tools/test-avx512.sh simd_ggml` runs it
//! under an emulated Tiger Lake CPU on machines without it.

use std::arch::x86_64::*;

use qmoe_core::GgmlType;

use super::xiq4::{self, XIQ4};
use crate::ggml::IQ4_LEVELS;
use crate::simd::act::{BlockQ8K, BlockQ8x32};
use crate::simd::scratch::Tokens;

mod blocks32;
mod q2_k;
mod q3_k;
mod q6_k;

/// Whether `ty` has a kernel here (the others run their AVX2 kernel).
pub(super) fn has_kernel(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | IQ4NL | Q2K | Q3K | Q4K | Q5K | Q6K | IQ4XS)
}

/// # Safety
/// The CPU runs AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C; `ty` is one of
/// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS; `w` is exactly `y.len()` rows of `x.len()`
/// blocks of `ty`; `acts_id` names `x` as [`super::gemv_q8k_named`] says.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemv_q8k(ty: GgmlType, w: &[u8], x: &[BlockQ8K], y: &mut [f32], acts_id: u64) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            let mut tokens = Tokens::default();
            // SAFETY (closure): `tokens` gives room for `x.len()` values.
            let xp = tokens.group(acts_id, (1, x.len()), (0, 1), |_, p| unsafe { prep_q45(x, p) });
            if ty == GgmlType::Q4K {
                rows!(w, x, y, 144, dot_q45_k::<false>, xp)
            } else {
                rows!(w, x, y, 176, dot_q45_k::<true>, xp)
            }
        }
        GgmlType::Q2K => rows!(w, x, y, q2_k::TS, q2_k::dot),
        GgmlType::Q3K => rows!(w, x, y, q3_k::TS, q3_k::dot),
        GgmlType::Q6K => rows!(w, x, y, q6_k::TS, q6_k::dot),
        GgmlType::IQ4XS => {
            let mut tokens = Tokens::default();
            let xp = xiq4::laid_out(&mut tokens, x, acts_id);
            rows!(w, x, y, 136, dot_iq4_xs, xp)
        }
        ty => unreachable!("avx512::gemv_q8k: {ty} has no kernel here (checked by the caller)"),
    }
}

/// # Safety
/// As [`gemv_q8k`], for a 32-value type ([`has_kernel`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemv_q8x32(ty: GgmlType, w: &[u8], x: &[BlockQ8x32], y: &mut [f32], acts_id: u64) {
    use super::group32::{IQ4NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
    use blocks32::Blocks32;
    /// Every row of `K` against the call's activations, laid out once.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn run<K: Blocks32>(w: &[u8], x: &[BlockQ8x32], y: &mut [f32], acts_id: u64) {
        let mut tokens = Tokens::default();
        let groups = super::group32::laid_out(&mut tokens, x, acts_id);
        rows!(w, x, y, K::TS, blocks32::dot::<K>, groups)
    }
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q8_0 => run::<Q8_0>(w, x, y, acts_id),
        GgmlType::Q4_0 => run::<Q4_0>(w, x, y, acts_id),
        GgmlType::Q4_1 => run::<Q4_1>(w, x, y, acts_id),
        GgmlType::Q5_0 => run::<Q5_0>(w, x, y, acts_id),
        GgmlType::Q5_1 => run::<Q5_1>(w, x, y, acts_id),
        GgmlType::IQ4NL => run::<IQ4NL>(w, x, y, acts_id),
        ty => unreachable!("avx512::gemv_q8x32: {ty} has no kernel here (checked by the caller)"),
    }
}

// ---- helpers ------------------------------------------------------------------
// Each function below: # Safety: the CPU runs the features it is compiled
// for, and every pointer it reads through points at enough readable bytes.

/// The little-endian f16 at `p`, widened exactly.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load128(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn load512(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const __m512i)
}

/// 32 bytes at `lo` in the low half, 32 at `hi` in the high half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn load_2x256(lo: *const u8, hi: *const u8) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load256(lo)), load256(hi))
}

/// The IQ4 levels + 128 (`1..=241`, unsigned for `vpdpbusd`) in every
/// 128-bit lane, for `vpshufb` lookups by nibble (IQ4_NL, IQ4_XS).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn iq4_table_u8() -> __m512i {
    let levels = load128(IQ4_LEVELS.as_ptr() as *const u8);
    _mm512_broadcast_i32x4(_mm_xor_si128(levels, _mm_set1_epi8(i8::MIN)))
}

/// The 16 activation code sums of 16-value groups, as i16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bsums(xb: &BlockQ8K) -> __m256i {
    _mm256_loadu_si256(xb.bsums.as_ptr() as *const __m256i)
}

/// An i32 vector of 8 lanes widened to 16, the upper 8 zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn widen(v: __m256i) -> __m512i {
    _mm512_zextsi256_si512(v)
}

// ---- 256-value super-blocks (Q8K activations) -----------------------------------

/// For `vpermw`: i16 `i` of the scale register for `packs(R_a, R_b)` (`R_j`
/// the `vpdpbusd` lanes of values `64j..64j + 64` of a 256-value block, so
/// that a 128-bit lane is one 16-value group), as an index into the
/// sixteen group scales. Chunk `c` (8 i16) of the pack is four sums of
/// group `4a + c`, then four of group `4b + c`.
const fn pair_index(a: usize, b: usize) -> [i16; 32] {
    let mut q = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        let (c, second) = (i / 8, (i % 8) / 4);
        q[i] = (4 * if second == 0 { a } else { b } + c) as i16;
        i += 1;
    }
    q
}

const SCALES_01: [i16; 32] = pair_index(0, 1);
const SCALES_23: [i16; 32] = pair_index(2, 3);

/// The per-64-bit-lane right shifts that bring bit pair `2p` (lanes 0..4)
/// and `2p + 1` (lanes 4..8) of every byte down to bits 0, 1, for `p` 0
/// and 1: with a half-block's 32 bytes of bit pairs in both halves of a
/// register, runs `2p` and `2p + 1` in value order (Q2_K, Q3_K).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run_shifts() -> [__m512i; 2] {
    [_mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2), _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6)]
}

/// `init + Σ_g s_g S_g` per lane: `r[j]` the `vpdpbusd` lanes of values
/// `64j..64j + 64` (each at most `i16::MAX` in magnitude, so the packs are
/// exact), `sc` the sixteen group scales as i16 in its low 256 bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scaled_groups(init: __m512i, r: &[__m512i; 4], sc: __m512i) -> __m512i {
    let idx01 = _mm512_loadu_si512(SCALES_01.as_ptr() as *const __m512i);
    let idx23 = _mm512_loadu_si512(SCALES_23.as_ptr() as *const __m512i);
    let s = _mm512_dpwssd_epi32(init, _mm512_packs_epi32(r[0], r[1]), _mm512_permutexvar_epi16(idx01, sc));
    _mm512_dpwssd_epi32(s, _mm512_packs_epi32(r[2], r[3]), _mm512_permutexvar_epi16(idx23, sc))
}

/// `acc + d_w d_x (Σ_g s_g S_g - 2^SHIFT Σ_g s_g B_g)`: the block step of the
/// types whose codes stand for `code - 2^SHIFT` (Q3_K 4, Q6_K 32), `r` the
/// `vpdpbusd` lanes as [`scaled_groups`] takes them, `sc` the sixteen i8
/// group scales, `d_w` the block's `d`; the offset comes off through the
/// group sums `B_g`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn offset_groups<const SHIFT: i32>(
    acc: __m512,
    r: &[__m512i; 4],
    sc: __m128i,
    xb: &BlockQ8K,
    d_w: f32,
) -> __m512 {
    let sc = _mm256_cvtepi8_epi16(sc);
    let offs = _mm256_slli_epi32::<SHIFT>(_mm256_madd_epi16(sc, bsums(xb)));
    let init = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), offs));
    let s = scaled_groups(init, r, _mm512_castsi256_si512(sc));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(d_w * xb.d), acc)
}

/// Q4_K / Q5_K, with the sub-block scales applied once per block.
///
/// The 128 code bytes are chunks `a = 0..4` of 32 bytes, byte `l` of chunk
/// `a` holding value `l` of sub-block `2a` (low nibble) and `2a + 1` (high).
/// Register `J` (0, 1) gathers qword `i` (0..8) from chunk `i % 4`, bytes
/// `8 j ..` with `j = 2J + i / 4`, so its low nibbles put sub-block
/// `2 (i % 4)` in lanes `2i, 2i + 1` and its high nibbles sub-block
/// `2 (i % 4) + 1`: the same lanes hold the same sub-blocks in both
/// registers. Their `vpdpbusd` (against the activations laid out to match,
/// [`XQ45`]) add up in two accumulators `lo`, `hi`, eight products per lane
/// (at most `8 · 31 · 127 < 2^15`, one i16), packed into i16 pairs of one
/// sub-block each and scaled by one `vpdpwssd` ([`PAIR_SCALES`] lays the
/// scale bytes out to match): per block 4 `vpdpbusd`, 1 pack and 1
/// `vpdpwssd`. Q5_K's fifth bit of value `l` of sub-block `s` is bit `s` of
/// `qh[l]`, gathered per qword the same way.
///
/// The f32 step is one conversion and one FMA a block: the scaled sums
/// folded to eight lanes (times `d`) beside the eight `m_j B_j` pair sums
/// (times `-dmin`). Two conversions and FMAs, two broadcasts, and the
/// sixteen-lane scale vectors built from bytes (`vpshufb` + `vpmovzxbd`
/// twice) and two `vpdpwssd` had made it about 11% slower in L2
/// (`gemv_ggml 1024k`, Zen 4: Q4_K 25.3 against 28.2 GB/s, Q5_K 22.4
/// against 24.8).
///
/// # Safety
/// `xp` holds [`prep_q45`] of `x`; the rest as the other dots.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q45_k<const FIVE: bool>(row: *const u8, x: &[BlockQ8K], xp: *const XQ45) -> f32 {
    let (ts, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let m4 = _mm512_set1_epi8(0x0F);
    let sixteen = _mm512_set1_epi8(16);
    // Qword i of register J: chunk i % 4 (qwords 4a.. of the two loads), qword 2J + i / 4 in it.
    let gather = [0, 1].map(|jj| {
        let q: [i64; 8] = std::array::from_fn(|i| (4 * (i % 4) + 2 * jj + i / 4) as i64);
        _mm512_loadu_si512(q.as_ptr() as *const __m512i)
    });
    let gather_qh = [0, 1].map(|jj| {
        let q: [i64; 8] = std::array::from_fn(|i| (2 * jj + i / 4) as i64);
        _mm512_loadu_si512(q.as_ptr() as *const __m512i)
    });
    // Bit 2 (i % 4) (the low nibbles' sub-block) and the next (the high) of each byte of qword i.
    let bits = [0, 1].map(|h| {
        let q: [u8; 64] = std::array::from_fn(|b| 1u8 << (2 * ((b / 8) % 4) + h));
        _mm512_loadu_si512(q.as_ptr() as *const __m512i)
    });
    let pair_sc = _mm512_loadu_si512(PAIR_SCALES.as_ptr() as *const __m512i);
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let mut acc = _mm512_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * ts);
        let xq = &*xp.add(i);
        // [d, -dmin] x the token's d, widened from the block's two f16 at once.
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
        let dd = _mm_xor_ps(_mm_mul_ps(dd, _mm_set1_ps(xb.d)), _mm_setr_ps(0.0, -0.0, 0.0, 0.0));
        let scm = scales_mins_k4_vec(b);
        // Σ_j m_j B_j: mins [m0, m0, m1, m1, ..] as i16 against the 16 group sums.
        let summ = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(scm, scm)), bsums(xb));
        let scales = _mm512_shuffle_epi8(_mm512_broadcastq_epi64(scm), pair_sc);
        let (q0, q1) = (load512(b.add(qs_at)), load512(b.add(qs_at + 64)));
        let qh = if FIVE { _mm512_castsi256_si512(load256(b.add(16))) } else { _mm512_setzero_si512() };
        let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for jj in 0..2 {
            let z = _mm512_permutex2var_epi64(q0, gather[jj], q1);
            let mut cl = _mm512_and_si512(z, m4);
            let mut ch = _mm512_and_si512(_mm512_srli_epi16::<4>(z), m4);
            if FIVE {
                let h = _mm512_permutexvar_epi64(gather_qh[jj], qh);
                cl = _mm512_mask_add_epi8(cl, _mm512_test_epi8_mask(h, bits[0]), cl, sixteen);
                ch = _mm512_mask_add_epi8(ch, _mm512_test_epi8_mask(h, bits[1]), ch, sixteen);
            }
            lo = _mm512_dpbusd_epi32(lo, cl, xq.lo[jj]);
            hi = _mm512_dpbusd_epi32(hi, ch, xq.hi[jj]);
        }
        // Every lane sum fits i16, so packing is exact.
        let sumi = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_packs_epi32(lo, hi), scales);
        // Lanes 0..8: the scaled code sums folded in half (d); 8..16: the mins' (-dmin).
        let s8 = _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64::<1>(sumi));
        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(s8), summ);
        let scale = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(dd));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(both), scale, acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// The block at `b`'s eight 6-bit sub-block scales (bytes 0..8) and mins
/// (bytes 8..16) of Q4_K / Q5_K, as [`super::scales_mins_k4`] unpacks them
/// word by word, in a few 128-bit operations on the 12 scale bytes at
/// `b + 4`: dwords `a0, a1, a2`, scales `a0 & 0x3F..` then
/// `(a2 & 0x0F..) | ((a0 >> 6) & 3..) << 4`, mins the same from `a1` and
/// `a2 >> 4`. On a Zen 5 (`gemv_ggml 1024k q4_k`, 1 thread, alternating)
/// the gemv ran 47.5-48.5 GB/s with the word form moved over from general
/// registers, 51.8-52.2 with this one (and 64.5 with constant scales, which
/// LLVM hoists). The AVX2 gemv keeps the word form: this one cost it 35.7
/// -> 29.5 GB/s.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales_mins_k4_vec(b: *const u8) -> __m128i {
    // Bytes 4..20: the 12 scale bytes, then 4 the caller does not need.
    let v = _mm_loadu_si128(b.add(4) as *const __m128i);
    // Lanes 0, 1: scales and mins of sub-blocks 0..4.
    let low = _mm_and_si128(v, _mm_set1_epi8(0x3F));
    // Lanes 2, 3: those of sub-blocks 4..8, nibbles of a2 topped by a0's and a1's spare bits.
    let nib = _mm_and_si128(
        _mm_srlv_epi32(_mm_shuffle_epi32::<0b10_10_10_10>(v), _mm_setr_epi32(0, 0, 0, 4)),
        _mm_set1_epi8(0x0F),
    );
    let spare = _mm_and_si128(_mm_srli_epi32::<6>(_mm_shuffle_epi32::<0b01_00_01_00>(v)), _mm_set1_epi8(3));
    let all = _mm_blend_epi32::<0b1100>(low, _mm_or_si128(nib, _mm_slli_epi32::<4>(spare)));
    // [scales 0..4, mins 0..4, scales 4..8, mins 4..8] -> [scales, mins].
    _mm_shuffle_epi32::<0b11_01_10_00>(all)
}

/// [`dot_q45_k`]'s `vpshufb` control for the scales of `packs(lo, hi)`
/// (from the eight scale bytes, broadcast to every 128-bit lane): lane `k`'s
/// four i16 pairs are sub-blocks `a, a + 2, a + 1, a + 3`, `a = 0` for even
/// `k` and 4 for odd, and each pair's scale byte goes to both of its i16
/// (the other bytes zero).
const PAIR_SCALES: [i8; 64] = {
    let mut q = [0i8; 64];
    let mut i = 0;
    while i < 64 {
        let (k, pair, byte) = (i / 16, (i % 16) / 4, i % 2);
        let sub = 4 * (k % 2) + [0, 2, 1, 3][pair];
        q[i] = if byte == 0 { sub as i8 } else { -128 };
        i += 1;
    }
    q
};

/// One Q8K block's codes in [`dot_q45_k`]'s order: `lo[J]` qword `i` holds
/// values `8 j ..` (`j = 2J + i / 4`) of sub-block `2 (i % 4)`, `hi[J]` of
/// sub-block `2 (i % 4) + 1`.
#[repr(C, align(64))]
pub(super) struct XQ45 {
    lo: [__m512i; 2],
    hi: [__m512i; 2],
}

/// `x` as [`XQ45`]s at `dst`.
///
/// # Safety
/// `dst` has room for `x.len()` values.
unsafe fn prep_q45(x: &[BlockQ8K], dst: *mut XQ45) {
    // The same bytes as plain qwords: `lo[0], lo[1], hi[0], hi[1]`.
    let p = dst as *mut [[u64; 8]; 4];
    for (k, xb) in x.iter().enumerate() {
        let mut v = [[0u64; 8]; 4];
        for (r, reg) in v.iter_mut().enumerate() {
            let (half, jj) = (r / 2, r % 2);
            for (i, q) in reg.iter_mut().enumerate() {
                let at = 32 * (2 * (i % 4) + half) + 8 * (2 * jj + i / 4);
                *q = u64::from_le_bytes(std::array::from_fn(|e| xb.qs[at + e] as u8));
            }
        }
        // SAFETY: `p` has room for `x.len()` values.
        unsafe { p.add(k).write(v) };
    }
}

/// IQ4_XS's eight sub-block scales `ls_j - 32` as i32: `ls_j` is nibble `j`
/// of the u32 `scales_l` (bytes 4..8) topped by bit pair `j` of the u16
/// `scales_h` (bytes 2..4).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn iq4_xs_scales(b: *const u8) -> __m256i {
    let h = (b.add(2) as *const u16).read_unaligned() as i32;
    let l = (b.add(4) as *const u32).read_unaligned() as i32;
    let j = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let low = _mm256_srlv_epi32(_mm256_set1_epi32(l), _mm256_slli_epi32::<2>(j));
    let top = _mm256_srlv_epi32(_mm256_set1_epi32(h), _mm256_add_epi32(j, j));
    let ls = _mm256_or_si256(
        _mm256_and_si256(low, _mm256_set1_epi32(0xF)),
        _mm256_slli_epi32::<4>(_mm256_and_si256(top, _mm256_set1_epi32(3))),
    );
    _mm256_sub_epi32(ls, _mm256_set1_epi32(32))
}

/// IQ4_XS: sub-block `j`'s 16 bytes (`qs[16j..]`) hold values 0..16 in
/// their low nibbles and 16..32 in their high. So the first 64 bytes,
/// masked, have in 128-bit lane `j` values 0..16 of sub-block `j` (`j <
/// 4`), shifted down a nibble values 16..32, and the next 64 bytes the same
/// of sub-blocks 4..8: every i32 lane of the four `vpdpbusd` (levels + 128
/// from the table, against the activations laid out to match, [`XIQ4`])
/// holds four values of one sub-block, and a lane keeps its sub-block in
/// the two registers of each half. The two halves' sums then take their
/// scales in one `vpmulld` each (eight values a lane, at most `8 · 241 ·
/// 127`, well inside i32), and `128 Σ_j ls_j B_j` comes off through
/// `bsums`. Before, each 64-value chunk was built by a 128-bit lane shuffle
/// and a masked shift, and scaled by a permute and a `vpmulld` of its own:
/// four of each a block against none and two here. `gemv_ggml` (Zen 4, 1
/// thread): 17.9 -> 24.5 GB/s in L2 (`1024k`), 16.0-16.4 -> 19.1-20.1 from
/// DRAM (`512`, three alternations).
///
/// # Safety
/// `xp` holds [`xiq4::laid_out`] of `x`; the rest as the other dots.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_iq4_xs(row: *const u8, x: &[BlockQ8K], xp: *const XIQ4) -> f32 {
    let m4 = _mm512_set1_epi8(0x0F);
    let table = iq4_table_u8();
    // Lane l of the first half is sub-block l / 4, of the second 4 + l / 4.
    let first = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let second = _mm512_add_epi32(first, _mm512_set1_epi32(4));
    let mut acc = _mm512_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 136);
        let xq = &*xp.add(i);
        let d = f16_at(b) * xb.d;
        let ls = iq4_xs_scales(b);
        // [ls0, ls0, ls1, ls1, ..] as i16 against the 16 group sums: Σ_j ls_j B_j.
        let ls_twice = _mm256_or_si256(_mm256_and_si256(ls, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32::<16>(ls));
        let offs = _mm256_madd_epi16(ls_twice, bsums(xb));
        let ls = widen(ls);
        let mut sumi = widen(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<7>(offs)));
        for (h, idx) in [first, second].into_iter().enumerate() {
            let q = load512(b.add(8 + 64 * h));
            let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(q, m4));
            let hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4));
            let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xq.lo[h]);
            let s = _mm512_dpbusd_epi32(s, hi, xq.hi[h]);
            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(s, _mm512_permutexvar_epi32(idx, ls)));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    _mm512_reduce_add_ps(acc)
}

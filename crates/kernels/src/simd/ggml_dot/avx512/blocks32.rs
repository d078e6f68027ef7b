//! The 32-value block types' gemv at AVX-512 VNNI (Q8_0, Q4_0, Q4_1, Q5_0,
//! Q5_1, IQ4_NL), sixteen blocks a step.
//!
//! The call lays the activations out once ([`Group`]): each pair of blocks
//! as 64 contiguous codes beside `-128 Σ` of each lane's four codes, and
//! each block's scale and exact f32 sum. Every type's codes are made
//! unsigned by an offset (Q8_0 `w + 128`, Q4_0 `q + 8`, Q5_0 `q + 16`,
//! IQ4_NL its level `+ 128`; Q4_1 and Q5_1 need none), and `vpdpbusd` starts
//! from `-offset Σ` per lane, `-128 Σ` shifted right (the offsets are powers
//! of two), so `(w + offset) · x` comes out as the exact `w · x`. The
//! sixteen weight scales of a group are read on the integer side
//! ([`halves`]), widened to f32 in one conversion and multiplied by the
//! activation scales; each pair takes its two from that register with a
//! permute. Q4_1 and Q5_1 add `m_w · Σ x` with one FMA a group, their
//! sixteen `m` read the same way.
//!
//! Per pair that leaves the code unpacking (Q8_0: an insert and an xor;
//! the nibble types: two broadcasts, an insert, a masked shift and an and;
//! Q5_0 / Q5_1 a masked add of the fifth bits, their 64 bits a mask
//! register; IQ4_NL a `vpshufb`), one `vpdpbusd`, a permute, a conversion
//! and an FMA. The earlier loops took a pair at a time with its two scales
//! as scalars (Q8_0, Q4_0), Q4_0 with a second `vpdpbusd` against the
//! constant 8, and the other types ran their AVX2 kernels. On a Zen 4
//! (`examples/gemv_ggml.rs`, 1 thread), GB/s with the weights in L2
//! (`1024k`), the loop this replaced or the AVX2 kernel against this one:
//! Q4_0 15.8 -> 21.3, Q4_1 14.6 -> 23.0, Q5_0 11.9 -> 20.6, Q5_1 13.0 ->
//! 22.0, IQ4_NL 12.9 -> 20.5 (Q8_0 went 31.8 -> 40.4 when it got this
//! loop, 42.3 now); from DRAM (`512`, one run, a 28.4 GB/s streaming
//! read) Q4_0 14.8 -> 19.3, Q4_1 14.2 -> 20.2, Q5_0 11.4 -> 19.6, Q5_1
//! 12.5 -> 20.8, IQ4_NL 12.6 -> 18.0 before the weight scales moved to the
//! integer side ([`halves`], worth 6-7% more from DRAM for Q4_0 and Q5_0 in
//! three alternations). Four FMA chains instead of two, reading the
//! scales a group ahead, summing eight rows' lanes at once, an immediate
//! shift and blend for the nibbles' masked shift (which becomes
//! `vpsrlvw`) and a masked 128-bit broadcast for the insert measured no
//! faster, or slower.

use std::arch::x86_64::*;

use super::{iq4_table_u8, load128, load_2x256};
use crate::simd::act::BlockQ8x32;
use crate::simd::ggml_dot::group32::{packed_halves, Group, Layout32, Pair, BLOCKS};
use crate::simd::ggml_dot::group32::{IQ4NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

/// How two blocks of a 32-value type become 64 unsigned codes.
pub(super) trait Blocks32: Layout32 {
    /// The unsigned codes of the blocks at `b` (low 256 bits) and `b + TS`.
    ///
    /// # Safety
    /// Both blocks are readable; the CPU runs this file's features.
    unsafe fn codes(b: *const u8) -> __m512i;
}

/// Two blocks' 16 bytes of nibble pairs (at offset `at` of each), value `j`
/// in the low nibble of byte `j` and `j + 16` in the high: 128-bit lanes
/// `[A, A, B, B]`, lanes 1 and 3 shifted a nibble down, masked.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn nibbles(b: *const u8, at: usize, ts: usize) -> __m512i {
    let q = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_broadcastsi128_si256(load128(b.add(at)))),
        _mm256_broadcastsi128_si256(load128(b.add(ts + at))),
    );
    let q = _mm512_mask_srli_epi16::<4>(q, 0xFF00_FF00, q);
    _mm512_and_si512(q, _mm512_set1_epi8(0x0F))
}

/// `c` with 16 added to value `j` of each block where bit `j` of its u32
/// `qh` (at offset `at`) is set.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn fifth_bits(c: __m512i, b: *const u8, at: usize, ts: usize) -> __m512i {
    let h0 = (b.add(at) as *const u32).read_unaligned() as u64;
    let h1 = (b.add(ts + at) as *const u32).read_unaligned() as u64;
    _mm512_mask_add_epi8(c, h0 | h1 << 32, c, _mm512_set1_epi8(16))
}

impl Blocks32 for Q8_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m512i {
        // w + 128 as an unsigned byte is w with its top bit flipped.
        _mm512_xor_si512(load_2x256(b.add(2), b.add(Self::TS + 2)), _mm512_set1_epi8(i8::MIN))
    }
}

impl Blocks32 for Q4_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m512i {
        nibbles(b, 2, Self::TS)
    }
}

impl Blocks32 for Q4_1 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m512i {
        nibbles(b, 4, Self::TS)
    }
}

impl Blocks32 for Q5_0 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m512i {
        fifth_bits(nibbles(b, 6, Self::TS), b, 2, Self::TS)
    }
}

impl Blocks32 for Q5_1 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m512i {
        fifth_bits(nibbles(b, 8, Self::TS), b, 4, Self::TS)
    }
}

impl Blocks32 for IQ4NL {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m512i {
        _mm512_shuffle_epi8(iq4_table_u8(), nibbles(b, 2, Self::TS))
    }
}

/// Row `row` (`x.len()` blocks of `K`) times the activations `groups`
/// laid out from `x` by `group32::laid_out`.
///
/// # Safety
/// The CPU runs the features below; `row` points at `x.len()` blocks of
/// `K`; `groups` is `group32::laid_out` of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot<K: Blocks32>(row: *const u8, x: &[BlockQ8x32], groups: *const Group) -> f32 {
    let n = x.len();
    let mut acc = [_mm512_setzero_ps(); 3];
    let mut b = 0;
    let mut g = groups;
    // Whole groups apart, so that their loop has no bounds to test.
    while b + BLOCKS <= n {
        group::<K>(row.add(b * K::TS), &*g, BLOCKS, &mut acc);
        b += BLOCKS;
        g = g.add(1);
    }
    if b < n {
        group::<K>(row.add(b * K::TS), &*g, n - b, &mut acc);
    }
    let [acc0, acc1, accm] = acc;
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), accm))
}

/// The `take` (at most 16) blocks at `base` against group `g`, into the
/// two pair accumulators and the `m` one.
#[inline(always)]
unsafe fn group<K: Blocks32>(base: *const u8, g: &Group, take: usize, acc: &mut [__m512; 3]) {
    let scale = _mm512_mul_ps(halves(base, 0, K::TS, take), _mm512_load_ps(g.d.as_ptr()));
    if let Some(at) = K::M_AT {
        acc[2] = _mm512_fmadd_ps(halves(base, at, K::TS, take), _mm512_load_ps(g.sum.as_ptr()), acc[2]);
    }
    let pairs = &g.pairs;
    let mut k = 0;
    while 2 * k + 4 <= take {
        acc[0] = pair::<K>(K::codes(base.add(2 * k * K::TS)), &pairs[k], scale, k, acc[0]);
        acc[1] = pair::<K>(K::codes(base.add(2 * (k + 1) * K::TS)), &pairs[k + 1], scale, k + 1, acc[1]);
        k += 2;
    }
    if 2 * k + 2 <= take {
        acc[0] = pair::<K>(K::codes(base.add(2 * k * K::TS)), &pairs[k], scale, k, acc[0]);
        k += 1;
    }
    if 2 * k < take {
        // A group's odd last block, from a copy with a zero block after it
        // (the row may end there); its scale past `take` is zero.
        let mut two = [0u8; 64];
        std::ptr::copy_nonoverlapping(base.add(2 * k * K::TS), two.as_mut_ptr(), K::TS);
        acc[1] = pair::<K>(K::codes(two.as_ptr()), &pairs[k], scale, k, acc[1]);
    }
}

/// The f16 at offset `at` of the `take` (at most 16) blocks of `ts` bytes
/// at `base`, as f32; zero past `take` (see [`packed_halves`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn halves(base: *const u8, at: usize, ts: usize, take: usize) -> __m512 {
    let [a, b, c, d] = packed_halves(base, at, ts, take);
    _mm512_cvtph_ps(_mm256_setr_epi64x(a, b, c, d))
}

/// `scale`'s lanes `2k` (block `2k`'s `d_w d_x`) in lanes 0..8 and `2k + 1`
/// in lanes 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_scale(scale: __m512, k: usize) -> __m512 {
    let idx = _mm512_mask_mov_epi32(_mm512_set1_epi32(2 * k as i32), 0xFF00, _mm512_set1_epi32(2 * k as i32 + 1));
    _mm512_permutexvar_ps(idx, scale)
}

/// Blocks `2k`, `2k + 1` of the group (their unsigned codes `w`) into `acc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair<K: Blocks32>(w: __m512i, x: &Pair, scale: __m512, k: usize, acc: __m512) -> __m512 {
    let xs = _mm512_load_si512(x.qs.as_ptr() as *const __m512i);
    let neg = || _mm512_load_si512(x.neg.as_ptr() as *const __m512i);
    let start = match K::OFFSET_SHIFT {
        Some(0) => neg(),
        Some(s) => _mm512_sra_epi32(neg(), _mm_cvtsi32_si128(s)),
        None => _mm512_setzero_si512(),
    };
    let sums = _mm512_dpbusd_epi32(start, w, xs);
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), pair_scale(scale, k), acc)
}

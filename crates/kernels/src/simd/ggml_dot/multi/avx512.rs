//! AVX-512 many-token kernels (F/BW/VL + VNNI) for Q4_K, Q5_K and Q6_K,
//! for IQ4_XS in Q4_K's layout ([`iq4_xs`]), Q3_K and Q2_K in Q6_K's
//! ([`q3_k`], [`q2_k`]), for the symmetric 32-value types (Q8_0, Q4_0,
//! Q5_0, IQ4_NL) in [`sym32`], and for the offset ones (Q4_1, Q5_1) in
//! their unit ([`offset32`]): every quantized ggml type.
//!
//! Why a separate level: on AVX2 an int8 product costs `vpmaddubsw` (u8 x
//! s8, pairs to i16) plus `vpmaddwd` (to i32) per 32 multiply-adds, and the
//! i16 step bounds how much can be summed before widening. VNNI's
//! `vpdpbusd` does 64 u8 x s8 multiply-adds straight into sixteen i32 lanes
//! (each lane adds a run of four products), with no intermediate
//! saturation, so a lane can sum a whole group of a block exactly.
//!
//! The loop is the AVX2 level's, compiled for this level
//! (`crate::simd::columns::unpacked`): token groups outside (`Kernel::GROUP`, the
//! rest in groups of at most 4), column chunks, then rows; each weight block
//! is unpacked to byte codes once, kept for the later token groups, and
//! multiplied with every token of the group; each input's activations are
//! rearranged once per thread (`scratch::Whole`).
//!
//! Layouts, chosen so that every `vpdpbusd` of a unit leaves each i32 lane
//! with values of one scale only:
//! * Q4_K / Q5_K ([`PairBlock`]): a unit is two 256-value blocks, each 8
//!   sub-blocks of 32 (one scale and min each). Codes and activations are
//!   both held as eight 64-byte registers where u32 lane `j` of register
//!   `r` is values `4r..4r + 4` of sub-block `j` of the first block, lane
//!   `8 + j` the same of the second. After the eight `vpdpbusd` of a (unit,
//!   token), each lane holds the exact integer dot of its sub-block, and one
//!   register of scaling (`d sc`, `dmin m`, the token's `d`) serves both
//!   blocks.
//! * Q6_K ([`KBlock`]): a 256-value block is 16 groups of 16 (the groups of
//!   `bsums`, one scale each), held as four registers where lane `k` of
//!   register `r` is values `4r..4r + 4` of group `k`; one per-lane vector
//!   `d sc_k` scales them.
//!
//! `vpdpbusd` multiplies unsigned bytes (first operand) by signed ones:
//! * Q4_K / Q5_K codes are unsigned; their mins go through `bsums` in f32;
//! * Q6_K codes `0..64` are multiplied unsigned; the accumulator starts at
//!   `-32 * bsums[k]` (prepared once per group), so the `- 32` offset is
//!   taken in the exact integer sum, as the other levels take it.
//!
//! Every (block, token) integer sum equals the single-token kernels'; only
//! the f32 scaling and summation order differ, so results agree with
//! [`crate::simd::ggml_dot::gemv_q8k`] to float rounding.

use std::arch::x86_64::*;

use qmoe_core::GgmlType;

use super::super::avx512::{f16_at, load256, load512, load_2x256};
use super::super::scales_mins_k4;
use crate::simd::act::BlockQ8K;
use crate::simd::columns::unpacked::avx512::{groups, Unpacks};
use crate::simd::scratch::Tokens;

/// Whether `ty` has a kernel here.
pub(super) fn has_kernel(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K | GgmlType::IQ4XS)
}

/// # Safety
/// The CPU runs AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C; `ty` is one
/// [`has_kernel`] takes; `x` holds `n_tokens >= 1` rows of `nb` blocks; `w` is
/// exactly `n_rows` rows of `nb` blocks of `ty`; `y` is valid for writes at
/// `t * y_stride + r` for every `t < n_tokens`, `r < n_rows`; an `acts_id`
/// other than 0 always comes with the same `x` contents.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm_q8k(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8K],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q4K => gemm::<Q45K<false>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q5K => gemm::<Q45K<true>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q6K => gemm::<Groups16<5>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::IQ4XS => gemm::<iq4_xs::Iq4Xs>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q2K => gemm::<q2_k::Q2K>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q3K => gemm::<Groups16<2>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        _ => unreachable!("avx512 gemm_q8k: {ty} (checked by the caller)"),
    }
}

// ---- the group driver -----------------------------------------------------------

/// A call's rows: `w` holds rows of `nb` blocks of `ts` bytes.
struct Rows<'a> {
    w: &'a [u8],
    nb: usize,
    ts: usize,
}

impl Rows<'_> {
    /// The second row of a two-row unit at row `r`: `r + 1`, or `r` again
    /// when `r` is the last row (whose copy's results go unused).
    fn second_row(&self, r: usize) -> usize {
        if (r + 2) * self.nb * self.ts <= self.w.len() {
            r + 1
        } else {
            r
        }
    }

    /// Block `i` of row `r`.
    ///
    /// # Safety
    /// Row `r` and its block `i` lie inside `w`.
    #[inline(always)]
    unsafe fn block(&self, r: usize, i: usize) -> *const u8 {
        self.w.as_ptr().add((r * self.nb + i) * self.ts)
    }
}

/// The [`Unpacks`] items every type here shares: its matrix is [`Rows`],
/// with `$units(nb)` units per row of `nb` blocks.
macro_rules! rows_of_blocks {
    ($units:expr) => {
        type M<'a> = Rows<'a>;

        fn units(m: &Rows) -> usize {
            ($units)(m.nb)
        }

        fn stream<'a>(m: &Self::M<'a>) -> (&'a [u8], usize) {
            (m.w, m.nb * m.ts)
        }
    };
}

/// One weight type: how its activations are prepared for the shared loop.
trait Kernel: Unpacks<X: 'static> {
    /// Tokens multiplied per weight-unit unpacking: the group's float
    /// accumulators and the unit's registers share the 32 zmm registers.
    const GROUP: usize;
    /// Activation block as it comes (`BlockQ8K`).
    type Src;
    /// The call's matrix.
    fn rows(w: &[u8], nb: usize) -> Self::M<'_>;
    /// Writes one token's units (as many as a row of `src.len()` blocks has) at `dst`.
    ///
    /// # Safety
    /// The CPU runs this file's features; `dst` is valid for those writes.
    unsafe fn prep(src: &[Self::Src], dst: *mut Self::X);
}

/// The shared many-token loop ([`groups`]) on `K`'s rows, each group's
/// activations prepared in the call's scratch, or, with an `id`, once per
/// input in the thread's copy of every token (`scratch::Whole`).
///
/// # Safety
/// As [`gemm_q8k`] for `K`'s type and activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn gemm<K: Kernel>(w: &[u8], n_rows: usize, x: &[K::Src], n_tokens: usize, y: *mut f32, stride: usize, id: u64) {
    let nb = x.len() / n_tokens;
    let rows = K::rows(w, nb);
    let units = K::units(&rows);
    let prep_tokens = |tokens: std::ops::Range<usize>, p: *mut K::X| {
        for (i, t) in tokens.enumerate() {
            // SAFETY: `p` has room for the tokens' units.
            unsafe { K::prep(&x[t * nb..(t + 1) * nb], p.add(i * units)) };
        }
    };
    let mut tokens = Tokens::default();
    let mut prep = |t0: usize, n: usize| (tokens.group(id, (n_tokens, units), (t0, n), prep_tokens), units);
    groups::<K>(&rows, 0..n_rows, n_tokens, K::GROUP, y, stride, &mut prep)
}

// ---- helpers ------------------------------------------------------------------

/// Two blocks' eight u8 each (little-endian u64s, as [`scales_mins_k4`]
/// gives them) to 16 f32 lanes: `lo`'s bytes in lanes 0..8, `hi`'s in 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn u8_ps(lo: u64, hi: u64) -> __m512 {
    let b = _mm_set_epi64x(hi as i64, lo as i64);
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))
}

// ---- Q4_K / Q5_K: pairs of 256-value blocks, 8 sub-blocks of 32 each ------------------

/// Two prepared Q8K activation blocks (the second all zeros when a row has
/// an odd block count): `qs[r]` lane `j` = codes `4r..4r + 4` of sub-block
/// `j` of the first block (values `32j + 4r..`), lane `8 + j` the same of
/// the second; `bs` the sub-blocks' sums (f32, lanes as `qs`); `d` the first
/// block's scale in lanes 0..8, the second's in 8..16.
///
/// A lane holds one 32-value sub-block (one scale and min of Q4_K / Q5_K),
/// so one register of scaling serves two blocks: per (pair, token), eight
/// `vpdpbusd` and four scaling operations, against eight of each for two
/// blocks whose lanes hold 16-value groups (a Q4_K block then fills a
/// register alone).
#[repr(C, align(64))]
struct PairBlock {
    qs: [__m512i; 8],
    bs: __m512,
    d: __m512,
}

/// The sub-block-major transpose of one token's blocks, two to a
/// [`PairBlock`].
///
/// # Safety
/// The CPU runs this file's features; `dst` is valid for
/// `src.len().div_ceil(2)` writes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prep_pairs(src: &[BlockQ8K], dst: *mut PairBlock) {
    for_pairs(src, |i, a, b| {
        let bs = _mm512_cvtepi32_ps(pair_sums(a, b));
        dst.add(i).write(PairBlock { qs: pair_codes(a, b), bs, d: pair_d(a, b) });
    })
}

/// `f(i, a, b)` for pair `i` of `src`'s blocks (`b` all zeros when `src`
/// has an odd count and `a` is its last block).
#[inline(always)]
fn for_pairs(src: &[BlockQ8K], mut f: impl FnMut(usize, &BlockQ8K, &BlockQ8K)) {
    let zero = BlockQ8K::default();
    for (i, pair) in src.chunks(2).enumerate() {
        f(i, &pair[0], pair.get(1).unwrap_or(&zero));
    }
}

/// Two blocks' codes as [`PairBlock::qs`] holds them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_codes(a: &BlockQ8K, b: &BlockQ8K) -> [__m512i; 8] {
    // Word 8j + r of a block's codes is register r's lane j; 64-byte load
    // a holds words 16a..16a + 16 (sub-blocks 2a, 2a + 1). Lanes 0..4 (j <
    // 4) come from loads 0, 1 and lanes 4..8 from loads 2, 3, with the same
    // indices.
    let idx = _mm512_setr_epi32(0, 8, 16, 24, 0, 8, 16, 24, 0, 0, 0, 0, 0, 0, 0, 0);
    let half = |blk: &BlockQ8K, r: usize| {
        let p = blk.qs.as_ptr() as *const u8;
        let ix = _mm512_add_epi32(idx, _mm512_set1_epi32(r as i32));
        let lo = _mm512_permutex2var_epi32(load512(p), ix, load512(p.add(64)));
        let hi = _mm512_permutex2var_epi32(load512(p.add(128)), ix, load512(p.add(192)));
        // Lanes 0..4 from the first pair of loads, 4..8 from the second.
        _mm256_blend_epi32::<0xF0>(_mm512_castsi512_si256(lo), _mm512_castsi512_si256(hi))
    };
    std::array::from_fn(|r| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(a, r)), half(b, r)))
}

/// Two blocks' 32-value sub-block sums, exact, in [`PairBlock`]'s lanes:
/// sub-block `j`'s is groups `2j` and `2j + 1` of `bsums`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_sums(a: &BlockQ8K, b: &BlockQ8K) -> __m512i {
    let sums = |blk: &BlockQ8K| _mm256_madd_epi16(load256(blk.bsums.as_ptr() as *const u8), _mm256_set1_epi16(1));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(sums(a)), sums(b))
}

/// `a`'s scale in lanes 0..8, `b`'s in 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_d(a: &BlockQ8K, b: &BlockQ8K) -> __m512 {
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a.d), _mm512_set1_ps(b.d))
}

// ---- Q6_K: 256-value blocks, 16 groups of 16 ------------------------------------------

/// One prepared Q8K activation block for the 16-value-group types (Q6_K,
/// Q3_K): `qs[r]` lane `k` = codes `4r..4r + 4` of group `k` (values `16k +
/// 4r..`); `bs` the group sums as `-2^SHIFT * sum` (the start of the
/// integer accumulator: the weight codes' offset, 32 for Q6_K and 4 for
/// Q3_K, which also keeps the two layouts apart in the thread's copy); `d`
/// the block scale.
#[repr(C, align(64))]
struct KBlock<const SHIFT: u32> {
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
unsafe fn prep_k<const SHIFT: u32>(src: &[BlockQ8K], dst: *mut KBlock<SHIFT>) {
    for (i, b) in src.iter().enumerate() {
        let bs = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<SHIFT>(group_sums(b)));
        dst.add(i).write(KBlock { qs: group_codes(b), bs, d: b.d });
    }
}

/// A block's codes as [`KBlock::qs`] holds them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn group_codes(b: &BlockQ8K) -> [__m512i; 4] {
    // Word 4k + r of the codes is register r's lane k; 64-byte load a holds
    // words 16a..16a + 16 (groups 4a..4a + 4). Lanes 0..8 come from loads
    // 0, 1 and lanes 8..16 from 2, 3 with the same indices.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    let p = b.qs.as_ptr() as *const u8;
    let z = [load512(p), load512(p.add(64)), load512(p.add(128)), load512(p.add(192))];
    std::array::from_fn(|r| {
        let ix = _mm512_add_epi32(idx, _mm512_set1_epi32(r as i32));
        let lo = _mm512_permutex2var_epi32(z[0], ix, z[1]);
        let hi = _mm512_permutex2var_epi32(z[2], ix, z[3]);
        _mm512_inserti64x4::<1>(lo, _mm512_castsi512_si256(hi))
    })
}

/// A block's sixteen group sums (`bsums`), exact, group `k` in lane `k`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn group_sums(b: &BlockQ8K) -> __m512i {
    _mm512_cvtepi16_epi32(load256(b.bsums.as_ptr() as *const u8))
}

/// Q4_K (`FIVE` false) / Q5_K, two blocks a unit ([`PairBlock`]).
///
/// Codes: 128 bytes of nibbles, 32-byte chunk `p` holding sub-block `2p`
/// (low nibbles) and `2p + 1` (high), byte `l` = value `l` of each. So
/// register `r`'s lane `j` of a block takes code word `8 (j / 2) + r`,
/// shifted right by 4 when `j` is odd. Q5_K's fifth bit of value `l` of
/// sub-block `s` is bit `s` of `qh[l]`: qh word `r`, rotated so that bit
/// `j` of each byte lands on bit 4 (a rotate keeps each byte's bits in that
/// byte: bit `8m + j` goes to `8m + 4`).
///
/// Per lane: `d sc S - dmin m B` with `S` the sub-block's code dot and `B`
/// its activation sum, both exact integers, then `x_d` times that.
///
/// Two rows a unit, so that each activation register a step loads feeds
/// two `vpdpbusd`. `examples/vnni_step.rs` (Zen 4, 8 tokens of activations
/// in L1) measures 6.4-6.9 cycles per block, row and token with one row a
/// unit, 5.4-5.8 with two. The two rows' unit takes 20 registers, so only
/// four tokens' eight accumulators fit beside it. A one-row kernel (eight
/// tokens a group, its step in `asm!`) used to take rows of one or two
/// blocks (an expert's down projection), where the two-row unit's kept
/// copy is read twice as often. It now measured slower there too, and
/// went (`prefill_gemm --tokens 128`, 1 thread, three alternations: q4k
/// `[2048 x 512]` 226-240 -> 261-272, q5k 236-241 -> 224-266, q4k
/// `[2048 x 256]` 114-119 -> 134-136 GFLOP/s).
struct Q45K<const FIVE: bool>;

/// Two Q4_K / Q5_K blocks of a row as the steps take them: the eight code
/// registers (lanes as [`PairBlock::qs`]), and per lane `d sc` and
/// `dmin m` of the lane's sub-block.
#[repr(C, align(64))]
struct Unpacked45 {
    wq: [__m512i; 8],
    scale: __m512,
    mins: __m512,
}

/// Bytes of a Q5_K block: a missing second block of a pair reads these
/// zeros (all its codes, scales and mins 0, so it adds nothing).
static ZERO_BLOCK: [u8; 176] = [0; 176];

/// Unit `i` (blocks `2i`, `2i + 1`) of row `r` of a Q4_K / Q5_K matrix.
///
/// # Safety
/// Row `r` lies inside `m`, `2i < m.nb`; the CPU runs this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_pair<const FIVE: bool>(m: &Rows, r: usize, i: usize) -> Unpacked45 {
    let qs_at = if FIVE { 48 } else { 16 };
    // Registers r and r + 1 of one block: lanes 0..8 and 8..16.
    let idx = _mm512_setr_epi32(0, 0, 8, 8, 16, 16, 24, 24, 1, 1, 9, 9, 17, 17, 25, 25);
    let shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    let m4 = _mm512_set1_epi8(0x0F);
    // qh word r of each block (the second block's words are 8..16).
    let hidx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8);
    // (4 - j) mod 32.
    let hrot = _mm512_setr_epi32(4, 3, 2, 1, 0, 31, 30, 29, 4, 3, 2, 1, 0, 31, 30, 29);
    let bit4 = _mm512_set1_epi8(0x10);
    let a = m.block(r, 2 * i);
    let b = if 2 * i + 1 < m.nb { m.block(r, 2 * i + 1) } else { ZERO_BLOCK.as_ptr() };
    let high = 0xFF00;
    let d = _mm512_mask_blend_ps(high, _mm512_set1_ps(f16_at(a)), _mm512_set1_ps(f16_at(b)));
    let dmin = _mm512_mask_blend_ps(high, _mm512_set1_ps(f16_at(a.add(2))), _mm512_set1_ps(f16_at(b.add(2))));
    let (sa, ma) = scales_mins_k4(&*(a.add(4) as *const [u8; 12]));
    let (sb, mb) = scales_mins_k4(&*(b.add(4) as *const [u8; 12]));
    let scale = _mm512_mul_ps(d, u8_ps(sa, sb));
    let mins = _mm512_mul_ps(dmin, u8_ps(ma, mb));
    let (qa0, qa1) = (load512(a.add(qs_at)), load512(a.add(qs_at + 64)));
    let (qb0, qb1) = (load512(b.add(qs_at)), load512(b.add(qs_at + 64)));
    let qh = if FIVE { load_2x256(a.add(16), b.add(16)) } else { _mm512_setzero_si512() };
    let mut wq = [_mm512_setzero_si512(); 8];
    for r in (0..8).step_by(2) {
        let ix = _mm512_add_epi32(idx, _mm512_set1_epi32(r as i32));
        let ta = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutex2var_epi32(qa0, ix, qa1), shift), m4);
        let tb = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutex2var_epi32(qb0, ix, qb1), shift), m4);
        wq[r] = _mm512_shuffle_i64x2::<0b01_00_01_00>(ta, tb);
        wq[r + 1] = _mm512_shuffle_i64x2::<0b11_10_11_10>(ta, tb);
    }
    if FIVE {
        for (r, wr) in wq.iter_mut().enumerate() {
            let hr = _mm512_add_epi32(hidx, _mm512_set1_epi32(r as i32));
            let h = _mm512_rolv_epi32(_mm512_permutexvar_epi32(hr, qh), hrot);
            // wr | (h & 0x10)
            *wr = _mm512_ternarylogic_epi32::<0xF8>(*wr, h, bit4);
        }
    }
    Unpacked45 { wq, scale, mins }
}

/// `acc += x_d (d sc S - dmin m B)` per lane, `s` the lanes' integer sums `S`.
#[inline(always)]
unsafe fn scale_pair(s: __m512i, u: &Unpacked45, xb: &PairBlock, acc: &mut __m512) {
    let offs = _mm512_mul_ps(xb.bs, u.mins);
    let v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(s), u.scale, offs);
    *acc = _mm512_fmadd_ps(v, xb.d, *acc);
}

impl<const FIVE: bool> Unpacks for Q45K<FIVE> {
    type X = PairBlock;
    type U = [Unpacked45; 2];
    type A = [__m512; 2];
    rows_of_blocks!(|nb: usize| nb.div_ceil(2));

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(m: &Self::M<'_>, r: usize, i: usize) -> [Unpacked45; 2] {
        let next = m.second_row(r);
        [unpack_pair::<FIVE>(m, r, i), unpack_pair::<FIVE>(m, next, i)]
    }

    #[inline(always)]
    unsafe fn step(u: &[Unpacked45; 2], xb: &PairBlock, acc: &mut [__m512; 2]) {
        // (No closures here: one would not inline the intrinsics it calls.)
        let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0].wq[0], xb.qs[0]);
        let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1].wq[0], xb.qs[0]);
        for r in 1..8 {
            let x = xb.qs[r];
            s0 = _mm512_dpbusd_epi32(s0, u[0].wq[r], x);
            s1 = _mm512_dpbusd_epi32(s1, u[1].wq[r], x);
        }
        let [a0, a1] = acc;
        scale_pair(s0, &u[0], xb, a0);
        scale_pair(s1, &u[1], xb, a1);
    }
}

/// Q6_K.
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
/// A unit is one block of two rows (as [`Q45K`] for Q4_K), so each
/// activation register a step loads feeds two `vpdpbusd`: with one row a
/// unit the step loaded six registers (four of codes, the sums, the scale)
/// per four `vpdpbusd`. `prefill_gemm q6k --tokens 128` (Zen 4, 1 thread,
/// median of 3): `[2048 x 512]` 187 -> 243, `[512 x 2048]` 244 -> 276,
/// `[8192 x 2048]` 235 -> 251 GFLOP/s (eight tokens a group with two rows:
/// 176, 266, 235).
///
/// Q3_K (`SHIFT` 2, codes `0..8` standing for `-4..4`) takes the same unit
/// and step, its codes unpacked by [`q3_k::unpack`].
struct Groups16<const SHIFT: u32>;

/// A Q6_K block as the steps take it: the four code registers and per lane
/// `d sc_k`.
#[repr(C, align(64))]
struct Unpacked6 {
    wq: [__m512i; 4],
    scale: __m512,
}

/// Block `i` of row `r` of a Q6_K matrix.
///
/// # Safety
/// Row `r` and its block `i` lie inside `m`; the CPU runs this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack6(m: &Rows, r: usize, i: usize) -> Unpacked6 {
    let lidx = _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 16, 20, 24, 28, 16, 20, 24, 28);
    let lshift = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 0, 0, 0, 0, 4, 4, 4, 4);
    let hidx = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 8, 12, 8, 12, 8, 12, 8, 12);
    // (4 - 2j) mod 32.
    let hrot = _mm512_setr_epi32(4, 4, 2, 2, 0, 0, 30, 30, 4, 4, 2, 2, 0, 0, 30, 30);
    let m4 = _mm512_set1_epi8(0x0F);
    let bits45 = _mm512_set1_epi8(0x30);
    let b = m.block(r, i);
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
    Unpacked6 { wq, scale }
}

impl<const SHIFT: u32> Unpacks for Groups16<SHIFT> {
    type X = KBlock<SHIFT>;
    type U = [Unpacked6; 2];
    type A = [__m512; 2];
    rows_of_blocks!(|nb: usize| nb);

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(m: &Self::M<'_>, r: usize, i: usize) -> [Unpacked6; 2] {
        let next = m.second_row(r);
        if SHIFT == 5 {
            [unpack6(m, r, i), unpack6(m, next, i)]
        } else {
            [q3_k::unpack(m, r, i), q3_k::unpack(m, next, i)]
        }
    }

    /// `acc += x_d d sc_k (S - 2^SHIFT B)` per lane and row, the offset in
    /// the integer sum.
    #[inline(always)]
    unsafe fn step(u: &[Unpacked6; 2], xb: &KBlock<SHIFT>, acc: &mut [__m512; 2]) {
        let mut s0 = _mm512_dpbusd_epi32(xb.bs, u[0].wq[0], xb.qs[0]);
        let mut s1 = _mm512_dpbusd_epi32(xb.bs, u[1].wq[0], xb.qs[0]);
        for r in 1..4 {
            let x = xb.qs[r];
            s0 = _mm512_dpbusd_epi32(s0, u[0].wq[r], x);
            s1 = _mm512_dpbusd_epi32(s1, u[1].wq[r], x);
        }
        let d = _mm512_set1_ps(xb.d);
        let [a0, a1] = acc;
        *a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(u[0].scale, d), *a0);
        *a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(u[1].scale, d), *a1);
    }
}

impl<const SHIFT: u32> Kernel for Groups16<SHIFT> {
    /// Four: eight accumulators (two rows) beside the unit's ten registers.
    const GROUP: usize = 4;
    type Src = BlockQ8K;
    fn rows(w: &[u8], nb: usize) -> Self::M<'_> {
        Rows { w, nb, ts: if SHIFT == 5 { 210 } else { q3_k::TS } }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prep(src: &[BlockQ8K], dst: *mut KBlock<SHIFT>) {
        prep_k(src, dst)
    }
}

impl<const FIVE: bool> Kernel for Q45K<FIVE> {
    /// Four: eight accumulators (two rows) beside the unit's 20 registers.
    const GROUP: usize = 4;
    type Src = BlockQ8K;
    fn rows(w: &[u8], nb: usize) -> Self::M<'_> {
        Rows { w, nb, ts: if FIVE { 176 } else { 144 } }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prep(src: &[BlockQ8K], dst: *mut PairBlock) {
        prep_pairs(src, dst)
    }
}

// After `rows_of_blocks!`, which they use.
mod iq4_xs;
mod offset32;
mod q2_k;
mod q3_k;
mod sym32;

pub(super) use sym32::has_kernel as has_q8x32_kernel;

/// # Safety
/// As [`gemm_q8k`], for Q8_0, Q4_0, Q5_0 or IQ4_NL and Q8x32 activations.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm_q8x32(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[crate::simd::act::BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    use crate::simd::ggml_dot::avx2::multi::runs32::{IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
    use offset32::Offset32x2;
    use sym32::Sym32x2;
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q8_0 => gemm::<Sym32x2<Q8_0>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q4_0 => gemm::<Sym32x2<Q4_0>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q5_0 => gemm::<Sym32x2<Q5_0>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::IQ4NL => gemm::<Sym32x2<IQ4_NL>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q4_1 => gemm::<Offset32x2<Q4_1>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        GgmlType::Q5_1 => gemm::<Offset32x2<Q5_1>>(w, n_rows, x, n_tokens, y, y_stride, acts_id),
        _ => unreachable!("avx512 gemm_q8x32: {ty} (checked by the caller)"),
    }
}

//! AVX-512 VNNI decode matvec for MLX affine weights in groups of 32, 64 or
//! 128 (the sizes mlx writes): 4 and 8 bits, and 2, 3, 5 and 6 bits on CPUs
//! with AVX-512 VBMI (Ice Lake, Zen 4 and later). It is the hottest loop of
//! an MLX model's decode.
//!
//! The AVX2 row ([`super::x86`]) spends about 22 operations on 64 bytes of
//! 4-bit codes (per 32-byte half: two masks, two `vpmaddubsw`, a
//! `vpmaddwd`, a conversion, a scale multiply and an FMA). Here a 64-byte
//! load is one step, 128 values costing ten: the two nibble masks, two
//! `vpdpbusd` (the low nibbles, then the high ones, into the same lanes),
//! the conversion, and the lane scales `d_b · scale_g` from a permute and a
//! multiply into one FMA. 8-bit codes are unsigned bytes already: 64 values
//! a step and one `vpdpbusd`. The other widths take the 8-bit step after an
//! unpack of their `8 B` bytes into one byte per value: `vpermb` gives qword
//! `k` the `B` bytes of values `8k .. 8k + 8`, `vpmultishiftqb` moves each
//! value's bits to its own byte, and a mask clears the rest (the AVX2 row
//! cuts each 16-value half out with a shuffle, a multiply and a shift).
//! On the Zen 5 VM (`examples/simd_gemv.rs`, 1 thread, the AVX2 row
//! alternating with this one), GB/s:
//! - 4-bit: in L2 (768 KB) 35 -> 61; from DRAM (512 MB) 29.5-29.9 ->
//!   35.1-35.6, where the Q4_K gemv read 38-40 beside them;
//! - 8-bit: in L2 38 -> 78; from DRAM 27.9-28.2 -> 33.9;
//! - from DRAM, 2 / 3 / 5 / 6 bits: 6.2 / 10.5 / 17.1 / 22.0 -> 21.8 / 28.0
//!   / 37.6 / 38.9 (in L2 22.8 / 31.9 / 47.4 / 55.1).
//!
//! Layout. A step's i32 lane `l` covers 8 values at 4 bits (`8l .. 8l + 8`:
//! byte `j` holds values `2j`, low nibble, and `2j + 1`, high nibble), 4
//! at the other widths, all in one block. The activations are laid out once
//! per call to match: at 4 bits `q[0]` lane `l` = codes `8l, 8l + 2, 8l +
//! 4, 8l + 6` and `q[1]` the odd ones; otherwise `q[0]` = the codes in
//! order; `d` lane `l` = the `d` of lane `l`'s block. The scales and biases
//! of sixteen groups are read as one masked vector; the bias term is one
//! FMA of them with the groups' activation sums.
//!
//! Summation order: each lane's integer sum is exact; the lanes are scaled
//! by `d_b · scale_g` (f32) and summed in two accumulators, which with the
//! bias accumulator are added and reduced at the row's end. It differs from
//! the scalar twin by f32 rounding only.
//!
//! Rows stream in order, one at a time, prefetched as the ggml rows are
//! ([`crate::simd::ggml_gemv_lead`]), with their scales and biases the same
//! number of rows ahead. Two rows side by side, sharing each step's
//! activation loads, computed faster (in L2, 4-bit, 512 columns 37 -> 45
//! GB/s, 2048 columns 60 -> 73-77) and decoded no faster (`qmoe bench`,
//! alternating: MLX 4-bit at 1 thread 18.9-19.0 tok/s either way, at 2
//! threads 31.0-32.5), so the kernel keeps one.

use std::arch::x86_64::*;
use std::ops::Range;

use qmoe_core::dtype::DType;

use super::AffineMat;
use crate::simd::act::BlockQ8x32;
use crate::simd::scratch::{Scratch, Table};

/// Whether this kernel takes `bits`-bit weights in groups of `group_size`
/// on this CPU: 4 and 8 bits, and 2, 3, 5 and 6 where it has AVX-512 VBMI.
pub(super) fn supports(bits: u32, group_size: usize) -> bool {
    (matches!(bits, 4 | 8) || unpacks(bits)) && matches!(group_size, 32 | 64 | 128)
}

/// Whether `bits`-bit codes are unpacked to a byte each ([`unpack`]): 2, 3,
/// 5 and 6 bits, on a CPU with AVX-512 VBMI (also the many-token kernel's
/// test, `affine_multi.rs`).
pub(crate) fn unpacks(bits: u32) -> bool {
    matches!(bits, 2 | 3 | 5 | 6) && std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// Blocks of 32 values in one step: 128 values of 4 bits (one 64-byte
/// load), 64 of any other width.
const fn step_blocks(b: usize) -> usize {
    if b == 4 {
        4
    } else {
        2
    }
}

/// Bytes of codes in one step: a 64-byte load, or at 2, 3, 5 and 6 bits
/// the `8 B` bytes of 64 values.
const fn step_bytes(b: usize) -> usize {
    if b == 4 || b == 8 {
        64
    } else {
        8 * b
    }
}

/// For `vpermb` then `vpmultishiftqb`: qword `k` of a step takes its
/// values `8k .. 8k + 8` (bytes `k B .. k B + B` of the step), and byte `j`
/// of it the `B` bits at `j B`.
const fn unpack_tables(b: usize) -> [[u8; 64]; 2] {
    let mut t = [[0u8; 64]; 2];
    let mut p = 0;
    while p < 64 {
        let (k, j) = (p / 8, p % 8);
        t[0][p] = (k * b + if j < b { j } else { 0 }) as u8;
        t[1][p] = (j * b) as u8;
        p += 1;
    }
    t
}

static UNPACK: [[[u8; 64]; 2]; 7] =
    [[[0; 64]; 2], [[0; 64]; 2], unpack_tables(2), unpack_tables(3), [[0; 64]; 2], unpack_tables(5), unpack_tables(6)];

/// The 64 codes of a step of 2, 3, 5 or 6 bits (`8 B` bytes at `p`, the
/// bytes past `mask` taken as zero) as one byte each (also the many-token
/// kernel's unpacking, `affine_multi/avx512.rs`).
///
/// # Safety
/// The CPU runs AVX-512 F/BW/VL + VBMI; `p` holds the bytes `mask` selects.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
pub(crate) unsafe fn unpack<const B: usize>(p: *const u8, mask: u64) -> __m512i {
    let t = &UNPACK[B];
    let v = _mm512_maskz_loadu_epi8(mask, p as *const i8);
    let v = _mm512_permutexvar_epi8(_mm512_loadu_si512(t[0].as_ptr() as *const __m512i), v);
    let v = _mm512_multishift_epi64_epi8(_mm512_loadu_si512(t[1].as_ptr() as *const __m512i), v);
    _mm512_and_si512(v, _mm512_set1_epi8(((1u32 << B) - 1) as i8))
}

/// One step's laid-out activations.
#[repr(C, align(64))]
struct Step {
    /// 4 bits: the codes against the low nibbles, then the high ones;
    /// other widths: the step's codes in order, then unused.
    q: [[i8; 64]; 2],
    /// Lane `l`: the `d` of the block that lane `l` of a load lies in.
    d: [f32; 16],
}

/// # Safety
/// The CPU runs AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C; `m` was checked
/// against its shape with [`supports`]`(m.bits, m.group_size)`, `rows.end <=`
/// its rows, `x` is `[cols / 32]` and `y.len() == rows.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemv(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
    // SAFETY (each arm): the caller's contract.
    match (m.bits, m.group_size) {
        (4, 32) => run::<4, 1>(m, rows, x, y),
        (4, 64) => run::<4, 2>(m, rows, x, y),
        (4, 128) => run::<4, 4>(m, rows, x, y),
        (8, 32) => run::<8, 1>(m, rows, x, y),
        (8, 64) => run::<8, 2>(m, rows, x, y),
        (8, 128) => run::<8, 4>(m, rows, x, y),
        (2, _) => unpacked::<2>(m, rows, x, y),
        (3, _) => unpacked::<3>(m, rows, x, y),
        (5, _) => unpacked::<5>(m, rows, x, y),
        (6, _) => unpacked::<6>(m, rows, x, y),
        (b, g) => unreachable!("{b} bits, group {g} checked by `supports`"),
    }
}

/// [`gemv`] for 2, 3, 5 and 6 bits, whose unpacking takes AVX-512 VBMI.
///
/// # Safety
/// As [`gemv`], and the CPU runs AVX-512 VBMI (checked by [`supports`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
unsafe fn unpacked<const B: usize>(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
    match m.group_size {
        32 => body::<B, 1>(m, rows, x, y),
        64 => body::<B, 2>(m, rows, x, y),
        128 => body::<B, 4>(m, rows, x, y),
        g => unreachable!("group {g} checked by `supports`"),
    }
}

/// [`gemv`] with 4- or 8-bit codes and `PG` blocks of 32 per group.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run<const B: usize, const PG: usize>(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
    body::<B, PG>(m, rows, x, y)
}

/// [`gemv`] with `B`-bit codes and `PG` blocks of 32 per group, inlined
/// into [`run`] or [`unpacked`] (which adds VBMI for the other widths).
#[inline(always)]
unsafe fn body<const B: usize, const PG: usize>(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
    if x.is_empty() {
        y.fill(0.0);
        return;
    }
    let n_steps = x.len().div_ceil(step_blocks(B));
    let windows = m.groups.div_ceil(16);
    let (mut scratch, mut table) = (Scratch::default(), Table::default());
    let steps = scratch.room::<Step>(n_steps);
    let gsum = table.room::<f32>(16 * windows);
    // SAFETY: `room` gave `n_steps` steps and `16 * windows` sums.
    lay_out::<B, PG>(x, steps, gsum, m.groups, windows);
    let steps = std::slice::from_raw_parts(steps, n_steps);
    let gsum = std::slice::from_raw_parts(gsum, 16 * windows);

    let reach = crate::simd::gemv_reach(m.row_bytes);
    // Rows ahead whose scales and biases are fetched: those the codes reach.
    let scale_ahead = reach.div_ceil(m.row_bytes) + 1;
    let n_rows = m.words.len() / m.row_bytes;
    let (words, scales, biases) = (m.words.as_ptr() as usize, m.scales.as_ptr() as usize, m.biases.as_ptr() as usize);
    let mut fetched = (words + rows.start * m.row_bytes) & !63;
    let mut fetched_s = (scales + rows.start * m.scale_row) & !63;
    let mut fetched_b = (biases + rows.start * m.scale_row) & !63;
    for (yr, r) in y.iter_mut().zip(rows) {
        let until = words + (r * m.row_bytes + reach).min(m.words.len());
        while fetched < until {
            _mm_prefetch::<_MM_HINT_T0>(fetched as *const i8);
            fetched += 64;
        }
        let until = (r + scale_ahead).min(n_rows) * m.scale_row;
        while fetched_s < scales + until {
            _mm_prefetch::<_MM_HINT_T0>(fetched_s as *const i8);
            fetched_s += 64;
        }
        while fetched_b < biases + until {
            _mm_prefetch::<_MM_HINT_T0>(fetched_b as *const i8);
            fetched_b += 64;
        }
        // SAFETY: row `r` exists; `steps` and `gsum` cover its columns and groups.
        *yr = _mm512_reduce_add_ps(row::<B, PG>(m, r, steps, gsum));
    }
}

/// Fills `steps` (zero-padded past the last block) and `gsum` (each
/// group's Σ of block sums, zero-padded to `16 * windows`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn lay_out<const B: usize, const PG: usize>(
    x: &[BlockQ8x32],
    steps: *mut Step,
    gsum: *mut f32,
    groups: usize,
    windows: usize,
) {
    let per_step = step_blocks(B);
    for s in 0..x.len().div_ceil(per_step) {
        // SAFETY: `s` is below the steps' count.
        let st = &mut *steps.add(s);
        for j in 0..per_step {
            let block = x.get(per_step * s + j);
            st.d[16 / per_step * j..16 / per_step * (j + 1)].fill(block.map_or(0.0, |b| b.d));
            if B != 4 {
                let v = block.map_or(_mm256_setzero_si256(), |b| _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i));
                _mm256_storeu_si256(st.q[0].as_mut_ptr().add(32 * j) as *mut __m256i, v);
                continue;
            }
            let v = block.map_or(_mm256_setzero_si256(), |b| super::x86::evens_odds(b));
            _mm_storeu_si128(st.q[0].as_mut_ptr().add(16 * j) as *mut __m128i, _mm256_castsi256_si128(v));
            _mm_storeu_si128(st.q[1].as_mut_ptr().add(16 * j) as *mut __m128i, _mm256_extracti128_si256(v, 1));
        }
    }
    for g in 0..16 * windows {
        let s = if g < groups { x[g * PG..(g + 1) * PG].iter().map(|b| b.sum).sum() } else { 0.0 };
        gsum.add(g).write(s);
    }
}

/// Elements `g .. g + n` (`n <= 16`) of `dt` at `p` as 16 f32, zero past
/// `n` (also the many-token kernel's scales and biases,
/// `affine_multi/avx512.rs`).
///
/// # Safety
/// The CPU runs this function's features; `p` holds the elements read.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn load16(dt: DType, p: *const u8, g: usize, n: usize) -> __m512 {
    let mask = (1u32 << n) - 1;
    match dt {
        DType::F32 => _mm512_maskz_loadu_ps(mask as u16, p.add(4 * g) as *const f32),
        DType::F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask as u16, p.add(2 * g) as *const i16)),
        _ => {
            let h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask as u16, p.add(2 * g) as *const i16));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
        }
    }
}

/// One step: the codes `v` (64 bytes: 4-bit pairs, or one code each)
/// against step `st`, each lane scaled by
/// `sc` (its group's scale) and `st.d`, added to `acc`.
#[inline(always)]
unsafe fn step<const B: usize>(v: __m512i, st: &Step, sc: __m512, acc: __m512) -> __m512 {
    let q0 = _mm512_load_si512(st.q[0].as_ptr() as *const __m512i);
    let isum = if B != 4 {
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, q0)
    } else {
        let nib = _mm512_set1_epi8(0x0f);
        let lo = _mm512_and_si512(v, nib);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
        let q1 = _mm512_load_si512(st.q[1].as_ptr() as *const __m512i);
        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, q0), hi, q1)
    };
    let d = _mm512_load_ps(st.d.as_ptr());
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, sc), acc)
}

/// Row `r` against the laid-out activations: sixteen lanes whose sum is the row's product.
///
/// # Safety
/// As [`gemv`]; `steps` and `gsum` laid out by [`lay_out`] for this call.
#[inline(always)]
unsafe fn row<const B: usize, const PG: usize>(m: &AffineMat, r: usize, steps: &[Step], gsum: &[f32]) -> __m512 {
    // SAFETY (loads below): the row's codes are `m.row_bytes` bytes at `w`,
    // the last step's load masked to them; its `m.groups` scales and biases
    // start at `sp` and `bp`, the loads masked to them.
    let w = m.words.as_ptr().add(r * m.row_bytes);
    let (sp, bp) = (m.scales.as_ptr().add(r * m.scale_row), m.biases.as_ptr().add(r * m.scale_row));
    let dt = m.scale_dtype;
    // Lane l of step `t` of a window of sixteen groups (`16 PG / SB`
    // steps of `SB` blocks) lies in its group `(SB t + l / (16 / SB)) / PG`.
    let sb = step_blocks(B);
    let base: [i32; 16] = std::array::from_fn(|l| (l / (16 / sb) / PG) as i32);
    let base = _mm512_loadu_si512(base.as_ptr() as *const __m512i);
    let pick = |sv: __m512, t: usize| {
        _mm512_permutexvar_ps(_mm512_add_epi32(base, _mm512_set1_epi32((sb * t / PG) as i32)), sv)
    };
    // Steps read whole; a last step of fewer bytes is masked.
    let sbytes = step_bytes(B);
    let mask = |bytes: usize| if bytes == 64 { u64::MAX } else { (1u64 << bytes) - 1 };
    let tail_bytes = m.row_bytes - sbytes * (steps.len() - 1);
    let whole = if tail_bytes == sbytes { steps.len() } else { steps.len() - 1 };
    let (step_mask, tail_mask) = (mask(sbytes), mask(tail_bytes));
    let codes = |s: usize, mask: u64| {
        let p = w.add(sbytes * s);
        match B {
            4 | 8 if mask == u64::MAX => _mm512_loadu_si512(p as *const __m512i),
            4 | 8 => _mm512_maskz_loadu_epi8(mask, p as *const i8),
            _ => unpack::<B>(p, mask),
        }
    };
    let load = |s: usize| codes(s, if s < whole { step_mask } else { tail_mask });
    let per_window = 16 * PG / sb;
    let (mut acc0, mut acc1, mut bsum) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
    let mut g = 0;
    while g < m.groups {
        let n = (m.groups - g).min(16);
        let sv = load16(dt, sp, g, n);
        bsum = _mm512_fmadd_ps(load16(dt, bp, g, n), _mm512_loadu_ps(gsum.as_ptr().add(g)), bsum);
        let s0 = g / 16 * per_window;
        if s0 + per_window <= whole {
            // Constant bounds: unrolled, with constant permute indices.
            for t in (0..per_window).step_by(2) {
                let (a, b) = (s0 + t, s0 + t + 1);
                let (va, vb) = (codes(a, step_mask), codes(b, step_mask));
                acc0 = step::<B>(va, steps.get_unchecked(a), pick(sv, t), acc0);
                acc1 = step::<B>(vb, steps.get_unchecked(b), pick(sv, t + 1), acc1);
            }
        } else {
            for t in 0..steps.len() - s0 {
                acc0 = step::<B>(load(s0 + t), steps.get_unchecked(s0 + t), pick(sv, t), acc0);
            }
        }
        g += n;
    }
    _mm512_add_ps(_mm512_add_ps(acc0, acc1), bsum)
}

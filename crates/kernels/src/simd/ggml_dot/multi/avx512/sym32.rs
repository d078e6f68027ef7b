//! The symmetric 32-value types (Q8_0, Q4_0, Q5_0, IQ4_NL: signed codes,
//! `d` first in the block) with 512-bit `vpdpbusd`: a unit is sixteen
//! blocks of two rows.
//!
//! Lane `k` of every register is block `k` of the unit throughout: register
//! `r` of the codes holds codes `4r..4r + 4` of each of the sixteen blocks,
//! so after a (unit, row, token)'s eight `vpdpbusd` each i32 lane is one
//! block's exact dot, and one convert, one multiply (`d_w d_x`) and one FMA
//! scale all sixteen. Each activation register a step loads feeds both
//! rows' `vpdpbusd`, and a group's accumulators stay in registers.
//!
//! This replaced a 256-bit kernel in the AVX2 layout (eight blocks a lane
//! set, one row a unit, the token's accumulator loaded from memory and
//! stored back every step). `examples/prefill_gemm q8_0 --tokens 128` on
//! the Zen 4 VM, 1 thread, 31 runs, two alternations, GFLOP/s of the
//! kernel alone, 256-bit / one row of sixteen blocks / two rows:
//! `[512 x 2048]` 228-231 / 264-270 / 278-301, `[2048 x 512]` 146-196 /
//! 184-219 / 206-246, `[2048 x 4096]` 190-193 / 222-226 / 259-267.
//!
//! `vpdpbusd` takes unsigned bytes first: the weights go in as `w + 128`
//! (their top bit flipped, once per kept unit), the activations as they are,
//! and the sums start from `-128 Σ x` per block, prepared with the token's
//! unit, so each lane's i32 sum is exactly `Σ w x`.

use std::arch::asm;
use std::arch::x86_64::*;

use super::{Kernel, Rows};
use crate::simd::act::BlockQ8x32;
use crate::simd::columns::unpacked::avx512::Unpacks;
use crate::simd::columns::{block_lanes16, columns16, BLOCKS16 as BLOCKS};
use crate::simd::ggml_dot::avx2::multi::runs32::Sym32;
use crate::simd::ggml_dot::avx2::multi::BlockUnits;
use crate::simd::ggml_dot::avx512::load256;

/// Sixteen activation blocks of one token: `cols[r]` lane `k` = codes
/// `4r..4r + 4` of block `k`; `neg` lane `k` = `-128 Σ x` of block `k`;
/// `d` its scale (all zero past the row's last block).
#[repr(C, align(64))]
pub(super) struct XRun16 {
    cols: [__m512i; 8],
    neg: __m512i,
    d: __m512,
}

// The offsets [`step2`]'s assembly reads the fields at.
const _: () = assert!(std::mem::offset_of!(XRun16, neg) == 512 && std::mem::offset_of!(XRun16, d) == 576);

/// Sixteen weight blocks of one row as the steps take them: `w + 128` in
/// the lanes of [`XRun16::cols`], and each block's `d` on its lane.
#[repr(C, align(64))]
pub(super) struct Unpacked16 {
    w: [__m512i; 8],
    d: __m512,
}

/// The f16 scale at the start of each of the `here` blocks of `ts` bytes
/// from `b`, as sixteen f32 lanes (zero past `here`).
///
/// # Safety
/// This file's features; `b` points at `here` blocks of `ts` bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn f16_lanes16(b: *const u8, ts: usize, here: usize) -> __m512 {
    let mut h = [0u16; BLOCKS];
    for (k, hk) in h.iter_mut().enumerate().take(here) {
        *hk = (b.add(k * ts) as *const u16).read_unaligned();
    }
    _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr() as *const __m256i))
}

/// Unit `i` (blocks `16i..`) of row `r` of the type `TYPE`.
///
/// # Safety
/// Row `r` lies inside `m`, `16i < m.nb`; this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack16<const TYPE: u8>(m: &Rows, r: usize, i: usize) -> Unpacked16 {
    let here = (m.nb - BLOCKS * i).min(BLOCKS);
    let b = m.block(r, BLOCKS * i);
    // An absent block: codes 0 (128 after the flip) against zero activations, d 0.
    let codes: [__m256i; BLOCKS] =
        std::array::from_fn(|k| if k < here { Sym32::<TYPE>::codes(b.add(k * m.ts)) } else { _mm256_setzero_si256() });
    let flip = _mm512_set1_epi8(i8::MIN);
    Unpacked16 { w: columns16(&codes).map(|c| _mm512_xor_si512(c, flip)), d: f16_lanes16(b, m.ts, here) }
}

/// One token's blocks as [`XRun16`]s at `dst`.
///
/// # Safety
/// This file's features; `dst` has room for `src.len().div_ceil(16)` units.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prep16(src: &[BlockQ8x32], dst: *mut XRun16) {
    let ones = _mm512_set1_epi8(1);
    for (i, blocks) in src.chunks(BLOCKS).enumerate() {
        let codes: [__m256i; BLOCKS] = std::array::from_fn(|k| match blocks.get(k) {
            Some(b) => load256(b.qs.as_ptr() as *const u8),
            None => _mm256_setzero_si256(),
        });
        let cols = columns16(&codes);
        // Each lane's code sum, exact in i32 (1 x code per byte).
        let sum = cols.iter().fold(_mm512_setzero_si512(), |s, &c| _mm512_dpbusd_epi32(s, ones, c));
        let neg = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(sum));
        dst.add(i).write(XRun16 { cols, neg, d: block_lanes16(blocks, |b| b.d) });
    }
}

/// The symmetric type `TYPE` (`runs32::Q8_0` ..), sixteen blocks of two
/// rows a unit.
pub(super) struct Sym32x2<const TYPE: u8>;

/// The matrix of `TYPE`: rows of `nb` blocks.
fn rows_of<const TYPE: u8>(w: &[u8], nb: usize) -> Rows<'_> {
    Rows { w, nb, ts: <Sym32<TYPE> as BlockUnits>::BYTES }
}

impl<const TYPE: u8> Unpacks for Sym32x2<TYPE> {
    type X = XRun16;
    type U = [Unpacked16; 2];
    type A = [__m512; 2];
    rows_of_blocks!(|nb: usize| nb.div_ceil(BLOCKS));

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(m: &Rows, r: usize, i: usize) -> [Unpacked16; 2] {
        let next = m.second_row(r);
        [unpack16::<TYPE>(m, r, i), unpack16::<TYPE>(m, next, i)]
    }

    #[inline(always)]
    unsafe fn step(u: &[Unpacked16; 2], x: &XRun16, acc: &mut [__m512; 2]) {
        step2(u, x, acc)
    }
}

/// [`Sym32x2`]'s step: one chain of `vpdpbusd` per row, each activation
/// register feeding both, then `acc += d_w d_x s` per row.
///
/// One `asm!` block, so that the compiler keeps the unit and the group's
/// accumulators in registers: from intrinsics it interleaved the group's
/// four steps and spilled to the stack.
///
/// # Safety
/// This file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn step2(u: &[Unpacked16; 2], x: &XRun16, acc: &mut [__m512; 2]) {
    two_row_step!(
        u,
        x as *const XRun16,
        acc,
        ["vmovdqa64 {s0:z}, zmmword ptr [{x} + 512]", "vmovdqa64 {s1:z}, {s0:z}"],
        [
            "vcvtdq2ps {s0:z}, {s0:z}",
            "vcvtdq2ps {s1:z}, {s1:z}",
            "vmulps {c:z}, {d0:z}, zmmword ptr [{x} + 576]",
            "vfmadd231ps {a0:z}, {s0:z}, {c:z}",
            "vmulps {c:z}, {d1:z}, zmmword ptr [{x} + 576]",
            "vfmadd231ps {a1:z}, {s1:z}, {c:z}",
        ],
    );
}

/// A two-row step in one `asm!` block: `$init` starts `{s0}` / `{s1}`,
/// then each of the token's eight activation columns (`{x}`, 64 bytes
/// apart) is loaded once into `{c}` and feeds both rows' `vpdpbusd`
/// (`{w00}`.. of the first row's unit, `{w10}`.. of the second), and
/// `$tail` scales the sums into `{a0}` / `{a1}` (with `{d0}`, `{d1}` the
/// rows' block scales, and the caller's own operands in a third list).
macro_rules! two_row_step {
    ($u:expr, $x:expr, $acc:expr, [$($init:expr),+ $(,)?], [$($tail:expr),+ $(,)?] $(, [$($own:tt)+])? $(,)?) => {{
        let (u, [a0, a1]) = ($u, $acc);
        let (_s0, _s1, _c): (__m512i, __m512i, __m512);
        asm!(
            $($init),+,
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 0]",
            "vpdpbusd {s0:z}, {w00:z}, {c:z}",
            "vpdpbusd {s1:z}, {w10:z}, {c:z}",
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 64]",
            "vpdpbusd {s0:z}, {w01:z}, {c:z}",
            "vpdpbusd {s1:z}, {w11:z}, {c:z}",
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 128]",
            "vpdpbusd {s0:z}, {w02:z}, {c:z}",
            "vpdpbusd {s1:z}, {w12:z}, {c:z}",
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 192]",
            "vpdpbusd {s0:z}, {w03:z}, {c:z}",
            "vpdpbusd {s1:z}, {w13:z}, {c:z}",
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 256]",
            "vpdpbusd {s0:z}, {w04:z}, {c:z}",
            "vpdpbusd {s1:z}, {w14:z}, {c:z}",
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 320]",
            "vpdpbusd {s0:z}, {w05:z}, {c:z}",
            "vpdpbusd {s1:z}, {w15:z}, {c:z}",
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 384]",
            "vpdpbusd {s0:z}, {w06:z}, {c:z}",
            "vpdpbusd {s1:z}, {w16:z}, {c:z}",
            "vmovdqa64 {c:z}, zmmword ptr [{x} + 448]",
            "vpdpbusd {s0:z}, {w07:z}, {c:z}",
            "vpdpbusd {s1:z}, {w17:z}, {c:z}",
            $($tail),+,
            x = in(reg) $x,
            w00 = in(zmm_reg) u[0].w[0],
            w01 = in(zmm_reg) u[0].w[1],
            w02 = in(zmm_reg) u[0].w[2],
            w03 = in(zmm_reg) u[0].w[3],
            w04 = in(zmm_reg) u[0].w[4],
            w05 = in(zmm_reg) u[0].w[5],
            w06 = in(zmm_reg) u[0].w[6],
            w07 = in(zmm_reg) u[0].w[7],
            w10 = in(zmm_reg) u[1].w[0],
            w11 = in(zmm_reg) u[1].w[1],
            w12 = in(zmm_reg) u[1].w[2],
            w13 = in(zmm_reg) u[1].w[3],
            w14 = in(zmm_reg) u[1].w[4],
            w15 = in(zmm_reg) u[1].w[5],
            w16 = in(zmm_reg) u[1].w[6],
            w17 = in(zmm_reg) u[1].w[7],
            d0 = in(zmm_reg) u[0].d,
            d1 = in(zmm_reg) u[1].d,
            a0 = inout(zmm_reg) *a0,
            a1 = inout(zmm_reg) *a1,
            s0 = out(zmm_reg) _s0,
            s1 = out(zmm_reg) _s1,
            c = out(zmm_reg) _c,
            $($($own)+,)?
            options(nostack, preserves_flags, readonly),
        )
    }};
}
pub(super) use two_row_step;

impl<const TYPE: u8> Kernel for Sym32x2<TYPE> {
    /// Four: eight accumulators (two rows) beside the unit's 18 registers.
    const GROUP: usize = 4;
    type Src = BlockQ8x32;
    fn rows(w: &[u8], nb: usize) -> Rows<'_> {
        rows_of::<TYPE>(w, nb)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prep(src: &[BlockQ8x32], dst: *mut XRun16) {
        prep16(src, dst)
    }
}

/// Whether `ty` has a kernel here or in [`super::offset32`] (the 32-value
/// types).
pub(in crate::simd::ggml_dot) fn has_kernel(ty: qmoe_core::GgmlType) -> bool {
    use qmoe_core::GgmlType::*;
    matches!(ty, Q8_0 | Q4_0 | Q5_0 | IQ4NL | Q4_1 | Q5_1)
}

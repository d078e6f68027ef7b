//! The offset 32-value types (Q4_1, Q5_1: `d · code + m`) with 512-bit
//! `vpdpbusd`, in the symmetric types' unit ([`super::sym32`]): sixteen
//! blocks of two rows, lane `k` block `k` throughout. Their codes are
//! unsigned already (nibbles, five bits), so each lane's sum starts at zero,
//! and `m` meets the blocks' input sums (`d_x Σ x`, as the token's blocks
//! carry them) in one FMA per row: per (unit, row, token) eight `vpdpbusd`,
//! one multiply and two FMAs.
//!
//! Before this kernel Q4_1 and Q5_1 ran the AVX2 many-token kernel at this
//! level (the Q4_K / Q5_K step on runs of eight blocks).

use std::arch::asm;
use std::arch::x86_64::*;

use super::sym32::{f16_lanes16, two_row_step};
use super::{Kernel, Rows};
use crate::simd::act::BlockQ8x32;
use crate::simd::columns::unpacked::avx512::Unpacks;
use crate::simd::columns::{block_lanes16, columns16, BLOCKS16 as BLOCKS};
use crate::simd::ggml_dot::avx2::multi::runs32::{offset_codes, Q4_1};
use crate::simd::ggml_dot::avx512::load256;

/// Sixteen activation blocks of one token: `cols[r]` lane `k` = codes
/// `4r..4r + 4` of block `k`; `sum` lane `k` its input sum `d_x Σ x`; `d`
/// its scale (all zero past the row's last block).
#[repr(C, align(64))]
pub(super) struct XRunSum16 {
    cols: [__m512i; 8],
    sum: __m512,
    d: __m512,
}

// The offsets [`step2`]'s assembly reads the fields at.
const _: () = assert!(std::mem::offset_of!(XRunSum16, sum) == 512 && std::mem::offset_of!(XRunSum16, d) == 576);

/// Sixteen weight blocks of one row: the codes in the lanes of
/// [`XRunSum16::cols`], and each block's `d` and `m` on its lane.
#[repr(C, align(64))]
pub(super) struct UnpackedOffset16 {
    w: [__m512i; 8],
    d: __m512,
    m: __m512,
}

/// Q4_1 (`TYPE` `runs32::Q4_1`) / Q5_1, sixteen blocks of two rows a unit.
pub(super) struct Offset32x2<const TYPE: u8>;

impl<const TYPE: u8> Offset32x2<TYPE> {
    /// Bytes of a block.
    const TS: usize = if TYPE == Q4_1 { 20 } else { 24 };
}

/// Unit `i` (blocks `16i..`) of row `r`.
///
/// # Safety
/// Row `r` lies inside `m`, `16i < m.nb`; this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack16<const TYPE: u8>(m: &Rows, r: usize, i: usize) -> UnpackedOffset16 {
    let here = (m.nb - BLOCKS * i).min(BLOCKS);
    let b = m.block(r, BLOCKS * i);
    // An absent block: codes 0 against zero activations, d and m 0.
    let codes: [__m256i; BLOCKS] =
        std::array::from_fn(|k| if k < here { offset_codes::<TYPE>(b.add(k * m.ts)) } else { _mm256_setzero_si256() });
    UnpackedOffset16 { w: columns16(&codes), d: f16_lanes16(b, m.ts, here), m: f16_lanes16(b.add(2), m.ts, here) }
}

/// One token's blocks as [`XRunSum16`]s at `dst`.
///
/// # Safety
/// This file's features; `dst` has room for `src.len().div_ceil(16)` units.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prep16(src: &[BlockQ8x32], dst: *mut XRunSum16) {
    for (i, blocks) in src.chunks(BLOCKS).enumerate() {
        let codes: [__m256i; BLOCKS] = std::array::from_fn(|k| match blocks.get(k) {
            Some(b) => load256(b.qs.as_ptr() as *const u8),
            None => _mm256_setzero_si256(),
        });
        let (sum, d) = (block_lanes16(blocks, |b| b.sum), block_lanes16(blocks, |b| b.d));
        dst.add(i).write(XRunSum16 { cols: columns16(&codes), sum, d });
    }
}

impl<const TYPE: u8> Unpacks for Offset32x2<TYPE> {
    type X = XRunSum16;
    type U = [UnpackedOffset16; 2];
    type A = [__m512; 2];
    rows_of_blocks!(|nb: usize| nb.div_ceil(BLOCKS));

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(m: &Rows, r: usize, i: usize) -> [UnpackedOffset16; 2] {
        let next = m.second_row(r);
        [unpack16::<TYPE>(m, r, i), unpack16::<TYPE>(m, next, i)]
    }

    #[inline(always)]
    unsafe fn step(u: &[UnpackedOffset16; 2], x: &XRunSum16, acc: &mut [__m512; 2]) {
        step2(u, x, acc)
    }
}

/// [`Offset32x2`]'s step: `acc += d_w d_x s + m sum` per row.
///
/// # Safety
/// This file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn step2(u: &[UnpackedOffset16; 2], x: &XRunSum16, acc: &mut [__m512; 2]) {
    two_row_step!(
        u,
        x as *const XRunSum16,
        acc,
        ["vpxord {s0:z}, {s0:z}, {s0:z}", "vpxord {s1:z}, {s1:z}, {s1:z}"],
        [
            "vcvtdq2ps {s0:z}, {s0:z}",
            "vcvtdq2ps {s1:z}, {s1:z}",
            "vmulps {c:z}, {d0:z}, zmmword ptr [{x} + 576]",
            "vfmadd231ps {a0:z}, {s0:z}, {c:z}",
            "vfmadd231ps {a0:z}, {m0:z}, zmmword ptr [{x} + 512]",
            "vmulps {c:z}, {d1:z}, zmmword ptr [{x} + 576]",
            "vfmadd231ps {a1:z}, {s1:z}, {c:z}",
            "vfmadd231ps {a1:z}, {m1:z}, zmmword ptr [{x} + 512]",
        ],
        [m0 = in(zmm_reg) u[0].m, m1 = in(zmm_reg) u[1].m]
    );
}

impl<const TYPE: u8> Kernel for Offset32x2<TYPE> {
    /// Four: eight accumulators (two rows) beside the unit's 20 registers.
    const GROUP: usize = 4;
    type Src = BlockQ8x32;
    fn rows(w: &[u8], nb: usize) -> Rows<'_> {
        Rows { w, nb, ts: Self::TS }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prep(src: &[BlockQ8x32], dst: *mut XRunSum16) {
        prep16(src, dst)
    }
}

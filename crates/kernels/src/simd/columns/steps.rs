//! The token steps of the transposed many-token kernels (ggml k-quants and
//! 32-value types, MLX affine 4-bit): one weight block (or run of eight
//! blocks) against one token, accumulated in memory, each written as a
//! single `asm!` block.
//!
//! Why assembly: a step needs the block's eight code registers, its scale
//! vectors and a few temporaries, 12 to 15 of AVX2's 16 registers. From the
//! same code as intrinsics LLVM interleaved the group's eight tokens,
//! reassociated each token's i16 sums into trees and so ran out of
//! registers: it spilled code registers and accumulators and rebuilt
//! scale vectors inside the token loop (Q4_K: 44 stack moves per block and
//! eight tokens), and the loop was bound by the load/store pipes rather than
//! by the multiplies (`llvm-mca -mcpu=znver3`). Here each block-wide value
//! is an input register that stays put across the group's steps, and only
//! the token's own accumulator goes through memory (one load and one store
//! per step, against eight to sixteen loads of activations).
//!
//! Every step does the integer sums and the f32 operations of the
//! intrinsics it replaced, in the same order (the same bits); the kernels'
//! tests compare them with the single-token kernels.
//!
//! Each `# Safety`: the CPU runs AVX2 + FMA, and every pointer is valid for
//! the 32-byte reads (and, for `acc`, the write) the step makes.

use std::arch::asm;
use std::arch::x86_64::*;

/// One token's side of a step: its eight 32-byte columns of int8 codes,
/// the lane sums the step takes (f32 `xsums` for Q4_K / Q5_K and the MLX
/// bias term, the sixteen i16 group sums for Q6_K) and its lane scales.
#[derive(Clone, Copy)]
pub(crate) struct Cols {
    pub cols: *const __m256i,
    pub sums: *const __m256,
    pub d: *const __m256,
}

/// `asm!` with the operands the weight-column steps share: the token's
/// columns, sums and scales (`x`, `xsums`, `xd`), the accumulator (`acc`)
/// and the eight weight columns (`w0` .. `w7`); then the step's own.
macro_rules! step {
    ($w:expr, $x:expr, $acc:expr, [$($line:expr),+ $(,)?], $($own:tt)*) => {
        asm!(
            $($line),+,
            x = in(reg) $x.cols,
            xsums = in(reg) $x.sums,
            xd = in(reg) $x.d,
            acc = in(reg) $acc as *mut __m256,
            w0 = in(ymm_reg) $w[0],
            w1 = in(ymm_reg) $w[1],
            w2 = in(ymm_reg) $w[2],
            w3 = in(ymm_reg) $w[3],
            w4 = in(ymm_reg) $w[4],
            w5 = in(ymm_reg) $w[5],
            w6 = in(ymm_reg) $w[6],
            w7 = in(ymm_reg) $w[7],
            $($own)*,
            options(nostack, preserves_flags),
        )
    };
}

/// The eight columns' `vpmaddubsw` summed as i16 into `{s}` (`{t}`, `{a}`
/// temporaries), two at a time: for codes whose eight columns' pair sums
/// fit in i16 (Q4_K, Q4_0's nibbles, MLX 8-bit's `xh` half).
macro_rules! sums8_i16 {
    () => {
        concat!(
            "vpmaddubsw {s}, {w0}, ymmword ptr [{x}]\n",
            "vpmaddubsw {t}, {w1}, ymmword ptr [{x} + 32]\n",
            "vpaddw {s}, {s}, {t}\n",
            "vpmaddubsw {t}, {w2}, ymmword ptr [{x} + 64]\n",
            "vpmaddubsw {a}, {w3}, ymmword ptr [{x} + 96]\n",
            "vpaddw {t}, {t}, {a}\n",
            "vpaddw {s}, {s}, {t}\n",
            "vpmaddubsw {t}, {w4}, ymmword ptr [{x} + 128]\n",
            "vpmaddubsw {a}, {w5}, ymmword ptr [{x} + 160]\n",
            "vpaddw {t}, {t}, {a}\n",
            "vpaddw {s}, {s}, {t}\n",
            "vpmaddubsw {t}, {w6}, ymmword ptr [{x} + 192]\n",
            "vpmaddubsw {a}, {w7}, ymmword ptr [{x} + 224]\n",
            "vpaddw {t}, {t}, {a}\n",
            "vpaddw {s}, {s}, {t}",
        )
    };
}

/// Columns 0..4's `vpmaddubsw` summed as i16 into `{lo}`, 4..8's into
/// `{hi}` (`{t}` a temporary): for five-bit codes, whose four columns' pair
/// sums fit in i16 (Q5_K, Q5_0).
macro_rules! sums4x2_i16 {
    () => {
        concat!(
            "vpmaddubsw {lo}, {w0}, ymmword ptr [{x}]\n",
            "vpmaddubsw {t}, {w1}, ymmword ptr [{x} + 32]\n",
            "vpaddw {lo}, {lo}, {t}\n",
            "vpmaddubsw {t}, {w2}, ymmword ptr [{x} + 64]\n",
            "vpaddw {lo}, {lo}, {t}\n",
            "vpmaddubsw {t}, {w3}, ymmword ptr [{x} + 96]\n",
            "vpaddw {lo}, {lo}, {t}\n",
            "vpmaddubsw {hi}, {w4}, ymmword ptr [{x} + 128]\n",
            "vpmaddubsw {t}, {w5}, ymmword ptr [{x} + 160]\n",
            "vpaddw {hi}, {hi}, {t}\n",
            "vpmaddubsw {t}, {w6}, ymmword ptr [{x} + 192]\n",
            "vpaddw {hi}, {hi}, {t}\n",
            "vpmaddubsw {t}, {w7}, ymmword ptr [{x} + 224]\n",
            "vpaddw {hi}, {hi}, {t}",
        )
    };
}

/// Q4_K: `acc += d x_d (Σ_k w_k x_k) · scales - mins xsums` per lane, the
/// eight `vpmaddubsw` summed as i16 in pairs (see `ggml_dot/avx2/multi/kquants.rs`).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn q4_k(w: &[__m256i; 8], scales: __m256i, mins: __m256, d: __m256, x: Cols, acc: &mut __m256) {
    step!(
        w,
        x,
        acc,
        [
            sums8_i16!(),
            "vpmaddwd {s}, {s}, {scales}",
            "vcvtdq2ps {s}, {s}",
            "vmovups {a}, ymmword ptr [{acc}]",
            // The mins first: their inputs are ready long before the sum.
            "vfnmadd231ps {a}, {mins}, ymmword ptr [{xsums}]",
            "vmulps {t}, {d}, ymmword ptr [{xd}]",
            "vfmadd231ps {a}, {t}, {s}",
            "vmovups ymmword ptr [{acc}], {a}",
        ],
        scales = in(ymm_reg) scales,
        mins = in(ymm_reg) mins,
        d = in(ymm_reg) d,
        s = out(ymm_reg) _,
        t = out(ymm_reg) _,
        a = out(ymm_reg) _
    );
}

/// Q5_K: as [`q4_k`], the codes reaching 31, so the i16 sums take four
/// columns at a time (`lo`, `hi`), each widened by the scales on its own.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn q5_k(w: &[__m256i; 8], scales: __m256i, mins: __m256, d: __m256, x: Cols, acc: &mut __m256) {
    step!(
        w,
        x,
        acc,
        [
            sums4x2_i16!(),
            "vpmaddwd {lo}, {lo}, {scales}",
            "vpmaddwd {hi}, {hi}, {scales}",
            "vpaddd {lo}, {lo}, {hi}",
            "vcvtdq2ps {lo}, {lo}",
            "vmovups {a}, ymmword ptr [{acc}]",
            "vfnmadd231ps {a}, {mins}, ymmword ptr [{xsums}]",
            "vmulps {t}, {d}, ymmword ptr [{xd}]",
            "vfmadd231ps {a}, {t}, {lo}",
            "vmovups ymmword ptr [{acc}], {a}",
        ],
        scales = in(ymm_reg) scales,
        mins = in(ymm_reg) mins,
        d = in(ymm_reg) d,
        lo = out(ymm_reg) _,
        hi = out(ymm_reg) _,
        t = out(ymm_reg) _,
        a = out(ymm_reg) _
    );
}

/// The start of the 16-value-group steps ([`groups16`], [`q2_k`]): the
/// eight columns' `vpmaddubsw` summed as i16 two at a time, each pair
/// widened against its columns' scales (`sc_lo`, `sc_hi`) into `s`.
macro_rules! pair_sums16 {
    () => {
        concat!(
            "vpmaddubsw {p}, {w0}, ymmword ptr [{x}]\n",
            "vpmaddubsw {t}, {w1}, ymmword ptr [{x} + 32]\n",
            "vpaddw {p}, {p}, {t}\n",
            "vpmaddwd {s}, {p}, {sc_lo}\n",
            "vpmaddubsw {p}, {w2}, ymmword ptr [{x} + 64]\n",
            "vpmaddubsw {t}, {w3}, ymmword ptr [{x} + 96]\n",
            "vpaddw {p}, {p}, {t}\n",
            "vpmaddwd {p}, {p}, {sc_lo}\n",
            "vpaddd {s}, {s}, {p}\n",
            "vpmaddubsw {p}, {w4}, ymmword ptr [{x} + 128]\n",
            "vpmaddubsw {t}, {w5}, ymmword ptr [{x} + 160]\n",
            "vpaddw {p}, {p}, {t}\n",
            "vpmaddwd {p}, {p}, {sc_hi}\n",
            "vpaddd {s}, {s}, {p}\n",
            "vpmaddubsw {p}, {w6}, ymmword ptr [{x} + 192]\n",
            "vpmaddubsw {t}, {w7}, ymmword ptr [{x} + 224]\n",
            "vpaddw {p}, {p}, {t}\n",
            "vpmaddwd {p}, {p}, {sc_hi}\n",
            "vpaddd {s}, {s}, {p}",
        )
    };
}

/// Q6_K (`SHIFT` 5) and Q3_K (`SHIFT` 2), codes stored with an offset of
/// `2^SHIFT`: `acc += d x_d (Σ pairs · scales - 2^SHIFT sc · bsums)` per
/// lane. Q6_K's codes reach 63, so the i16 sums take two columns at a time;
/// columns 0..4 take the scales of groups `2 ORDER[k]` (`sc_lo`), 4..8 those
/// of `2 ORDER[k] + 1` (`sc_hi`); `sc16` are the sixteen group scales against
/// the activations' group sums (the codes' offset).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn groups16<const SHIFT: u32>(
    w: &[__m256i; 8],
    [sc_lo, sc_hi, sc16]: [__m256i; 3],
    d: __m256,
    x: Cols,
    acc: &mut __m256,
) {
    step!(
        w,
        x,
        acc,
        [
            pair_sums16!(),
            "vpmaddwd {p}, {sc16}, ymmword ptr [{xsums}]",
            "vpslld {p}, {p}, {shift}",
            "vpsubd {s}, {s}, {p}",
            "vcvtdq2ps {s}, {s}",
            "vmulps {p}, {d}, ymmword ptr [{xd}]",
            "vfmadd213ps {s}, {p}, ymmword ptr [{acc}]",
            "vmovups ymmword ptr [{acc}], {s}",
        ],
        sc_lo = in(ymm_reg) sc_lo,
        sc_hi = in(ymm_reg) sc_hi,
        sc16 = in(ymm_reg) sc16,
        d = in(ymm_reg) d,
        shift = const SHIFT,
        s = out(ymm_reg) _,
        p = out(ymm_reg) _,
        t = out(ymm_reg) _
    );
}

/// Q2_K: `acc += d x_d Σ pairs · scales - dmin x_d (m16 · bsums)` per lane,
/// the scales and mins per 16-value group as in [`groups16`] (codes reach 3:
/// still two columns per i16 sum, so the two share its shape). All sixteen
/// vector registers are taken.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn q2_k(
    w: &[__m256i; 8],
    [sc_lo, sc_hi, m16]: [__m256i; 3],
    [d, dmin]: [__m256; 2],
    x: Cols,
    acc: &mut __m256,
) {
    step!(
        w,
        x,
        acc,
        [
            pair_sums16!(),
            "vcvtdq2ps {s}, {s}",
            "vmulps {t}, {d}, ymmword ptr [{xd}]",
            "vfmadd213ps {s}, {t}, ymmword ptr [{acc}]",
            "vpmaddwd {p}, {m16}, ymmword ptr [{xsums}]",
            "vcvtdq2ps {p}, {p}",
            "vmulps {t}, {dmin}, ymmword ptr [{xd}]",
            "vfnmadd231ps {s}, {t}, {p}",
            "vmovups ymmword ptr [{acc}], {s}",
        ],
        sc_lo = in(ymm_reg) sc_lo,
        sc_hi = in(ymm_reg) sc_hi,
        m16 = in(ymm_reg) m16,
        d = in(ymm_reg) d,
        dmin = in(ymm_reg) dmin,
        s = out(ymm_reg) _,
        p = out(ymm_reg) _,
        t = out(ymm_reg) _
    );
}

/// Q4_0 (`FIVE` false) / Q5_0 runs of eight blocks, their codes unsigned:
/// `acc += scale x_d (Σ_c w_c x_c + neg)` per lane, `neg` (at `xsums`) the
/// blocks' `-2^k Σ x` as i32, so each lane's integer sum is exact. Q4_0's
/// `vpmaddubsw` pairs (at most `2 · 15 · 127`) add up as i16 over all eight
/// columns, Q5_0's (`2 · 31 · 127`) over four at a time.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn offset32<const FIVE: bool>(w: &[__m256i; 8], scale: __m256, x: Cols, acc: &mut __m256) {
    if FIVE {
        step!(
            w,
            x,
            acc,
            [
                sums4x2_i16!(),
                "vpmaddwd {lo}, {lo}, {ones}",
                "vpmaddwd {hi}, {hi}, {ones}",
                "vpaddd {lo}, {lo}, {hi}",
                "vpaddd {lo}, {lo}, ymmword ptr [{xsums}]",
                "vcvtdq2ps {lo}, {lo}",
                "vmulps {t}, {scale}, ymmword ptr [{xd}]",
                "vfmadd213ps {lo}, {t}, ymmword ptr [{acc}]",
                "vmovups ymmword ptr [{acc}], {lo}",
            ],
            ones = in(ymm_reg) _mm256_set1_epi16(1),
            scale = in(ymm_reg) scale,
            lo = out(ymm_reg) _,
            t = out(ymm_reg) _,
            hi = out(ymm_reg) _
        );
    } else {
        step!(
            w,
            x,
            acc,
            [
                sums8_i16!(),
                "vpmaddwd {s}, {s}, {ones}",
                "vpaddd {s}, {s}, ymmword ptr [{xsums}]",
                "vcvtdq2ps {s}, {s}",
                "vmulps {t}, {scale}, ymmword ptr [{xd}]",
                "vfmadd213ps {s}, {t}, ymmword ptr [{acc}]",
                "vmovups ymmword ptr [{acc}], {s}",
            ],
            ones = in(ymm_reg) _mm256_set1_epi16(1),
            scale = in(ymm_reg) scale,
            s = out(ymm_reg) _,
            t = out(ymm_reg) _,
            a = out(ymm_reg) _
        );
    }
}

/// Signed codes (IQ4_XS, and Q8_0 / IQ4_NL runs of eight
/// blocks): `acc += scale x_d Σ_c |w_c| · sign(x_c, w_c)` per lane, where
/// `aw` holds the eight columns' absolute values and `w` (in memory: the
/// step has room for only one set in registers) the codes themselves. Each
/// column's `vpmaddubsw` goes to i32 on its own (a lane is at most
/// 2 · 2 · 128 · 127 per column, so no i16 sum across columns is safe).
/// `x` points at the token's eight columns, `xd` at its scale vector.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn signed(
    aw: &[__m256i; 8],
    w: &[__m256i; 8],
    scale: __m256,
    x: *const __m256i,
    xd: *const __m256,
    acc: &mut __m256,
) {
    asm!(
        "vmovdqu {t}, ymmword ptr [{x}]",
        "vpsignb {t}, {t}, ymmword ptr [{w}]",
        "vpmaddubsw {t}, {a0}, {t}",
        "vpmaddwd {s}, {t}, {ones}",
        "vmovdqu {t}, ymmword ptr [{x} + 32]",
        "vpsignb {t}, {t}, ymmword ptr [{w} + 32]",
        "vpmaddubsw {t}, {a1}, {t}",
        "vpmaddwd {t}, {t}, {ones}",
        "vpaddd {s}, {s}, {t}",
        "vmovdqu {t}, ymmword ptr [{x} + 64]",
        "vpsignb {t}, {t}, ymmword ptr [{w} + 64]",
        "vpmaddubsw {t}, {a2}, {t}",
        "vpmaddwd {t}, {t}, {ones}",
        "vpaddd {s}, {s}, {t}",
        "vmovdqu {t}, ymmword ptr [{x} + 96]",
        "vpsignb {t}, {t}, ymmword ptr [{w} + 96]",
        "vpmaddubsw {t}, {a3}, {t}",
        "vpmaddwd {t}, {t}, {ones}",
        "vpaddd {s}, {s}, {t}",
        "vmovdqu {t}, ymmword ptr [{x} + 128]",
        "vpsignb {t}, {t}, ymmword ptr [{w} + 128]",
        "vpmaddubsw {t}, {a4}, {t}",
        "vpmaddwd {t}, {t}, {ones}",
        "vpaddd {s}, {s}, {t}",
        "vmovdqu {t}, ymmword ptr [{x} + 160]",
        "vpsignb {t}, {t}, ymmword ptr [{w} + 160]",
        "vpmaddubsw {t}, {a5}, {t}",
        "vpmaddwd {t}, {t}, {ones}",
        "vpaddd {s}, {s}, {t}",
        "vmovdqu {t}, ymmword ptr [{x} + 192]",
        "vpsignb {t}, {t}, ymmword ptr [{w} + 192]",
        "vpmaddubsw {t}, {a6}, {t}",
        "vpmaddwd {t}, {t}, {ones}",
        "vpaddd {s}, {s}, {t}",
        "vmovdqu {t}, ymmword ptr [{x} + 224]",
        "vpsignb {t}, {t}, ymmword ptr [{w} + 224]",
        "vpmaddubsw {t}, {a7}, {t}",
        "vpmaddwd {t}, {t}, {ones}",
        "vpaddd {s}, {s}, {t}",
        "vcvtdq2ps {s}, {s}",
        "vmulps {t}, {scale}, ymmword ptr [{xd}]",
        "vfmadd213ps {s}, {t}, ymmword ptr [{acc}]",
        "vmovups ymmword ptr [{acc}], {s}",
        x = in(reg) x,
        w = in(reg) w.as_ptr(),
        xd = in(reg) xd,
        acc = in(reg) acc as *mut __m256,
        a0 = in(ymm_reg) aw[0],
        a1 = in(ymm_reg) aw[1],
        a2 = in(ymm_reg) aw[2],
        a3 = in(ymm_reg) aw[3],
        a4 = in(ymm_reg) aw[4],
        a5 = in(ymm_reg) aw[5],
        a6 = in(ymm_reg) aw[6],
        a7 = in(ymm_reg) aw[7],
        ones = in(ymm_reg) _mm256_set1_epi16(1),
        scale = in(ymm_reg) scale,
        s = out(ymm_reg) _,
        t = out(ymm_reg) _,
        options(nostack, preserves_flags),
    );
}

/// MLX 8-bit runs: unsigned codes (up to 255) against activations split as
/// `x = 16 xh + xl` (`xl` in 0..16, `xh` in -8..8; columns 0..8 of `x` are
/// `xh`, 8..16 `xl`), so that no `vpmaddubsw` pair saturates: `acc += d x_d
/// (16 Σ w xh + Σ w xl) - mins xsums` per lane. An `xh` pair is at most
/// 2 · 255 · 8 = 4080, so all eight columns add up as i16 (32640); an `xl`
/// pair up to 7650, so four at a time.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn u8_split(w: &[__m256i; 8], mins: __m256, d: __m256, x: Cols, acc: &mut __m256) {
    step!(
        w,
        x,
        acc,
        [
            sums8_i16!(),
            "vpmaddwd {s}, {s}, {ones}",
            "vpslld {s}, {s}, 4",
            "vpmaddubsw {a}, {w0}, ymmword ptr [{x} + 256]",
            "vpmaddubsw {t}, {w1}, ymmword ptr [{x} + 288]",
            "vpaddw {a}, {a}, {t}",
            "vpmaddubsw {t}, {w2}, ymmword ptr [{x} + 320]",
            "vpaddw {a}, {a}, {t}",
            "vpmaddubsw {t}, {w3}, ymmword ptr [{x} + 352]",
            "vpaddw {a}, {a}, {t}",
            "vpmaddwd {a}, {a}, {ones}",
            "vpaddd {s}, {s}, {a}",
            "vpmaddubsw {a}, {w4}, ymmword ptr [{x} + 384]",
            "vpmaddubsw {t}, {w5}, ymmword ptr [{x} + 416]",
            "vpaddw {a}, {a}, {t}",
            "vpmaddubsw {t}, {w6}, ymmword ptr [{x} + 448]",
            "vpaddw {a}, {a}, {t}",
            "vpmaddubsw {t}, {w7}, ymmword ptr [{x} + 480]",
            "vpaddw {a}, {a}, {t}",
            "vpmaddwd {a}, {a}, {ones}",
            "vpaddd {s}, {s}, {a}",
            "vcvtdq2ps {s}, {s}",
            "vmovups {a}, ymmword ptr [{acc}]",
            "vfnmadd231ps {a}, {mins}, ymmword ptr [{xsums}]",
            "vmulps {t}, {d}, ymmword ptr [{xd}]",
            "vfmadd231ps {a}, {t}, {s}",
            "vmovups ymmword ptr [{acc}], {a}",
        ],
        ones = in(ymm_reg) _mm256_set1_epi16(1),
        mins = in(ymm_reg) mins,
        d = in(ymm_reg) d,
        s = out(ymm_reg) _,
        t = out(ymm_reg) _,
        a = out(ymm_reg) _
    );
}

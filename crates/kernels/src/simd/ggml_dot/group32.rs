//! The activations of the x86 32-value block gemv kernels (AVX-512
//! `avx512/blocks32.rs`, AVX2 `avx2/blocks32.rs`), laid out once per input
//! and shared by every 32-value type: sixteen blocks a [`Group`], each pair
//! of blocks as 64 contiguous codes beside `-128 Σ` of each four codes (the
//! start of a `vpdpbusd` or `vpmaddwd` lane sum), and each block's scale
//! and exact f32 sum.

use crate::simd::act::BlockQ8x32;
use crate::simd::scratch::Tokens;

/// Blocks a [`Group`] holds (one read of the weight scales per group).
pub(super) const BLOCKS: usize = 16;

/// Two activation blocks as the kernel reads them: the codes of block `2k`
/// then `2k + 1`, and for each i32 lane of a `vpdpbusd` over them,
/// `-128` times the sum of its four codes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Pair {
    pub(super) qs: [i8; 64],
    pub(super) neg: [i32; 16],
}

/// Sixteen activation blocks: their pairs, scales and sums. A short last
/// group is padded with zero codes, scales and sums.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Group {
    pub(super) pairs: [Pair; BLOCKS / 2],
    pub(super) d: [f32; BLOCKS],
    pub(super) sum: [f32; BLOCKS],
}

/// `x` as [`Group`]s in `tokens`: laid out once per thread and input when
/// `acts_id` (not 0) names the input (the driver runs a product as several
/// row tasks), else for this call.
pub(super) fn laid_out(tokens: &mut Tokens, x: &[BlockQ8x32], acts_id: u64) -> *const Group {
    // SAFETY (closure): `tokens` gives room for the groups of `x`.
    tokens.group(acts_id, (1, x.len().div_ceil(BLOCKS)), (0, 1), |_, p| unsafe { prep(x, p) })
}

/// `x` as [`Group`]s at `dst`.
///
/// # Safety
/// `dst` has room for `x.len().div_ceil(BLOCKS)` values.
unsafe fn prep(x: &[BlockQ8x32], dst: *mut Group) {
    for (gi, blocks) in x.chunks(BLOCKS).enumerate() {
        let mut g =
            Group { pairs: [Pair { qs: [0; 64], neg: [0; 16] }; BLOCKS / 2], d: [0.0; BLOCKS], sum: [0.0; BLOCKS] };
        for (j, xb) in blocks.iter().enumerate() {
            (g.d[j], g.sum[j]) = (xb.d, xb.sum);
            let (pair, half) = (&mut g.pairs[j / 2], j % 2);
            pair.qs[32 * half..32 * half + 32].copy_from_slice(&xb.qs);
            for (l, four) in xb.qs.chunks_exact(4).enumerate() {
                pair.neg[8 * half + l] = -128 * four.iter().map(|&q| q as i32).sum::<i32>();
            }
        }
        // SAFETY: `dst` has room for every group (the caller's contract).
        unsafe { dst.add(gi).write(g) };
    }
}

/// The f16 at offset `at` of the `take` (at most 16) blocks of `ts` bytes
/// at `base`, packed four to a u64 (zero past `take`), for one `vcvtph2ps`.
///
/// Read with scalar loads and packed on the integer side, which the
/// kernels' vector work leaves idle: a `vpgatherdd` of the sixteen took
/// about a third of the AVX-512 Q8_0 kernel's time on a Zen 4, and the
/// `vpinsrw`s LLVM made of the packing (a shuffle each) 10-17% of that
/// loop's (`gemv_ggml 1024k`: Q4_0 19.1 -> 21.3, Q4_1 19.8 -> 23.0, Q8_0
/// 39.2 -> 42.3 GB/s once kept out by the empty `asm!` below).
///
/// # Safety
/// The `take` blocks at `base` are readable.
#[inline(always)]
pub(super) unsafe fn packed_halves(base: *const u8, at: usize, ts: usize, take: usize) -> [i64; 4] {
    // SAFETY: block `i < take` is readable (the caller's contract).
    let h =
        |i: usize| if i < take { unsafe { (base.add(i * ts + at) as *const u16).read_unaligned() as u64 } } else { 0 };
    let four = |j: usize| {
        let mut v = h(4 * j) | h(4 * j + 1) << 16 | h(4 * j + 2) << 32 | h(4 * j + 3) << 48;
        // SAFETY: an empty asm that keeps `v` in a general register.
        unsafe { std::arch::asm!("/* {0} */", inout(reg) v, options(pure, nomem, nostack, preserves_flags)) };
        v as i64
    };
    [four(0), four(1), four(2), four(3)]
}

/// A 32-value block type's layout, shared by the x86 levels' kernels
/// (each level adds how it builds the codes).
pub(super) trait Layout32 {
    /// Bytes of a block (the f16 `d` first).
    const TS: usize;
    /// Where the f16 `m` of a `d q + m` type sits; `None` for the others.
    const M_AT: Option<usize>;
    /// The offset that makes the codes unsigned, as a right shift of the
    /// prepared `-128 Σ` (`0` for 128, `4` for 8, `3` for 16); `None`: the
    /// codes are unsigned already.
    const OFFSET_SHIFT: Option<i32>;
}

/// Declares each type with its layout: name, block bytes, `m`, offset shift.
macro_rules! layouts {
    ($($name:ident: $ts:expr, $m:expr, $shift:expr;)+) => {$(
        pub(super) struct $name;
        impl Layout32 for $name {
            const TS: usize = $ts;
            const M_AT: Option<usize> = $m;
            const OFFSET_SHIFT: Option<i32> = $shift;
        }
    )+};
}

layouts! {
    Q8_0: 34, None, Some(0);
    Q4_0: 18, None, Some(4);
    Q4_1: 20, Some(2), None;
    Q5_0: 22, None, Some(3);
    Q5_1: 24, Some(2), None;
    IQ4NL: 18, None, Some(0);
}

//! The shape every transposed many-token kernel shares: a unit of weight
//! blocks (one 256-value block, or a run of eight 32-value blocks) is
//! unpacked once, into registers, then each token of the group takes one
//! step against it ([`crate::simd::columns::steps`]).
//!
//! When a call has more than one token group, the first group also writes
//! each unit as it unpacked it to a per-thread buffer (`scratch::Kept`),
//! and the later groups load it from there instead of unpacking again.
//! Unpacking (nibble splits, transposes, scale shuffles and converts) runs
//! on the same vector ports as the steps: about a quarter of a Q4_K group's
//! port time (`llvm-mca -mcpu=znver3`: 68 cycles per block of eight tokens
//! unpacking, 56 loading the kept unit). Loading a kept unit costs loads
//! only, and the row task's kept units (about 2.4x its Q4_K bytes) stay in
//! L2 for the task's later groups.

use std::arch::x86_64::__m256;

use super::super::hsum;

/// A weight type's transposed many-token kernel.
pub(super) trait Unpacks {
    /// One token's activation unit, as the group's prepared copy holds it.
    type X;
    /// A unit of weight blocks as the steps take it.
    type U;
    /// Bytes per weight block.
    const BYTES: usize;

    /// The unit `i` of the row at `row` (`nb` blocks).
    ///
    /// # Safety
    /// `row` points at `nb` blocks of the type, `i < Self::units(nb)`; the
    /// CPU runs AVX2 + FMA + F16C.
    unsafe fn unpack(row: *const u8, nb: usize, i: usize) -> Self::U;

    /// `acc += u · x` (per lane; the row's result is the lanes' sum).
    ///
    /// # Safety
    /// The CPU runs AVX2 + FMA + F16C.
    unsafe fn step(u: &Self::U, x: &Self::X, acc: &mut __m256);

    /// Units per row of `nb` blocks.
    fn units(nb: usize) -> usize;

    /// One row of `nb` blocks against `N` tokens, each unit unpacked here
    /// (and written to `keep[i]` unless `keep` is null).
    ///
    /// # Safety
    /// `row` points at `nb` blocks of the type, each `xs[t]` at
    /// `Self::units(nb)` activation units, `keep` (unless null) has room for
    /// as many weight units; the CPU runs AVX2 + FMA + F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<const N: usize>(row: *const u8, xs: [*const Self::X; N], nb: usize, keep: *mut Self::U) -> [f32; N] {
        let mut acc = [std::arch::x86_64::_mm256_setzero_ps(); N];
        // Two loops, so that without `keep` the unit is a local whose parts
        // stay in registers (one reference to either would put it in memory).
        if keep.is_null() {
            for i in 0..Self::units(nb) {
                let u = Self::unpack(row, nb, i);
                for (t, a) in acc.iter_mut().enumerate() {
                    Self::step(&u, &*xs[t].add(i), a);
                }
            }
        } else {
            for i in 0..Self::units(nb) {
                // The steps read the kept copy, as the later groups will.
                keep.add(i).write(Self::unpack(row, nb, i));
                for (t, a) in acc.iter_mut().enumerate() {
                    Self::step(&*keep.add(i), &*xs[t].add(i), a);
                }
            }
        }
        acc.map(|a| hsum(a))
    }

    /// As [`Unpacks::dot`], on the units it kept for the row.
    ///
    /// # Safety
    /// `kept` points at the `Self::units(nb)` units [`Unpacks::dot`] wrote,
    /// each `xs[t]` at as many activation units; the CPU runs AVX2 + FMA +
    /// F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_kept<const N: usize>(kept: *const Self::U, xs: [*const Self::X; N], nb: usize) -> [f32; N] {
        let mut acc = [std::arch::x86_64::_mm256_setzero_ps(); N];
        for i in 0..Self::units(nb) {
            let u = &*kept.add(i);
            for (t, a) in acc.iter_mut().enumerate() {
                Self::step(u, &*xs[t].add(i), a);
            }
        }
        acc.map(|a| hsum(a))
    }
}

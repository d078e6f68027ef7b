//! The loop every x86 many-token int8 kernel shares (ggml types in
//! `ggml_dot/avx2/multi` and `ggml_dot/multi/avx512.rs`, MLX affine in
//! `affine_multi`): a unit of weight blocks (one 256-value block, a pair of
//! them, or a run of eight 32-value blocks) is unpacked once, into
//! registers, then each token of the group takes one step against it (at
//! the AVX2 level [`super::steps`]). A unit may span two rows (its step's
//! accumulator, [`avx512::Acc`], says how many): each activation register
//! the step loads then feeds both rows' products.
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
//!
//! The loop is written once and compiled per instruction set ([`avx2`],
//! [`avx512`]): the steps must inline into it, and a function can only
//! inline code compiled for the features it has itself.

/// The trait and loop for one instruction set: `$features` its
/// `target_feature` list, `$acc` its f32 accumulator, `$zero` its zero,
/// `$hsum8` the lane sums of eight accumulators.
macro_rules! level {
    ($name:ident, $features:literal, $acc:ident, $zero:path, $hsum8:path) => {
        pub(crate) mod $name {
            use std::arch::x86_64::{_mm_prefetch, $acc, _MM_HINT_T0};
            use std::ops::Range;

            use crate::simd::columns::{chunk_units, L1_ACTS};
            use crate::simd::scratch::Kept;
            use crate::simd::PREFETCH_BYTES;
            use $hsum8 as hsum8;
            use $zero as zero;

            /// A step's accumulator for one token: one row's (`$acc`), or two rows'
            /// (`[$acc; 2]`, for a unit that spans two rows).
            pub(crate) trait Acc: Copy {
                /// Rows a unit spans.
                const ROWS: usize;
                /// All lanes zero.
                ///
                /// # Safety
                /// The CPU runs the level's features.
                unsafe fn zero() -> Self;
                /// Each token's row lane sums (the first `ROWS` of each count).
                ///
                /// Eight accumulators at a time go through one transposing tree
                /// (`$hsum8`; a short last batch padded with zeros): summed one by
                /// one, a row's sum took about eight shuffles and adds. The tree
                /// adds each vector's lanes in the same order wherever it sits, so a
                /// token's sums do not depend on the group it falls in (the driver
                /// cuts products into runs of tokens, and expects the same bits).
                ///
                /// # Safety
                /// The CPU runs the level's features.
                unsafe fn sums<const N: usize>(acc: [Self; N]) -> [[f32; 2]; N];
            }

            impl Acc for $acc {
                const ROWS: usize = 1;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    zero()
                }
                #[inline(always)]
                unsafe fn sums<const N: usize>(acc: [Self; N]) -> [[f32; 2]; N] {
                    let mut out = [[0.0; 2]; N];
                    for t in (0..N).step_by(8) {
                        let s = hsum8(std::array::from_fn(|i| if t + i < N { acc[t + i] } else { zero() }));
                        for (o, v) in out[t..].iter_mut().zip(s) {
                            o[0] = v;
                        }
                    }
                    out
                }
            }

            impl Acc for [$acc; 2] {
                const ROWS: usize = 2;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    [zero(); 2]
                }
                #[inline(always)]
                unsafe fn sums<const N: usize>(acc: [Self; N]) -> [[f32; 2]; N] {
                    let mut out = [[0.0; 2]; N];
                    for t in (0..N).step_by(4) {
                        let s =
                            hsum8(std::array::from_fn(|i| if t + i / 2 < N { acc[t + i / 2][i % 2] } else { zero() }));
                        for (i, o) in out[t..].iter_mut().take(4).enumerate() {
                            *o = [s[2 * i], s[2 * i + 1]];
                        }
                    }
                    out
                }
            }

            /// A weight format's transposed many-token kernel.
            pub(crate) trait Unpacks {
                /// One token's activation unit, as the group's prepared copy holds it.
                type X;
                /// A unit of weight blocks as the steps take it.
                type U;
                /// A step's accumulator: its row count is the unit's.
                type A: Acc;
                /// The matrix a call reads: its rows of units.
                type M<'a>;

                /// Units per row.
                fn units(m: &Self::M<'_>) -> usize;

                /// The bytes the rows stream from (the codes), and bytes per row: the
                /// first pass prefetches them ahead of the row it reads.
                fn stream<'a>(m: &Self::M<'a>) -> (&'a [u8], usize);

                /// The unit `i` of row `r` (and of the rows after it up to the unit's
                /// row count, those that `m` has: a unit past the last row reads the
                /// rows it has again, and its other rows' results are not used).
                ///
                /// # Safety
                /// Row `r` lies inside `m`, `i < Self::units(m)`; the CPU runs the level's
                /// features.
                unsafe fn unpack(m: &Self::M<'_>, r: usize, i: usize) -> Self::U;

                /// `acc += u · x` (per lane and row; a row's result is its lanes' sum).
                ///
                /// # Safety
                /// The CPU runs the level's features.
                unsafe fn step(u: &Self::U, x: &Self::X, acc: &mut Self::A);

                /// Units `units` of the unit's rows from `r` against `N` tokens, each
                /// unit unpacked here (and written to `keep[i]` unless `keep` is null):
                /// each token's sum per row.
                ///
                /// # Safety
                /// As [`Unpacks::unpack`] for every unit of `units`; each `xs[t]` points
                /// at `Self::units(m)` activation units; `keep` (unless null) has room
                /// for as many weight units.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn dot<const N: usize>(
                    m: &Self::M<'_>,
                    r: usize,
                    xs: [*const Self::X; N],
                    units: Range<usize>,
                    keep: *mut Self::U,
                ) -> [[f32; 2]; N] {
                    let mut acc = [Self::A::zero(); N];
                    // Two loops, so that without `keep` the unit is a local whose parts
                    // stay in registers (one reference to either would put it in memory).
                    if keep.is_null() {
                        for i in units {
                            let u = Self::unpack(m, r, i);
                            for (t, a) in acc.iter_mut().enumerate() {
                                Self::step(&u, &*xs[t].add(i), a);
                            }
                        }
                    } else {
                        for i in units {
                            // The steps read the kept copy, as the later groups will.
                            keep.add(i).write(Self::unpack(m, r, i));
                            for (t, a) in acc.iter_mut().enumerate() {
                                Self::step(&*keep.add(i), &*xs[t].add(i), a);
                            }
                        }
                    }
                    Self::A::sums(acc)
                }

                /// As [`Unpacks::dot`], on the units it kept for the row.
                ///
                /// # Safety
                /// `kept` points at the row's units, [`Unpacks::dot`] wrote those in
                /// `units`, each `xs[t]` points at as many activation units; the CPU runs
                /// the level's features.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn dot_kept<const N: usize>(
                    kept: *const Self::U,
                    xs: [*const Self::X; N],
                    units: Range<usize>,
                ) -> [[f32; 2]; N] {
                    let mut acc = [Self::A::zero(); N];
                    for i in units {
                        let u = &*kept.add(i);
                        for (t, a) in acc.iter_mut().enumerate() {
                            Self::step(u, &*xs[t].add(i), a);
                        }
                    }
                    Self::A::sums(acc)
                }
            }

            /// Most bytes of kept units per call: about L2.
            const KEPT_BYTES: usize = 512 << 10;

            /// `y[t * stride + i] = dot(row rows.start + i of m, token t)` for `n_tokens`
            /// tokens, in token groups of `max` (the rest in groups of at most 4), each
            /// group's activation units given by `prep(t0, n)` (a pointer to token
            /// `t0`'s and the distance from one token's to the next's). Token groups run
            /// outside (of four tokens where `max` tokens' activation units of a row
            /// would not stay in L1, [`crate::simd::columns::L1_ACTS`]), then column
            /// chunks sized so that the group's activation units of a chunk stay in
            /// L1 (chunk partial sums added in `y`), then rows:
            /// the driver's run of rows stays in L2. The first group streams the rows
            /// from memory (with the single-token kernels' prefetch) and keeps their
            /// unpacked units; the later groups load those. A call with more rows than
            /// [`KEPT_BYTES`] of kept units (not the driver's: its row tasks are
            /// smaller) runs in blocks of rows, each as a call of its own.
            ///
            /// # Safety
            /// The CPU runs the level's features; `rows` lies inside `m`, `n_tokens >= 1`;
            /// `prep(t0, n)` for `t0 + n <= n_tokens` gives `n` tokens' units; `y` is
            /// valid for writes at `t * stride + i` for `t < n_tokens`, `i < rows.len()`.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn groups<K: Unpacks>(
                m: &K::M<'_>,
                rows: Range<usize>,
                n_tokens: usize,
                max: usize,
                y: *mut f32,
                stride: usize,
                prep: &mut impl FnMut(usize, usize) -> (*const K::X, usize),
            ) {
                let units = K::units(m);
                // A group of `max` tokens whose units of a row would not stay in L1
                // takes four tokens instead; column chunks are left for rows wider
                // still (see `L1_ACTS` for what that measured).
                let max = if max > 4 && units * max * std::mem::size_of::<K::X>() > L1_ACTS { 4 } else { max };
                let rows_per_unit = K::A::ROWS;
                let block = (KEPT_BYTES / (units * std::mem::size_of::<K::U>()).max(1)).max(1) * rows_per_unit;
                if rows.len() > block {
                    for r0 in rows.clone().step_by(block) {
                        let sub = r0..(r0 + block).min(rows.end);
                        groups::<K>(m, sub, n_tokens, max, y.add(r0 - rows.start), stride, prep);
                    }
                    return;
                }
                // Kept only when a later group reads them.
                let first = if n_tokens >= max { max } else { n_tokens.min(4) };
                let mut kept = Kept::default();
                let keep: *mut K::U = if n_tokens > first {
                    kept.room(rows.len().div_ceil(rows_per_unit) * units)
                } else {
                    std::ptr::null_mut()
                };
                let chunk = chunk_units(units, max * std::mem::size_of::<K::X>());
                let pass = Pass { rows, units, chunk, keep, y, stride };
                let mut t0 = 0;
                while t0 < n_tokens {
                    let left = n_tokens - t0;
                    let n = if left >= max { max } else { left.min(4) };
                    let (xg, xstride) = prep(t0, n);
                    match n {
                        8 => pass.group::<K, 8>(m, xg, xstride, t0),
                        4 => pass.group::<K, 4>(m, xg, xstride, t0),
                        3 => pass.group::<K, 3>(m, xg, xstride, t0),
                        2 => pass.group::<K, 2>(m, xg, xstride, t0),
                        _ => pass.group::<K, 1>(m, xg, xstride, t0),
                    }
                    t0 += n;
                }
            }

            /// What every token group of [`groups`] shares.
            struct Pass<U> {
                rows: Range<usize>,
                units: usize,
                chunk: usize,
                keep: *mut U,
                y: *mut f32,
                stride: usize,
            }

            impl<U> Pass<U> {
                /// Every row against the `N` tokens from `t0` (their units at `xg`,
                /// `xstride` apart), chunk by chunk.
                ///
                /// # Safety
                /// As [`groups`].
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn group<K: Unpacks<U = U>, const N: usize>(
                    &self,
                    m: &K::M<'_>,
                    xg: *const K::X,
                    xstride: usize,
                    t0: usize,
                ) {
                    let xs: [*const K::X; N] = std::array::from_fn(|t| xg.add(t * xstride));
                    let (bytes, row_bytes) = K::stream(m);
                    let mut u0 = 0;
                    while u0 < self.units {
                        let cols = u0..(u0 + self.chunk).min(self.units);
                        // Only the first pass reads the rows from memory: prefetch for it.
                        let prefetch = t0 == 0 && u0 == 0;
                        let mut fetched = self.rows.start * row_bytes;
                        let rows_per_unit = K::A::ROWS;
                        for (i, r) in self.rows.clone().step_by(rows_per_unit).enumerate() {
                            if prefetch {
                                let until = ((r + rows_per_unit) * row_bytes + PREFETCH_BYTES).min(bytes.len());
                                while fetched < until {
                                    _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(fetched) as *const i8);
                                    fetched += 64;
                                }
                            }
                            let kept = if self.keep.is_null() { self.keep } else { self.keep.add(i * self.units) };
                            let out: [[f32; 2]; N] = if t0 == 0 {
                                K::dot(m, r, xs, cols.clone(), kept)
                            } else {
                                K::dot_kept(kept, xs, cols.clone())
                            };
                            let first = r - self.rows.start;
                            let n_rows = rows_per_unit.min(self.rows.end - r);
                            // Row by row, not as a loop over the unit's rows: the compiler
                            // turned that loop's copy into a call of `memcpy` per row and token.
                            for (t, [v0, v1]) in out.into_iter().enumerate() {
                                let at = self.y.add((t0 + t) * self.stride + first);
                                *at = if u0 == 0 { v0 } else { *at + v0 };
                                if n_rows == 2 {
                                    let at = at.add(1);
                                    *at = if u0 == 0 { v1 } else { *at + v1 };
                                }
                            }
                        }
                        u0 = cols.end;
                    }
                }
            }
        }
    };
}

level!(avx2, "avx2,fma,f16c", __m256, std::arch::x86_64::_mm256_setzero_ps, super::hsum256x8);
level!(
    avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    __m512,
    std::arch::x86_64::_mm512_setzero_ps,
    super::hsum512x8
);

/// Sum of the 16 lanes (halves, then as the AVX2 level's
/// [`crate::simd::float_dot::x86::hsum`]): the twin [`hsum512x8`] is tested
/// against.
#[cfg(test)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn hsum512(v: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    crate::simd::float_dot::x86::hsum(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
}

/// The lane sums of eight vectors, in order: each level of the tree adds
/// two halves of every vector's partial sums, with the partials of two (then
/// four, then eight) vectors side by side in one register. 24 instructions
/// for the eight, against about eight each one by one.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn hsum512x8(v: [std::arch::x86_64::__m512; 8]) -> [f32; 8] {
    use std::arch::x86_64::*;
    // 16 -> 8 partials: lanes 0..8 `a`'s halves added, 8..16 `b`'s.
    let halves =
        |a, b| _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b));
    let p = [halves(v[0], v[1]), halves(v[2], v[3]), halves(v[4], v[5]), halves(v[6], v[7])];
    // 8 -> 4: 128-bit lane k holds vector k's (of four) four partials.
    let quarters =
        |a, b| _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b));
    let (r0, r1) = (quarters(p[0], p[1]), quarters(p[2], p[3]));
    // 4 -> 2: 128-bit lane k holds two partials of vector k, then two of k + 4.
    let t = _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(r0, r1), _mm512_shuffle_ps::<0b11_01_11_01>(r0, r1));
    // 2 -> 1: lane 4k holds vector k's sum and lane 4k + 2 vector k + 4's.
    let s = _mm512_add_ps(t, _mm512_shuffle_ps::<0b10_11_00_01>(t, t));
    let order = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps256(_mm512_permutexvar_ps(order, s)));
    out
}

/// The lane sums of eight vectors, in order ([`hsum512x8`]'s AVX2 twin):
/// pairwise horizontal adds leave vector k's two 128-bit halves' sums in
/// lane k of each half, which one cross-half add completes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum256x8(v: [std::arch::x86_64::__m256; 8]) -> [f32; 8] {
    use std::arch::x86_64::*;
    let h = |a, b, c, d| _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    let (lo, hi) = (h(v[0], v[1], v[2], v[3]), h(v[4], v[5], v[6], v[7]));
    let s = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(lo, hi), _mm256_permute2f128_ps::<0x31>(lo, hi));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{available, Level};
    use std::arch::x86_64::*;

    /// Whole-number lanes, so every order of summation gives the same sums:
    /// each tree equals its one-vector twin exactly, lane for lane.
    fn lanes(seed: u64, n: usize) -> Vec<f32> {
        let mut next = crate::act::uniform(seed);
        (0..n).map(|_| (1000.0 * next()).round()).collect()
    }

    #[test]
    fn eight_sums_at_once_equal_one_at_a_time() {
        let levels = available();
        for seed in 1..20 {
            if levels.contains(&Level::Avx2) {
                let x = lanes(seed, 64);
                // SAFETY: the CPU runs AVX2 + FMA + F16C (the level is available).
                unsafe {
                    let v: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(x[8 * i..].as_ptr()));
                    let want = v.map(|v| crate::simd::float_dot::x86::hsum(v));
                    assert_eq!(hsum256x8(v), want, "avx2, seed {seed}");
                }
            }
            if levels.contains(&Level::Avx512) {
                let x = lanes(seed, 128);
                // SAFETY: the CPU runs the AVX-512 level's features.
                unsafe {
                    let v: [__m512; 8] = std::array::from_fn(|i| _mm512_loadu_ps(x[16 * i..].as_ptr()));
                    let want = v.map(|v| hsum512(v));
                    assert_eq!(hsum512x8(v), want, "avx512, seed {seed}");
                }
            }
        }
    }
}

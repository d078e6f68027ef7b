//! Fast kernels: explicit SIMD chosen at run time, each with a scalar twin.
//!
//! Every kernel here takes a [`Level`] and has a portable scalar version
//! that computes the same thing in the same order of blocks; tests run every
//! level this CPU supports against the scalar twin and the scalar twin
//! against the reference kernels in [`crate::linear`].
//!
//! Quantized weights (ggml blocks, MLX affine) are multiplied with
//! activations quantized to int8 once per matmul ([`act`]), so the inner
//! loops are integer dot products on the stored bytes, as llama.cpp does;
//! float and FP8 weights keep f32 activations.
//!
//! Levels: [`Level::Avx2`] and [`Level::Avx512`] on x86-64, [`Level::Neon`]
//! on AArch64 (its code lives in `neon/` and `ggml_dot/neon.rs`, compiled
//! only for AArch64, and is tested under qemu by `tools/test-aarch64.sh`).
//! The AVX-512 kernels are tested natively where the CPU has them, and under
//! an emulated CPU by `tools/test-avx512.sh` where it does not (the 2-core
//! development VM has been a Zen 3, a Zen 4 or a Zen 5).

pub mod act;
pub mod affine_dot;
pub mod affine_multi;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub(crate) mod columns;
pub(crate) mod expf;
pub mod float_dot;
pub mod fp8_dot;
pub mod gdn;
#[cfg(target_arch = "x86_64")]
mod gdn_chunk;
pub mod gemm;
pub mod ggml_dot;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod scratch;
mod tile;

use std::sync::OnceLock;

/// How far ahead of the row being multiplied the row loop keeps software
/// prefetches (bytes of the weight stream, whatever the row length, so
/// short rows such as a down projection's get the same lead as long ones).
/// Measured with `examples/gemv_ggml.rs` (256 MB, 1 thread, quiet 16-core
/// Xeon host): no lead 7-9 GB/s, 1-2 KB 10-12, 4-8 KB 12-14 (at or above a
/// plain streaming read), 16 KB no better. The MLX affine kernels and the
/// many-token kernels' first pass stream the same rows and use the same
/// lead, as do the ggml gemv kernels except on AMD with AVX-512
/// ([`ggml_gemv_lead`]).
#[cfg(target_arch = "x86_64")]
pub(crate) const PREFETCH_BYTES: usize = 4096;

/// The lead of the single-token ggml row loops (`ggml_dot/avx2.rs`,
/// `ggml_dot/avx512.rs`): [`PREFETCH_BYTES`], except on AMD CPUs with
/// AVX-512 of family 25 (Zen 4; the Zen 3 was not measured), where it is 1
/// KiB, and on AMD's family 26 (Zen 5) and later, where it is 8 KiB. On the
/// Zen 5 VM (`gemv_ggml 512`, 1 thread, 1 KiB against 8 KiB) Q8_0 read 31.5
/// -> 39.4 GB/s, Q4_K 31.6 -> 41.1, Q6_K 34.0 -> 41.7 (a plain streaming
/// read beside them 32.9-34.4); with `--cols 8192` 23.2 -> 27.9, 29.2 ->
/// 35.6 and 26.9 -> 35.1. `qmoe bench` decode, 2 threads, alternating: 1,
/// 4, 8, 16 and 32 KiB on Q4_K_M 26.4-27.2, 29.5-30.4, 29.9-31.5, 31.6-31.9
/// and 30.9-31.3 tok/s, on Q8_0 (1, 4, 8, 16) 17.6-17.8, 19.6, 20.0-20.3
/// and 19.8; at 1 thread Q4_K_M 14.7-15.4 -> 18.3-18.5 (1 -> 8 KiB). On the
/// Zen 4 VM (`examples/gemv_ggml.rs 512`, 1 thread, weights
/// from DRAM, two alternations of 0 / 1 / 2 / 4 KiB) the 4 KiB lead cost
/// Q4_K 12-15% at AVX-512 (18.2-18.7 GB/s at 1 KiB, 16.0-16.5 at 4 KiB) and
/// Q6_K 4-10% (22.0-23.8 against 21.3-21.4), Q8_0 the same either way; with
/// no lead Q4_K was as fast and Q6_K less steady. `qmoe bench` Q4_K_M decode,
/// 4 KiB against 1 KiB alternating, three pairs: 1 thread 8.51 / 9.42 / 7.37
/// -> 8.71 / 9.92 / 9.44 tok/s, 2 threads 15.82 / 15.44 / 15.20 -> 16.57 /
/// 15.64 / 15.40. The MLX affine gemv measured no different (kept at 4 KiB).
///
/// Before row `r` the loops prefetch up to the row's end plus the lead, but
/// for a row longer than three leads only up to its start plus the lead:
/// the hardware prefetcher carries a long row on, and a whole long row's
/// lines in one burst at its start cost rows of 4096 and 8192 columns (the
/// dense models' down projections) much of their DRAM rate. `gemv_ggml 512`
/// `--cols 8192` (Zen 4, 1 thread, two or three runs each, lead counted
/// from the row's start against the row's end): Q4_K 17.7-18.3 -> 23.5-23.7
/// GB/s, Q6_K 15.4-16.3 -> 22.5-22.7, Q8_0 14.3-16.0 -> 16.6; with 4096
/// Q8_0 20.2-20.8 -> 24.5-25.4, Q6_K 20.5-20.7 -> 23.6-24.5, Q4_K about the
/// same. Rows of 2048 columns (1.1-2.2 KB) keep the whole-row prefetch:
/// counting from their start cost Q6_K about 6% there (means of five
/// alternations, 23.7 against 22.2), and capping the burst at 1.5 KB cost
/// Q8_0 about 8%.
/// How far past a row's start the single-token row loops keep their
/// prefetches before multiplying it, for rows of `row_bytes`:
/// [`ggml_gemv_lead`] past the row's end, or past its start for a row
/// longer than three leads (why: see there).
#[cfg(target_arch = "x86_64")]
pub(crate) fn gemv_reach(row_bytes: usize) -> usize {
    let lead = ggml_gemv_lead();
    if row_bytes > 3 * lead {
        lead
    } else {
        row_bytes + lead
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn ggml_gemv_lead() -> usize {
    /// AMD's CPU family of Zen 5 (26; Zen 3 and Zen 4 are 25).
    const ZEN5: u32 = 0x1A;
    static LEAD: OnceLock<usize> = OnceLock::new();
    *LEAD.get_or_init(|| {
        // SAFETY: CPUID leaf 0 (the vendor string) exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        // "AuthenticAMD"
        let amd = (id.ebx, id.edx, id.ecx) == (0x6874_7541, 0x6974_6E65, 0x444D_4163);
        // SAFETY: as above, leaf 1 (the family) exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let eax = unsafe { std::arch::x86_64::__cpuid(1) }.eax;
        let base = (eax >> 8) & 0xF;
        let family = if base == 0xF { base + ((eax >> 20) & 0xFF) } else { base };
        match (amd, family) {
            (true, ZEN5..) => 8192,
            (true, _) if std::arch::is_x86_feature_detected!("avx512f") => 1024,
            _ => PREFETCH_BYTES,
        }
    })
}

/// The activation form a fast kernel consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Plain f32 (float and FP8 weights).
    F32,
    /// [`act::BlockQ8K`] blocks of 256 (k-quants, IQ4_XS).
    Q8K,
    /// [`act::BlockQ8x32`] blocks of 32 (Q8_0, Q4_0, ..., MLX affine).
    Q8x32,
}

/// Instruction-set level a kernel runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Portable Rust: the twin every other level is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell / Zen and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI, on top of [`Level::Avx2`] (Ice
    /// Lake, Sapphire Rapids, Zen 4 and later): the int8 kernels use
    /// `vpdpbusd`; every kernel without an AVX-512 form runs its AVX2 one.
    Avx512,
    /// AArch64 baseline NEON (every ARMv8-A core): int8 gemv for the common
    /// ggml and MLX affine types, float gemv, the activation quantizers; the
    /// other kernels run their scalar twin at this level.
    Neon,
}

impl Level {
    /// Whether this level's CPU runs the AVX2 kernels (AVX-512 CPUs do: a
    /// kernel with no AVX-512 form runs its AVX2 form there).
    pub fn runs_avx2(self) -> bool {
        matches!(self, Level::Avx2 | Level::Avx512)
    }
}

/// The best level this CPU runs, detected once. `QMOE_SIMD` names a lower
/// one (`scalar`, `avx2`, `avx512`, `neon`; ignored if this CPU lacks it),
/// for comparisons and bug hunts.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let levels = available();
        let named = std::env::var("QMOE_SIMD")
            .ok()
            .and_then(|v| levels.iter().copied().find(|l| format!("{l:?}").eq_ignore_ascii_case(&v)));
        named.unwrap_or(*levels.last().unwrap_or(&Level::Scalar))
    })
}

/// Every level this CPU can run, scalar first (tests iterate over these).
pub fn available() -> Vec<Level> {
    let mut v = vec![Level::Scalar];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        v.push(Level::Avx2);
        if avx512_detected() {
            v.push(Level::Avx512);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if neon::available() {
        v.push(Level::Neon);
    }
    v
}

/// AVX-512 F/BW/VL + VNNI, the set [`Level::Avx512`] kernels are compiled
/// for (checked only once AVX2/FMA/F16C are known present).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_detected() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel tests iterate over [`available`]: on AArch64 it must hold
    /// the NEON level, or those tests would check nothing but the twin.
    #[test]
    #[cfg(target_arch = "aarch64")]
    fn neon_is_available_on_aarch64() {
        assert_eq!(available(), vec![Level::Scalar, Level::Neon]);
    }

    #[test]
    fn scalar_comes_first_and_levels_are_of_this_architecture() {
        let v = available();
        assert_eq!(v[0], Level::Scalar);
        for l in &v[1..] {
            match l {
                Level::Scalar => panic!("scalar listed twice"),
                Level::Avx2 | Level::Avx512 => assert_eq!(std::env::consts::ARCH, "x86_64"),
                Level::Neon => assert_eq!(std::env::consts::ARCH, "aarch64"),
            }
        }
    }
}

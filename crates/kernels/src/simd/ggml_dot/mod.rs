//! Matrix-vector products of ggml (GGUF) weight blocks with int8 activations.
//!
//! `y[r] = Σ_c w[r][c] · x[c]` where row `r` is the stored blocks of a ggml
//! type, read in place (no repacking), and `x` was quantized once per matmul
//! to [`BlockQ8K`] (k-quants, IQ4_XS: 256 values, per-16 code sums) or
//! [`BlockQ8x32`] (the 32-wide types: 32 values and their exact sum).
//!
//! Each weight block's inner sums are integers (weight codes times
//! activation codes), scaled once per (sub-)block in f32:
//! * symmetric types (Q8_0, Q4_0, Q5_0, IQ4_NL, IQ4_XS): `d_w · d_x · Σ q_w q_x`;
//! * Q4_1 / Q5_1 (`d q + m`): `d_w · d_x · Σ q_w q_x + m · sum`, the offset
//!   taken against the *exact* f32 sum of the block's inputs, as llama.cpp
//!   takes it from `block_q8_1`'s `s`;
//! * k-quants with a min (Q2_K, Q4_K, Q5_K): `d_x (d Σ_j sc_j S_j - dmin Σ_j m_j B_j)`
//!   with `S_j` the code dot of sub-block `j` and `B_j` its activation code
//!   sum from `bsums`;
//! * k-quants with a code offset (Q3_K: `q - 4`, Q6_K: `q - 32`): the codes
//!   are multiplied unsigned and the offset subtracted through `bsums`.
//!
//! Every level computes the same integer sums per (sub-)block; only the f32
//! accumulation order differs, so levels agree to float rounding (the NEON
//! level keeps the twin's order and returns its bits).
//!
//! Levels: the scalar twin (`scalar.rs`), AVX2 (`avx2.rs`, every type),
//! AVX-512 (`avx512.rs`: Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, IQ4_XS with VNNI
//! `vpdpbusd` on 512-bit registers; Q2_K, Q3_K, Q4_1, Q5_0, Q5_1, IQ4_NL run
//! the AVX2 kernel at [`Level::Avx512`]), NEON (`neon.rs`). `vpdpbusd`
//! multiplies unsigned weight bytes by signed activation codes, so the
//! AVX-512 kernels store signed weights with an offset (Q8_0 `w + 128`,
//! Q4_0 the raw nibble, IQ4_XS the level + 128) and subtract `offset · Σ x`
//! (from `bsums`, or a second `vpdpbusd` for the 32-wide blocks, which
//! carry no code sum): the same integer sums as the twin.
//!
//! Invariant the SIMD code relies on: activation codes lie in `-127..=127`
//! (both quantizers in [`crate::simd::act`] guarantee it), so `|w| ≤ 128`
//! times `|x| ≤ 127`, summed in pairs, never saturates `maddubs`' i16.

/// The single-token row loop of the x86 levels, expanded inside each
/// level's `#[target_feature]` function so that the per-type dot (`$dot`,
/// `#[inline]` with the same features, called with the row, `x` and any
/// `$arg`) inlines into it. Before row `r` it prefetches, a cache line at a
/// time, the weight bytes up to [`crate::simd::gemv_reach`] past the row's
/// start (never past the matrix).
#[cfg(target_arch = "x86_64")]
macro_rules! rows {
    ($w:expr, $x:expr, $y:expr, $ts:expr, $dot:expr $(, $arg:expr)*) => {{
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (w, x, y): (&[u8], _, &mut [f32]) = ($w, $x, $y);
        let row_bytes = x.len() * $ts;
        let base = w.as_ptr();
        let mut fetched = 0;
        let reach = crate::simd::gemv_reach(row_bytes);
        for (r, yr) in y.iter_mut().enumerate() {
            let until = (r * row_bytes + reach).min(w.len());
            while fetched < until {
                _mm_prefetch::<_MM_HINT_T0>(base.add(fetched) as *const i8);
                fetched += 64;
            }
            *yr = $dot(base.add(r * row_bytes), x $(, $arg)*);
        }
    }};
}

/// The type -> (block bytes, dot kernel) tables of the single-token gemv,
/// expanded inside each SIMD level's `#[target_feature]` function so that
/// its row loop and dot kernels inline there. Item names resolve where the
/// macro is expanded: each level supplies its own `dot_*` (and the NEON
/// level its own `rows!`). IQ4_XS is each level's own arm, after the
/// table's arguments: the x86 kernels take laid-out activations.
macro_rules! gemv_table {
    (q8k: $ty:expr, $w:expr, $x:expr, $y:expr, $($own:pat => $arm:expr),+) => {
        match $ty {
            $($own => $arm,)+
            GgmlType::Q2K => rows!($w, $x, $y, 84, dot_q2_k),
            GgmlType::Q3K => rows!($w, $x, $y, 110, dot_q3_k),
            GgmlType::Q4K => rows!($w, $x, $y, 144, dot_q4_k),
            GgmlType::Q5K => rows!($w, $x, $y, 176, dot_q5_k),
            GgmlType::Q6K => rows!($w, $x, $y, 210, dot_q6_k),
            ty => unreachable!("gemv_q8k: {ty} (checked by the caller)"),
        }
    };
    (q8x32: $ty:expr, $w:expr, $x:expr, $y:expr) => {
        match $ty {
            GgmlType::Q8_0 => rows!($w, $x, $y, 34, dot_q8_0),
            GgmlType::Q4_0 => rows!($w, $x, $y, 18, dot_q4_0),
            GgmlType::Q4_1 => rows!($w, $x, $y, 20, dot_q4_1),
            GgmlType::Q5_0 => rows!($w, $x, $y, 22, dot_q5_0),
            GgmlType::Q5_1 => rows!($w, $x, $y, 24, dot_q5_1),
            GgmlType::IQ4NL => rows!($w, $x, $y, 18, dot_iq4_nl),
            ty => unreachable!("gemv_q8x32: {ty} (checked by the caller)"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod group32;
pub mod multi;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod xiq4;

use qmoe_core::GgmlType;

use crate::simd::act::{BlockQ8K, BlockQ8x32};
use crate::simd::{ActKind, Level};

/// Which activation blocks the fast kernel for `ty` consumes; `None` for the
/// float types (they take f32 activations on another path).
pub fn act_kind(ty: GgmlType) -> Option<ActKind> {
    use GgmlType::*;
    match ty {
        Q2K | Q3K | Q4K | Q5K | Q6K | IQ4XS => Some(ActKind::Q8K),
        Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | IQ4NL => Some(ActKind::Q8x32),
        F32 | F16 | BF16 => None,
    }
}

/// `y[r] = dot(row r, x)` for `y.len()` rows stored contiguously in `w`,
/// each `x.len() * 256` values of `ty` (a [`ActKind::Q8K`] type).
///
/// # Panics
/// If `ty` does not take Q8K activations or `w` is not exactly the rows'
/// bytes (the dispatcher validates shapes; this guards memory safety).
pub fn gemv_q8k(level: Level, ty: GgmlType, w: &[u8], x: &[BlockQ8K], y: &mut [f32]) {
    gemv_q8k_named(level, ty, w, x, y, 0)
}

/// [`gemv_q8k`] with the matmul driver's name for `x` (`acts_id`, non-zero,
/// one value per input; 0: unnamed). The AVX-512 Q4_K / Q5_K kernel lays
/// `x` out before its rows; with a name, a thread keeps that layout for its
/// later calls on the same input (the other row tasks of the product, the
/// products that share the input) instead of laying it out again.
///
/// # Panics
/// As [`gemv_q8k`].
pub fn gemv_q8k_named(level: Level, ty: GgmlType, w: &[u8], x: &[BlockQ8K], y: &mut [f32], acts_id: u64) {
    // Only the x86 kernels lay `x` out.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = acts_id;
    assert_eq!(act_kind(ty), Some(ActKind::Q8K), "gemv_q8k: {ty} does not take Q8K activations");
    check_bytes(ty, w.len(), x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if avx512_usable(level) && avx512::has_kernel(ty) {
        // SAFETY: the CPU has AVX-512 F/BW/VL + VNNI besides AVX2, FMA and
        // F16C (checked just above), `ty` has a kernel there, and `w` holds
        // exactly `y.len()` rows of `x.len()` blocks of `ty`.
        unsafe { avx512::gemv_q8k(ty, w, x, y, acts_id) };
        return;
    }
    if avx2_usable(level) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above), and
        // `w` holds exactly `y.len()` rows of `x.len()` blocks of `ty`.
        unsafe {
            avx2::gemv_q8k(ty, w, x, y, acts_id)
        };
        return;
    }
    if neon_usable(level) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the CPU has NEON (checked just above), and `w` holds
        // exactly `y.len()` rows of `x.len()` blocks of `ty`.
        unsafe {
            neon::gemv_q8k(ty, w, x, y)
        };
        return;
    }
    scalar::gemv_q8k(ty, w, x, y);
}

/// `y[r] = dot(row r, x)` for the 32-wide types: each row `x.len() * 32`
/// values of `ty` (a [`ActKind::Q8x32`] type).
///
/// # Panics
/// As [`gemv_q8k`].
pub fn gemv_q8x32(level: Level, ty: GgmlType, w: &[u8], x: &[BlockQ8x32], y: &mut [f32]) {
    gemv_q8x32_named(level, ty, w, x, y, 0)
}

/// [`gemv_q8x32`] with the driver's name for `x`, as [`gemv_q8k_named`]
/// (for the x86 32-value kernels' layout, `group32`).
///
/// # Panics
/// As [`gemv_q8k`].
pub fn gemv_q8x32_named(level: Level, ty: GgmlType, w: &[u8], x: &[BlockQ8x32], y: &mut [f32], acts_id: u64) {
    // Only the AVX-512 kernels lay `x` out.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = acts_id;
    assert_eq!(act_kind(ty), Some(ActKind::Q8x32), "gemv_q8x32: {ty} does not take Q8x32 activations");
    check_bytes(ty, w.len(), x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if avx512_usable(level) && avx512::has_kernel(ty) {
        // SAFETY: as in `gemv_q8k`.
        unsafe { avx512::gemv_q8x32(ty, w, x, y, acts_id) };
        return;
    }
    if avx2_usable(level) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gemv_q8k`.
        unsafe {
            avx2::gemv_q8x32(ty, w, x, y, acts_id)
        };
        return;
    }
    if neon_usable(level) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        unsafe {
            neon::gemv_q8x32(ty, w, x, y)
        };
        return;
    }
    scalar::gemv_q8x32(ty, w, x, y);
}

/// `w` must be exactly `rows` rows of `blocks` blocks of `ty`.
fn check_bytes(ty: GgmlType, got: usize, blocks: usize, rows: usize) {
    let want = blocks.checked_mul(ty.type_size()).and_then(|b| b.checked_mul(rows));
    assert_eq!(Some(got), want, "ggml gemv {ty}: {got} weight bytes for {rows} rows of {blocks} blocks");
}

/// Whether `level` asks for AVX2 (or AVX-512, whose CPUs run the AVX2
/// kernels) and this CPU really runs it (a caller may pass any level;
/// running AVX2 code on a CPU without it would be unsound).
fn avx2_usable(level: Level) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level.runs_avx2() {
        assert!(
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c"),
            "Level::Avx2 requested on a CPU without AVX2/FMA/F16C"
        );
        return true;
    }
    let _ = level;
    false
}

/// Whether `level` asks for AVX-512 and this CPU really runs it (the
/// AVX-512 kernels are compiled for F/BW/VL + VNNI, besides AVX2/FMA/F16C).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // x86-64 only
fn avx512_usable(level: Level) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        assert!(
            avx2_usable(level) && crate::simd::avx512_detected(),
            "Level::Avx512 requested on a CPU without AVX-512 F/BW/VL + VNNI"
        );
        return true;
    }
    let _ = level;
    false
}

/// Whether `level` asks for NEON and this CPU really runs it (on other
/// architectures `Level::Neon` runs the scalar twin).
fn neon_usable(level: Level) -> bool {
    #[cfg(target_arch = "aarch64")]
    if level == Level::Neon {
        assert!(crate::simd::neon::available(), "Level::Neon requested on a CPU without NEON");
        return true;
    }
    let _ = level;
    false
}

/// Q4_K / Q5_K's eight 6-bit scales and mins (bytes `4..16` of a block), as
/// two little-endian u64 of eight u8 each, unpacked a word at a time. Gives
/// the same values as [`crate::ggml::scale_min_k4`] (a test checks all
/// sub-blocks on random bytes); used by the SIMD levels, where the byte-wise
/// unpacking would cost as much as the block's dot product.
#[inline(always)]
pub(crate) fn scales_mins_k4(s: &[u8; 12]) -> (u64, u64) {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let a2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    // Sub-blocks 0..4: low 6 bits of bytes 0..4 (scales) and 4..8 (mins).
    // Sub-blocks 4..8: nibbles of bytes 8..12, topped by the spare 2 bits.
    let sc_hi = (a2 & LOW4) | ((a0 >> 6) & TOP2) << 4;
    let m_hi = ((a2 >> 4) & LOW4) | ((a1 >> 6) & TOP2) << 4;
    let scales = (a0 & LOW6) as u64 | (sc_hi as u64) << 32;
    let mins = (a1 & LOW6) as u64 | (m_hi as u64) << 32;
    (scales, mins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_unpacking_matches_scale_min_k4() {
        let mut state = 0x1234_5678_9ABC_DEF0u64;
        for _ in 0..2000 {
            let mut s = [0u8; 12];
            for b in &mut s {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (state >> 56) as u8;
            }
            let (sc, m) = scales_mins_k4(&s);
            for j in 0..8 {
                let want = crate::ggml::scale_min_k4(j, &s);
                assert_eq!(((sc >> (8 * j)) as u8, (m >> (8 * j)) as u8), want, "sub-block {j} of {s:?}");
            }
        }
    }

    #[test]
    fn q3_k_word_unpacking_matches_the_byte_rule() {
        let mut state = 0x0DDB_1A5E_5BAD_5EEDu64;
        for _ in 0..2000 {
            let mut s = [0u8; 12];
            for b in &mut s {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (state >> 56) as u8;
            }
            let got = scalar::q3_k_scales(&s);
            for (g, &v) in got.iter().enumerate() {
                // The decoder's rule (crate::ggml::decode_q3_k).
                let low = if g < 8 { s[g] & 0xF } else { s[g - 8] >> 4 };
                let high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
                assert_eq!(v as i32, (low | high << 4) as i32 - 32, "group {g} of {s:?}");
            }
        }
    }

    #[test]
    fn every_type_has_a_kind_or_is_float() {
        for ty in GgmlType::ALL {
            let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
            assert_eq!(act_kind(ty).is_none(), float, "{ty}");
            if let Some(k) = act_kind(ty) {
                assert_eq!(k == ActKind::Q8K, ty.block_size() == 256, "{ty}");
            }
        }
    }
}

//! The x86 IQ4_XS gemv kernels' activation layout: each Q8K block's codes
//! in the order of IQ4_XS's stored nibbles, so that the codes of a 32- or
//! 64-byte load of a row's `qs` meet their activations in one load too.
//!
//! Sub-block `j`'s 16 bytes (`qs[16j..]`) hold values 0..16 in their low
//! nibbles and 16..32 in their high. `lo` puts values 0..16 of each
//! sub-block one after the other, `hi` values 16..32: byte `16j + l` of
//! `lo` is value `32j + l`, of `hi` value `32j + 16 + l`. Masked, any run of
//! `qs` lines up with the same run of `lo`, and shifted down a nibble with
//! the same run of `hi`.

use std::arch::x86_64::__m512i;

use crate::simd::act::BlockQ8K;
use crate::simd::scratch::Tokens;

/// One Q8K block's codes in stored-nibble order: `lo[h]` 128-bit lane `j`
/// holds values 0..16 of sub-block `4h + j`, `hi[h]` values 16..32.
#[repr(C, align(64))]
pub(super) struct XIQ4 {
    pub(super) lo: [__m512i; 2],
    pub(super) hi: [__m512i; 2],
}

/// `x` as [`XIQ4`]s in `tokens`: laid out once per thread and input when
/// `acts_id` (not 0) names the input, else for this call (as
/// `group32::laid_out` does for the 32-value types).
pub(super) fn laid_out(tokens: &mut Tokens, x: &[BlockQ8K], acts_id: u64) -> *const XIQ4 {
    // SAFETY (closure): `tokens` gives room for `x.len()` values.
    tokens.group(acts_id, (1, x.len()), (0, 1), |_, p| unsafe { prep(x, p) })
}

/// `x` as [`XIQ4`]s at `dst`.
///
/// # Safety
/// `dst` has room for `x.len()` values.
unsafe fn prep(x: &[BlockQ8K], dst: *mut XIQ4) {
    // The same bytes as plain 16-byte runs: `lo[0], lo[1], hi[0], hi[1]`.
    let p = dst as *mut [[[i8; 16]; 4]; 4];
    for (k, xb) in x.iter().enumerate() {
        let mut v = [[[0i8; 16]; 4]; 4];
        for (r, reg) in v.iter_mut().enumerate() {
            let (half, h) = (r / 2, r % 2);
            for (j, run) in reg.iter_mut().enumerate() {
                let at = 32 * (4 * h + j) + 16 * half;
                run.copy_from_slice(&xb.qs[at..at + 16]);
            }
        }
        // SAFETY: `p` has room for `x.len()` values.
        unsafe { p.add(k).write(v) };
    }
}

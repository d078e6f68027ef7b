//! AArch64 only (run under qemu by `tools/test-aarch64.sh`): the NEON level
//! is present, and its integer kernels return the scalar twin's bits, not
//! merely values within the shared tolerance. They keep the twin's f32
//! order around exact integer block sums, so any difference is a bug (a
//! wrong bit that moves a result by less than the tolerance included).

#![cfg(target_arch = "aarch64")]

mod common;

use common::{f16_fields, Rng};
use half::f16;
use qmoe_core::dtype::DType;
use qmoe_core::GgmlType;
use qmoe_kernels::linear::MatRef;
use qmoe_kernels::simd::act::{quantize_q8k_at, quantize_q8x32_at, BlockQ8K, BlockQ8x32};
use qmoe_kernels::simd::affine_dot::gemv_affine;
use qmoe_kernels::simd::ggml_dot::{act_kind, gemv_q8k, gemv_q8x32};
use qmoe_kernels::simd::{available, level, ActKind, Level};

#[test]
fn neon_is_the_detected_level() {
    assert!(available().contains(&Level::Neon));
    if std::env::var_os("QMOE_SIMD").is_none() {
        assert_eq!(level(), Level::Neon);
    }
}

fn bits(y: &[f32]) -> Vec<u32> {
    y.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn ggml_gemv_returns_the_twins_bits() {
    let mut rng = Rng(0xA64_0001);
    for ty in GgmlType::ALL.into_iter().filter(|&t| act_kind(t).is_some()) {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        for (rows, blocks) in [(1, 1), (5, 3), (3, 8)] {
            let mut w: Vec<u8> = (0..rows * blocks * ts).map(|_| rng.next_u64() as u8).collect();
            for blk in w.chunks_exact_mut(ts) {
                for &at in f16_fields(ty) {
                    let v = f16::from_f32(rng.uniform() * 0.05);
                    blk[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            let x = rng.vec(blocks * bs, 2.0);
            let (mut want, mut got) = (vec![0.0f32; rows], vec![0.0f32; rows]);
            match act_kind(ty).unwrap() {
                ActKind::Q8K => {
                    let mut xq = vec![BlockQ8K::default(); blocks];
                    quantize_q8k_at(Level::Scalar, &x, &mut xq);
                    gemv_q8k(Level::Scalar, ty, &w, &xq, &mut want);
                    gemv_q8k(Level::Neon, ty, &w, &xq, &mut got);
                }
                _ => {
                    let mut xq = vec![BlockQ8x32::default(); blocks * bs / 32];
                    quantize_q8x32_at(Level::Scalar, &x, &mut xq);
                    gemv_q8x32(Level::Scalar, ty, &w, &xq, &mut want);
                    gemv_q8x32(Level::Neon, ty, &w, &xq, &mut got);
                }
            }
            assert_eq!(bits(&got), bits(&want), "{ty} {rows}x{blocks}: {got:?} vs {want:?}");
        }
    }
}

/// `v` as little-endian `dt` bytes.
fn store(dt: DType, v: &[f32]) -> Vec<u8> {
    match dt {
        DType::F32 => v.iter().flat_map(|a| a.to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|&a| f16::from_f32(a).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&a| half::bf16::from_f32(a).to_le_bytes()).collect(),
    }
}

#[test]
fn affine_gemv_returns_the_twins_bits() {
    let mut rng = Rng(0xA64_0002);
    // Every width: 4 and 8 bits run NEON code, the others the twin.
    for b in [2u32, 3, 4, 5, 6, 8] {
        for group in [32usize, 64, 128] {
            for dt in [DType::F32, DType::F16, DType::BF16] {
                let (rows, cols) = (7, 256);
                let words: Vec<u8> = (0..rows * cols * b as usize / 8).map(|_| rng.next_u64() as u8).collect();
                let n = rows * cols / group;
                let s: Vec<f32> = (0..n).map(|_| 0.01 + 0.01 * rng.uniform()).collect();
                let bias: Vec<f32> =
                    s.iter().map(|&s| -s * (1 << (b - 1)) as f32 * (1.0 + 0.2 * rng.uniform())).collect();
                let (sb, bb) = (store(dt, &s), store(dt, &bias));
                let w = MatRef::affine(rows, cols, &words, b, group, &sb, &bb, dt).unwrap();
                let mut xq = vec![BlockQ8x32::default(); cols / 32];
                quantize_q8x32_at(Level::Scalar, &rng.vec(cols, 1.5), &mut xq);
                let (mut want, mut got) = (vec![0.0f32; 4], vec![0.0f32; 4]);
                gemv_affine(Level::Scalar, &w, 2..6, &xq, &mut want);
                gemv_affine(Level::Neon, &w, 2..6, &xq, &mut got);
                assert_eq!(bits(&got), bits(&want), "{b}-bit g{group} {dt}: {got:?} vs {want:?}");
            }
        }
    }
}

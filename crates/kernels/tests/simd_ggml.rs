//! The int8 ggml gemv kernels (`simd::ggml_dot`) for every block type and
//! every level this CPU runs:
//! (a) each level against the scalar twin, over a grid of shapes, on blocks
//!     from the reference quantizers and on raw random bytes (every bit
//!     pattern, sane f16 scales), with ordinary and full-scale (±127)
//!     activation codes (the latter would expose i16 saturation);
//! (b) the scalar twin against "decode the weight row with `crate::ggml`, dot
//!     it with the dequantised activations `d * q`" in f64: the same math up to
//!     f32 rounding, so any misplaced bit, scale or offset shows;
//! (c) end to end against the f32 activations before quantization: the error
//!     stays within the int8 quantization bound `Σ |w - m| · |d_x| / 2`.
//! Tolerances for (a), (b): 1e-5 of `Σ |w| |x̂|` per row (f32 rounding of a
//! few operations per block is ~1e-7 of that).

mod common;

use common::{f16_fields, Rng};
use half::f16;
use qmoe_core::GgmlType;
use qmoe_kernels::ggml::{decode_blocks, quantizer};
use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
use qmoe_kernels::simd::ggml_dot::{act_kind, gemv_q8k, gemv_q8x32};
use qmoe_kernels::simd::{available, ActKind, Level};

const ROWS: [usize; 3] = [1, 3, 17];
const BLOCKS: [usize; 3] = [1, 2, 7];

fn types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL.into_iter().filter(|&t| act_kind(t).is_some())
}

/// The offset `m` of a `d q + m` block (Q4_1, Q5_1), which the kernels take
/// against the exact activation sum.
fn offset(ty: GgmlType, block: &[u8]) -> f64 {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => f16::from_le_bytes([block[2], block[3]]).to_f64(),
        _ => 0.0,
    }
}

/// How a weight matrix is made.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Weights {
    /// The reference quantizer of random floats (types that have one).
    Quantized,
    /// Random bytes, f16 scales overwritten with sane random values.
    RawBytes,
}

fn weights(ty: GgmlType, how: Weights, rows: usize, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let mut w = vec![0u8; rows * blocks * ts];
    match (how, quantizer(ty)) {
        (Weights::Quantized, Some(q)) => q(&rng.vec(rows * blocks * bs, 1.0), &mut w),
        _ => {
            w.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
            for blk in w.chunks_exact_mut(ts) {
                for &at in f16_fields(ty) {
                    let v = rng.uniform() * 0.05;
                    blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
                }
            }
        }
    }
    w
}

/// Activations in both forms: the f32 values and their int8 blocks.
enum Acts {
    K(Vec<BlockQ8K>),
    X(Vec<BlockQ8x32>),
}

impl Acts {
    /// Quantizes `x` with the block form `ty` takes.
    fn of(ty: GgmlType, x: &[f32]) -> Acts {
        match act_kind(ty).unwrap() {
            ActKind::Q8K => {
                let mut b = vec![BlockQ8K::default(); x.len() / 256];
                quantize_q8k(x, &mut b);
                Acts::K(b)
            }
            _ => {
                let mut b = vec![BlockQ8x32::default(); x.len() / 32];
                quantize_q8x32(x, &mut b);
                Acts::X(b)
            }
        }
    }

    /// Full-scale codes (random ±127) with a small random scale: every
    /// product as large as the codes allow.
    fn full_scale(ty: GgmlType, n: usize, rng: &mut Rng) -> Acts {
        let mut code = || if rng.next_u64() & 1 == 0 { 127i8 } else { -127 };
        match act_kind(ty).unwrap() {
            ActKind::Q8K => Acts::K(
                (0..n / 256)
                    .map(|_| {
                        let mut b = BlockQ8K { d: 0.01, ..Default::default() };
                        b.qs.iter_mut().for_each(|q| *q = code());
                        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                            *s = q.iter().map(|&q| q as i16).sum();
                        }
                        b
                    })
                    .collect(),
            ),
            _ => Acts::X(
                (0..n / 32)
                    .map(|_| {
                        let mut b = BlockQ8x32 { d: 0.01, ..Default::default() };
                        b.qs.iter_mut().for_each(|q| *q = code());
                        b.sum = b.qs.iter().map(|&q| q as f32 * 0.01).sum::<f32>() + 0.125;
                        b
                    })
                    .collect(),
            ),
        }
    }

    fn gemv(&self, level: Level, ty: GgmlType, w: &[u8], y: &mut [f32]) {
        match self {
            Acts::K(x) => gemv_q8k(level, ty, w, x, y),
            Acts::X(x) => gemv_q8x32(level, ty, w, x, y),
        }
    }

    /// Value `i` as the kernels see it: `d * q` (f32 product, as exact as
    /// the kernels' use of it), with its block's scale.
    fn dequant(&self) -> Vec<(f64, f64)> {
        match self {
            Acts::K(x) => x.iter().flat_map(|b| b.qs.iter().map(|&q| ((b.d * q as f32) as f64, b.d as f64))).collect(),
            Acts::X(x) => x.iter().flat_map(|b| b.qs.iter().map(|&q| ((b.d * q as f32) as f64, b.d as f64))).collect(),
        }
    }

    /// The exact input sum of 32-value block `b` (Q8x32 only).
    fn sum32(&self, b: usize) -> f64 {
        match self {
            Acts::X(x) => x[b].sum as f64,
            Acts::K(_) => unreachable!(),
        }
    }
}

/// Per row: the reference `Σ w x̂` (plus, for Q4_1 / Q5_1, `m · (sum - Σ x̂)`
/// per block: the kernels use the exact sum) and the scale `Σ |w| |x̂|`.
fn reference(ty: GgmlType, w: &[u8], rows: usize, acts: &Acts) -> Vec<(f64, f64)> {
    let xh = acts.dequant();
    let cols = xh.len();
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let mut wf = vec![0.0f32; cols];
    w.chunks_exact(w.len() / rows)
        .map(|row| {
            decode_blocks(ty, row, &mut wf);
            let (mut dot, mut norm) = (0.0f64, 0.0f64);
            for (&wv, &(xv, _)) in wf.iter().zip(&xh) {
                dot += wv as f64 * xv;
                norm += (wv as f64 * xv).abs();
            }
            for (b, blk) in row.chunks_exact(ts).enumerate() {
                let m = offset(ty, blk);
                if m != 0.0 {
                    let xs: f64 = xh[b * bs..(b + 1) * bs].iter().map(|v| v.0).sum();
                    dot += m * (acts.sum32(b) - xs);
                    norm += (m * acts.sum32(b)).abs();
                }
            }
            (dot, norm)
        })
        .collect()
}

fn run(level: Level, ty: GgmlType, w: &[u8], acts: &Acts, rows: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; rows];
    acts.gemv(level, ty, w, &mut y);
    y
}

fn check_close(what: &str, got: &[f32], want: &[f64], norms: &[f64], rel: f64) {
    for (r, ((&g, &t), &n)) in got.iter().zip(want).zip(norms).enumerate() {
        let tol = rel * n + 1e-30;
        assert!(
            (g as f64 - t).abs() <= tol,
            "{what}, row {r}: got {g}, want {t} (|diff| {:e} > tol {tol:e})",
            (g as f64 - t).abs()
        );
    }
}

/// Every (type, weights kind, activations kind, shape) of the grid.
fn for_grid(f: impl FnMut(GgmlType, &str, &[u8], &Acts, usize)) {
    for_grid_of(types(), &ROWS, &BLOCKS, Rng(0x5EED_66D0), f);
}

/// [`for_grid`] over the given types and shapes.
fn for_grid_of(
    tys: impl IntoIterator<Item = GgmlType>,
    row_counts: &[usize],
    block_counts: &[usize],
    mut rng: Rng,
    mut f: impl FnMut(GgmlType, &str, &[u8], &Acts, usize),
) {
    for ty in tys {
        for how in [Weights::Quantized, Weights::RawBytes] {
            if how == Weights::Quantized && quantizer(ty).is_none() {
                continue;
            }
            for &rows in row_counts {
                for &blocks in block_counts {
                    let w = weights(ty, how, rows, blocks, &mut rng);
                    let cols = blocks * ty.block_size();
                    for full in [false, true] {
                        let acts =
                            if full { Acts::full_scale(ty, cols, &mut rng) } else { Acts::of(ty, &rng.vec(cols, 2.0)) };
                        let what = format!("{ty} {how:?} rows {rows} blocks {blocks} full-scale x {full}");
                        f(ty, &what, &w, &acts, rows);
                    }
                }
            }
        }
    }
}

/// Under an emulated AVX-512 CPU (`tools/test-avx512.sh` sets
/// `QMOE_EXPECT_AVX512=1`) the level must be detected, or the other tests
/// would pass while checking only the AVX2 and scalar kernels.
#[test]
fn avx512_is_available_where_expected() {
    if std::env::var("QMOE_EXPECT_AVX512").is_ok_and(|v| v == "1") {
        assert!(available().contains(&Level::Avx512), "QMOE_EXPECT_AVX512=1 but the CPU runs only {:?}", available());
    }
}

/// Every level this CPU runs gives the scalar twin's products.
fn levels_match_the_twin(ty: GgmlType, what: &str, w: &[u8], acts: &Acts, rows: usize) {
    let want: Vec<f64> = run(Level::Scalar, ty, w, acts, rows).iter().map(|&v| v as f64).collect();
    let norms: Vec<f64> = reference(ty, w, rows, acts).iter().map(|r| r.1).collect();
    for level in available() {
        let got = run(level, ty, w, acts, rows);
        check_close(&format!("{level:?} {what}"), &got, &want, &norms, 1e-5);
    }
}

#[test]
fn every_level_matches_the_scalar_twin() {
    for_grid(levels_match_the_twin);
}

/// The types with AVX-512 gemv kernels (`ggml_dot/avx512.rs`) on a smaller
/// grid, for `tools/test-avx512.sh`, which runs under an emulated CPU where
/// the full grid of every type takes long. 7 blocks take every path of a
/// short group of the 32-wide loop (two pairs a step, a pair, a single
/// block). Q6_K runs its AVX2 gemv at that level (it stays here so the
/// emulated run checks it there too).
#[test]
fn vnni_types_match_the_scalar_twin() {
    use GgmlType::*;
    let tys = [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4NL, Q2K, Q3K, Q4K, Q5K, Q6K, IQ4XS];
    for_grid_of(tys, &[1, 3], &[1, 2, 7], Rng(0xA5_12), levels_match_the_twin);
}

/// The 32-value types' AVX-512 kernel takes sixteen blocks a step: whole
/// steps, a short last one with an even and an odd count of blocks, one
/// block past a step.
#[test]
fn steps_of_sixteen_blocks_match_the_scalar_twin() {
    use GgmlType::*;
    let tys = [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4NL];
    for_grid_of(tys, &[1, 5], &[15, 16, 17, 30, 32, 33, 64], Rng(0x16_B10C), levels_match_the_twin);
}

#[test]
fn scalar_twin_matches_decode_then_f64_dot() {
    for_grid(|ty, what, w, acts, rows| {
        let r = reference(ty, w, rows, acts);
        let (want, norms): (Vec<f64>, Vec<f64>) = r.into_iter().unzip();
        check_close(what, &run(Level::Scalar, ty, w, acts, rows), &want, &norms, 1e-5);
    });
}

#[test]
fn error_against_f32_activations_is_within_the_int8_bound() {
    let mut rng = Rng(0xE2E);
    for ty in types() {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        for (rows, blocks) in [(5, 1), (4, 8)] {
            let cols = blocks * bs;
            let w = weights(ty, Weights::RawBytes, rows, blocks, &mut rng);
            let x = rng.vec(cols, 3.0);
            let acts = Acts::of(ty, &x);
            let xh = acts.dequant();
            let mut wf = vec![0.0f32; cols];
            for level in available() {
                let y = run(level, ty, &w, &acts, rows);
                for (r, row) in w.chunks_exact(blocks * ts).enumerate() {
                    decode_blocks(ty, row, &mut wf);
                    let exact: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    // |x - d q| <= |d| / 2 per value; `m` cancels against the exact sum.
                    let (mut bound, mut norm) = (0.0f64, 0.0f64);
                    for (i, (&wv, &(xv, d))) in wf.iter().zip(&xh).enumerate() {
                        let m = offset(ty, &row[i / bs * ts..]);
                        bound += (wv as f64 - m).abs() * d.abs() * (0.5 + 1e-4);
                        norm += (wv as f64 * xv).abs();
                    }
                    let tol = bound + 1e-5 * norm;
                    let err = (y[r] as f64 - exact).abs();
                    assert!(
                        err <= tol,
                        "{level:?} {ty} {rows}x{blocks} row {r}: {} vs exact {exact}, err {err:e} > {tol:e}",
                        y[r]
                    );
                    // The bound is not vacuous: it is a small part of the row's size.
                    assert!(
                        bound < 0.1 * wf.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum::<f64>(),
                        "{ty}: loose bound"
                    );
                }
            }
        }
    }
}

#[test]
fn shapes_are_checked() {
    for ty in types() {
        let ts = ty.type_size();
        let w = vec![0u8; 2 * ts + 1]; // one byte too many for 2 rows of 1 block
        let r = std::panic::catch_unwind(|| {
            let acts = Acts::of(ty, &vec![0.0; ty.block_size()]);
            acts.gemv(Level::Scalar, ty, &w, &mut [0.0; 2]);
        });
        assert!(r.is_err(), "{ty}: a wrong byte count must panic");
    }
    let r = std::panic::catch_unwind(|| {
        gemv_q8x32(Level::Scalar, GgmlType::Q4K, &[0; 144], &[BlockQ8x32::default(); 8], &mut [0.0])
    });
    assert!(r.is_err(), "Q4_K with Q8x32 activations must panic");
}

#[test]
fn zero_rows_and_all_zero_activations() {
    for ty in types() {
        let mut rng = Rng(7);
        let w = weights(ty, Weights::RawBytes, 3, 2, &mut rng);
        let acts = Acts::of(ty, &vec![0.0; 2 * ty.block_size()]);
        for level in available() {
            acts.gemv(level, ty, &[], &mut []);
            let y = run(level, ty, &w, &acts, 3);
            assert!(y.iter().all(|&v| v == 0.0), "{level:?} {ty}: {y:?}");
        }
    }
}

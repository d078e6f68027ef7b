//! The many-token int8 kernels (`simd::ggml_dot::multi`, `simd::affine_multi`)
//! against the single-token kernels run once per token, at every level this
//! CPU runs (ggml: also against the scalar twin's per-token result), over a grid: rows 1, 3, 17; tokens 1..=9 and 17 (across the
//! groups of four and eight, with every remainder); 1, 2, 7 blocks (affine: groups of 32, 64,
//! 128); a row range that does not start at 0 (affine) and an output stride
//! wider than the rows, whose gaps must stay untouched.
//!
//! Both compute the same integer block sums. The scalar twin and NEON (which
//! runs its single-token kernel per token) must agree bit for bit; the AVX2
//! and AVX-512 kernels add the sub-block (or block) sums in another order, so
//! they are held to 1e-5 of `Σ |w| |x̂|` (f32 rounding of a few operations
//! per block).

mod common;

use common::{f16_fields, Rng};
use half::f16;
use qmoe_core::dtype::DType;
use qmoe_core::GgmlType;
use qmoe_kernels::ggml::decode_blocks;
use qmoe_kernels::linear::MatRef;
use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
use qmoe_kernels::simd::affine_dot::gemv_affine;
use qmoe_kernels::simd::affine_multi::gemm_affine;
use qmoe_kernels::simd::ggml_dot::multi::{gemm_q8k, gemm_q8x32, has_multi};
use qmoe_kernels::simd::ggml_dot::{act_kind, gemv_q8k, gemv_q8x32};
use qmoe_kernels::simd::{available, ActKind, Level};

const ROWS: [usize; 3] = [1, 3, 17];
/// 256-wide types whose AVX2 many-token kernel spreads each block's integer
/// sum over the eight i32 lanes differently from the single-token kernel
/// (transposed sub-blocks): the same integer sum per (block, token), other
/// f32 rounding, so they are held to the tolerance.
const BLOCKS: [usize; 3] = [1, 2, 7];
/// Token counts: every count up to two groups of four, and 17 = 2 x 8 + 1.
const TOKENS: [usize; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 17];

/// Random blocks (every bit pattern) with sane f16 scales.
fn ggml_weights(ty: GgmlType, rows: usize, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let ts = ty.type_size();
    let mut w: Vec<u8> = (0..rows * blocks * ts).map(|_| rng.next_u64() as u8).collect();
    for blk in w.chunks_exact_mut(ts) {
        for &at in f16_fields(ty) {
            let v = rng.uniform() * 0.05;
            blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    w
}

/// Activations of `n_tokens` tokens, one token after the other; `full`:
/// random ±127 codes (the largest products, which would expose saturation).
fn q8k(cols: usize, n_tokens: usize, full: bool, rng: &mut Rng) -> Vec<BlockQ8K> {
    let mut b = vec![BlockQ8K::default(); n_tokens * cols / 256];
    quantize_q8k(&rng.vec(n_tokens * cols, 2.0), &mut b);
    if full {
        for blk in &mut b {
            blk.qs.iter_mut().for_each(|q| *q = if rng.next_u64() & 1 == 0 { 127 } else { -127 });
            for (s, q) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
                *s = q.iter().map(|&q| q as i16).sum();
            }
        }
    }
    b
}

fn q8x32(cols: usize, n_tokens: usize, full: bool, rng: &mut Rng) -> Vec<BlockQ8x32> {
    let mut b = vec![BlockQ8x32::default(); n_tokens * cols / 32];
    quantize_q8x32(&rng.vec(n_tokens * cols, 2.0), &mut b);
    if full {
        for blk in &mut b {
            blk.qs.iter_mut().for_each(|q| *q = if rng.next_u64() & 1 == 0 { 127 } else { -127 });
        }
    }
    b
}

/// `Σ |w| |x̂|` plus `Σ_b |sum_b| max|w|` (the offset / bias terms), per row,
/// for one token's dequantised activations `xh` and block sums.
fn norms(rows_f32: &[Vec<f32>], xh: &[f32], sums: &[f32]) -> Vec<f64> {
    rows_f32
        .iter()
        .map(|w| {
            let dot: f64 = w.iter().zip(xh).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            let wmax = w.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
            dot + sums.iter().map(|s| s.abs() as f64 * wmax).sum::<f64>() + 1e-6
        })
        .collect()
}

/// Checks `y` (stride `stride`, `n_rows` rows per token) against `want`
/// (`[T, n_rows]`), and that the gaps between token rows are untouched.
fn compare(what: &str, y: &[f32], stride: usize, n_rows: usize, want: &[f32], norms: &[Vec<f64>], exact: bool) {
    for (t, wt) in want.chunks_exact(n_rows).enumerate() {
        for i in 0..n_rows {
            let (g, w) = (y[t * stride + i], wt[i]);
            if exact {
                assert_eq!(g.to_bits(), w.to_bits(), "{what}: token {t} row {i}: {g} vs per-token {w}");
            } else {
                let tol = 1e-5 * norms[t][i];
                assert!(
                    (g as f64 - w as f64).abs() <= tol,
                    "{what}: token {t} row {i}: {g} vs per-token {w} (tol {tol:e})"
                );
            }
        }
        for i in n_rows..stride.min(y.len() - t * stride) {
            assert!(y[t * stride + i].is_nan(), "{what}: token {t} wrote the gap at {i}");
        }
    }
}

#[test]
fn ggml_multi_equals_per_token_gemv() {
    let mut rng = Rng(0x6E11);
    for ty in GgmlType::ALL.into_iter().filter(|&t| act_kind(t).is_some()) {
        check_ggml(ty, &ROWS, &BLOCKS, &TOKENS, &mut rng);
    }
}

/// Rows too wide for a token group's activations to stay in L1 run in
/// smaller token groups, and wider still in column chunks whose partial
/// sums add up in the output (over 24 KB of a group's activations: at the
/// AVX2 level 18 Q8K blocks or 10 runs of eight 32-value blocks for eight
/// tokens, twice that for four; 33 Q8K blocks and 38 runs pass both).
#[test]
fn wide_rows_run_in_column_chunks() {
    let mut rng = Rng(0xC4C4);
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q2K] {
        check_ggml(ty, &[3], &[17, 33], &[9, 17], &mut rng);
    }
    for ty in [GgmlType::Q8_0, GgmlType::IQ4NL] {
        check_ggml(ty, &[3], &[150, 300], &[9, 17], &mut rng);
    }
}

/// A call whose kept weight units would pass 512 KB (a direct call with
/// more rows than the driver's row tasks) runs in blocks of rows.
#[test]
fn many_rows_run_in_row_blocks() {
    let mut rng = Rng(0xB10C);
    check_ggml(GgmlType::Q4K, &[1500], &[1], &[9], &mut rng);
    check_ggml(GgmlType::Q8_0, &[1000], &[8], &[9], &mut rng);
    // MLX 4-bit, 2 runs of 320 bytes per row: 819 rows per block (rows 1000..3000).
    check_affine(4, 64, 8, DType::F16, &[3000], &[9], &mut rng);
}

/// The AVX2 kernels of the 32-wide types work on runs of eight
/// blocks, the AVX-512 ones of the symmetric types on units of sixteen:
/// whole runs, a whole run and a partial one, two runs with a partial third
/// (one whole unit and a partial one), and two whole units and a partial
/// third.
#[test]
fn runs_of_eight_32_value_blocks() {
    let mut rng = Rng(0x0808);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::IQ4NL, GgmlType::Q4_1, GgmlType::Q5_1] {
        check_ggml(ty, &ROWS, &[8, 9, 16, 23, 33], &TOKENS, &mut rng);
    }
}

/// The types with AVX-512 (VNNI) many-token kernels, on a smaller grid that
/// still has every token count of [`TOKENS`], odd row counts and an odd
/// block count: the test
/// `tools/test-avx512.sh` runs under the emulated CPU, where the full grid
/// of every type would take too long.
#[test]
fn vnni_types_multi_equals_per_token_gemv() {
    let mut rng = Rng(0x7A11);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_1,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4XS,
    ] {
        check_ggml(ty, &[1, 3], &[1, 2, 3], &TOKENS, &mut rng);
    }
}

/// `tools/test-avx512.sh` sets `QMOE_EXPECT_AVX512=1`: there the tests must
/// run the AVX-512 level, or they would check only the AVX2 kernels.
#[test]
fn avx512_level_is_available_where_expected() {
    if std::env::var("QMOE_EXPECT_AVX512").is_ok_and(|v| v == "1") {
        assert!(available().contains(&Level::Avx512), "QMOE_EXPECT_AVX512=1 but available() = {:?}", available());
    }
}

/// Many-token against per-token products of `ty` at every level, for each
/// row count, block count and token count, with plain and full-range
/// (±127) activations.
fn check_ggml(ty: GgmlType, row_counts: &[usize], block_counts: &[usize], token_counts: &[usize], rng: &mut Rng) {
    assert!(has_multi(ty), "{ty}");
    let bs = ty.block_size();
    for &rows in row_counts {
        for &blocks in block_counts {
            let w = ggml_weights(ty, rows, blocks, rng);
            let cols = blocks * bs;
            let rows_f32: Vec<Vec<f32>> = w
                .chunks_exact(w.len() / rows)
                .map(|r| {
                    let mut v = vec![0.0; cols];
                    decode_blocks(ty, r, &mut v);
                    v
                })
                .collect();
            for &n_tokens in token_counts {
                for full in [false, true] {
                    let stride = rows + 2;
                    let what = format!("{ty} rows {rows} blocks {blocks} tokens {n_tokens} full {full}");
                    match act_kind(ty) {
                        Some(ActKind::Q8K) => {
                            let x = q8k(cols, n_tokens, full, rng);
                            let nrm: Vec<Vec<f64>> = x
                                .chunks_exact(blocks)
                                .map(|xt| {
                                    let xh: Vec<f32> = xt.iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect();
                                    norms(&rows_f32, &xh, &[])
                                })
                                .collect();
                            let mut twin = None;
                            for level in available() {
                                let mut want = vec![0.0; n_tokens * rows];
                                for (xt, yt) in x.chunks_exact(blocks).zip(want.chunks_exact_mut(rows)) {
                                    gemv_q8k(level, ty, &w, xt, yt);
                                }
                                let mut y = vec![f32::NAN; (n_tokens - 1) * stride + rows];
                                gemm_q8k(level, ty, &w, rows, &x, n_tokens, &mut y, stride);
                                // And against the scalar twin (the first level), so that a
                                // fault shared with this level's per-token kernel shows too.
                                let twin: &Vec<f32> = twin.get_or_insert_with(|| want.clone());
                                compare(&format!("{level:?} vs scalar {what}"), &y, stride, rows, twin, &nrm, false);
                                compare(&format!("{level:?} {what}"), &y, stride, rows, &want, &nrm, exact(level));
                            }
                        }
                        _ => {
                            let x = q8x32(cols, n_tokens, full, rng);
                            let nrm: Vec<Vec<f64>> = x
                                .chunks_exact(blocks)
                                .map(|xt| {
                                    let xh: Vec<f32> = xt.iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect();
                                    let sums: Vec<f32> = xt.iter().map(|b| b.sum).collect();
                                    norms(&rows_f32, &xh, &sums)
                                })
                                .collect();
                            let mut twin = None;
                            for level in available() {
                                let mut want = vec![0.0; n_tokens * rows];
                                for (xt, yt) in x.chunks_exact(blocks).zip(want.chunks_exact_mut(rows)) {
                                    gemv_q8x32(level, ty, &w, xt, yt);
                                }
                                let mut y = vec![f32::NAN; (n_tokens - 1) * stride + rows];
                                gemm_q8x32(level, ty, &w, rows, &x, n_tokens, &mut y, stride);
                                // And against the scalar twin (the first level), so that a
                                // fault shared with this level's per-token kernel shows too.
                                let twin: &Vec<f32> = twin.get_or_insert_with(|| want.clone());
                                compare(&format!("{level:?} vs scalar {what}"), &y, stride, rows, twin, &nrm, false);
                                compare(&format!("{level:?} {what}"), &y, stride, rows, &want, &nrm, false);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Whether the many-token result at `level` must equal the per-token one
/// bit for bit: where the many-token product is the single-token kernel run
/// per token (the scalar twin, NEON). The AVX2 kernels of every 256-wide type
/// work on transposed sub-blocks, and at AVX-512 neither side is pinned to
/// one order (the many-token and the single-token product of a type may each
/// have an AVX-512 form or run the AVX2 one), so they are held to the
/// tolerance.
fn exact(level: Level) -> bool {
    matches!(level, Level::Scalar | Level::Neon)
}

#[test]
fn affine_multi_equals_per_token_gemv() {
    let mut rng = Rng(0xAFF1);
    for bits in [2u32, 3, 4, 5, 6, 8] {
        // Blocks: 1, 2, 7, 9, 6, 10, 9, 8 (AVX2 runs of eight: one partial, whole, whole
        // and partial), 17 and 18 (AVX-512 units of sixteen: a whole unit and a partial one).
        let shapes =
            [(32usize, 1usize), (32, 2), (32, 7), (32, 9), (64, 3), (64, 5), (96, 3), (128, 2), (32, 17), (64, 9)];
        for (group, n_groups) in shapes {
            for dt in [DType::F32, DType::F16, DType::BF16] {
                check_affine(bits, group, n_groups, dt, &ROWS, &TOKENS, &mut rng);
            }
        }
    }
}

/// As `wide_rows_run_in_column_chunks`, for the MLX 4- and 8-bit runs
/// (300 blocks: 38 runs, over 24 KB per group of four tokens at either
/// width).
#[test]
fn affine_wide_rows_run_in_column_chunks() {
    let mut rng = Rng(0xAFC4);
    for bits in [4u32, 8] {
        check_affine(bits, 64, 150, DType::F16, &[3], &[9, 17], &mut rng);
    }
}

/// The affine many-token product of random `bits`-bit weights (`rows` of
/// `n_groups` groups of `group`, scales of `dt`) against the per-token one,
/// on rows `rows / 3..rows`, at every level.
fn check_affine(
    bits: u32,
    group: usize,
    n_groups: usize,
    dt: DType,
    row_counts: &[usize],
    token_counts: &[usize],
    rng: &mut Rng,
) {
    for &rows in row_counts {
        let cols = group * n_groups;
        let words: Vec<u8> = (0..rows * cols * bits as usize / 8).map(|_| rng.next_u64() as u8).collect();
        let floats = |v: Vec<f32>| -> Vec<u8> {
            match dt {
                DType::F32 => v.iter().flat_map(|a| a.to_le_bytes()).collect(),
                DType::F16 => v.iter().flat_map(|&a| f16::from_f32(a).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|&a| half::bf16::from_f32(a).to_le_bytes()).collect(),
            }
        };
        let scales = floats(rng.vec(rows * n_groups, 0.05));
        let biases = floats(rng.vec(rows * n_groups, 0.1));
        let w = MatRef::affine(rows, cols, &words, bits, group, &scales, &biases, dt).unwrap();
        let rows_f32: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                let mut v = vec![0.0; cols];
                w.row_to_f32(r, &mut v);
                v
            })
            .collect();
        let range = rows / 3..rows;
        let n = range.len();
        for &n_tokens in token_counts {
            let full = n_tokens % 2 == 0;
            let x = q8x32(cols, n_tokens, full, rng);
            let nb = cols / 32;
            let nrm: Vec<Vec<f64>> = x
                .chunks_exact(nb)
                .map(|xt| {
                    let xh: Vec<f32> = xt.iter().flat_map(|b| b.qs.map(|q| b.d * q as f32)).collect();
                    let sums: Vec<f32> = xt.iter().map(|b| b.sum).collect();
                    norms(&rows_f32[range.clone()], &xh, &sums)
                })
                .collect();
            let stride = n + 1;
            for level in available() {
                let mut want = vec![0.0; n_tokens * n];
                for (xt, yt) in x.chunks_exact(nb).zip(want.chunks_exact_mut(n)) {
                    gemv_affine(level, &w, range.clone(), xt, yt);
                }
                let mut y = vec![f32::NAN; (n_tokens - 1) * stride + n];
                gemm_affine(level, &w, range.clone(), &x, n_tokens, &mut y, stride);
                let what =
                    format!("{level:?} affine {bits}-bit g{group} x{n_groups} {dt} rows {range:?} tokens {n_tokens}");
                compare(&what, &y, stride, n, &want, &nrm, false);
            }
        }
    }
}

#[test]
fn shapes_are_checked() {
    let ty = GgmlType::Q4K;
    let w = vec![0u8; 2 * 144];
    let x = vec![BlockQ8K::default(); 3];
    // Three blocks do not split over two tokens.
    let r = std::panic::catch_unwind(|| gemm_q8k(Level::Scalar, ty, &w, 2, &x, 2, &mut [0.0; 8], 4));
    assert!(r.is_err(), "uneven activation blocks must panic");
    // An output too short for the stride.
    let x = vec![BlockQ8K::default(); 2];
    let r = std::panic::catch_unwind(|| gemm_q8k(Level::Scalar, ty, &w, 2, &x, 2, &mut [0.0; 5], 4));
    assert!(r.is_err(), "a short output must panic");
    let r = std::panic::catch_unwind(|| {
        gemm_q8x32(Level::Scalar, ty, &w, 2, &[BlockQ8x32::default(); 16], 2, &mut [0.0; 4], 2)
    });
    assert!(r.is_err(), "Q4_K with Q8x32 activations must panic");
}

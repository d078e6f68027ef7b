//! `simd::fp8_dot::gemv_fp8` at every level this CPU runs, against its
//! scalar twin, and the twin against the reference `linear::matvec`; every
//! e4m3 code (subnormals, ±0, ±448) decoded exactly; NaN codes give NaN.

mod common;

use common::Rng;
use half::{bf16, f16};
use qmoe_core::dtype::DType;
use qmoe_kernels::linear::{matvec, MatRef};
use qmoe_kernels::quant::e4m3_to_f32;
use qmoe_kernels::simd::{self, fp8_dot::gemv_fp8, Level};

/// Independent e4m3fn formula, in f64; `None` for the NaN codes.
fn e4m3_formula(code: u8) -> Option<f64> {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((code >> 3) & 0xF) as i32;
    let m = (code & 7) as f64;
    if e == 15 && m == 7.0 {
        return None;
    }
    Some(if e == 0 { sign * 2f64.powi(-6) * m / 8.0 } else { sign * 2f64.powi(e - 7) * (1.0 + m / 8.0) })
}

/// A random finite code (never 0x7f / 0xff).
fn code(rng: &mut Rng) -> u8 {
    loop {
        let c = rng.next_u64() as u8;
        if c & 0x7f != 0x7f {
            return c;
        }
    }
}

/// `n` scales of `dt` in [0.001, 0.01), as bytes, and their f32 values.
fn scales(rng: &mut Rng, dt: DType, n: usize) -> (Vec<u8>, Vec<f32>) {
    let v: Vec<f32> = (0..n).map(|_| 0.001 + 0.0045 * (rng.uniform() + 1.0)).collect();
    match dt {
        DType::F32 => (v.iter().flat_map(|a| a.to_le_bytes()).collect(), v),
        DType::F16 => {
            let h: Vec<f16> = v.iter().map(|&a| f16::from_f32(a)).collect();
            (h.iter().flat_map(|a| a.to_bits().to_le_bytes()).collect(), h.iter().map(|a| a.to_f32()).collect())
        }
        _ => {
            let h: Vec<bf16> = v.iter().map(|&a| bf16::from_f32(a)).collect();
            (h.iter().flat_map(|a| a.to_bits().to_le_bytes()).collect(), h.iter().map(|a| a.to_f32()).collect())
        }
    }
}

struct Case {
    rows: usize,
    cols: usize,
    block: [usize; 2],
    codes: Vec<u8>,
    scale_dtype: DType,
    scale_bytes: Vec<u8>,
    scale_vals: Vec<f32>,
}

impl Case {
    fn new(rng: &mut Rng, rows: usize, cols: usize, block: [usize; 2], scale_dtype: DType) -> Case {
        let codes = (0..rows * cols).map(|_| code(rng)).collect();
        let n = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
        let (scale_bytes, scale_vals) = scales(rng, scale_dtype, n);
        Case { rows, cols, block, codes, scale_dtype, scale_bytes, scale_vals }
    }

    fn mat(&self) -> MatRef<'_> {
        MatRef::fp8(
            self.rows,
            self.cols,
            &self.codes,
            &self.scale_bytes,
            self.scale_dtype,
            self.block[0],
            self.block[1],
        )
        .unwrap()
    }

    /// `Σ_c |w[r][c]| |x[c]|` per row (the size of the sum being rounded).
    fn magnitudes(&self, x: &[f32]) -> Vec<f32> {
        let gc = self.cols.div_ceil(self.block[1]);
        (0..self.rows)
            .map(|r| {
                (0..self.cols)
                    .map(|c| {
                        let s = self.scale_vals[r / self.block[0] * gc + c / self.block[1]];
                        (e4m3_to_f32(self.codes[r * self.cols + c]) * s * x[c]).abs()
                    })
                    .sum()
            })
            .collect()
    }
}

fn close(a: f32, b: f32, mag: f32) -> bool {
    (a - b).abs() <= 1e-5 * mag + 1e-30
}

#[test]
fn every_level_matches_scalar_twin_and_twin_matches_reference() {
    let mut rng = Rng(21);
    let levels = simd::available();
    let blocks = [[128, 128], [24, 48], [1, 1], [2, 5], [16, 32], [3, 13]];
    for block in blocks {
        for (i, rows) in [1, 3, 17].into_iter().enumerate() {
            for cols in [32, 64, 96, 300, 2048, 7, 45] {
                let dt = [DType::F32, DType::F16, DType::BF16][(i + cols) % 3];
                let case = Case::new(&mut rng, rows, cols, block, dt);
                let w = case.mat();
                let x = rng.vec(cols, 2.0);
                let mag = case.magnitudes(&x);
                let mut want = vec![0.0; rows];
                matvec(&w, &x, &mut want);
                let mut twin = vec![0.0; rows];
                gemv_fp8(Level::Scalar, &w, 0..rows, &x, &mut twin);
                let what = format!("{rows}x{cols} block {block:?} scales {dt}");
                for r in 0..rows {
                    assert!(close(twin[r], want[r], mag[r]), "{what} r{r}: twin {} ref {}", twin[r], want[r]);
                }
                for &level in &levels {
                    let mut y = vec![0.0; rows];
                    gemv_fp8(level, &w, 0..rows, &x, &mut y);
                    for r in 0..rows {
                        assert!(close(y[r], twin[r], mag[r]), "{level:?} {what} r{r}: {} vs {}", y[r], twin[r]);
                    }
                    if rows > 1 {
                        let mut part = vec![0.0; rows - 1];
                        gemv_fp8(level, &w, 1..rows, &x, &mut part);
                        assert_eq!(&part[..], &y[1..], "{level:?} {what} sub-range");
                    }
                }
            }
        }
    }
}

/// Every code, alone in its row (x one-hot), decodes to exactly its value
/// times the scale at every level, wherever it sits: in a 64-wide step (the
/// AVX-512 level's), the 32-wide body, the 8-wide step or the scalar tail
/// of a block.
#[test]
fn every_code_decodes_exactly_at_every_level() {
    // Blocks of 45 (32 + 8 + 5) and 109 (64 + 32 + 8 + 5).
    for cols in [45, 109] {
        codes_decode_exactly(cols);
    }
    // All 254 finite codes, each alone, in the body position 0.
    for code in 0..=255u8 {
        let Some(want) = e4m3_formula(code) else { continue };
        let mut codes = vec![0u8; 32];
        codes[0] = code;
        let one = 1.0f32.to_le_bytes();
        let w = MatRef::fp8(1, 32, &codes, &one, DType::F32, 1, 32).unwrap();
        let mut x = vec![0.0; 32];
        x[0] = 1.0;
        for level in simd::available() {
            let mut y = [0.0];
            gemv_fp8(level, &w, 0..1, &x, &mut y);
            assert!(y[0] == want as f32, "{level:?} code {code:#04x}: {} vs {want}", y[0]);
        }
    }
}

/// Each code of rows `base, base + 1, ...` (`cols` long, one block) at each
/// column, against a one-hot x, at every level and three scales.
fn codes_decode_exactly(cols: usize) {
    for s in [1.0f32, 0.375, 2f32.powi(-20)] {
        let scale = s.to_le_bytes();
        for base in 0..=255u8 {
            // Codes base, base+1, ...: over all bases each code visits every
            // position.
            let codes: Vec<u8> = (0..cols).map(|c| base.wrapping_add(c as u8)).collect();
            let w = MatRef::fp8(1, cols, &codes, &scale, DType::F32, 1, cols).unwrap();
            for c in 0..cols {
                let Some(want) = e4m3_formula(codes[c]) else { continue };
                let want = (want * s as f64) as f32;
                let mut x = vec![0.0; cols];
                x[c] = 1.0;
                let row_has_nan = codes.iter().any(|&q| q & 0x7f == 0x7f);
                for level in simd::available() {
                    let mut y = [0.0];
                    gemv_fp8(level, &w, 0..1, &x, &mut y);
                    if row_has_nan {
                        assert!(y[0].is_nan(), "{level:?}: a NaN code in the row must give NaN");
                    } else {
                        assert!(y[0] == want, "{level:?} code {:#04x} at {c}, scale {s}: {} vs {want}", codes[c], y[0]);
                    }
                }
            }
        }
    }
}

/// A NaN code (0x7f or 0xff) anywhere makes its row NaN, as the reference
/// dequantisation does; other rows are untouched.
#[test]
fn nan_codes_poison_their_row_only() {
    let mut rng = Rng(22);
    let (rows, cols) = (3, 300); // 300 = 2 blocks of 128 + 44 (32 + 8 + 4)
    for nan in [0x7f, 0xff] {
        for pos in [0, 31, 100, 255, 256 + 33, 256 + 41] {
            let mut case = Case::new(&mut rng, rows, cols, [128, 128], DType::BF16);
            case.codes[cols + pos] = nan;
            let w = case.mat();
            let x = rng.vec(cols, 1.0);
            let mut want = vec![0.0; rows];
            matvec(&w, &x, &mut want);
            assert!(want[1].is_nan());
            for level in simd::available() {
                let mut y = vec![0.0; rows];
                gemv_fp8(level, &w, 0..rows, &x, &mut y);
                assert!(y[1].is_nan(), "{level:?} NaN {nan:#x} at {pos}: {}", y[1]);
                assert!(y[0].is_finite() && y[2].is_finite(), "{level:?}");
            }
        }
    }
}

/// The tolerance catches one wrong code or one wrong scale.
#[test]
fn tolerance_catches_one_wrong_code_or_scale() {
    let mut rng = Rng(23);
    let (rows, cols) = (4, 2048);
    let mut case = Case::new(&mut rng, rows, cols, [2, 128], DType::F32);
    let x: Vec<f32> = (0..cols).map(|_| 1.0 + rng.uniform().abs()).collect();
    let mag = case.magnitudes(&x);
    let mut twin = vec![0.0; rows];
    gemv_fp8(Level::Scalar, &case.mat(), 0..rows, &x, &mut twin);
    case.codes[cols + 1000] = 0x7e; // 448 in row 1
    case.codes[cols + 1001] = 0xfe; // -448: a lone sign error would cancel nothing
    case.codes[cols + 1002] = 0x7e;
    case.scale_bytes[4 * (16 + 3)..4 * (16 + 4)].copy_from_slice(&1.0f32.to_le_bytes()); // block row 1 (rows 2, 3)
    for level in simd::available() {
        let mut y = vec![0.0; rows];
        gemv_fp8(level, &case.mat(), 0..rows, &x, &mut y);
        assert!(close(y[0], twin[0], mag[0]), "{level:?} row 0 untouched");
        for r in 1..rows {
            assert!(!close(y[r], twin[r], mag[r]), "{level:?} row {r}: a wrong code or scale went unnoticed");
        }
    }
}

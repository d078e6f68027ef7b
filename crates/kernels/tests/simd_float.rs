//! `simd::float_dot::gemv_float` at every level this CPU runs, against its
//! scalar twin, and the twin against the reference `linear::matvec`.

mod common;

use common::Rng;
use half::{bf16, f16};
use qmoe_core::dtype::DType;
use qmoe_kernels::linear::{matvec, MatRef};
use qmoe_kernels::simd::{self, float_dot::gemv_float, Level};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const ROWS: [usize; 3] = [1, 3, 17];
const COLS: [usize; 9] = [1, 7, 8, 32, 64, 96, 300, 333, 2048];

/// Random weights of `dt` as bytes, and their exact f32 values.
fn weights(rng: &mut Rng, dt: DType, n: usize) -> (Vec<u8>, Vec<f32>) {
    let v = rng.vec(n, 1.0);
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

/// `|a - b| <= 1e-5 * mag + 1e-30`, where `mag = Σ |w| |x|` of the row.
fn close(a: f32, b: f32, mag: f32) -> bool {
    (a - b).abs() <= 1e-5 * mag + 1e-30
}

/// `Σ_c |w[r][c]| |x[c]|` per row.
fn magnitudes(w: &[f32], x: &[f32], rows: usize) -> Vec<f32> {
    let cols = x.len();
    (0..rows).map(|r| (0..cols).map(|c| (w[r * cols + c] * x[c]).abs()).sum()).collect()
}

#[test]
fn every_level_matches_scalar_twin_and_twin_matches_reference() {
    let mut rng = Rng(11);
    let levels = simd::available();
    for dt in DTYPES {
        for rows in ROWS {
            for cols in COLS {
                let (bytes, wf) = weights(&mut rng, dt, rows * cols);
                let x = rng.vec(cols, 2.0);
                let w = MatRef::new(dt, rows, cols, &bytes);
                let mag = magnitudes(&wf, &x, rows);
                let mut want = vec![0.0; rows];
                matvec(&w, &x, &mut want);
                let mut twin = vec![0.0; rows];
                gemv_float(Level::Scalar, &w, 0..rows, &x, &mut twin);
                for r in 0..rows {
                    assert!(
                        close(twin[r], want[r], mag[r]),
                        "{dt} {rows}x{cols} r{r}: twin {} ref {}",
                        twin[r],
                        want[r]
                    );
                }
                for &level in &levels {
                    let mut y = vec![0.0; rows];
                    gemv_float(level, &w, 0..rows, &x, &mut y);
                    for r in 0..rows {
                        assert!(
                            close(y[r], twin[r], mag[r]),
                            "{level:?} {dt} {rows}x{cols} r{r}: {} vs {}",
                            y[r],
                            twin[r]
                        );
                    }
                    // A sub-range gives the same rows, bit for bit.
                    if rows > 1 {
                        let mut part = vec![0.0; rows - 2];
                        gemv_float(level, &w, 1..rows - 1, &x, &mut part);
                        assert_eq!(&part[..], &y[1..rows - 1], "{level:?} {dt} {rows}x{cols} sub-range");
                    }
                }
            }
        }
    }
}

/// The tolerance catches one wrong weight: flipping the sign of one element
/// moves the row's result far outside it, at every level.
#[test]
fn tolerance_catches_one_wrong_weight() {
    let mut rng = Rng(12);
    for dt in DTYPES {
        let (rows, cols) = (3, 2048);
        let (mut bytes, wf) = weights(&mut rng, dt, rows * cols);
        let x = rng.vec(cols, 2.0);
        let mag = magnitudes(&wf, &x, rows);
        let mut twin = vec![0.0; rows];
        gemv_float(Level::Scalar, &MatRef::new(dt, rows, cols, &bytes), 0..rows, &x, &mut twin);
        // Flip the sign bit of the element at row 1, column 1000 (the sign
        // is the top bit of the last little-endian byte).
        let es = dt.size();
        bytes[(cols + 1000) * es + es - 1] ^= 0x80;
        let w = MatRef::new(dt, rows, cols, &bytes);
        for level in simd::available() {
            let mut y = vec![0.0; rows];
            gemv_float(level, &w, 0..rows, &x, &mut y);
            assert!(close(y[0], twin[0], mag[0]) && close(y[2], twin[2], mag[2]));
            if wf[cols + 1000] * x[1000] != 0.0 {
                assert!(!close(y[1], twin[1], mag[1]), "{level:?} {dt}: a flipped weight went unnoticed");
            }
        }
    }
}

/// Widening is exact for special values: F16 subnormals, infinities, and
/// BF16's full exponent range.
#[test]
fn widening_is_exact_for_every_f16_and_bf16_pattern() {
    for dt in [DType::F16, DType::BF16] {
        let cols = 40; // 32 in the vector body, 8 in the 8-wide step
        let mut patterns = (0..=u16::MAX).collect::<Vec<u16>>();
        patterns.retain(|&p| {
            let v = if dt == DType::F16 { f16::from_bits(p).to_f32() } else { bf16::from_bits(p).to_f32() };
            v.is_finite()
        });
        for chunk in patterns.chunks(cols) {
            if chunk.len() < cols {
                break;
            }
            let bytes: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
            let w = MatRef::new(dt, 1, cols, &bytes);
            for c in 0..cols {
                let mut x = vec![0.0; cols];
                x[c] = 1.0;
                let want = if dt == DType::F16 {
                    f16::from_bits(chunk[c]).to_f32()
                } else {
                    bf16::from_bits(chunk[c]).to_f32()
                };
                for level in simd::available() {
                    let mut y = [0.0];
                    gemv_float(level, &w, 0..1, &x, &mut y);
                    // `==`: the zero products may turn -0 into +0, nothing else.
                    assert!(y[0] == want, "{level:?} {dt} {:#06x}: {} vs {want}", chunk[c], y[0]);
                }
            }
        }
    }
}

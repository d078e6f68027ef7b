//! `simd::affine_dot::gemv_affine` at every level this CPU runs, against its
//! scalar twin; the twin against the reference `linear::matvec` fed the
//! dequantised int8 activations (same math up to rounding); and the int8
//! error bound against the unquantized activations.

mod common;

use common::Rng;
use half::{bf16, f16};
use qmoe_core::dtype::DType;
use qmoe_kernels::linear::{matvec, MatRef};
use qmoe_kernels::simd::act::{quantize_q8x32, BlockQ8x32};
use qmoe_kernels::simd::affine_dot::{gemv_affine, supports_affine};
use qmoe_kernels::simd::{self, Level};

const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];

/// Packs `q` (each `< 2^bits`) as one LSB-first bitstream, bit by bit
/// (MLX's layout: little-endian uint32 words, value `i` at bit `i * bits`).
fn pack(q: &[u8], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; q.len() * bits as usize / 8];
    for (i, &v) in q.iter().enumerate() {
        for k in 0..bits as usize {
            let bit = i * bits as usize + k;
            out[bit / 8] |= ((v >> k) & 1) << (bit % 8);
        }
    }
    out
}

/// `v` stored as `dt` bytes, and the stored values.
fn store(dt: DType, v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    match dt {
        DType::F32 => (v.iter().flat_map(|a| a.to_le_bytes()).collect(), v.to_vec()),
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
    bits: u32,
    group: usize,
    dt: DType,
    q: Vec<u8>,
    words: Vec<u8>,
    scale_bytes: Vec<u8>,
    bias_bytes: Vec<u8>,
    scales: Vec<f32>,
    biases: Vec<f32>,
}

impl Case {
    /// Random codes; scales and biases as mlx makes them (`bias ≈ -scale *
    /// 2^(bits-1)`, so the two terms of each group largely cancel).
    fn new(rng: &mut Rng, rows: usize, cols: usize, bits: u32, group: usize, dt: DType) -> Case {
        let q: Vec<u8> = (0..rows * cols).map(|_| (rng.next_u64() % (1 << bits)) as u8).collect();
        let words = q.chunks(cols).flat_map(|r| pack(r, bits)).collect();
        let n = rows * cols / group;
        let s: Vec<f32> = (0..n).map(|_| 0.01 + 0.01 * rng.uniform()).collect();
        let b: Vec<f32> = s.iter().map(|&s| -s * (1 << (bits - 1)) as f32 * (1.0 + 0.2 * rng.uniform())).collect();
        let (scale_bytes, scales) = store(dt, &s);
        let (bias_bytes, biases) = store(dt, &b);
        Case { rows, cols, bits, group, dt, q, words, scale_bytes, bias_bytes, scales, biases }
    }

    fn mat(&self) -> MatRef<'_> {
        MatRef::affine(
            self.rows,
            self.cols,
            &self.words,
            self.bits,
            self.group,
            &self.scale_bytes,
            &self.bias_bytes,
            self.dt,
        )
        .unwrap()
    }

    /// `Σ_g |scale_g| Σ_i |q_i x_i| + |bias_g| Σ_i |x_i|` per row: the size
    /// of what the kernels round (the two terms may cancel in the result).
    fn magnitudes(&self, x: &[f32]) -> Vec<f32> {
        let gpr = self.cols / self.group;
        (0..self.rows)
            .map(|r| {
                (0..self.cols)
                    .map(|c| {
                        let g = r * gpr + c / self.group;
                        let q = self.q[r * self.cols + c] as f32;
                        (self.scales[g] * q * x[c]).abs() + (self.biases[g] * x[c]).abs()
                    })
                    .sum()
            })
            .collect()
    }

    /// `Σ_c |scale q| · max error of x[c]` per row: the int8 bound.
    fn int8_bound(&self, xq: &[BlockQ8x32]) -> Vec<f32> {
        let gpr = self.cols / self.group;
        (0..self.rows)
            .map(|r| {
                (0..self.cols)
                    .map(|c| {
                        (self.scales[r * gpr + c / self.group] * self.q[r * self.cols + c] as f32).abs()
                            * xq[c / 32].d
                            * 0.5
                    })
                    .sum()
            })
            .collect()
    }
}

/// Activations and their int8 blocks, with each block's `sum` replaced by
/// the sum of its dequantised values `d * qs`, so the blocks describe the
/// vector `xd` exactly.
fn dequantised(x: &[f32]) -> (Vec<BlockQ8x32>, Vec<f32>) {
    let mut xq = vec![BlockQ8x32::default(); x.len() / 32];
    quantize_q8x32(x, &mut xq);
    let xd: Vec<f32> = (0..x.len()).map(|i| xq[i / 32].d * xq[i / 32].qs[i % 32] as f32).collect();
    for (b, chunk) in xq.iter_mut().zip(xd.chunks(32)) {
        b.sum = chunk.iter().sum();
    }
    (xq, xd)
}

fn close(a: f32, b: f32, mag: f32) -> bool {
    (a - b).abs() <= 1e-5 * mag + 1e-30
}

/// Shapes: cols a multiple of the group; whole and partial runs of eight
/// groups; a group size without a specialised loop (256); rows longer than
/// one AVX2 pass (8192 columns), whose last pass holds 6 groups; an odd
/// number of block pairs (64 x 192: the AVX-512 4-bit row's 256-bit tail);
/// groups of three pairs (192), which that row leaves to the AVX2 one.
fn grid() -> Vec<(usize, usize)> {
    let mut v = vec![];
    for group in [32, 64, 128] {
        for cols in [32, 64, 96, 384, 2048] {
            if cols % group == 0 {
                v.push((group, cols));
            }
        }
    }
    v.extend([(256, 768), (64, 8192 + 384), (64, 192), (192, 384)]);
    v
}

#[test]
fn supports_bits_and_group_multiples_of_32() {
    for bits in BITS {
        for g in [32, 64, 128, 96] {
            assert!(supports_affine(bits, g));
        }
        assert!(!supports_affine(bits, 16) && !supports_affine(bits, 0) && !supports_affine(bits, 48));
    }
    assert!(!supports_affine(1, 64) && !supports_affine(7, 64));
}

#[test]
fn every_level_matches_scalar_twin_and_twin_matches_reference() {
    let mut rng = Rng(31);
    let levels = simd::available();
    let dts = [DType::BF16, DType::F16, DType::F32];
    for bits in BITS {
        for (gi, (group, cols)) in grid().into_iter().enumerate() {
            for rows in [1, 3, 17] {
                let dt = dts[(gi + rows) % 3];
                let case = Case::new(&mut rng, rows, cols, bits, group, dt);
                let w = case.mat();
                let x = rng.vec(cols, 2.0);
                let (xq, xd) = dequantised(&x);
                let mag = case.magnitudes(&xd);
                let what = format!("{bits}-bit g{group} {rows}x{cols} {dt}");
                // Twin vs reference on the dequantised activations.
                let mut want = vec![0.0; rows];
                matvec(&w, &xd, &mut want);
                let mut twin = vec![0.0; rows];
                gemv_affine(Level::Scalar, &w, 0..rows, &xq, &mut twin);
                for r in 0..rows {
                    assert!(close(twin[r], want[r], mag[r]), "{what} r{r}: twin {} ref {}", twin[r], want[r]);
                }
                for &level in &levels {
                    let mut y = vec![0.0; rows];
                    gemv_affine(level, &w, 0..rows, &xq, &mut y);
                    for r in 0..rows {
                        assert!(close(y[r], twin[r], mag[r]), "{level:?} {what} r{r}: {} vs {}", y[r], twin[r]);
                    }
                    if rows > 1 {
                        let mut part = vec![0.0; rows - 1];
                        gemv_affine(level, &w, 1..rows, &xq, &mut part);
                        assert_eq!(&part[..], &y[1..], "{level:?} {what} sub-range");
                    }
                }
            }
        }
    }
}

/// Against the unquantized activations the error is the int8 rounding of x
/// in the `scale * q` term only (the bias term uses exact block sums).
#[test]
fn error_vs_unquantized_activations_is_within_the_int8_bound() {
    let mut rng = Rng(32);
    for bits in BITS {
        for (group, cols) in [(64, 2048), (32, 96), (128, 384)] {
            let rows = 5;
            let case = Case::new(&mut rng, rows, cols, bits, group, DType::BF16);
            let w = case.mat();
            let x = rng.vec(cols, 3.0);
            let mut xq = vec![BlockQ8x32::default(); cols / 32];
            quantize_q8x32(&x, &mut xq);
            let mut exact = vec![0.0; rows];
            matvec(&w, &x, &mut exact);
            let bound = case.int8_bound(&xq);
            let mag = case.magnitudes(&x);
            for level in simd::available() {
                let mut y = vec![0.0; rows];
                gemv_affine(level, &w, 0..rows, &xq, &mut y);
                for r in 0..rows {
                    let err = (y[r] - exact[r]).abs();
                    assert!(
                        err <= bound[r] + 1e-5 * mag[r],
                        "{level:?} {bits}-bit g{group} r{r}: err {err} bound {}",
                        bound[r]
                    );
                }
            }
        }
    }
}

/// The tolerance catches one wrong code, a wrong scale or bias, and a
/// wrong block sum.
#[test]
fn tolerance_catches_one_wrong_code_scale_or_bias() {
    let mut rng = Rng(33);
    for bits in BITS {
        let (rows, cols, group) = (4, 2048, 64);
        let mut case = Case::new(&mut rng, rows, cols, bits, group, DType::F32);
        let x: Vec<f32> = (0..cols).map(|_| 1.0 + rng.uniform().abs()).collect();
        let (mut xq, xd) = dequantised(&x);
        let mag = case.magnitudes(&xd);
        let mut twin = vec![0.0; rows];
        gemv_affine(Level::Scalar, &case.mat(), 0..rows, &xq, &mut twin);
        // Row 1: one code from 0 to max or back (rewrite the stream).
        let c = cols + 1001;
        case.q[c] = if case.q[c] < 1 << (bits - 1) { (1 << bits) - 1 } else { 0 };
        case.words = case.q.chunks(cols).flat_map(|r| pack(r, bits)).collect();
        // Row 2: one scale; row 3: one bias (group 5 of each row).
        let gpr = cols / group;
        let (s2, b3) = ((2 * gpr + 5) * 4, (3 * gpr + 5) * 4);
        case.scale_bytes[s2..s2 + 4].copy_from_slice(&(case.scales[2 * gpr + 5] * 1.5).to_le_bytes());
        case.bias_bytes[b3..b3 + 4].copy_from_slice(&(case.biases[3 * gpr + 5] * 0.5).to_le_bytes());
        for level in simd::available() {
            let mut y = vec![0.0; rows];
            gemv_affine(level, &case.mat(), 0..rows, &xq, &mut y);
            assert!(close(y[0], twin[0], mag[0]), "{level:?} {bits}-bit row 0 untouched");
            for r in 1..rows {
                assert!(!close(y[r], twin[r], mag[r]), "{level:?} {bits}-bit row {r}: a wrong weight went unnoticed");
            }
        }
        // A wrong block sum moves every row.
        xq[7].sum += 1.0;
        let mut twin2 = vec![0.0; rows];
        gemv_affine(Level::Scalar, &case.mat(), 0..rows, &xq, &mut twin2);
        for level in simd::available() {
            let mut y = vec![0.0; rows];
            gemv_affine(level, &case.mat(), 0..rows, &xq, &mut y);
            assert!(!close(y[0], twin[0], mag[0]), "{level:?} {bits}-bit: a wrong block sum went unnoticed");
            assert!(close(y[0], twin2[0], mag[0]));
        }
    }
}

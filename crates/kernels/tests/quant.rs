//! Quantized weight encodings (FP8 block-scaled, MLX affine) against
//! independent references written here: a formula for every e4m3 code, a
//! bit-by-bit packer for the MLX bitstream, and dequantise-then-f64 matmuls.

use half::{bf16, f16};
use qmoe_core::dtype::DType;
use qmoe_kernels::linear::{matmul, reference_matmul, Encoding, MatRef, QuantError};
use qmoe_kernels::quant::e4m3_to_f32;
use qmoe_kernels::threads;

/// splitmix64: small, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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

/// A float array stored as `dtype` bytes, and the f32 values those bytes hold.
fn store(dtype: DType, vals: &[f32]) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        DType::F32 => (vals.iter().flat_map(|v| v.to_le_bytes()).collect(), vals.to_vec()),
        DType::BF16 => (
            vals.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
            vals.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
        ),
        DType::F16 => (
            vals.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
            vals.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
        ),
        other => panic!("no float storage for {other}"),
    }
}

/// `y[t][r] = sum_c w[r][c] x[t][c]` in f64, with the scale of the terms for a tolerance.
fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n_tokens: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(rows * n_tokens);
    for t in 0..n_tokens {
        for r in 0..rows {
            let (mut s, mut mag) = (0.0f64, 0.0f64);
            for c in 0..cols {
                let p = w[r * cols + c] as f64 * x[t * cols + c] as f64;
                s += p;
                mag += p.abs();
            }
            out.push((s, mag));
        }
    }
    out
}

/// matmul against the reference, every row via row_to_f32 against `w`
/// exactly, and single-token matmul equal to matvec.
fn check_mat(m: &MatRef, w: &[f32], n_tokens: usize, rng: &mut Rng, label: &str) {
    let (rows, cols) = (m.rows, m.cols);
    let mut row = vec![0.0f32; cols];
    for r in 0..rows {
        m.row_to_f32(r, &mut row);
        for c in 0..cols {
            let want = w[r * cols + c];
            assert!(row[c] == want, "{label}: row_to_f32 [{r}, {c}] = {} want {want}", row[c]);
        }
    }
    let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.sym()).collect();
    let mut y = vec![f32::NAN; n_tokens * rows];
    reference_matmul(m, &x, &mut y, n_tokens);
    for (i, &(want, mag)) in reference(w, &x, rows, cols, n_tokens).iter().enumerate() {
        let got = y[i] as f64;
        assert!((got - want).abs() <= 1e-5 * mag + 1e-30, "{label}: y[{i}] = {got} want {want} (mag {mag})");
    }
    let mut y1 = vec![f32::NAN; rows];
    for t in 0..n_tokens {
        reference_matmul(m, &x[t * cols..(t + 1) * cols], &mut y1, 1);
        assert_eq!(&y1[..], &y[t * rows..(t + 1) * rows], "{label}: token {t} matvec != matmul");
    }
}

// ---------------------------------------------------------------- FP8 E4M3 --

#[test]
fn every_e4m3_code_matches_formula() {
    for code in 0..=255u8 {
        let got = e4m3_to_f32(code);
        match e4m3_formula(code) {
            None => assert!(got.is_nan(), "code {code:#04x}: {got} should be NaN"),
            Some(v) => {
                assert_eq!(got as f64, v, "code {code:#04x}");
                assert_eq!(got.is_sign_negative(), code & 0x80 != 0, "code {code:#04x} sign");
            }
        }
    }
    assert_eq!(e4m3_to_f32(0x7E), 448.0);
    assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6), "smallest normal");
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9), "smallest subnormal");
}

/// Random non-NaN codes, random block scales; returns the matrix's parts
/// and its dequantised values `f32(code) * scale` (one f32 multiply).
struct Fp8Case {
    codes: Vec<u8>,
    scales: Vec<u8>,
    w: Vec<f32>,
}

fn fp8_case(rng: &mut Rng, rows: usize, cols: usize, br: usize, bc: usize, sdt: DType) -> Fp8Case {
    let codes: Vec<u8> = (0..rows * cols)
        .map(|_| loop {
            let c = rng.below(256) as u8;
            if c & 0x7F != 0x7F {
                break c;
            }
        })
        .collect();
    let (gr, gc) = (rows.div_ceil(br), cols.div_ceil(bc));
    let raw: Vec<f32> = (0..gr * gc).map(|_| (rng.sym() * 4.0).exp2() / 448.0).collect();
    let (scales, sv) = store(sdt, &raw);
    let w = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            e4m3_formula(codes[i]).unwrap() as f32 * sv[(r / br) * gc + c / bc]
        })
        .collect();
    Fp8Case { codes, scales, w }
}

#[test]
fn fp8_matmul_matches_dequantised_reference() {
    let mut rng = Rng(0xF8);
    // (rows, cols, block_rows, block_cols): blocks not dividing either
    // dimension, blocks larger than the matrix, 1x1 blocks, scale runs that
    // straddle the 256-column decode block, and the released 128x128.
    let shapes = [
        (37, 70, 16, 24),
        (37, 70, 128, 128),
        (5, 9, 1, 1),
        (1, 1, 1, 1),
        (13, 700, 7, 100),
        (9, 300, 128, 128),
        (24, 48, 24, 48),
        (3, 513, 2, 1),
    ];
    for &(rows, cols, br, bc) in &shapes {
        for sdt in [DType::F32, DType::BF16, DType::F16] {
            let case = fp8_case(&mut rng, rows, cols, br, bc, sdt);
            let m = MatRef::fp8(rows, cols, &case.codes, &case.scales, sdt, br, bc).unwrap();
            assert_eq!(m.storage_bytes(), case.codes.len() + case.scales.len());
            assert!(
                matches!(m.enc, Encoding::Fp8Block { block_rows, block_cols, .. } if block_rows == br && block_cols == bc)
            );
            let label = format!("fp8 {rows}x{cols} block {br}x{bc} {sdt}");
            check_mat(&m, &case.w, 3, &mut rng, &label);
        }
    }
}

#[test]
fn fp8_nan_code_propagates() {
    let codes = [0x38u8, 0x7F, 0x38, 0x38];
    let scales = 1.0f32.to_le_bytes();
    let m = MatRef::fp8(2, 2, &codes, &scales, DType::F32, 2, 2).unwrap();
    let mut row = [0.0f32; 2];
    m.row_to_f32(0, &mut row);
    assert_eq!(row[0], 1.0);
    assert!(row[1].is_nan());
}

// ------------------------------------------------------------- MLX affine --

/// Packs `q` (`[rows, cols]`, each < 2^bits) as the MLX bitstream: per row,
/// value c at bits `[c*bits, (c+1)*bits)` LSB first, bit 0 = LSB of byte 0.
/// Written bit by bit, independently of the decoder's word reader.
fn pack_bitstream(q: &[u32], rows: usize, cols: usize, bits: u32) -> Vec<u8> {
    let row_bytes = cols * bits as usize / 8;
    let mut out = vec![0u8; rows * row_bytes];
    for r in 0..rows {
        for c in 0..cols {
            for k in 0..bits as usize {
                if (q[r * cols + c] >> k) & 1 == 1 {
                    let bit = c * bits as usize + k;
                    out[r * row_bytes + bit / 8] |= 1 << (bit % 8);
                }
            }
        }
    }
    out
}

#[test]
fn packer_agrees_with_word_layout_for_aligned_bits() {
    // For 2, 4 and 8 bits the spec states the word form: element i is bits
    // `(i mod (32/b)) * b` of uint32 word `i div (32/b)`, words little-endian.
    let mut rng = Rng(2);
    for bits in [2u32, 4, 8] {
        let cols = 64;
        let q: Vec<u32> = (0..cols).map(|_| rng.below(1 << bits) as u32).collect();
        let per = 32 / bits as usize;
        let mut words = vec![0u32; cols / per];
        for (i, &v) in q.iter().enumerate() {
            words[i / per] |= v << ((i % per) as u32 * bits);
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(pack_bitstream(&q, 1, cols, bits), bytes, "bits {bits}");
    }
}

struct AffineCase {
    bytes: Vec<u8>,
    scales: Vec<u8>,
    biases: Vec<u8>,
    w: Vec<f32>,
}

fn affine_case(rng: &mut Rng, rows: usize, cols: usize, bits: u32, g: usize, sdt: DType) -> AffineCase {
    let q: Vec<u32> = (0..rows * cols).map(|_| rng.below(1 << bits) as u32).collect();
    let n = rows * cols / g;
    let raw_s: Vec<f32> = (0..n).map(|_| (0.5 + rng.sym().abs()) * 0.1 / (1u32 << bits) as f32).collect();
    let raw_b: Vec<f32> = (0..n).map(|_| -0.05 + 0.01 * rng.sym()).collect();
    let (scales, sv) = store(sdt, &raw_s);
    let (biases, bv) = store(sdt, &raw_b);
    let w = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let gi = r * (cols / g) + c / g;
            sv[gi] * q[i] as f32 + bv[gi]
        })
        .collect();
    AffineCase { bytes: pack_bitstream(&q, rows, cols, bits), scales, biases, w }
}

#[test]
fn affine_matches_scales_q_plus_biases() {
    let mut rng = Rng(0xAF);
    let mut cases = 0;
    for bits in [2u32, 3, 4, 5, 6, 8] {
        for g in [32usize, 64, 128] {
            for cols in [64usize, 128, 384, 96, 544] {
                if cols % g != 0 {
                    continue;
                }
                let rows = [7, 1, 5][cases % 3];
                let sdt = [DType::BF16, DType::F32, DType::F16][cases % 3];
                let case = affine_case(&mut rng, rows, cols, bits, g, sdt);
                let m = MatRef::affine(rows, cols, &case.bytes, bits, g, &case.scales, &case.biases, sdt).unwrap();
                assert_eq!(m.storage_bytes(), case.bytes.len() + case.scales.len() + case.biases.len());
                check_mat(&m, &case.w, 2, &mut rng, &format!("affine b{bits} G{g} {rows}x{cols} {sdt}"));
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 6 * (5 + 3 + 2));
}

#[test]
fn affine_unusual_groups() {
    // Groups that do not divide the 256-column decode block, and small ones.
    let mut rng = Rng(0x96);
    for &(rows, cols, bits, g) in &[(3, 384, 5, 96), (5, 64, 3, 16), (3, 96, 6, 48), (2, 1024, 3, 512), (1, 4, 8, 4)] {
        let case = affine_case(&mut rng, rows, cols, bits, g, DType::BF16);
        let m = MatRef::affine(rows, cols, &case.bytes, bits, g, &case.scales, &case.biases, DType::BF16).unwrap();
        check_mat(&m, &case.w, 3, &mut rng, &format!("affine b{bits} G{g} {rows}x{cols}"));
    }
}

// ------------------------------------------------------------- threading --

#[test]
fn threaded_quant_matmul_equals_single_thread() {
    let mut rng = Rng(4);
    let fp8 = fp8_case(&mut rng, 601, 600, 128, 128, DType::BF16);
    let aff = affine_case(&mut rng, 513, 1024, 3, 64, DType::BF16);
    let mats = [
        MatRef::fp8(601, 600, &fp8.codes, &fp8.scales, DType::BF16, 128, 128).unwrap(),
        MatRef::affine(513, 1024, &aff.bytes, 3, 64, &aff.scales, &aff.biases, DType::BF16).unwrap(),
    ];
    let t = 3; // rows * cols * t is above the kernel's threading threshold
    for m in &mats {
        let x: Vec<f32> = (0..t * m.cols).map(|_| rng.sym()).collect();
        let mut y1 = vec![0.0; t * m.rows];
        let mut y4 = vec![0.0; t * m.rows];
        threads::set(1);
        matmul(m, &x, &mut y1, t);
        threads::set(4);
        matmul(m, &x, &mut y4, t);
        threads::set(0);
        assert_eq!(y1, y4, "{:?}", std::mem::discriminant(&m.enc));
    }
}

// ---------------------------------------------------------------- errors --

#[test]
fn fp8_rejects_bad_parts() {
    let codes = vec![0u8; 37 * 70];
    let grid = |n: usize| vec![0u8; n * 4];
    // Good: grid [3, 3] for 16x24 blocks.
    assert!(MatRef::fp8(37, 70, &codes, &grid(9), DType::F32, 16, 24).is_ok());
    let e = MatRef::fp8(37, 70, &codes, &grid(6), DType::F32, 16, 24).unwrap_err();
    assert_eq!(e, QuantError::ByteCount { what: "fp8 scales", shape: [3, 3], elem: "F32", expected: 36, got: 24 });
    assert!(e.to_string().contains("fp8 scales"), "{e}");
    let e = MatRef::fp8(37, 70, &codes[1..], &grid(9), DType::F32, 16, 24).unwrap_err();
    assert!(matches!(e, QuantError::ByteCount { what: "fp8 weight", expected: 2590, got: 2589, .. }), "{e}");
    let e = MatRef::fp8(37, 70, &codes, &grid(9), DType::U8, 16, 24).unwrap_err();
    assert_eq!(e, QuantError::ScaleDType(DType::U8));
    let e = MatRef::fp8(37, 70, &codes, &grid(9), DType::F32, 0, 24).unwrap_err();
    assert!(matches!(e, QuantError::BlockSize { .. }), "{e}");
    let e = MatRef::fp8(usize::MAX, 3, &codes, &grid(9), DType::F32, 1, 1).unwrap_err();
    assert!(matches!(e, QuantError::TooLarge { .. }), "{e}");
}

#[test]
fn affine_rejects_bad_parts() {
    let (rows, cols, g) = (3usize, 128usize, 64usize);
    let w4 = vec![0u8; rows * cols / 2];
    let s = vec![0u8; rows * (cols / g) * 2];
    assert!(MatRef::affine(rows, cols, &w4, 4, g, &s, &s, DType::BF16).is_ok());

    let e = MatRef::affine(rows, cols, &w4, 7, g, &s, &s, DType::BF16).unwrap_err();
    assert_eq!(e, QuantError::Bits(7));
    for bad in [1u32, 16, 0, 32] {
        assert_eq!(MatRef::affine(rows, cols, &w4, bad, g, &s, &s, DType::BF16).unwrap_err(), QuantError::Bits(bad));
    }
    let e = MatRef::affine(rows, 96, &w4, 4, 64, &s, &s, DType::BF16).unwrap_err();
    assert_eq!(e, QuantError::GroupSize { group_size: 64, cols: 96 });
    let e = MatRef::affine(rows, cols, &w4, 4, 0, &s, &s, DType::BF16).unwrap_err();
    assert!(matches!(e, QuantError::GroupSize { group_size: 0, .. }), "{e}");
    let e = MatRef::affine(rows, cols, &w4[..w4.len() - 4], 4, g, &s, &s, DType::BF16).unwrap_err();
    assert!(matches!(e, QuantError::ByteCount { what: "affine weight", shape: [3, 16], .. }), "{e}");
    let e = MatRef::affine(rows, cols, &w4, 4, g, &s[2..], &s, DType::BF16).unwrap_err();
    assert!(matches!(e, QuantError::ByteCount { what: "affine scales", .. }), "{e}");
    let e = MatRef::affine(rows, cols, &w4, 4, g, &s, &s[..4], DType::BF16).unwrap_err();
    assert!(matches!(e, QuantError::ByteCount { what: "affine biases", .. }), "{e}");
    // Scales read as F32 need twice the bytes.
    let e = MatRef::affine(rows, cols, &w4, 4, g, &s, &s, DType::F32).unwrap_err();
    assert!(matches!(e, QuantError::ByteCount { what: "affine scales", elem: "F32", .. }), "{e}");
    let e = MatRef::affine(rows, cols, &w4, 4, g, &s, &s, DType::U32).unwrap_err();
    assert_eq!(e, QuantError::ScaleDType(DType::U32));
    // 48 three-bit values are 144 bits: rows would not start on a word.
    let e = MatRef::affine(1, 48, &w4, 3, 16, &s, &s, DType::BF16).unwrap_err();
    assert_eq!(e, QuantError::RowWords { cols: 48, bits: 3 });
    let e = MatRef::affine(usize::MAX, 64, &w4, 8, 64, &s, &s, DType::BF16).unwrap_err();
    assert!(matches!(e, QuantError::TooLarge { .. }), "{e}");
    // Every error renders as one line naming what is wrong.
    assert_eq!(
        QuantError::ByteCount { what: "affine scales", shape: [3, 2], elem: "BF16", expected: 12, got: 10 }.to_string(),
        "affine scales: shape [3, 2] of BF16 needs 12 bytes, got 10"
    );
}

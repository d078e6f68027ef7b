//! ggml block formats against gguf-py and llama.cpp goldens
//! (tests/data/ggml, made by tools/reference/make_ggml_vectors.py), and the
//! ggml `MatRef` encoding against dequantise-then-f64 matmuls.
//!
//! Decoders: every type's golden rows decode bit for bit to
//! `gguf.quants.dequantize`'s f32 values (no tolerance: both sides do the same
//! f32 operations in the same order). Quantizers: byte for byte against the
//! reference each manifest entry names (gguf-py for F16 / BF16 / Q4_0 / Q8_0,
//! llama.cpp's `quantize_row_*_ref` for Q4_K / Q6_K); the K-quants' invariants
//! and error bounds are checked as well, on inputs made here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use half::f16;
use qmoe_core::dtype::DType;
use qmoe_core::GgmlType;
use qmoe_kernels::ggml::{decode_blocks, quantize_q4_k, quantize_q6_k, quantizer};
use qmoe_kernels::linear::{matmul, matvec, reference_matmul, Encoding, MatRef, QuantError};
use qmoe_kernels::simd::gemm::with_f32_activations;
use qmoe_kernels::threads;

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ggml").join(file)
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data("manifest.json")).unwrap()).unwrap()
}

fn read_f32(file: &str) -> Vec<f32> {
    std::fs::read(data(file)).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn ty_named(name: &str) -> GgmlType {
    GgmlType::ALL.into_iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("unknown type {name}"))
}

fn usize_of(v: &serde_json::Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("manifest: {key}")) as usize
}

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
    /// Roughly Gaussian (sum of four uniforms), unit-ish variance.
    fn normal(&mut self) -> f32 {
        (self.sym() + self.sym() + self.sym() + self.sym()) * 0.866
    }
}

/// Byte offsets of the f16 scale fields inside one block (ggml's `block_*` structs).
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL | GgmlType::IQ4XS => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
    }
}

/// `[rows, cols]` of `ty`: random blocks with finite, modest f16 scales
/// (random bytes elsewhere, so every quant pattern occurs); float types get
/// random values of magnitude < 2.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = rows * cols / ty.block_size();
    let ts = ty.type_size();
    let mut out = vec![0u8; n_blocks * ts];
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let x: Vec<f32> = (0..rows * cols).map(|_| rng.sym() * 2.0).collect();
            quantizer(ty).unwrap()(&x, &mut out);
        }
        _ => {
            for b in out.chunks_exact_mut(ts) {
                for byte in b.iter_mut() {
                    *byte = rng.next() as u8;
                }
                for &off in scale_fields(ty) {
                    let s = f16::from_f32(rng.sym() * 0.02);
                    b[off..off + 2].copy_from_slice(&s.to_bits().to_le_bytes());
                }
            }
        }
    }
    out
}

fn decode_all(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    decode_blocks(ty, bytes, &mut out);
    out
}

#[test]
fn every_type_decodes_bit_for_bit_like_gguf_dequantize() {
    let m = manifest();
    let mut seen = BTreeSet::new();
    for e in m["decode"].as_array().unwrap() {
        let ty = ty_named(e["type"].as_str().unwrap());
        assert_eq!(e["id"].as_u64().unwrap() as u32, ty.id(), "{ty}: ggml id");
        let (rows, cols) = (usize_of(e, "rows"), usize_of(e, "cols"));
        let bytes = std::fs::read(data(e["blocks"].as_str().unwrap())).unwrap();
        let want = read_f32(e["values"].as_str().unwrap());
        assert_eq!(want.len(), rows * cols, "{ty}: golden length");

        let got = decode_all(ty, &bytes, rows * cols);
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
        assert!(
            bad.is_empty(),
            "{ty}: {} of {} values differ; first at [{}][{}]: {} vs gguf {}",
            bad.len(),
            got.len(),
            bad[0] / cols,
            bad[0] % cols,
            got[bad[0]],
            want[bad[0]]
        );

        // The same values through the matrix wrapper, row by row.
        let w = MatRef::ggml(ty, rows, cols, &bytes).unwrap();
        assert!(matches!(w.enc, Encoding::Ggml(t) if t == ty));
        assert_eq!(w.storage_bytes(), bytes.len());
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            w.row_to_f32(r, &mut row);
            let same = row.iter().zip(&want[r * cols..]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty}: row_to_f32({r}) differs from gguf");
        }
        eprintln!("{ty}: {} values bit-identical to gguf.quants.dequantize", got.len());
        seen.insert(ty);
    }
    let all: BTreeSet<GgmlType> = GgmlType::ALL.into_iter().collect();
    assert_eq!(seen, all, "golden vectors for every GgmlType");
}

/// `y[t][r] = sum_c w[r][c] x[t][c]` in f64 and the sum of |terms| (for a tolerance).
fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n_tokens: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(rows * n_tokens);
    for t in 0..n_tokens {
        for r in 0..rows {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for c in 0..cols {
                let p = w[r * cols + c] as f64 * x[t * cols + c] as f64;
                s += p;
                a += p.abs();
            }
            out.push((s, a));
        }
    }
    out
}

/// Ggml matmul == float matmul of the decoded matrix (bit for bit: same
/// block loop, same dots) and == the f64 reference within f32 rounding.
fn check_matmul(ty: GgmlType, rows: usize, cols: usize, n_tokens: usize, rng: &mut Rng) {
    let bytes = random_matrix(ty, rows, cols, rng);
    let wq = decode_all(ty, &bytes, rows * cols);
    let x: Vec<f32> = (0..n_tokens * cols).map(|_| rng.sym()).collect();
    let w = MatRef::ggml(ty, rows, cols, &bytes).unwrap();
    let mut y = vec![0.0; n_tokens * rows];
    reference_matmul(&w, &x, &mut y, n_tokens);

    let wf: Vec<u8> = wq.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut yf = vec![0.0; n_tokens * rows];
    reference_matmul(&MatRef::new(DType::F32, rows, cols, &wf), &x, &mut yf, n_tokens);
    assert!(
        y.iter().zip(&yf).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{ty} {rows}x{cols} T{n_tokens}: ggml matmul differs from float matmul of the decoded weights"
    );

    for (i, (want, scale)) in reference(&wq, &x, rows, cols, n_tokens).into_iter().enumerate() {
        let got = y[i] as f64;
        assert!(
            (got - want).abs() <= 1e-5 * scale + 1e-30,
            "{ty} {rows}x{cols} T{n_tokens} [{}][{}]: {got} vs {want}",
            i / rows,
            i % rows
        );
    }
    let mut y1 = vec![0.0; rows];
    reference_matmul(&w, &x[..cols], &mut y1, 1);
    assert_eq!(y1, y[..rows], "{ty}: one token == first token of several");
    // The pooled path with f32 activations computes the same function.
    let mut yp = vec![0.0; n_tokens * rows];
    with_f32_activations(|| matmul(&w, &x, &mut yp, n_tokens));
    let mut yv = vec![0.0; rows];
    with_f32_activations(|| matvec(&w, &x[..cols], &mut yv));
    for (i, (want, scale)) in reference(&wq, &x, rows, cols, n_tokens).into_iter().enumerate() {
        assert!((yp[i] as f64 - want).abs() <= 1e-5 * scale + 1e-30, "{ty} pooled [{i}]: {} vs {want}", yp[i]);
        if i < rows {
            assert!((yv[i] as f64 - want).abs() <= 1e-5 * scale + 1e-30, "{ty} pooled matvec [{i}]");
        }
    }
}

#[test]
fn matmul_equals_dequantize_then_f64_for_every_type() {
    let mut rng = Rng(11);
    for ty in GgmlType::ALL {
        let bs = ty.block_size();
        // Whole decode steps, a partial last step, several tokens; for
        // 32-value types also rows shorter than one 256-column step.
        let mut shapes = vec![(1, 256, 1), (5, 768, 3), (3, 1024 + bs, 2)];
        if bs < 256 {
            shapes.push((4, 3 * bs, 5));
        }
        if bs == 1 {
            shapes.push((2, 7, 3));
        }
        for (rows, cols, t) in shapes {
            check_matmul(ty, rows, cols, t, &mut rng);
        }
    }
}

#[test]
fn threaded_ggml_matmul_equals_single_thread() {
    // 300 x 1280 x 3 multiply-adds: above the threshold that splits by rows.
    let (rows, cols, t) = (300, 1280, 3);
    let mut rng = Rng(5);
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0, GgmlType::IQ4XS, GgmlType::Q3K] {
        let bytes = random_matrix(ty, rows, cols, &mut rng);
        let x: Vec<f32> = (0..t * cols).map(|_| rng.sym()).collect();
        let w = MatRef::ggml(ty, rows, cols, &bytes).unwrap();
        let (mut y1, mut y4) = (vec![0.0; t * rows], vec![0.0; t * rows]);
        threads::set(1);
        matmul(&w, &x, &mut y1, t);
        threads::set(4);
        matmul(&w, &x, &mut y4, t);
        threads::set(0);
        assert_eq!(y1, y4, "{ty}: threads change the result");
        let mut yx = vec![0.0; t * rows];
        threads::set(4);
        with_f32_activations(|| matmul(&w, &x, &mut yx, t));
        threads::set(0);
        let wq = decode_all(ty, &bytes, rows * cols);
        for (i, (want, scale)) in reference(&wq, &x, rows, cols, t).into_iter().enumerate() {
            assert!((yx[i] as f64 - want).abs() <= 1e-5 * scale + 1e-30, "{ty} [{i}]: {} vs {want}", yx[i]);
        }
    }
}

#[test]
fn ggml_matref_rejects_bad_shapes() {
    let bytes = vec![0u8; 2 * 144];
    assert_eq!(
        MatRef::ggml(GgmlType::Q4K, 2, 300, &bytes).unwrap_err(),
        QuantError::GgmlBlock { ty: GgmlType::Q4K, block_size: 256, cols: 300 }
    );
    assert_eq!(
        MatRef::ggml(GgmlType::Q4K, 3, 256, &bytes).unwrap_err(),
        QuantError::ByteCount { what: "ggml weight", shape: [3, 256], elem: "Q4_K", expected: 432, got: 288 }
    );
    assert!(matches!(MatRef::ggml(GgmlType::Q8_0, 2, 48, &bytes), Err(QuantError::GgmlBlock { block_size: 32, .. })));
    assert!(matches!(MatRef::ggml(GgmlType::Q8_0, usize::MAX / 2, 64, &bytes), Err(QuantError::TooLarge { .. })));
    // The messages name the type and the sizes.
    let msg = MatRef::ggml(GgmlType::Q4K, 2, 300, &bytes).unwrap_err().to_string();
    assert!(msg.contains("Q4_K") && msg.contains("256") && msg.contains("300"), "{msg}");
    // Any whole number of blocks is fine, zero rows included.
    assert!(MatRef::ggml(GgmlType::Q4K, 2, 256, &bytes).is_ok());
    assert!(MatRef::ggml(GgmlType::Q6K, 0, 512, &[]).is_ok());
    assert!(MatRef::ggml(GgmlType::F16, 3, 5, &[0u8; 30]).is_ok());
}

#[test]
fn quantizers_match_their_reference_byte_for_byte() {
    let m = manifest();
    let mut covered = BTreeSet::new();
    for e in m["quantize"].as_array().unwrap() {
        let ty = ty_named(e["type"].as_str().unwrap());
        let (rows, cols) = (usize_of(e, "rows"), usize_of(e, "cols"));
        let x = read_f32(e["input"].as_str().unwrap());
        let want = std::fs::read(data(e["expected"].as_str().unwrap())).unwrap();
        assert_eq!(x.len(), rows * cols);
        let mut got = vec![0u8; want.len()];
        quantizer(ty).unwrap_or_else(|| panic!("{ty}: golden but no quantizer"))(&x, &mut got);
        let ts = ty.type_size();
        let bad: Vec<usize> =
            (0..want.len() / ts).filter(|&b| got[b * ts..(b + 1) * ts] != want[b * ts..(b + 1) * ts]).collect();
        assert!(
            bad.is_empty(),
            "{ty}: {} of {} blocks differ from {}; first block {}:\n ours {:?}\n want {:?}",
            bad.len(),
            want.len() / ts,
            e["reference"],
            bad[0],
            &got[bad[0] * ts..(bad[0] + 1) * ts],
            &want[bad[0] * ts..(bad[0] + 1) * ts]
        );
        eprintln!("{ty}: {} blocks byte-identical to {}", want.len() / ts, e["reference"]);
        covered.insert(ty);
    }
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        assert!(covered.contains(&ty), "{ty}: no quantizer golden");
    }
}

/// Quantizer test inputs: Gaussian rows of several scales, an outlier row,
/// a strictly positive row, and a row with a zero and a dwarfed sub-block.
fn k_inputs(rng: &mut Rng) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for scale in [1e-3f32, 0.05, 1.0, 300.0] {
        rows.push((0..1024).map(|_| rng.normal() * scale).collect::<Vec<_>>());
    }
    let mut r: Vec<f32> = (0..512).map(|_| rng.normal() * 0.02).collect();
    r[77] = 3.0;
    rows.push(r);
    rows.push((0..512).map(|_| rng.sym().abs() + 0.5).collect());
    let mut r: Vec<f32> = (0..512).map(|_| rng.normal()).collect();
    r[..32].fill(0.0);
    for v in &mut r[224..256] {
        *v *= 1000.0;
    }
    r[256..].fill(0.0);
    rows.push(r);
    rows
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let e: f64 = x.iter().zip(y).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let s: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (e / s.max(1e-300)).sqrt()
}

/// Q4_K invariants: the reference's final step is
/// `L = clamp(nearest_int((x + dmin * m) / (d * sc)), 0, 15)` for every
/// sub-block with `d * sc != 0`, the largest sub-block scale and min quantize
/// to 63, and the round trip of Gaussian data is as accurate as 4.5 bits allow.
#[test]
fn q4_k_quantizer_invariants_and_error() {
    let mut rng = Rng(41);
    for x in k_inputs(&mut rng) {
        let mut q = vec![0u8; x.len() / 256 * 144];
        quantize_q4_k(&x, &mut q);
        let y = decode_all(GgmlType::Q4K, &q, x.len());
        for (sb, (b, xs)) in q.chunks_exact(144).zip(x.chunks_exact(256)).enumerate() {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
            assert!(d >= 0.0 && dmin >= 0.0, "super-block {sb}: d {d} dmin {dmin}");
            let s = &b[4..16];
            let sm: Vec<(u8, u8)> = (0..8)
                .map(|j| {
                    if j < 4 {
                        (s[j] & 63, s[j + 4] & 63)
                    } else {
                        ((s[j + 4] & 0xF) | (s[j - 4] >> 6) << 4, (s[j + 4] >> 4) | (s[j] >> 6) << 4)
                    }
                })
                .collect();
            if d > 0.0 {
                assert!(sm.iter().any(|p| p.0 == 63), "super-block {sb}: no sub-block scale at 63: {sm:?}");
            }
            if dmin > 0.0 {
                assert!(sm.iter().any(|p| p.1 == 63), "super-block {sb}: no min at 63: {sm:?}");
            }
            for (j, &(sc, m)) in sm.iter().enumerate() {
                let dj = d * sc as f32;
                if dj == 0.0 {
                    continue;
                }
                let dm = dmin * m as f32;
                for i in 32 * j..32 * j + 32 {
                    let l = ((xs[i] + dm) / dj).round_ties_even().clamp(0.0, 15.0) as u8;
                    let got = (b[16 + i / 64 * 32 + i % 32] >> (4 * (i % 64 / 32))) & 0xF;
                    assert_eq!(got, l, "super-block {sb} value {i}");
                }
            }
        }
        if x.len() == 1024 {
            let e = rel_rmse(&x, &y);
            assert!(e < 0.12, "Q4_K relative rmse {e}");
        }
    }
}

/// Q6_K invariants: `L = clamp(nearest_int(x / (d * sc)), -32, 31)`
/// for every group with `d * sc != 0`, the group of largest scale stores -128,
/// and values inside the grid are within half a step.
#[test]
fn q6_k_quantizer_invariants_and_error() {
    let mut rng = Rng(43);
    for x in k_inputs(&mut rng) {
        let mut q = vec![0u8; x.len() / 256 * 210];
        quantize_q6_k(&x, &mut q);
        let y = decode_all(GgmlType::Q6K, &q, x.len());
        for (sb, (b, xs)) in q.chunks_exact(210).zip(x.chunks_exact(256)).enumerate() {
            let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
            if xs.iter().all(|v| *v == 0.0) {
                assert!(b.iter().all(|&v| v == 0), "super-block {sb}: zero input, nonzero block");
                continue;
            }
            let sc: Vec<i8> = b[192..208].iter().map(|&v| v as i8).collect();
            assert!(sc.contains(&-128), "super-block {sb}: no scale at -128: {sc:?}");
            for (g, &s) in sc.iter().enumerate() {
                let dj = d * s as f32;
                if dj == 0.0 {
                    continue;
                }
                for i in 16 * g..16 * g + 16 {
                    let l = (xs[i] / dj).round_ties_even().clamp(-32.0, 31.0) as i32 + 32;
                    let (n, r) = (i / 128, i % 128);
                    let lo = (b[n * 64 + r % 64] >> (4 * (r / 64))) & 0xF;
                    let hi = (b[128 + n * 32 + r % 32] >> (2 * (r / 32))) & 3;
                    assert_eq!((lo | hi << 4) as i32, l, "super-block {sb} value {i}");
                    let step = dj.abs();
                    if (xs[i] / dj).abs() <= 31.0 {
                        let err = (xs[i] - y[sb * 256 + i]).abs();
                        assert!(err <= step * 0.5001 + 1e-30, "super-block {sb} value {i}: error {err} step {step}");
                    }
                }
            }
        }
        if x.len() == 1024 {
            let e = rel_rmse(&x, &y);
            assert!(e < 0.03, "Q6_K relative rmse {e}");
        }
    }
}

/// Every quantizer's output decodes back near its input (Q8_0 within half a
/// step of its block, the others within their bit budgets).
#[test]
fn quantize_then_decode_round_trips() {
    let mut rng = Rng(47);
    let x: Vec<f32> = (0..4096).map(|_| rng.normal()).collect();
    for (ty, bound) in [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q6K, 0.03),
        (GgmlType::Q4K, 0.12),
        (GgmlType::Q4_0, 0.15),
    ] {
        let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
        quantizer(ty).unwrap()(&x, &mut q);
        let y = decode_all(ty, &q, x.len());
        let e = rel_rmse(&x, &y);
        eprintln!("{ty}: relative rmse {e:.5}");
        assert!(e <= bound, "{ty}: relative rmse {e} > {bound}");
    }
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q5K,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
    ] {
        assert!(quantizer(ty).is_none(), "{ty}");
    }
}

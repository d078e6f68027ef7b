//! Quantized tensors from real converter output (tests/fixtures, made by
//! mlx-lm 0.32.2 and the FP8 recipe of tools/reference/make_dialect_fixtures.py)
//! decoded through `MatRef` and checked against values computed here.
//!
//! MLX: every quantized matrix of mlx_q4 / mlx_q6 / mlx_q3 is decoded whole
//! (expert stacks `[E, out, in]` as one `[E*out, in]` matrix, which is the
//! same memory layout) and compared exactly with `scales * q + biases`
//! (q read bit by bit here), and within one quantization step of the
//! unquantized mlx_bf16 conversion of the same source, which checks the
//! packing order against mlx itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use qmoe_core::dtype::{to_f32_vec, DType};
use qmoe_kernels::linear::{reference_matmul, MatRef};
use qmoe_kernels::quant::e4m3_to_f32;

fn fixture(dir: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(dir).join(file)
}

struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Minimal safetensors reader: 8-byte LE header length, JSON header,
/// data offsets relative to the end of the header.
fn load(dir: &str) -> BTreeMap<String, Tensor> {
    let raw = std::fs::read(fixture(dir, "model.safetensors")).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let data = &raw[8 + n..];
    let mut out = BTreeMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match info["dtype"].as_str().unwrap() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F8_E4M3" => DType::F8E4M3,
            "U32" => DType::U32,
            other => panic!("{name}: unexpected dtype {other}"),
        };
        let shape: Vec<usize> =
            info["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let off = info["data_offsets"].as_array().unwrap();
        let (a, b) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
        out.insert(name.clone(), Tensor { dtype, shape, bytes: data[a..b].to_vec() });
    }
    out
}

/// `(leading dims flattened, last dim)`.
fn as_2d(shape: &[usize]) -> (usize, usize) {
    let last = *shape.last().unwrap();
    (shape[..shape.len() - 1].iter().product(), last)
}

/// Bit `k` of value `c` in a row's LSB-first bitstream.
fn q_at(row: &[u8], c: usize, bits: usize) -> u32 {
    (0..bits).map(|k| ((row[(c * bits + k) / 8] >> ((c * bits + k) % 8)) as u32 & 1) << k).sum()
}

fn check_mlx(dir: &str, want_bits: &[usize], want_tensors: usize) {
    let q = load(dir);
    let float = load("mlx_bf16");
    let mut seen_bits = Vec::new();
    let mut n = 0;
    for (name, w) in &q {
        let Some(base) = name.strip_suffix(".weight") else { continue };
        if w.dtype != DType::U32 {
            continue;
        }
        let s = &q[&format!("{base}.scales")];
        let b = &q[&format!("{base}.biases")];
        let orig = &float[name];
        // Recover cols, G and bits from shapes (spec §4.6), using the float
        // conversion for the unpacked input dim.
        let (rows, words) = as_2d(&w.shape);
        let (srows, groups) = as_2d(&s.shape);
        let (orows, cols) = as_2d(&orig.shape);
        assert_eq!((srows, orows), (rows, rows), "{name}");
        let (g, bits) = (cols / groups, words * 32 / cols);
        if !seen_bits.contains(&bits) {
            seen_bits.push(bits);
        }
        let m = MatRef::affine(rows, cols, &w.bytes, bits as u32, g, &s.bytes, &b.bytes, s.dtype)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let sv = to_f32_vec(s.dtype, &s.bytes);
        let bv = to_f32_vec(b.dtype, &b.bytes);
        let ov = to_f32_vec(orig.dtype, &orig.bytes);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            m.row_to_f32(r, &mut row);
            let packed = &w.bytes[r * words * 4..(r + 1) * words * 4];
            for c in 0..cols {
                let gi = r * groups + c / g;
                let want = sv[gi] * q_at(packed, c, bits) as f32 + bv[gi];
                assert!(row[c].is_finite(), "{name} [{r}, {c}] not finite");
                assert_eq!(row[c], want, "{name} [{r}, {c}]");
                // Within about one step of the value mlx quantized: mlx may
                // pick a negative scale and snap the grid so that an edge
                // value is exact (observed error up to 1.0 step), then rounds
                // scale and bias to bf16 (relative 2^-9, times q up to
                // 2^bits - 1). A wrong bit order misses by many steps.
                let err = (row[c] - ov[r * cols + c]).abs();
                let tol =
                    sv[gi].abs() * 1.05 + (bv[gi].abs() + sv[gi].abs() * ((1 << bits) - 1) as f32) * 2f32.powi(-8);
                assert!(err <= tol, "{name} [{r}, {c}]: {} vs bf16 {} (scale {})", row[c], ov[r * cols + c], sv[gi]);
            }
        }
        // And a product through the kernel equals the product of the decoded rows.
        let x: Vec<f32> = (0..cols).map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5).collect();
        let mut y = vec![0.0f32; rows];
        reference_matmul(&m, &x, &mut y, 1);
        for (r, &yr) in y.iter().enumerate() {
            m.row_to_f32(r, &mut row);
            let want: f64 = row.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = row.iter().zip(&x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            assert!((yr as f64 - want).abs() <= 1e-5 * mag + 1e-12, "{name} row {r}");
        }
        n += 1;
    }
    seen_bits.sort();
    assert_eq!(seen_bits, want_bits, "{dir}: bit widths seen");
    assert_eq!(n, want_tensors, "{dir}: quantized tensors checked");
}

#[test]
fn mlx_q4_fixture_decodes() {
    let q = load("mlx_q4");
    let w = &q["language_model.model.layers.0.mlp.switch_mlp.gate_proj.weight"];
    assert_eq!((w.dtype, &w.shape[..]), (DType::U32, &[8, 32, 8][..]));
    // 4 bits, G 32; router and shared gate at 8 bits, G 64 (mlx default recipe).
    check_mlx("mlx_q4", &[4, 8], count_quantized(&q));
}

#[test]
fn mlx_q6_fixture_decodes() {
    let q = load("mlx_q6");
    check_mlx("mlx_q6", &[6, 8], count_quantized(&q));
}

#[test]
fn mlx_q3_fixture_decodes() {
    // 3 bits, G 64: values straddle words; in-dims 32 and 96 stay bf16.
    let q = load("mlx_q3");
    assert_eq!(q["language_model.model.layers.0.mlp.switch_mlp.gate_proj.scales"].shape, [8, 32, 1]);
    check_mlx("mlx_q3", &[3, 8], count_quantized(&q));
}

fn count_quantized(q: &BTreeMap<String, Tensor>) -> usize {
    let n = q.iter().filter(|(k, t)| k.ends_with(".weight") && t.dtype == DType::U32).count();
    assert!(n > 10, "expected a quantized checkpoint, found {n} packed tensors");
    n
}

#[test]
fn fp8_block_fixture_decodes() {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("fp8_block", "config.json")).unwrap()).unwrap();
    let blk = &cfg["quantization_config"]["weight_block_size"];
    let (br, bc) = (blk[0].as_u64().unwrap() as usize, blk[1].as_u64().unwrap() as usize);
    assert_eq!((br, bc), (24, 48));
    let t = load("fp8_block");
    let mut n = 0;
    for (name, w) in &t {
        if w.dtype != DType::F8E4M3 {
            continue;
        }
        let s = &t[&format!("{name}_scale_inv")];
        let (rows, cols) = (w.shape[0], w.shape[1]);
        let m = MatRef::fp8(rows, cols, &w.bytes, &s.bytes, s.dtype, br, bc).unwrap_or_else(|e| panic!("{name}: {e}"));
        let sv = to_f32_vec(s.dtype, &s.bytes);
        let gc = s.shape[1];
        let mut row = vec![0.0f32; cols];
        // The recipe scales each block so that its largest |code| is 448.
        let mut block_max = vec![0.0f32; sv.len()];
        for r in 0..rows {
            m.row_to_f32(r, &mut row);
            for (c, &v) in row.iter().enumerate() {
                let code = w.bytes[r * cols + c];
                let bi = (r / br) * gc + c / bc;
                assert!(v.is_finite(), "{name} [{r}, {c}]");
                assert_eq!(v, e4m3_to_f32(code) * sv[bi], "{name} [{r}, {c}]");
                block_max[bi] = block_max[bi].max(e4m3_to_f32(code).abs());
            }
        }
        for (bi, &mx) in block_max.iter().enumerate() {
            assert!(mx == 448.0 || (mx == 0.0 && sv[bi] == 1.0), "{name} block {bi}: max |code| {mx}");
        }
        n += 1;
    }
    assert!(n >= 30, "only {n} fp8 tensors");
}

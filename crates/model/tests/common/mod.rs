//! Shared by the golden-fixture tests: load a fixture's reference logits and
//! run a model over its ids in any of the three modes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use qmoe_model::{Logits, Model, Scratch};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub struct Golden {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub scale: f32,
}

pub fn golden(dir: &Path) -> Golden {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let ids = meta["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let (shape, logits) = qmoe_formats::read_npy_f32(&dir.join("logits.npy")).unwrap();
    assert_eq!(shape[0], ids.len());
    let scale = logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    Golden { ids, logits, scale }
}

/// Logits of every position with the sequence fed `chunk` tokens per call.
pub fn run(model: &Model, ids: &[u32], chunk: usize) -> Vec<f32> {
    let mut cache = model.new_cache(ids.len());
    let mut scratch = Scratch::default();
    let mut all = Vec::new();
    for part in ids.chunks(chunk) {
        all.extend_from_slice(model.forward(part, &mut cache, &mut scratch, Logits::All).unwrap());
    }
    all
}

/// [`run`] with f32 activations for every weight format: the function the
/// stored weights define, which is what the references compute (mlx-lm and
/// transformers keep activations in float; llama.cpp's figures are taken on
/// its dequantised-to-F32 copy). The default fast path quantizes activations
/// to int8 for quantized weights; `tests/fast_numerics.rs` covers it.
pub fn run_f32_activations(model: &Model, ids: &[u32], chunk: usize) -> Vec<f32> {
    qmoe_kernels::simd::gemm::with_f32_activations(|| run(model, ids, chunk))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Runs `model_dir` on `golden_dir`'s ids in prefill, decode and several
/// chunked modes; every mode must be within `rel_tol` x logit scale.
pub fn check(model_dir: &Path, golden_dir: &Path, rel_tol: f32) {
    let model = Model::load(model_dir).unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    let g = golden(golden_dir);
    let n = g.ids.len();
    for (mode, chunk) in [("prefill", n), ("decode", 1), ("chunked:7", 7), ("chunked:64", 64), ("chunked:33", 33)] {
        let ours = run_f32_activations(&model, &g.ids, chunk);
        let d = max_abs_diff(&ours, &g.logits) / g.scale;
        eprintln!("{} {mode}: max |diff| / scale = {d:.2e} (scale {:.2})", golden_dir.display(), g.scale);
        assert!(d <= rel_tol, "{} {mode}: relative diff {d:e} > {rel_tol:e}", golden_dir.display());
    }
}

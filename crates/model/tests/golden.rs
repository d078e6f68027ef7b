//! Golden fixtures: tiny random models written by the pinned reference
//! (`tools/reference/make_fixtures.py`, transformers in f32) with the logits
//! of every position. Each is run three equivalent ways (one prefill,
//! token-by-token decode, chunked prefill of several sizes) and must match.
//!
//! Tolerance: max |ours - reference| <= 1e-4 x logit scale (max |reference|).
//! Both sides compute in f32 from identical stored weights; what remains is
//! summation order (and chunked vs recurrent GDN).

use std::path::{Path, PathBuf};

use qmoe_model::{Logits, Model, Scratch};

const REL_TOL: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Golden {
    ids: Vec<u32>,
    logits: Vec<f32>,
    scale: f32,
}

fn golden(dir: &Path) -> Golden {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let ids = meta["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let (shape, logits) = qmoe_formats::read_npy_f32(&dir.join("logits.npy")).unwrap();
    assert_eq!(shape[0], ids.len());
    let scale = logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    Golden { ids, logits, scale }
}

/// Logits of every position with the sequence fed `chunk` tokens per call.
fn run(model: &Model, ids: &[u32], chunk: usize) -> Vec<f32> {
    let mut cache = model.new_cache(ids.len());
    let mut scratch = Scratch::default();
    let mut all = Vec::new();
    for part in ids.chunks(chunk) {
        all.extend_from_slice(model.forward(part, &mut cache, &mut scratch, Logits::All).unwrap());
    }
    all
}

fn max_rel_diff(a: &[f32], b: &[f32], scale: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check(model_dir: &Path, golden_dir: &Path) {
    let model = Model::load(model_dir).unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    let g = golden(golden_dir);
    let n = g.ids.len();
    for (mode, chunk) in [("prefill", n), ("decode", 1), ("chunked:7", 7), ("chunked:64", 64), ("chunked:33", 33)] {
        let ours = run(&model, &g.ids, chunk);
        let d = max_rel_diff(&ours, &g.logits, g.scale);
        eprintln!("{} {mode}: max |diff| / scale = {d:.2e} (scale {:.2})", golden_dir.display(), g.scale);
        assert!(d <= REL_TOL, "{} {mode}: relative diff {d:e} > {REL_TOL:e}", golden_dir.display());
    }
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

#[test]
fn qwen3_5_moe_fused_experts() {
    check(&fixture("moe_fused"), &fixture("moe_fused"));
}

#[test]
fn qwen3_5_moe_per_expert_sharded() {
    check(&fixture("moe_per_expert"), &fixture("moe_per_expert"));
}

#[test]
fn qwen3_next_fused_projections() {
    check(&fixture("next"), &fixture("next"));
}

#[test]
fn qwen3_5_dense_tied() {
    check(&fixture("dense_tied"), &fixture("dense_tied"));
}

#[test]
fn bundled_demo_model() {
    check(&root().join("models/demo"), &fixture("demo_golden"));
}

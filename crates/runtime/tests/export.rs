//! GGUF export round trips: every dialect exports, the export loads back
//! through the GGUF importer, and gives the source's logits (f32: float
//! tolerance; q8_0 / q4_k_m: exactly the logits of its own dequantised
//! weights, and close to the source).

use std::path::{Path, PathBuf};

use qmoe_model::{Logits, Model, Scratch};
use qmoe_runtime::export::{export_gguf, ExportType};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("qmoe-export-{}-{name}.gguf", std::process::id()))
}

/// Logits with f32 activations for every weight format: the function the
/// stored weights define (the default fast path quantizes activations to
/// int8 for quantized weights, which is not what a round trip compares).
fn logits(model: &Model, ids: &[u32], chunk: usize) -> Vec<f32> {
    qmoe_kernels::simd::gemm::with_f32_activations(|| {
        let mut cache = model.new_cache(ids.len());
        let mut s = Scratch::default();
        ids.chunks(chunk).flat_map(|c| model.forward(c, &mut cache, &mut s, Logits::All).unwrap().to_vec()).collect()
    })
}

fn ids_of(name: &str) -> Vec<u32> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("golden.json")).unwrap()).unwrap();
    meta["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn export(model: &Model, ty: ExportType, tag: &str) -> Model {
    let out = tmp(tag);
    export_gguf(model, ty, Vec::new(), tag, &out).unwrap();
    let m = Model::load(&out).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let _ = std::fs::remove_file(out);
    m
}

#[test]
fn f32_export_round_trips_every_architecture() {
    for name in ["moe_fused", "next", "dense_tied", "mlx_q4", "fp8_block"] {
        let src = Model::load(&fixture(name)).unwrap();
        let ids = ids_of(name);
        let want = logits(&src, &ids, ids.len());
        let back = export(&src, ExportType::F32, &format!("{name}-f32"));
        for chunk in [ids.len(), 1, 9] {
            let d = rel_diff(&logits(&back, &ids, chunk), &want);
            eprintln!("{name} f32 round trip (chunk {chunk}): {d:.2e}");
            assert!(d < 1e-4, "{name} chunk {chunk}: {d}");
        }
    }
}

#[test]
fn quantized_exports_equal_their_dequantised_weights() {
    // `tol` bounds the distance from the unquantized source; these tiny random
    // models route on margins of ~0.02, so quantization flips some experts and
    // the worst position moves by up to ~10% of the logit scale (median far less).
    for (name, ty, tol) in
        [("moe_fused", ExportType::Q8_0, 0.25), ("next", ExportType::Q4KM, 1.0), ("moe_fused", ExportType::Q6K, 0.3)]
    {
        let src = Model::load(&fixture(name)).unwrap();
        let ids = ids_of(name);
        let q = export(&src, ty, &format!("{name}-{ty:?}"));
        // Re-export the quantized model as f32: exactly its dequantised weights.
        let deq = export(&q, ExportType::F32, &format!("{name}-{ty:?}-f32"));
        let (lq, ld) = (logits(&q, &ids, ids.len()), logits(&deq, &ids, ids.len()));
        let exact = rel_diff(&lq, &ld);
        let ls = logits(&src, &ids, ids.len());
        let vs_src = rel_diff(&lq, &ls);
        let mut d: Vec<f32> = lq.iter().zip(&ls).map(|(a, b)| (a - b).abs()).collect();
        d.sort_by(f32::total_cmp);
        eprintln!(
            "{name} {ty:?}: vs dequantised {exact:.2e}, vs source max {vs_src:.2e} (median |diff| {:.3})",
            d[d.len() / 2]
        );
        assert!(exact < 1e-4, "{name} {ty:?}: {exact}");
        assert!(vs_src < tol, "{name} {ty:?}: {vs_src}");
    }
}

#[test]
fn q4_k_m_type_choice_equals_llama_cpp_quantizer() {
    // gguf_moe_k256_q4_k_m was quantized by llama.cpp's llama_model_quantize
    // (Q4_K_M) from its own f32 conversion; every matrix is 256 wide, so the
    // recipe (Q6_K for output and for attn_v / attn_qkv / ffn_down* of the
    // use_more_bits blocks, Q4_K elsewhere, F32 for norms, routers, conv)
    // shows without fallbacks. Re-exporting it must choose the same type for
    // every tensor.
    let path = fixture("gguf_moe_k256_q4_k_m").join("model.gguf");
    let model = Model::load(&path).unwrap();
    let out = tmp("k256-q4km");
    export_gguf(&model, ExportType::Q4KM, Vec::new(), "k256", &out).unwrap();
    let (theirs, ours) =
        (qmoe_formats::gguf::GgufFile::open(&path).unwrap(), qmoe_formats::gguf::GgufFile::open(&out).unwrap());
    assert_eq!(theirs.tensors().len(), ours.tensors().len());
    // llama.cpp's quantizer writes ggml's n_dims (ffn_gate_inp_shexp ne {H}),
    // its converter ne {H, 1} (what the exporter writes): same tensor.
    let squeezed = |ne: &[u64]| ne.iter().rev().skip_while(|&&d| d == 1).copied().collect::<Vec<_>>();
    let mut q6 = 0;
    for t in theirs.tensors() {
        let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("{} not exported", t.name));
        assert_eq!((t.type_name(), squeezed(&t.ne)), (o.type_name(), squeezed(&o.ne)), "{}", t.name);
        q6 += (t.type_name() == "Q6_K") as usize;
    }
    assert_eq!(q6, 4);
    let _ = std::fs::remove_file(out);
}

//! GGUF files written by llama.cpp's own converter and quantizer
//! (tools/reference/make_gguf_fixtures.py, llama.cpp 0c1e57098 via
//! llama-cpp-python 0.3.36), in every run mode.
//!
//! Reference: llama.cpp's logits on the same file with every tensor
//! dequantised to F32 (`logits_dequant_f32.npy`; `logits.npy` for the f32
//! file): ggml's own quantized matmuls also quantize the activations (to f16 /
//! bf16 / 8-bit), which moves logits by 0.05-4.7 and is not the function the
//! weights define. Tolerance 1e-4 x logit scale, as for every golden;
//! measured 2.6e-6 to 4.7e-5 (the dense fixture amplifies small changes
//! ~200x, the reference script measured it).

mod common;

use std::path::Path;

use common::{fixture, golden, max_abs_diff, run_f32_activations};
use qmoe_model::Model;

const REL_TOL: f32 = 1e-4;

fn check_gguf(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir.join("model.gguf")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let g = golden(&dir);
    let reference = if Path::new(&dir.join("logits_dequant_f32.npy")).exists() {
        qmoe_formats::read_npy_f32(&dir.join("logits_dequant_f32.npy")).unwrap().1
    } else {
        g.logits.clone()
    };
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let n = g.ids.len();
    for (mode, chunk) in [("prefill", n), ("decode", 1), ("chunked:13", 13)] {
        let d = max_abs_diff(&run_f32_activations(&model, &g.ids, chunk), &reference) / scale;
        eprintln!("{name} {mode}: max |diff| / scale = {d:.2e}");
        assert!(d <= REL_TOL, "{name} {mode}: {d:e}");
    }
}

#[test]
fn qwen35moe_tiled_value_heads_bf16_f16() {
    check_gguf("gguf_moe_dv16_bf16");
    check_gguf("gguf_moe_dv16_f16");
}

#[test]
fn qwen35moe_q8_0_and_q4_k_m() {
    check_gguf("gguf_moe_dv16_q8_0");
    check_gguf("gguf_moe_dv16_q4_k_m");
}

#[test]
fn qwen3next_f32_f16() {
    check_gguf("gguf_nextmoe_f32");
    check_gguf("gguf_nextmoe_f16");
}

#[test]
fn qwen3next_q8_0_and_q4_k_m() {
    check_gguf("gguf_nextmoe_q8_0");
    check_gguf("gguf_nextmoe_q4_k_m");
}

#[test]
fn qwen35_dense_tied() {
    check_gguf("gguf_dense_dv16_f16");
    check_gguf("gguf_dense_dv16_q8_0");
    check_gguf("gguf_dense_dv16_q4_k_m");
}

#[test]
fn mtp_blocks_are_loaded_not_unexpected() {
    let model = Model::load(&fixture("gguf_moe_dv16_f16").join("model.gguf")).unwrap();
    assert_eq!(model.weights.mtp.as_ref().map(|m| m.layers.len()), Some(1));
    match &model.source {
        qmoe_model::Source::Gguf { conventions, .. } => {
            assert!(conventions.mtp_present && conventions.mtp_layers == 1);
            assert_eq!(conventions.head_map, qmoe_kernels::gdn::HeadMap::Tiled);
        }
        _ => panic!("not loaded as GGUF"),
    }
    assert_eq!(model.config.num_hidden_layers, 5);
}

#[test]
fn qwen35moe_real_q4_k_and_q6_k() {
    // Rows of 256 (= QK_K) everywhere, so llama.cpp's Q4_K_M is genuinely
    // Q4_K with Q6_K for output / attn_v / attn_qkv / ffn_down of the
    // use_more_bits blocks: no Q5_0 / Q8_0 fallback as in the narrow fixtures.
    let name = "gguf_moe_k256_q4_k_m";
    let model = Model::load(&fixture(name).join("model.gguf")).unwrap();
    let qmoe_model::Source::Gguf { conventions, .. } = &model.source else { panic!("not loaded as GGUF") };
    // What `qmoe inspect` lists per tensor.
    let mut by_storage = std::collections::BTreeMap::<String, usize>::new();
    for u in conventions.tensors.values().flatten() {
        *by_storage.entry(u.storage.clone()).or_insert(0) += 1;
    }
    eprintln!("{name}: {by_storage:?}");
    assert!(by_storage.get("GGUF Q4_K").is_some_and(|&n| n > 0), "{by_storage:?}");
    assert!(by_storage.get("GGUF Q6_K").is_some_and(|&n| n > 0), "{by_storage:?}");
    let allowed = ["GGUF Q4_K", "GGUF Q6_K", "F32"];
    assert!(by_storage.keys().all(|k| allowed.contains(&k.as_str())), "a fallback type: {by_storage:?}");
    check_gguf(name);
}

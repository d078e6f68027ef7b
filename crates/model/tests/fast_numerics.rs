//! The fast kernels at model level. Quantized weights see int8 activations
//! (as in llama.cpp's CPU backend), so their logits differ from the
//! f32-activation function by quantization noise, which these tiny random
//! models amplify: a perturbed hidden state flips a near-tie top-k choice
//! and the token's output changes wholesale.
//!
//! What is pinned here:
//! * determinism: the pooled kernels give identical logits run to run;
//! * for GGUF fixtures, the size of the effect against llama.cpp's own: its
//!   logits on the quantized file (int8 / f16 activations) versus on the
//!   dequantised-F32 copy (both committed, produced by llama.cpp) move by
//!   `d_llama`; ours, fast versus f32 activations, must move by at most
//!   twice that.
//!
//! The exactness of the f32-activation path is what the golden tests check.

mod common;

use common::{fixture, golden, max_abs_diff, run, run_f32_activations};
use qmoe_model::Model;

/// Fast vs f32-activation logits of `model` on `ids`, relative to `scale`;
/// asserts two fast runs are identical.
fn fast_vs_exact(name: &str, model: &Model, ids: &[u32], scale: f32) -> f32 {
    let fast = run(model, ids, ids.len());
    let again = run(model, ids, ids.len());
    assert_eq!(fast, again, "{name}: two identical runs differ");
    assert!(fast.iter().all(|v| v.is_finite()), "{name}: non-finite logits");
    let exact = run_f32_activations(model, ids, ids.len());
    max_abs_diff(&fast, &exact) / scale
}

#[test]
fn gguf_fast_path_moves_logits_no_more_than_llama_cpp_does() {
    for name in [
        "gguf_moe_dv16_q8_0",
        "gguf_moe_dv16_q4_k_m",
        "gguf_nextmoe_q8_0",
        "gguf_nextmoe_q4_k_m",
        "gguf_dense_dv16_q8_0",
    ] {
        let dir = fixture(name);
        let model = Model::load(&dir.join("model.gguf")).unwrap();
        let g = golden(&dir);
        let dequant = qmoe_formats::read_npy_f32(&dir.join("logits_dequant_f32.npy")).unwrap().1;
        let scale = dequant.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d_llama = max_abs_diff(&g.logits, &dequant) / scale;
        let d_ours = fast_vs_exact(name, &model, &g.ids, scale);
        eprintln!("{name}: int8 activations move logits by {d_ours:.2e} of the scale (llama.cpp's own: {d_llama:.2e})");
        assert!(
            d_ours <= 2.0 * d_llama,
            "{name}: fast path moved logits by {d_ours:e}, llama.cpp's activation quantization by {d_llama:e}"
        );
    }
}

#[test]
fn mlx_fast_path_is_deterministic() {
    for name in ["mlx_q4", "mlx_q3", "mlx_q6", "mlx_next_q4"] {
        let dir = fixture(name);
        let model = Model::load(&dir).unwrap();
        let g = golden(&dir);
        let d = fast_vs_exact(name, &model, &g.ids, g.scale);
        eprintln!("{name}: int8 activations move logits by {d:.2e} of the scale");
    }
}

//! `synth`: the default shape is Qwen3.6-35B-A3B's; tiny versions in every
//! safetensors dialect load through the real loader, run with finite logits,
//! are deterministic, and hold the same expert values whatever the layout.
//! (GGUF synths go through the exporter; the CLI test covers them end to end.)

use std::path::PathBuf;

use qmoe_model::config::{Arch, LayerKind};
use qmoe_model::weights::{Mat, Mlp, Storage};
use qmoe_model::{Config, Model};
use qmoe_runtime::bench;
use qmoe_runtime::synth::{self, SynthFormat, SynthParams, SynthShape};

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("qmoe-synth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// 4 layers (3 GDN + 1 attention) with the real head counts, hidden 256, 4 experts.
fn tiny() -> SynthShape {
    let mut s = SynthShape::qwen36_35b_a3b(4);
    s.num_hidden_layers = 4;
    s.hidden_size = 256;
    s.vocab_size = 512;
    s
}

fn write(format: SynthFormat, seed: u64, name: &str) -> PathBuf {
    let out = tmp(name);
    synth::synth(&SynthParams { shape: tiny(), format, seed, tokenizer_from: None }, &out, &mut |_| {}).unwrap();
    out
}

#[test]
fn default_shape_is_qwen36_35b_a3b() {
    let s = SynthShape::qwen36_35b_a3b(32);
    let text = serde_json::to_string(&s.config_json(0, None)).unwrap();
    let c = Config::from_json_str(&text, "synth config.json".as_ref()).unwrap();
    assert_eq!(c.arch, Arch::Qwen35Moe);
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.vocab_size), (2048, 40, 248320));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (16, 2, 256));
    assert_eq!(
        (c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim),
        (16, 32, 128, 128)
    );
    assert_eq!(c.linear_conv_kernel_dim, 4);
    assert_eq!(
        (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size, c.shared_expert_intermediate_size),
        (32, 8, 512, 512)
    );
    assert_eq!((c.rope_theta, c.partial_rotary_factor, c.rotary_dims()), (1e7, 0.25, 64));
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.n_full_attention_layers(), 10);
    for (i, t) in c.layer_types.iter().enumerate() {
        assert_eq!(*t == LayerKind::FullAttention, (i + 1) % 4 == 0, "layer {i}");
    }
    // Spec 1.5 worked shapes.
    assert_eq!((c.conv_dim(), c.q_proj_dim(), c.kv_dim(), c.attn_out_dim()), (8192, 8192, 512, 4096));
}

#[test]
fn format_names_parse() {
    assert_eq!(SynthFormat::parse("bf16"), Some(SynthFormat::Bf16));
    assert_eq!(SynthFormat::parse("mlx4"), Some(SynthFormat::Mlx { bits: 4 }));
    assert_eq!(SynthFormat::parse("mlx8"), Some(SynthFormat::Mlx { bits: 8 }));
    assert_eq!(SynthFormat::parse("mlx3"), Some(SynthFormat::Mlx { bits: 3 }));
    assert_eq!(SynthFormat::parse("mlx7"), None);
    assert_eq!(SynthFormat::parse("mlx"), None);
    assert!(matches!(SynthFormat::parse("gguf-q4_k_m"), Some(SynthFormat::Gguf(_))));
    assert!(matches!(SynthFormat::parse("gguf-q8_0"), Some(SynthFormat::Gguf(_))));
    assert_eq!(SynthFormat::parse("gguf"), None);
    assert_eq!(SynthFormat::parse("q4"), None);
}

#[test]
fn bad_shapes_are_refused() {
    let mut s = tiny();
    s.hidden_size = 100;
    assert!(s.validate().unwrap_err().to_string().contains("multiple of 64"));
    let mut s = tiny();
    s.num_experts_per_tok = 5;
    assert!(s.validate().unwrap_err().to_string().contains("top-k"));
}

fn expert1_up_and_router(m: &Model) -> (&Mat, &Mat) {
    match &m.weights.layers[0].mlp {
        Mlp::Moe(moe) => (&moe.experts[1].up, &moe.router),
        Mlp::Dense(_) => panic!("qwen3_5_moe layers are MoE"),
    }
}

#[test]
fn bf16_and_mlx_load_run_and_agree() {
    let hf = write(SynthFormat::Bf16, 3, "bf16");
    let a = Model::load(&hf).unwrap();
    assert_eq!(a.conventions().unwrap().dialect.name(), "HF safetensors (raw)");
    assert_eq!(bench::quant_label(&a), "BF16");
    let (up_a, router_a) = expert1_up_and_router(&a);
    let mut dirs = vec![hf.clone()];
    for bits in [3u32, 4, 8] {
        let mlx = write(SynthFormat::Mlx { bits }, 3, &format!("mlx{bits}"));
        for dir in [&hf, &mlx] {
            let max = synth::check_finite(dir, 5, 1).unwrap();
            assert!(max > 0.0 && max < 1e3, "{}: max |logit| {max}", dir.display());
        }
        let b = Model::load(&mlx).unwrap();
        assert_eq!(b.conventions().unwrap().dialect.name(), "MLX affine-quantized (sanitized)");
        assert_eq!(bench::quant_label(&b), format!("MLX affine {bits}-bit, group 64"));

        // Router gates are 8-bit in MLX (per-path overrides), everything else `bits`-bit.
        let (up_b, router_b) = expert1_up_and_router(&b);
        assert!(matches!(router_b.storage, Storage::Affine { bits: 8, group: 64, .. }), "{}", router_b.describe());
        assert!(
            matches!(up_b.storage, Storage::Affine { bits: b_bits, group: 64, .. } if b_bits == bits),
            "{}",
            up_b.describe()
        );

        // Same seed, same streams: expert 1's up rows (fused gate_up in HF, switch_mlp
        // stack in MLX) and the router hold the same values up to quantization.
        for (x, y, bits) in [(up_a, up_b, bits), (router_a, router_b, 8)] {
            let (mut ra, mut rb) = (vec![0.0f32; x.cols], vec![0.0f32; y.cols]);
            for r in [0, x.rows - 1] {
                x.view().row_to_f32(r, &mut ra);
                y.view().row_to_f32(r, &mut rb);
                let span = ra.iter().fold(0.0f32, |m, v| m.max(v.abs())) * 2.0;
                let err = ra.iter().zip(&rb).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(err <= span / ((1 << bits) - 1) as f32, "{bits}-bit row {r}: err {err}, span {span}");
            }
        }
        dirs.push(mlx);
    }

    // Bytes per token: everything but the experts, plus top_k/E of them (here k = E = 4).
    let bt = bench::bytes_per_token(&a);
    assert!(bt.routed_experts > 0.0 && bt.head > 0.0 && bt.embedding_row > 0.0);
    assert!(
        (bt.total()
            - (bench::weight_bytes(&a) as f64 - a.weights.embed.bytes() as f64 + bt.embedding_row + bt.vectors))
            .abs()
            < 1.0
    );

    for d in dirs {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = write(SynthFormat::Bf16, 9, "det-a");
    let b = write(SynthFormat::Bf16, 9, "det-b");
    let c = write(SynthFormat::Bf16, 10, "det-c");
    let shard = "model-00003-of-00006.safetensors";
    let read = |d: &PathBuf| std::fs::read(d.join(shard)).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    // Config and index agree with what was written.
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(
        index["weight_map"]["model.language_model.layers.3.self_attn.q_proj.weight"],
        "model-00005-of-00006.safetensors"
    );
    assert_eq!(index["weight_map"]["lm_head.weight"], "model-00006-of-00006.safetensors");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

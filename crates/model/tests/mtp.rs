//! The MTP head (spec 4.8) as the loader reads it: typed weights with the
//! norms made effective once, in every dialect that carries it, and refusals
//! that name the tensor when the head is incomplete or mis-shaped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qmoe_formats::{write_safetensors, Checkpoint, TensorToWrite};
use qmoe_model::weights::{Mixer, Mlp, Storage};
use qmoe_model::Model;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// Copies fixture `name` into a scratch dir as one safetensors file, letting
/// `edit` drop (empty), rename or reshape tensors on the way.
fn rewrite(name: &str, tag: &str, edit: impl Fn(&str, &[usize]) -> Vec<(String, Vec<usize>)>) -> PathBuf {
    let src = fixture(name);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qmoe-mtp-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&src).unwrap();
    let kept: Vec<(String, Vec<usize>, &qmoe_formats::TensorInfo)> =
        ckpt.tensors().flat_map(|t| edit(&t.name, &t.shape).into_iter().map(move |(n, s)| (n, s, t))).collect();
    let bytes: Vec<Vec<u8>> = kept
        .iter()
        .map(|(_, shape, t)| {
            let mut b = t.bytes().to_vec();
            b.resize(shape.iter().product::<usize>() * t.dtype.size(), 0);
            b
        })
        .collect();
    let list: Vec<TensorToWrite> = kept
        .iter()
        .zip(&bytes)
        .map(|((n, s, t), b)| TensorToWrite { name: n, dtype: t.dtype, shape: s, bytes: b })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &list, &BTreeMap::new()).unwrap();
    dir
}

fn same(n: &str, s: &[usize]) -> Vec<(String, Vec<usize>)> {
    vec![(n.to_string(), s.to_vec())]
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The stored values of a 1-D tensor, as f32.
fn stored(name: &str, tensor: &str) -> Vec<f32> {
    let ckpt = Checkpoint::open(&fixture(name)).unwrap();
    let t = ckpt.get(tensor).unwrap();
    qmoe_core::dtype::to_f32_vec(t.dtype, t.bytes())
}

#[test]
fn hf_and_mlx_heads_load_with_zero_centred_norms() {
    // moe_fused is HF raw; mlx_bf16_mtp is MLX sanitized (trunk norms stored
    // 1 + w) with raw third-party MTP tensors: in both, MTP norms are w.
    for name in ["moe_fused", "mlx_bf16_mtp"] {
        let model = Model::load(&fixture(name)).unwrap();
        let h = model.config.hidden_size;
        let mtp = model.weights.mtp.as_ref().unwrap_or_else(|| panic!("{name}: no head"));
        assert_eq!((mtp.fc.rows, mtp.fc.cols), (h, 2 * h));
        for (field, tensor) in [
            (&mtp.pre_fc_norm_embedding, "mtp.pre_fc_norm_embedding.weight"),
            (&mtp.pre_fc_norm_hidden, "mtp.pre_fc_norm_hidden.weight"),
            (&mtp.norm, "mtp.norm.weight"),
            (&mtp.layers[0].input_norm, "mtp.layers.0.input_layernorm.weight"),
        ] {
            let want: Vec<f32> = stored(name, tensor).iter().map(|w| 1.0 + w).collect();
            assert_eq!(field, &want, "{name} {tensor}");
        }
        assert_eq!(mtp.layers.len(), 1);
        assert!(matches!(mtp.layers[0].mixer, Mixer::Attention(_)));
        match &mtp.layers[0].mlp {
            Mlp::Moe(m) => assert_eq!(m.experts.len(), model.config.num_experts),
            Mlp::Dense(_) => panic!("{name}: the MoE model's head has an MoE block"),
        }
        let conv = model.conventions().unwrap();
        assert_eq!(conv.mtp.as_ref().map(|m| (m.prefix, m.layers)), Some(("mtp.", 1)));
        // Every MTP tensor is read, none reported as ignored.
        assert!(!conv.ignored.contains_key("mtp"), "{name}: {:?}", conv.ignored);
        assert!(conv.tensors.contains_key("mtp.fc.weight"));
    }
}

#[test]
fn fp8_head_keeps_its_fp8_storage() {
    let model = Model::load(&fixture("fp8_block")).unwrap();
    let mtp = model.weights.mtp.as_ref().unwrap();
    let Mixer::Attention(a) = &mtp.layers[0].mixer else { panic!("attention") };
    assert!(matches!(a.q_proj.storage, Storage::Fp8 { .. }));
    // modules_to_not_convert lists mtp.fc: stored bf16.
    assert!(matches!(mtp.fc.storage, Storage::Float(_)));
}

#[test]
fn checkpoints_without_mtp_tensors_have_no_head() {
    // mlx-lm drops mtp.* though the config keeps mtp_num_hidden_layers: 1.
    let model = Model::load(&fixture("mlx_q4")).unwrap();
    assert_eq!(model.config.mtp_num_hidden_layers, 1);
    assert!(model.weights.mtp.is_none() && model.conventions().unwrap().mtp.is_none());
}

#[test]
fn gguf_nextn_blocks_load_into_the_head() {
    // llama.cpp's converter wrote these with its norms as 1 + w (F32).
    let path = fixture("gguf_moe_dv16_bf16").join("model.gguf");
    let model = Model::load(&path).unwrap();
    let mtp = model.weights.mtp.as_ref().unwrap();
    let file = qmoe_formats::gguf::GgufFile::open(&path).unwrap();
    let enorm = file.tensor("blk.5.nextn.enorm.weight").unwrap().to_f32_vec().unwrap();
    let hnorm = file.tensor("blk.5.nextn.hnorm.weight").unwrap().to_f32_vec().unwrap();
    assert_eq!((&mtp.pre_fc_norm_embedding, &mtp.pre_fc_norm_hidden), (&enorm, &hnorm));
    assert_eq!((mtp.fc.rows, mtp.fc.cols), (64, 128));
    assert!(matches!(mtp.layers[0].mlp, Mlp::Moe(_)));
}

#[test]
fn missing_mtp_tensor_is_named() {
    let gone = "mtp.pre_fc_norm_hidden.weight";
    let dir = rewrite("moe_fused", "missing", |n, s| if n == gone { vec![] } else { same(n, s) });
    let e = load_err(&dir);
    assert!(e.contains(gone) && e.contains("missing"), "{e}");
}

#[test]
fn misshaped_mtp_tensor_is_named() {
    let dir = rewrite("moe_fused", "shape", |n, s| {
        let mut s = s.to_vec();
        if n == "mtp.fc.weight" {
            s[1] = 64; // [H, H] instead of [H, 2H]
        }
        vec![(n.to_string(), s)]
    });
    let e = load_err(&dir);
    assert!(e.contains("mtp.fc.weight") && e.contains("[64, 128]"), "{e}");
}

#[test]
fn mtp_block_count_must_match_the_config() {
    // The config says one block; the tensors say block 1 only.
    let dir = rewrite("moe_fused", "count", |n, s| same(&n.replace("mtp.layers.0.", "mtp.layers.1."), s));
    let e = load_err(&dir);
    assert!(e.contains("mtp.layers.{j}") && e.contains("blocks {1}"), "{e}");
    assert!(e.contains("mtp.layers.0.self_attn.q_proj.weight"), "{e}");
}

#[test]
fn stray_mtp_tensor_is_unexpected() {
    let dir = rewrite("moe_fused", "stray", |n, s| {
        let mut out = same(n, s);
        if n == "mtp.norm.weight" {
            out.push(("mtp.embed_tokens.weight".into(), s.to_vec()));
        }
        out
    });
    let e = load_err(&dir);
    assert!(e.contains("unexpected") && e.contains("mtp.embed_tokens.weight"), "{e}");
}

//! The MTP head through GGUF export: written as llama.cpp's `nextn` blocks,
//! loaded back into the same weights, left out with `--no-mtp`, and written
//! exactly as llama.cpp's own converter writes it.

use std::path::{Path, PathBuf};

use qmoe_formats::gguf::{GgufFile, GgufValue};
use qmoe_model::weights::{Layer, Mat, Mixer, Mlp, Mtp, SwiGlu};
use qmoe_model::Model;
use qmoe_runtime::export::{export_gguf_with, ExportOptions, ExportType, MtpExport};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("qmoe-export-mtp-{}-{name}.gguf", std::process::id()))
}

fn export(model: &Model, ty: ExportType, mtp: MtpExport, tag: &str) -> PathBuf {
    let out = tmp(tag);
    export_gguf_with(model, &ExportOptions { ty, mtp }, Vec::new(), tag, &out).unwrap();
    out
}

/// Every value of a matrix, decoded to f32 from its stored form.
fn values(m: &Mat) -> Vec<f32> {
    let mut v = vec![0.0; m.rows * m.cols];
    for (r, row) in v.chunks_exact_mut(m.cols).enumerate() {
        m.view().row_to_f32(r, row);
    }
    v
}

/// Largest |a - b| over two matrices of the same shape (panics otherwise).
fn mat_diff(what: &str, a: &Mat, b: &Mat) -> f32 {
    assert_eq!((a.rows, a.cols), (b.rows, b.cols), "{what}: shape");
    values(a).iter().zip(values(b)).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn vec_diff(what: &str, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: length");
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn swiglu_diff(what: &str, a: &SwiGlu, b: &SwiGlu) -> f32 {
    mat_diff(&format!("{what}.gate"), &a.gate, &b.gate)
        .max(mat_diff(&format!("{what}.up"), &a.up, &b.up))
        .max(mat_diff(&format!("{what}.down"), &a.down, &b.down))
}

fn block_diff(a: &Layer, b: &Layer) -> f32 {
    let mut d = vec_diff("input_norm", &a.input_norm, &b.input_norm).max(vec_diff(
        "post_attn_norm",
        &a.post_attn_norm,
        &b.post_attn_norm,
    ));
    match (&a.mixer, &b.mixer) {
        (Mixer::Attention(x), Mixer::Attention(y)) => {
            for (n, p, q) in [
                ("q", &x.q_proj, &y.q_proj),
                ("k", &x.k_proj, &y.k_proj),
                ("v", &x.v_proj, &y.v_proj),
                ("o", &x.o_proj, &y.o_proj),
            ] {
                d = d.max(mat_diff(n, p, q));
            }
            d = d.max(vec_diff("q_norm", &x.q_norm, &y.q_norm)).max(vec_diff("k_norm", &x.k_norm, &y.k_norm));
        }
        _ => panic!("an MTP block is gated full attention"),
    }
    match (&a.mlp, &b.mlp) {
        (Mlp::Moe(x), Mlp::Moe(y)) => {
            assert_eq!(x.experts.len(), y.experts.len());
            d = d.max(mat_diff("router", &x.router, &y.router)).max(mat_diff(
                "shared_gate",
                &x.shared_gate,
                &y.shared_gate,
            ));
            d = d.max(swiglu_diff("shared", &x.shared, &y.shared));
            for (e, (p, q)) in x.experts.iter().zip(&y.experts).enumerate() {
                d = d.max(swiglu_diff(&format!("expert {e}"), p, q));
            }
        }
        (Mlp::Dense(x), Mlp::Dense(y)) => d = d.max(swiglu_diff("mlp", x, y)),
        _ => panic!("MLP kinds differ"),
    }
    d
}

/// Max |diff| over every MTP weight, after decoding each to f32.
fn mtp_diff(a: &Mtp, b: &Mtp) -> f32 {
    assert_eq!(a.layers.len(), b.layers.len());
    let mut d = mat_diff("fc", &a.fc, &b.fc);
    d = d.max(vec_diff("pre_fc_norm_embedding", &a.pre_fc_norm_embedding, &b.pre_fc_norm_embedding));
    d = d.max(vec_diff("pre_fc_norm_hidden", &a.pre_fc_norm_hidden, &b.pre_fc_norm_hidden));
    d = d.max(vec_diff("norm", &a.norm, &b.norm));
    a.layers.iter().zip(&b.layers).fold(d, |m, (x, y)| m.max(block_diff(x, y)))
}

#[test]
fn mtp_head_round_trips_exactly_through_an_f32_gguf() {
    // HF raw (fused experts), HF FP8 (per-expert FP8 experts), MLX sanitized
    // with raw third-party MTP tensors: every MTP value survives f32 export.
    for name in ["moe_fused", "fp8_block", "mlx_bf16_mtp"] {
        let src = Model::load(&fixture(name)).unwrap();
        let out = export(&src, ExportType::F32, MtpExport::Include, &format!("{name}-rt"));
        let back = Model::load(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let _ = std::fs::remove_file(&out);
        let (a, b) = (
            src.weights.mtp.as_ref().expect("source has an MTP head"),
            back.weights.mtp.as_ref().expect("head lost in export"),
        );
        let d = mtp_diff(a, b);
        eprintln!("{name}: MTP head f32 round trip max |diff| = {d:e}");
        assert_eq!(d, 0.0, "{name}");
        assert_eq!(back.config.mtp_num_hidden_layers, 1);
    }
}

#[test]
fn quantized_mtp_head_loads_back_as_its_own_dequantised_values() {
    // q8_0 rounds the head; re-exporting the quantized model as f32 must then
    // be lossless (the importer reads the nextn blocks exactly).
    let src = Model::load(&fixture("moe_fused")).unwrap();
    let q_path = export(&src, ExportType::Q8_0, MtpExport::Include, "q8");
    let q = Model::load(&q_path).unwrap();
    let f_path = export(&q, ExportType::F32, MtpExport::Include, "q8-f32");
    let f = Model::load(&f_path).unwrap();
    let _ = (std::fs::remove_file(q_path), std::fs::remove_file(f_path));
    let (qm, fm, sm) =
        (q.weights.mtp.as_ref().unwrap(), f.weights.mtp.as_ref().unwrap(), src.weights.mtp.as_ref().unwrap());
    assert_eq!(mtp_diff(qm, fm), 0.0);
    let rounding = mtp_diff(sm, qm);
    eprintln!("moe_fused: q8_0 MTP head vs source max |diff| = {rounding:e}");
    assert!(rounding > 0.0 && rounding < 0.05, "{rounding}");
}

fn uint(f: &GgufFile, k: &str) -> Option<u64> {
    f.get(k).and_then(GgufValue::as_uint)
}

#[test]
fn no_mtp_leaves_the_head_out() {
    let src = Model::load(&fixture("moe_fused")).unwrap();
    let nl = src.config.num_hidden_layers as u64;
    for (mtp, blocks, nextn) in [(MtpExport::Include, nl + 1, Some(1)), (MtpExport::Skip, nl, None)] {
        let out = export(&src, ExportType::BF16, mtp, &format!("{mtp:?}"));
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(uint(&f, "qwen35moe.block_count"), Some(blocks), "{mtp:?}");
        assert_eq!(uint(&f, "qwen35moe.nextn_predict_layers"), nextn, "{mtp:?}");
        let recurrent = f.get_bool_array("qwen35moe.attention.recurrent_layers").unwrap();
        assert_eq!(recurrent.len() as u64, blocks);
        assert!(!recurrent[nl as usize..].iter().any(|&r| r), "MTP blocks are attention");
        let mtp_tensors = f.tensors().iter().filter(|t| t.name.starts_with(&format!("blk.{nl}."))).count();
        let back = Model::load(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        match mtp {
            MtpExport::Include => {
                assert!(f.tensor(&format!("blk.{nl}.nextn.eh_proj.weight")).is_some());
                assert!(mtp_tensors > 4 && back.weights.mtp.is_some());
            }
            MtpExport::Skip => {
                assert_eq!(mtp_tensors, 0);
                assert!(back.weights.mtp.is_none() && back.config.mtp_num_hidden_layers == 0);
            }
        }
    }
}

/// Metadata keys llama.cpp's converter writes that the exporter does not,
/// or writes differently, and why that is harmless. Everything else under
/// `qwen35moe.` must be equal.
const METADATA_NOT_COMPARED: [(&str, &str); 1] = [
    // The converter always writes the config's interval (4 here, though this
    // model's layer_types do not follow it); the exporter writes it only when
    // the layers follow one. llama.cpp reads attention.recurrent_layers first.
    ("qwen35moe.full_attention_interval", "written only when the layer pattern is regular"),
];

#[test]
fn llama_cpp_converted_file_with_mtp_is_reproduced_exactly() {
    // gguf_moe_dv16_bf16 was written by llama.cpp's convert_hf_to_gguf.py
    // (MTP kept). Loading it and exporting bf16 must give the same tensors:
    // names, ggml types, shapes and bytes, nextn blocks included.
    let src_path = fixture("gguf_moe_dv16_bf16").join("model.gguf");
    let model = Model::load(&src_path).unwrap();
    assert!(model.weights.mtp.is_some());
    let out = export(&model, ExportType::BF16, MtpExport::Include, "llamacpp-bf16");
    let (theirs, ours) = (GgufFile::open(&src_path).unwrap(), GgufFile::open(&out).unwrap());
    let names = |f: &GgufFile| {
        let mut v: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&theirs), names(&ours));
    let mut nextn = 0;
    for t in theirs.tensors() {
        let o = ours.tensor(&t.name).unwrap();
        assert_eq!((t.type_name(), &t.ne), (o.type_name(), &o.ne), "{}", t.name);
        assert!(t.bytes().unwrap() == o.bytes().unwrap(), "{}: bytes differ", t.name);
        nextn += t.name.contains(".nextn.") as usize;
    }
    assert_eq!(nextn, 4, "eh_proj, enorm, hnorm, shared_head_norm");
    for (k, v) in theirs.metadata().iter().filter(|(k, _)| k.starts_with("qwen35moe.")) {
        if METADATA_NOT_COMPARED.iter().any(|(n, _)| n == k) {
            continue;
        }
        assert_eq!(ours.get(k), Some(v), "{k}");
    }
    let _ = std::fs::remove_file(&out);
}

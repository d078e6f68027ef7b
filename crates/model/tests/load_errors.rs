//! Bad checkpoints are refused with an error that names the problem.
//!
//! Each case copies a golden fixture into a scratch directory, breaks one
//! thing, and checks the message names the file / tensor / field involved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qmoe_formats::{write_safetensors, Checkpoint, TensorToWrite};
use qmoe_model::{Logits, Model, ModelError, Scratch};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// A fresh directory under the target's temp area.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qmoe-load-errors-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies fixture `name` into a scratch dir as one safetensors file, letting
/// `edit` drop (empty), rename, reshape or duplicate tensors on the way.
fn rewrite(name: &str, tag: &str, edit: impl Fn(&str, &[usize]) -> Vec<(String, Vec<usize>)>) -> PathBuf {
    let src = fixture(name);
    let dir = scratch_dir(tag);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&src).unwrap();
    let kept: Vec<(String, Vec<usize>, &qmoe_formats::TensorInfo)> =
        ckpt.tensors().flat_map(|t| edit(&t.name, &t.shape).into_iter().map(move |(n, s)| (n, s, t))).collect();
    let bytes: Vec<Vec<u8>> = kept
        .iter()
        .map(|(_, shape, t)| {
            let want = shape.iter().product::<usize>() * t.dtype.size();
            let mut b = t.bytes().to_vec();
            b.resize(want, 0);
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

const Q_PROJ: &str = "model.language_model.layers.1.self_attn.q_proj.weight";

#[test]
fn missing_tensor_is_named() {
    let dir = rewrite("moe_fused", "missing", |n, s| if n == Q_PROJ { vec![] } else { same(n, s) });
    let e = load_err(&dir);
    assert!(e.contains(Q_PROJ) && e.contains("missing"), "{e}");
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    let dir = rewrite("moe_fused", "shape", |n, s| {
        let mut s = s.to_vec();
        if n == Q_PROJ {
            s[0] -= 1;
        }
        vec![(n.to_string(), s)]
    });
    let e = load_err(&dir);
    assert!(e.contains(Q_PROJ) && e.contains("expected"), "{e}");
}

#[test]
fn unexpected_tensor_is_refused() {
    let dir = rewrite("moe_fused", "stray", |n, s| {
        let mut out = same(n, s);
        if n == "model.language_model.norm.weight" {
            out.push(("model.language_model.layers.0.stray_norm.weight".into(), s.to_vec()));
        }
        out
    });
    let e = load_err(&dir);
    assert!(e.contains("unexpected") && e.contains("stray_norm"), "{e}");
}

#[test]
fn missing_expert_index_is_named() {
    let dir = rewrite("moe_per_expert", "expert", |n, s| {
        if n.contains("layers.2.mlp.experts.5.up_proj") {
            vec![]
        } else {
            same(n, s)
        }
    });
    let e = load_err(&dir);
    assert!(e.contains("layer 2") && e.contains("up_proj") && e.contains("[5]"), "{e}");
}

#[test]
fn unknown_model_type_is_refused() {
    let dir = rewrite("moe_fused", "mtype", same);
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"qwen3_5_moe\"", "\"llama\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model_type"), "{e}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = rewrite("moe_fused", "trunc", same);
    let f = dir.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..(len as usize) / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn token_out_of_vocab_is_an_error() {
    let model = Model::load(&fixture("moe_fused")).unwrap();
    let mut cache = model.new_cache(4);
    let v = model.config.vocab_size as u32;
    let e = model.forward(&[1, v], &mut cache, &mut Scratch::default(), Logits::Last).unwrap_err();
    assert!(matches!(e, ModelError::TokenOutOfRange { pos: 1, .. }), "{e}");
    assert!(e.to_string().contains(&v.to_string()));
}

#[test]
fn context_limit_is_an_error() {
    let model = Model::load(&fixture("moe_fused")).unwrap();
    let mut cache = model.new_cache(2);
    let e = model.forward(&[1, 2, 3], &mut cache, &mut Scratch::default(), Logits::Last).unwrap_err();
    assert!(matches!(e, ModelError::ContextFull { .. }), "{e}");
}

#[test]
fn gate_reports_every_problem_in_one_pass() {
    let k3 = "model.language_model.layers.3.linear_attn.in_proj_z.weight";
    let dir = rewrite("moe_fused", "many", |n, s| {
        let mut s = s.to_vec();
        if n == "model.language_model.layers.4.self_attn.o_proj.weight" {
            s[1] += 32;
        }
        if n == Q_PROJ || n == k3 {
            vec![]
        } else {
            vec![(n.to_string(), s)]
        }
    });
    let ModelError::Gate(g) = Model::load(&dir).err().expect("must not load") else {
        panic!("expected the gate report")
    };
    let text = g.to_string();
    assert_eq!((g.missing().count(), g.misshaped().count()), (2, 1), "{text}");
    assert!(text.contains(Q_PROJ) && text.contains(k3) && text.contains("layers.4.self_attn.o_proj"), "{text}");
}

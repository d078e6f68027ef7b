//! `qmoe bench` and `qmoe synth` end to end: the JSON report has every key
//! scripts read, with sane values, on the demo model; tiny synthetic models
//! in every format are written, pass synth's finite-logits check, and bench
//! (which checks every logit row it reads) with the expected quant label.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qmoe")).args(args).current_dir(root()).output().expect("spawn qmoe")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("qmoe-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

const REQUIRED: [&str; 11] = [
    "prefill_tok_s",
    "decode_tok_s",
    "bytes_per_token",
    "achieved_gbs",
    "stream_gbs",
    "peak_rss_bytes",
    "load_s",
    "threads",
    "model",
    "quant",
    "commit",
];

/// Runs `bench --json` and returns the parsed object after the common checks.
fn bench_json(model: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        "--model",
        model,
        "-p",
        "12",
        "-n",
        "3",
        "--reps",
        "2",
        "--threads",
        "1",
        "--stream-mib",
        "16",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = qmoe(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.trim().lines().count(), 1, "one JSON object on one line:\n{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    for k in REQUIRED {
        assert!(v.get(k).is_some_and(|x| !x.is_null()), "missing `{k}` in {v}");
    }
    for k in ["prefill_tok_s", "decode_tok_s", "bytes_per_token", "achieved_gbs", "stream_gbs", "peak_rss_bytes"] {
        let x = v[k].as_f64().unwrap_or_else(|| panic!("`{k}` is not a number: {v}"));
        assert!(x.is_finite() && x > 0.0, "`{k}` = {x}");
    }
    assert!(v["load_s"].as_f64().is_some_and(|x| x >= 0.0));
    assert_eq!(v["threads"], 1);
    assert_eq!(v["model"], model);
    assert!(!v["commit"].as_str().unwrap().is_empty());
    // achieved = bytes/token x decode rate.
    let want = v["bytes_per_token"].as_f64().unwrap() * v["decode_tok_s"].as_f64().unwrap() / 1e9;
    assert!((v["achieved_gbs"].as_f64().unwrap() - want).abs() <= 1e-6 * want.max(1.0), "{v}");
    v
}

#[test]
fn bench_json_on_the_demo_model() {
    let v = bench_json("models/demo", &[]);
    assert_eq!(v["quant"], "BF16");
    assert!(matches!(v["simd"].as_str(), Some("scalar" | "avx2" | "avx512" | "neon")), "{v}");
    assert_eq!((v["n_prompt"].as_u64(), v["n_gen"].as_u64(), v["reps"].as_u64()), (Some(12), Some(3), Some(2)));
    assert_eq!(v["prefill_s"].as_array().unwrap().len(), 2);
    // The demo model is tied: the head is the whole embedding matrix, read once per
    // token; the experts count top-2 of 4, half their bytes.
    let part = |k: &str| v["bytes_per_token_parts"][k].as_u64().unwrap();
    let rest = part("attention") + part("deltanet") + part("router_shared") + 2 * part("routed_experts");
    assert_eq!(part("head"), v["weight_bytes"].as_u64().unwrap() - rest);
}

#[test]
fn bench_report_names_machine_model_quant_and_commit() {
    let o = qmoe(&["bench", "--model", "models/demo", "-p", "4", "-n", "2", "--reps", "1", "--stream-mib", "16"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    for needle in [
        "machine",
        "kernels)",
        "threads",
        "model      models/demo",
        "quant      BF16",
        "commit",
        "prefill",
        "decode",
        "tok/s",
        "GB/s",
        "peak RSS",
    ] {
        assert!(s.contains(needle), "missing `{needle}` in:\n{s}");
    }
}

/// Writes a tiny synthetic model in `format`, checks it, benches it, removes it.
fn synth_loads_and_benches(format: &str, quant: &str) {
    let out = tmp(format);
    let dir = out.to_str().unwrap();
    let tiny = ["--layers", "4", "--experts", "4", "--hidden", "256", "--vocab", "512"];
    let o = qmoe(&[&["synth", "--out", dir, "--format", format, "--seed", "5"][..], &tiny].concat());
    let err = text(&o.stderr);
    assert!(o.status.success(), "{format}: {err}");
    assert!(err.contains("logits finite"), "{format}: {err}");
    assert!(
        out.join("tokenizer.json").is_file() && out.join("chat_template.jinja").is_file(),
        "{format}: tokenizer files"
    );
    let v = bench_json(dir, &[]);
    assert_eq!(v["quant"], quant, "{format}");
    // Writing again without --force is refused.
    let again = qmoe(&[&["synth", "--out", dir, "--format", format, "--no-check"][..], &tiny].concat());
    assert!(!again.status.success() && text(&again.stderr).contains("--force"), "{format}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn synth_bf16_loads_and_benches() {
    synth_loads_and_benches("bf16", "BF16");
}

#[test]
fn synth_mlx4_loads_and_benches() {
    synth_loads_and_benches("mlx4", "MLX affine 4-bit, group 64");
}

#[test]
fn synth_gguf_q4_k_m_loads_and_benches() {
    synth_loads_and_benches("gguf-q4_k_m", "GGUF Q4_K");
}

#[test]
fn synth_gguf_q8_0_loads_and_benches() {
    synth_loads_and_benches("gguf-q8_0", "GGUF Q8_0");
}

#[test]
fn synth_and_bench_refuse_bad_input_in_one_line() {
    let cases: [(&[&str], &str); 4] = [
        (&["synth", "--out", "/tmp/qmoe-never", "--format", "q4"], "--format"),
        (&["synth", "--out", "/tmp/qmoe-never", "--hidden", "100"], "multiple of 64"),
        (&["synth", "--out", "/tmp/qmoe-never", "--experts", "4", "--layers", "0"], "num_hidden_layers"),
        (&["bench", "--model", "no/such/dir"], "no/such/dir"),
    ];
    for (args, needle) in cases {
        let o = qmoe(args);
        assert!(!o.status.success(), "{args:?}");
        let err = text(&o.stderr);
        assert!(err.contains(needle) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    assert!(!Path::new("/tmp/qmoe-never").exists());
}

#[test]
fn synth_gguf_carries_the_tokenizer_so_run_works() {
    // Full vocabulary (the tokenizer must fit), everything else tiny.
    let out = tmp("gguf-run");
    let dir = out.to_str().unwrap();
    let o = qmoe(&[
        "synth",
        "--out",
        dir,
        "--format",
        "gguf-q8_0",
        "--layers",
        "4",
        "--experts",
        "4",
        "--hidden",
        "256",
        "--no-check",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("no tokenizer"), "{}", text(&o.stderr));
    // The .gguf alone (no tokenizer.json beside it) runs.
    let alone = tmp("gguf-alone.gguf");
    std::fs::rename(out.join("model.gguf"), &alone).unwrap();
    let r = qmoe(&[
        "run",
        "--model",
        alone.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--chat",
        "--max-tokens",
        "3",
        "--seed",
        "1",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("tok/s"), "{}", text(&r.stderr));
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&alone).unwrap();
}

//! End-to-end tests of the `qmoe` binary: the verification interface
//! (`logits`) against the golden fixtures, `run` on the bundled demo model,
//! `inspect`, `--help`, and one-line errors with a non-zero exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
    std::env::temp_dir().join(format!("qmoe-cli-{}-{name}", std::process::id()))
}

#[test]
fn logits_matches_golden_in_every_mode() {
    let fixture = root().join("tests/fixtures/moe_fused");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("golden.json")).unwrap()).unwrap();
    let ids: Vec<String> = meta["ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let ids = ids.join(",");
    let (_, want) = qmoe_formats::read_npy_f32(&fixture.join("logits.npy")).unwrap();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for mode in ["prefill", "decode", "chunked:5"] {
        let out = tmp(&format!("logits-{}.npy", mode.replace(':', "_")));
        let o = qmoe(&[
            "logits",
            "--model",
            "tests/fixtures/moe_fused",
            "--ids",
            &ids,
            "--mode",
            mode,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{mode}: {}", text(&o.stderr));
        let (shape, got) = qmoe_formats::read_npy_f32(&out).unwrap();
        assert_eq!(shape, vec![80, 512]);
        let d = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(d < 1e-4, "{mode}: {d}");
        let _ = std::fs::remove_file(out);
    }
}

#[test]
fn run_streams_text_and_reports_speed() {
    let o = qmoe(&["run", "--model", "models/demo", "--prompt", "Hello", "--chat", "--max-tokens", "6", "--seed", "3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("load") && err.contains("prompt") && err.contains("decode") && err.contains("tok/s"), "{err}");
    assert!(!text(&o.stdout).trim().is_empty());
    // Same seed, same text.
    let again =
        qmoe(&["run", "--model", "models/demo", "--prompt", "Hello", "--chat", "--max-tokens", "6", "--seed", "3"]);
    assert_eq!(o.stdout, again.stdout);
}

#[test]
fn inspect_explains_the_checkpoint() {
    let o = qmoe(&["inspect", "tests/fixtures/next"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    for needle in [
        "qwen3_next",
        "HF safetensors (raw)",
        "per-expert",
        "in_proj_qkvz",
        "tensor gate  OK",
        "model.layers.0.linear_attn.in_proj_qkvz.weight",
    ] {
        assert!(s.contains(needle), "missing `{needle}` in:\n{s}");
    }
}

#[test]
fn every_command_has_help() {
    for cmd in ["run", "chat", "logits", "inspect"] {
        let o = qmoe(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}");
        assert!(text(&o.stdout).contains("Usage"), "{cmd}");
    }
}

#[test]
fn errors_are_one_line_with_nonzero_exit() {
    let cases: [(&[&str], &str); 4] = [
        (&["run", "--model", "no/such/dir", "--prompt", "x"], "config.json"),
        (
            &["logits", "--model", "tests/fixtures/moe_fused", "--ids", "1,99999", "--out", "/tmp/qmoe-never.npy"],
            "99999",
        ),
        (&["logits", "--model", "tests/fixtures/moe_fused", "--ids", "1,x", "--out", "/tmp/qmoe-never.npy"], "`x`"),
        (
            &[
                "logits",
                "--model",
                "tests/fixtures/moe_fused",
                "--ids",
                "1",
                "--mode",
                "chunked:0",
                "--out",
                "/tmp/qmoe-never.npy",
            ],
            "chunked:N",
        ),
    ];
    for (args, needle) in cases {
        let o = qmoe(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = text(&o.stderr);
        assert!(err.starts_with("error: ") && err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    }
}

#[test]
fn inspect_json_reports_storage_and_gate() {
    let o = qmoe(&["inspect", "--json", "tests/fixtures/mlx_q4"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["gate"]["ok"], true);
    assert_eq!(r["dialect"]["name"], "MLX affine-quantized (sanitized)");
    let router = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "language_model.model.layers.0.mlp.gate.weight")
        .unwrap();
    assert_eq!(router["use"]["storage"], "MLX affine 8-bit, group 64");
    assert!(r["bytes_by_category"]["routed experts"].as_u64().unwrap() > 0);

    // A broken checkpoint still gets a report, with the gate's verdict.
    let dir = tmp("inspect-broken");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors.index.json", "model.safetensors"] {
        std::fs::copy(root().join("tests/fixtures/mlx_q4").join(f), dir.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"bits\": 8", "\"bits\": 4");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let o = qmoe(&["inspect", "--json", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["gate"]["ok"], false);
    assert!(!r["gate"]["invalid"].as_array().unwrap().is_empty(), "{}", r["gate"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn chat_reuses_the_cached_conversation() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_qmoe"))
        .args(["chat", "--model", "models/demo", "--max-tokens", "4", "--seed", "1", "--no-think"])
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello there\nAnd again\n/exit\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let turns: Vec<&str> = err.lines().filter(|l| l.contains("[prompt")).collect();
    assert_eq!(turns.len(), 2, "{err}");
    assert!(turns[0].contains(" 0 reused"), "{err}");
    // The second turn's prompt starts with the first user turn, restored from a snapshot.
    let reused: usize = turns[1].split(" computed, ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(reused >= 7, "{err}");
}

#[test]
fn convert_to_gguf_then_run_inspect_and_logits() {
    let out = tmp("convert.gguf");
    let o = qmoe(&["convert", "tests/fixtures/next", "--type", "q8_0", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("Q8_0"), "{}", text(&o.stderr));
    let o = qmoe(&["inspect", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    for needle in ["GGUF (qwen3next)", "grouped: value head", "tensor gate  OK", "blk.0.ssm_ba.weight"] {
        assert!(s.contains(needle), "missing `{needle}` in:\n{s}");
    }
    let npy = tmp("convert.npy");
    let o = qmoe(&[
        "logits",
        "--model",
        out.to_str().unwrap(),
        "--ids",
        "1,2,3,4",
        "--mode",
        "decode",
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (shape, _) = qmoe_formats::read_npy_f32(&npy).unwrap();
    assert_eq!(shape, vec![4, 384]);
    let bad = qmoe(&["convert", "tests/fixtures/next", "--type", "q3_xx", "--out", out.to_str().unwrap()]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("q4_k_m"));
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(npy);
}

#[test]
fn a_single_gguf_runs_with_its_own_tokenizer_and_template() {
    let out = tmp("demo.gguf");
    let o = qmoe(&["convert", "models/demo", "--type", "f16", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let args = ["--prompt", "Hello", "--chat", "--max-tokens", "6", "--temperature", "0"];
    let from_dir = qmoe(&[&["run", "--model", "models/demo"][..], &args].concat());
    let from_gguf = qmoe(&[&["run", "--model", out.to_str().unwrap()][..], &args].concat());
    assert!(from_gguf.status.success(), "{}", text(&from_gguf.stderr));
    // Same prompt tokens, same greedy text (f16 of bf16 weights is exact).
    assert_eq!(text(&from_dir.stdout), text(&from_gguf.stdout));
    let _ = std::fs::remove_file(out);
}

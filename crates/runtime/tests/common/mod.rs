//! Shared fixtures for the integration tests: file locations, tokenizers loaded once per test
//! binary, JSONL records, scratch model folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qmoe_runtime::Tokenizer;

/// crates/runtime
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled demo model folder (genuine Qwen3.6 tokenizer files).
pub fn demo_dir() -> PathBuf {
    crate_dir().join("../../models/demo")
}

/// assets/tokenizers/qwen3-next
pub fn qwen3_next_dir() -> PathBuf {
    crate_dir().join("../../assets/tokenizers/qwen3-next")
}

/// assets/tokenizers/qwen3.6 (the Qwen3.5 template variants; tokenizer files live in models/demo)
pub fn qwen36_assets_dir() -> PathBuf {
    crate_dir().join("../../assets/tokenizers/qwen3.6")
}

pub fn data_file(name: &str) -> PathBuf {
    crate_dir().join("tests/data").join(name)
}

/// Tokenizer of a golden-data `vocab` name, loaded once per test binary (~1 s each).
pub fn tokenizer(vocab: &str) -> &'static Tokenizer {
    static QWEN36: OnceLock<Tokenizer> = OnceLock::new();
    static QWEN3_NEXT: OnceLock<Tokenizer> = OnceLock::new();
    match vocab {
        "qwen3.6" => {
            QWEN36.get_or_init(|| Tokenizer::from_file(demo_dir().join("tokenizer.json")).expect("demo tokenizer"))
        }
        "qwen3-next" => QWEN3_NEXT.get_or_init(|| {
            Tokenizer::from_file(qwen3_next_dir().join("tokenizer.json")).expect("qwen3-next tokenizer")
        }),
        other => panic!("unknown vocab {other}"),
    }
}

/// One JSON object per line.
pub fn read_jsonl(name: &str) -> Vec<serde_json::Value> {
    let path = data_file(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}:{}: {e}", i + 1)))
        .collect()
}

/// An empty scratch folder unique to `name`, under Cargo's per-target temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qmoe-runtime").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn ids_of(record: &serde_json::Value) -> Vec<u32> {
    record["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect()
}

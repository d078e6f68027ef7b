//! `qmoe synth`: write a random-weight checkpoint with the exact layer shapes
//! of Qwen3.6-35B-A3B (fewer experts by default), in bf16, MLX 4-bit or GGUF,
//! with the demo tokenizer beside it so `qmoe run` and `qmoe bench` work on it.
//! The overrides (`--layers`, `--experts`, `--hidden`, `--vocab`) exist for
//! tests and quick experiments; without them the shapes are the real ones.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use qmoe_runtime::synth::{self, SynthFormat, SynthParams, SynthShape};

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (created; must not already hold a checkpoint unless --force).
    #[arg(long)]
    out: PathBuf,
    /// bf16 (HF wrapper), mlx4 / mlx8 (MLX affine 4- or 8-bit, group 64; also mlx2, mlx3, mlx5,
    /// mlx6), gguf-q4_k_m, gguf-q8_0 (or any other `qmoe convert` type as gguf-<type>).
    #[arg(long, default_value = "bf16")]
    format: String,
    /// Routed experts per layer (the real model has 256); top-k is min(8, experts).
    #[arg(long, default_value_t = 32)]
    experts: usize,
    /// Decoder layers (every 4th is full attention).
    #[arg(long, default_value_t = 40)]
    layers: usize,
    /// Hidden size override (multiple of 64), for small test models.
    #[arg(long, default_value_t = 2048)]
    hidden: usize,
    /// Vocabulary size override, for small test models.
    #[arg(long, default_value_t = 248320)]
    vocab: usize,
    /// Seed of the weights (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to copy tokenizer.json, tokenizer_config.json, chat_template.jinja
    /// and generation_config.json from (default: models/demo of this repository).
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// Skip running a few tokens through the written model to check the logits are finite.
    #[arg(long)]
    no_check: bool,
    /// Replace a checkpoint already in --out.
    #[arg(long)]
    force: bool,
}

/// Files of an earlier checkpoint that would confuse the loader if left behind.
fn is_checkpoint_file(name: &str) -> bool {
    name == "config.json"
        || name == qmoe_formats::INDEX_FILE
        || name.ends_with(".safetensors")
        || name.ends_with(".gguf")
}

pub fn main(a: Args) -> Result<()> {
    let Some(format) = SynthFormat::parse(&a.format) else {
        bail!("--format {}: use bf16, mlx2 .. mlx8 (not mlx7), gguf-q4_k_m or gguf-q8_0", a.format);
    };
    let mut shape = SynthShape::qwen36_35b_a3b(a.experts);
    shape.num_hidden_layers = a.layers;
    shape.hidden_size = a.hidden;
    shape.vocab_size = a.vocab;
    shape.validate()?;

    if let Ok(entries) = std::fs::read_dir(&a.out) {
        let stale: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_checkpoint_file))
            .collect();
        if !stale.is_empty() && !a.force {
            bail!(
                "{} already holds a checkpoint ({} files such as {}); pass --force to replace it",
                a.out.display(),
                stale.len(),
                stale[0].display()
            );
        }
        for p in stale {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }

    let t0 = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut progress = |line: &str| {
        if tty {
            eprint!("\r\x1b[2K{line}");
        }
    };
    let tokenizer_from = tokenizer_source(a.tokenizer_from.as_deref());
    if tokenizer_from.is_none() {
        eprintln!("note: no tokenizer folder found (models/demo); pass --tokenizer-from to make `qmoe run` work");
    }
    let params = SynthParams { shape, format, seed: a.seed, tokenizer_from };
    let stats = synth::synth(&params, &a.out, &mut progress)?;
    if tty {
        eprintln!();
    }
    eprintln!(
        "wrote {}: {} tensors, {:.2} GB in {} file(s), {:.1} s",
        a.out.display(),
        stats.tensors,
        stats.bytes as f64 / 1e9,
        stats.files.len(),
        t0.elapsed().as_secs_f64()
    );
    if let (false, Some(from)) = (stats.tokenizer_files.is_empty(), &params.tokenizer_from) {
        eprintln!("copied {} from {}", stats.tokenizer_files.join(", "), from.display());
    }
    for n in &stats.notes {
        eprintln!("note: {n}");
    }

    if !a.no_check {
        let t1 = Instant::now();
        let max = synth::check_finite(&a.out, 4, a.seed).context("checking the written model")?;
        eprintln!(
            "check: 4 tokens through the model, logits finite (max |logit| {max:.2}), {:.1} s",
            t1.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `--tokenizer-from`, else `models/demo` under the working directory, else
/// the one in the source tree this binary was built from.
fn tokenizer_source(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo");
    [PathBuf::from("models/demo"), built].into_iter().find(|p| p.join("tokenizer.json").is_file())
}

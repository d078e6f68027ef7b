//! Pieces shared by the generating subcommands: model + tokenizer loading
//! with timing, sampling flags.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use qmoe_model::{Model, Source};
use qmoe_runtime::{
    chat_template_from_gguf, stop_ids_from_gguf, stop_token_ids, tokenizer_from_gguf, ChatTemplate, SamplerConfig,
    Tokenizer,
};

/// `--threads`: `None` uses every core. The kernel workers start here, not
/// inside the first timed forward.
pub fn set_threads(n: Option<usize>) {
    qmoe_kernels::threads::set(n.unwrap_or(0));
    qmoe_kernels::pool::start();
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
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
        }
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
    /// `None` when the model ships no chat template.
    pub template: Option<ChatTemplate>,
    pub stop: Vec<u32>,
    pub load_secs: f64,
}

impl Loaded {
    pub fn template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().context(
            "this model has no chat template (chat_template.jinja, tokenizer_config.json or tokenizer.chat_template)",
        )
    }
}

/// Model, tokenizer, chat template and stop ids, from a checkpoint directory
/// or from a single `.gguf` file (whose metadata carries all of them).
pub fn load(path: &Path) -> Result<Loaded> {
    let t0 = Instant::now();
    let model = Model::load(path).with_context(|| format!("loading model {}", path.display()))?;
    let (tokenizer, template, stop) = match &model.source {
        Source::Gguf { file, .. } => {
            let tokenizer = tokenizer_from_gguf(file)?;
            let template = chat_template_from_gguf(file)?;
            let stop = stop_ids_from_gguf(file, &tokenizer)?;
            (tokenizer, template, stop)
        }
        Source::Safetensors { .. } => {
            let dir = model_dir(path);
            let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
            let template = ChatTemplate::from_model_dir(&dir).ok();
            let stop = stop_token_ids(&dir, &tokenizer)?;
            (tokenizer, template, stop)
        }
    };
    let load_secs = t0.elapsed().as_secs_f64();
    Ok(Loaded { model, tokenizer, template, stop, load_secs })
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
/// tokenizer files, or carried over from a GGUF source.
pub fn gguf_tokenizer_metadata(src: &Path, model: &Model) -> Result<Vec<(String, qmoe_formats::GgufValue)>> {
    if let Source::Gguf { file, .. } = &model.source {
        return Ok(file.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect());
    }
    let dir = model_dir(src);
    if !dir.join("tokenizer.json").exists() {
        eprintln!("note: {} has no tokenizer.json; the GGUF will carry no tokenizer", dir.display());
        return Ok(Vec::new());
    }
    Ok(qmoe_runtime::gguf_tokenizer_metadata(&dir, model.config.vocab_size)?)
}

/// Writes one streamed piece of generated text and flushes, so the user sees
/// tokens as they come (the error type is the generation callback's).
pub fn stream_piece(out: &mut impl std::io::Write, piece: &str) -> qmoe_runtime::Result<()> {
    out.write_all(piece.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| qmoe_runtime::RuntimeError::Generation(format!("writing to stdout: {e}")))
}

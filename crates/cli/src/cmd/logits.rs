//! `qmoe logits`: the verification interface. Runs a token sequence in one
//! of three equivalent ways and writes every position's logits, computed in
//! f32, as a little-endian float32 `.npy` of shape `[n_ids, vocab_size]`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use qmoe_model::{Logits, Model, Scratch};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long)]
    ids: String,
    /// prefill (one call), decode (one token per call) or chunked:N (N tokens per call).
    #[arg(long, default_value = "prefill")]
    mode: String,
    /// Output .npy file.
    #[arg(long)]
    out: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn main(a: Args) -> Result<()> {
    super::common::set_threads(a.threads);
    let ids = parse_ids(&a.ids)?;
    let chunk = match a.mode.as_str() {
        "prefill" => ids.len(),
        "decode" => 1,
        m => match m.strip_prefix("chunked:").map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => n,
            _ => bail!("--mode must be prefill, decode or chunked:N with N >= 1 (got `{m}`)"),
        },
    };
    let model = Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let v = model.config.vocab_size;
    let mut cache = model.new_cache(ids.len());
    let mut scratch = Scratch::default();
    let mut all = Vec::with_capacity(ids.len() * v);
    for part in ids.chunks(chunk) {
        all.extend_from_slice(model.forward(part, &mut cache, &mut scratch, Logits::All)?);
    }
    qmoe_formats::write_npy_f32(&a.out, &[ids.len(), v], &all)?;
    eprintln!("wrote {} ({} x {}) in mode {}", a.out.display(), ids.len(), v, a.mode);
    Ok(())
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(',')
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().with_context(|| format!("--ids: `{p}` is not a token id")))
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("--ids is empty");
    }
    Ok(ids)
}

//! `qmoe convert`: write any checkpoint qmoe loads as a GGUF file llama.cpp
//! can run (names, metadata, transforms and tokenizer as its converter writes
//! them). Tensors stream one at a time; a progress line shows on a terminal.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use qmoe_model::Model;
use qmoe_runtime::export::{export_gguf_with, ExportOptions, ExportType, MtpExport};

#[derive(clap::Args)]
pub struct Args {
    /// Source checkpoint: safetensors directory (HF, FP8, MLX) or a .gguf file.
    src: PathBuf,
    /// Output format (only gguf).
    #[arg(long, default_value = "gguf")]
    to: String,
    /// Tensor type: f32, f16, bf16, q8_0, q4_k_m, q6_k.
    #[arg(long = "type", default_value = "f16")]
    ty: String,
    /// Do not write the MTP head (by default it is written as llama.cpp's
    /// `nextn` blocks when the source has one).
    #[arg(long)]
    no_mtp: bool,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    if a.to != "gguf" {
        bail!("--to {}: only gguf is supported", a.to);
    }
    let Some(ty) = ExportType::parse(&a.ty) else {
        bail!("--type {}: use one of f32, f16, bf16, q8_0, q4_k_m, q6_k", a.ty);
    };
    let t0 = Instant::now();
    let model = Model::load(&a.src).with_context(|| format!("loading {}", a.src.display()))?;
    let dir = super::common::model_dir(&a.src);
    let tokenizer = super::common::gguf_tokenizer_metadata(&a.src, &model)?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let opts = ExportOptions { ty, mtp: if a.no_mtp { MtpExport::Skip } else { MtpExport::Include } };
    let stats = export_gguf_with(&model, &opts, tokenizer, &name, &a.out)?;
    let by_type: Vec<String> = stats.by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let mtp = match (model.weights.mtp.is_some(), stats.mtp_blocks) {
        (false, _) => "no MTP head".to_string(),
        (true, 0) => "MTP head skipped (--no-mtp)".to_string(),
        (true, n) => format!("MTP head as {n} nextn block(s)"),
    };
    eprintln!(
        "wrote {}: {} tensors ({}), {mtp}, {:.1} MiB in {:.1} s",
        a.out.display(),
        stats.tensors,
        by_type.join(", "),
        stats.bytes as f64 / (1u64 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

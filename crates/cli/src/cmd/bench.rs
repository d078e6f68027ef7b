//! `qmoe bench`: prefill and decode speed of one model on this machine, with
//! the weight bytes per decoded token, the bandwidth that implies, and the
//! machine's own streaming read bandwidth measured in the same run. Machine,
//! threads, model, quant and commit are printed beside the figures; `--json`
//! prints one JSON object instead (key names are a stable interface).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use qmoe_model::Model;
use qmoe_runtime::bench::{self, BenchParams};
use qmoe_runtime::Tokenizer;
use serde_json::json;

/// The commit this binary was built from (see build.rs).
pub const COMMIT: &str = env!("QMOE_GIT_COMMIT");

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint: safetensors directory (HF, FP8, MLX) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Prompt tokens to prefill (seeded random ids).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens to decode after the prefill (greedy).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Worker threads (default: all cores); also used for the bandwidth test.
    #[arg(long)]
    threads: Option<usize>,
    /// Repetitions, each from an empty cache; rates are medians.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    /// Seed of the random prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Buffer size of the streaming-bandwidth test, MiB.
    #[arg(long, default_value_t = 1024)]
    stream_mib: usize,
    /// Passes of the streaming-bandwidth test (best counts).
    #[arg(long, default_value_t = 5)]
    stream_passes: usize,
}

pub fn main(a: Args) -> Result<()> {
    if a.n_prompt == 0 {
        bail!("-p/--n-prompt must be at least 1");
    }
    super::common::set_threads(a.threads);
    let threads = qmoe_kernels::threads::get();
    // The kernels' instruction set (`QMOE_SIMD` can name a lower one).
    let simd = format!("{:?}", qmoe_kernels::simd::level()).to_lowercase();
    let machine = bench::machine();

    let t0 = Instant::now();
    let model = Model::load(&a.model).with_context(|| format!("loading model {}", a.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let vocab_limit =
        tokenizer_vocab(&super::common::model_dir(&a.model)).unwrap_or(usize::MAX).min(model.config.vocab_size);

    let params =
        BenchParams { prompt_tokens: a.n_prompt, gen_tokens: a.n_gen, reps: a.reps.max(1), seed: a.seed, vocab_limit };
    let run = bench::run(&model, &params)?;
    // Read before the bandwidth test allocates its buffer.
    let peak_rss = bench::peak_rss_bytes();

    let stream_gbs = bench::stream_read_gbs(threads, a.stream_mib.max(1) << 20, a.stream_passes);
    let bytes = bench::bytes_per_token(&model);
    let bytes_per_token = bytes.total();
    let (prefill, decode) = (run.prefill_tok_s(), run.decode_tok_s());
    let achieved_gbs = bytes_per_token * decode / 1e9;
    let share = if stream_gbs > 0.0 { achieved_gbs / stream_gbs } else { 0.0 };
    let quant = bench::quant_label(&model);
    let format = format_name(&model);
    let cfg = &model.config;
    let shape = format!(
        "{}, {} layers ({} GDN, {} attention), {}hidden {}",
        cfg.arch,
        cfg.num_hidden_layers,
        cfg.n_linear_attention_layers(),
        cfg.n_full_attention_layers(),
        if cfg.n_moe_layers() > 0 {
            format!("{} experts top-{}, ", cfg.num_experts, cfg.num_experts_per_tok)
        } else {
            String::new()
        },
        cfg.hidden_size
    );
    let model_name = a.model.display().to_string();

    if a.json {
        let parts: serde_json::Map<String, serde_json::Value> =
            bytes.parts().iter().map(|(k, v)| (k.to_string(), json!(v.round() as u64))).collect();
        let storage: serde_json::Map<String, serde_json::Value> =
            bench::storage_mix(&model).into_iter().map(|(k, v)| (k, json!(v))).collect();
        let out = json!({
            "prefill_tok_s": prefill,
            "decode_tok_s": decode,
            "bytes_per_token": bytes_per_token.round() as u64,
            "achieved_gbs": achieved_gbs,
            "stream_gbs": stream_gbs,
            "stream_share": share,
            "peak_rss_bytes": peak_rss,
            "load_s": load_s,
            "threads": threads,
            "model": model_name,
            "quant": quant,
            "commit": COMMIT,
            "machine": machine.cpu,
            "cores": machine.cores,
            "simd": simd,
            "format": format,
            "shape": shape,
            "n_prompt": a.n_prompt,
            "n_gen": a.n_gen,
            "reps": params.reps,
            "seed": a.seed,
            "prefill_s": run.prefill_secs,
            "decode_s": run.decode_secs,
            "bytes_per_token_parts": parts,
            "weight_bytes": bench::weight_bytes(&model),
            "storage": storage,
            "stream_mib": a.stream_mib.max(1),
        });
        return super::common::print_stdout(&format!("{out}\n"));
    }

    let gb = |b: f64| format!("{:.3} GB", b / 1e9);
    let secs = |v: &[f64]| v.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(" ");
    let mut r = String::new();
    r += &format!("machine    {} ({} cores, {simd} kernels)\n", machine.cpu, machine.cores);
    r += &format!("threads    {threads}\n");
    r += &format!("model      {model_name}: {shape}\n");
    r += &format!("format     {format}\n");
    r += &format!("quant      {quant}\n");
    r += &format!("commit     {COMMIT}\n");
    r += &format!(
        "load       {load_s:.2} s; peak RSS {}\n",
        peak_rss.map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or_else(|| "n/a".into())
    );
    r += &format!(
        "prefill    {} tokens: {prefill:.2} tok/s (median of {}; s: {})\n",
        a.n_prompt,
        params.reps,
        secs(&run.prefill_secs)
    );
    r += &format!(
        "decode     {} tokens: {decode:.2} tok/s (median of {}; s: {})\n",
        a.n_gen,
        params.reps,
        secs(&run.decode_secs)
    );
    r += &format!(
        "weights    {} read per decoded token ({} of {} experts per MoE layer, uniform routing); {} in all\n",
        gb(bytes_per_token),
        cfg.num_experts_per_tok,
        cfg.num_experts,
        gb(bench::weight_bytes(&model) as f64)
    );
    r += &format!(
        "bandwidth  {achieved_gbs:.2} GB/s achieved = {:.1}% of {stream_gbs:.1} GB/s streaming read ({threads} threads, {} MiB, best of {})\n",
        100.0 * share,
        a.stream_mib.max(1),
        a.stream_passes.max(1)
    );
    super::common::print_stdout(&r)
}

/// The tokenizer's vocabulary size, if the model folder has a tokenizer.json.
fn tokenizer_vocab(dir: &Path) -> Option<usize> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return None;
    }
    Tokenizer::from_file(path).ok().map(|t| t.vocab_size())
}

fn format_name(model: &Model) -> String {
    match model.conventions() {
        Some(c) => c.dialect.name().to_string(),
        None => "GGUF".to_string(),
    }
}

//! `qmoe run`: one prompt in, streamed text out.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use qmoe_runtime::{Sampler, Session};
use serde_json::{json, Map, Value};

use super::common::{self, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    system: Option<String>,
    /// Render the template with enable_thinking=false (with --chat).
    #[arg(long)]
    no_think: bool,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn main(a: Args) -> Result<()> {
    common::set_threads(a.threads);
    let loaded = common::load(&a.model)?;
    let text = if a.chat {
        let template = loaded.template()?;
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": a.prompt}));
        let mut kwargs = Map::new();
        if a.no_think {
            kwargs.insert("enable_thinking".into(), Value::Bool(false));
        }
        template.render(&messages, None, true, &kwargs)?
    } else {
        a.prompt.clone()
    };
    let prompt = loaded.tokenizer.encode(&text)?;
    let stop = loaded.stop.clone();
    let mut sampler = Sampler::new(a.sampling.config());
    let mut session = Session::new(&loaded.model, prompt.len() + a.max_tokens);
    session.limit_vocab(loaded.tokenizer.vocab_size());
    let mut decoder = loaded.tokenizer.stream_decoder();
    let mut out = std::io::stdout().lock();
    let stats = session.generate(&prompt, a.max_tokens, &stop, &mut sampler, |id| {
        common::stream_piece(&mut out, &decoder.push(id)?)?;
        Ok(true)
    })?;
    let tail = decoder.finish()?;
    writeln!(out, "{tail}")?;
    eprintln!(
        "load {:.2} s | prompt {} tok, {:.1} tok/s | decode {} tok, {:.1} tok/s | stop: {:?}",
        loaded.load_secs,
        stats.prompt_tokens,
        stats.prompt_tok_s(),
        stats.generated_tokens,
        stats.decode_tok_s(),
        stats.stop
    );
    Ok(())
}

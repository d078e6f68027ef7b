//! `qmoe chat`: interactive multi-turn chat. Each turn re-renders the whole
//! conversation through the template, but only the tokens after the longest
//! cached prefix are computed: the session snapshots the GDN state at the
//! end of every rendered history (before the generation prompt), which is
//! where the next turn's rendering diverges at the earliest.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Result;
use qmoe_runtime::{Sampler, Session};
use serde_json::{json, Map, Value};

use super::common::{self, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json, chat template).
    #[arg(long)]
    model: PathBuf,
    /// System message for the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Render the template with enable_thinking=false.
    #[arg(long)]
    no_think: bool,
    /// Maximum tokens per reply.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Context limit in tokens for the whole conversation.
    #[arg(long, default_value_t = 16384)]
    ctx: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn main(a: Args) -> Result<()> {
    common::set_threads(a.threads);
    let loaded = common::load(&a.model)?;
    let template = loaded.template()?;
    let stop = loaded.stop.clone();
    let mut sampler = Sampler::new(a.sampling.config());
    let mut session = Session::new(&loaded.model, a.ctx);
    session.limit_vocab(loaded.tokenizer.vocab_size());
    let mut kwargs = Map::new();
    if a.no_think {
        kwargs.insert("enable_thinking".into(), Value::Bool(false));
    }
    let mut messages: Vec<Value> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    eprintln!(
        "loaded in {:.2} s. Type a message; /reset clears the conversation, /exit or Ctrl-D quits.",
        loaded.load_secs
    );

    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m["role"] == "system");
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));

        // Prefill the history (no generation prompt) and snapshot there.
        let history = loaded.tokenizer.encode(&template.render(&messages, None, false, &kwargs)?)?;
        let prompt = loaded.tokenizer.encode(&template.render(&messages, None, true, &kwargs)?)?;
        let t0 = std::time::Instant::now();
        let mut computed = 0;
        if prompt.starts_with(&history) && !history.is_empty() {
            let reused = session.rewind_to_prefix(&history);
            computed += history.len() - reused;
            session.feed(&history[reused..], false)?;
            session.checkpoint();
        }
        let history_secs = t0.elapsed().as_secs_f64();

        let mut decoder = loaded.tokenizer.stream_decoder();
        let mut reply_ids = Vec::new();
        let mut out = std::io::stdout().lock();
        let stats = session.generate(&prompt, a.max_tokens, &stop, &mut sampler, |id| {
            reply_ids.push(id);
            common::stream_piece(&mut out, &decoder.push(id)?)?;
            Ok(true)
        })?;
        writeln!(out, "{}", decoder.finish()?)?;
        computed += stats.prompt_tokens;
        let prompt_secs = history_secs + stats.prompt_secs;
        eprintln!(
            "[prompt {} tok ({} computed, {} reused), {:.1} tok/s | reply {} tok, {:.1} tok/s]",
            prompt.len(),
            computed,
            prompt.len() - computed,
            if prompt_secs > 0.0 { computed as f64 / prompt_secs } else { 0.0 },
            stats.generated_tokens,
            stats.decode_tok_s()
        );
        messages.push(assistant_message(&loaded.tokenizer.decode(&reply_ids)?));
    }
    Ok(())
}

/// Splits a reply into reasoning and answer for the template (which drops
/// the reasoning of earlier turns). The generation prompt already opened
/// `<think>`, so the reasoning is everything before `</think>`.
fn assistant_message(reply: &str) -> Value {
    match reply.split_once("</think>") {
        Some((reasoning, content)) => json!({
            "role": "assistant",
            "content": content.trim(),
            "reasoning_content": reasoning.trim_start_matches("<think>").trim(),
        }),
        None => json!({"role": "assistant", "content": reply.trim()}),
    }
}

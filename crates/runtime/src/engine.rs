//! A generation session over one model: prompt prefill with prefix reuse,
//! sampling, streaming, timing.
//!
//! The session remembers the tokens its cache holds and keeps snapshots of
//! the GDN state at chosen points (`checkpoint`). A new prompt that shares a
//! prefix with what was processed restores the latest usable snapshot and
//! feeds only the rest: recurrent state cannot be truncated like a KV cache,
//! so this is how a chat turn avoids re-reading the whole conversation.

use std::time::Instant;

use qmoe_model::{Cache, Logits, Model, Scratch, Snapshot};

use crate::error::{Result, RuntimeError};
use crate::sample::Sampler;

/// Tokens prefilled per forward call: bounds scratch memory for long prompts.
const PREFILL_CHUNK: usize = 512;

/// What a generation did, for the tok/s lines on stderr.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Prompt tokens actually computed (after prefix reuse).
    pub prompt_tokens: usize,
    /// Prompt tokens taken from the cache.
    pub reused_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    pub decode_secs: f64,
    /// Why generation ended.
    pub stop: StopReason,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    #[default]
    MaxTokens,
    StopToken,
    Callback,
}

impl Stats {
    pub fn prompt_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.generated_tokens, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

pub struct Session<'m> {
    model: &'m Model,
    cache: Cache,
    scratch: Scratch,
    /// Tokens the cache holds, in order.
    history: Vec<u32>,
    /// Snapshots at increasing positions, all on `history`.
    snapshots: Vec<Snapshot>,
    /// Logit columns that may be sampled: the embedding is padded past the
    /// tokenizer (248320 rows vs 248077 tokens), and padding ids decode to nothing.
    vocab_limit: usize,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, max_tokens: usize) -> Session<'m> {
        let vocab_limit = model.config.vocab_size;
        Session {
            model,
            cache: model.new_cache(max_tokens),
            scratch: Scratch::default(),
            history: Vec::new(),
            snapshots: Vec::new(),
            vocab_limit,
        }
    }

    /// Samples only ids below `n` (pass the tokenizer's vocabulary size).
    pub fn limit_vocab(&mut self, n: usize) {
        self.vocab_limit = n.clamp(1, self.model.config.vocab_size);
    }

    pub fn history(&self) -> &[u32] {
        &self.history
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Saves the current state so a later prompt sharing this prefix can
    /// resume from here.
    pub fn checkpoint(&mut self) {
        if self.snapshots.last().map(|s| s.pos()) != Some(self.cache.pos) {
            self.snapshots.push(self.cache.snapshot());
        }
    }

    /// Rewinds to the longest reusable prefix of `ids`, keeping at least one
    /// token of `ids` to feed (its logits are needed). Returns how many
    /// tokens of `ids` are already in the cache.
    pub fn rewind_to_prefix(&mut self, ids: &[u32]) -> usize {
        let lcp = self.history.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let target = lcp.min(ids.len().saturating_sub(1));
        if target == self.history.len() {
            return target;
        }
        while self.snapshots.last().is_some_and(|s| s.pos() > target) {
            self.snapshots.pop();
        }
        match self.snapshots.last() {
            Some(s) => {
                self.cache.restore(s);
                self.history.truncate(s.pos());
            }
            None => {
                self.cache.reset();
                self.history.clear();
            }
        }
        self.history.len()
    }

    /// Feeds `ids` (in chunks) and returns the last position's logits if asked.
    pub fn feed(&mut self, ids: &[u32], want_logits: bool) -> Result<&[f32]> {
        let n_chunks = ids.len().div_ceil(PREFILL_CHUNK);
        for (i, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
            let which = if want_logits && i + 1 == n_chunks { Logits::Last } else { Logits::None };
            self.model.forward(chunk, &mut self.cache, &mut self.scratch, which)?;
            self.history.extend_from_slice(chunk);
        }
        Ok(&self.scratch.logits[..if want_logits && !ids.is_empty() { self.model.config.vocab_size } else { 0 }])
    }

    /// Generates after `prompt`, calling `on_token` with each sampled token
    /// (stop tokens excluded); `on_token` returns `false` to stop early.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[u32],
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<Stats> {
        if prompt.is_empty() {
            return Err(RuntimeError::Generation("the prompt is empty (no tokens to condition on)".into()));
        }
        let mut stats = Stats::default();
        let t0 = Instant::now();
        let reused = self.rewind_to_prefix(prompt);
        stats.reused_tokens = reused;
        stats.prompt_tokens = prompt.len() - reused;
        let limit = self.vocab_limit;
        let mut next = sampler.sample(&self.feed(&prompt[reused..], true)?[..limit]);
        stats.prompt_secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        stats.stop = StopReason::MaxTokens;
        for produced in 0..max_tokens {
            if stop.contains(&next) {
                stats.stop = StopReason::StopToken;
                break;
            }
            stats.generated_tokens += 1;
            if !on_token(next)? {
                stats.stop = StopReason::Callback;
                break;
            }
            if produced + 1 == max_tokens {
                break;
            }
            next = sampler.sample(&self.feed(&[next], true)?[..limit]);
        }
        stats.decode_secs = t1.elapsed().as_secs_f64();
        Ok(stats)
    }
}

//! End-to-end speed measurement (`qmoe bench`): prefill and decode rates,
//! the weight bytes a decoded token reads, and the machine's streaming read
//! bandwidth measured the same way, so a rate can be read as a share of what
//! the memory system allows (decode is bandwidth-bound).
//!
//! Method:
//! * prompt: `prompt_tokens` seeded random ids below the vocabulary limit;
//!   decoding is greedy (argmax), so a run is deterministic;
//! * every repetition starts from an empty cache (one cache, reset between
//!   repetitions, as a server reuses its context): prefill the prompt (in
//!   chunks of [`PREFILL_CHUNK`], last logits only), then `gen_tokens`
//!   single-token forwards, each feeding the previous argmax;
//! * rates are medians over repetitions; one untimed forward of the first
//!   prefill chunk beforehand pages in the dense weights and grows the
//!   scratch buffers and the cache to the sizes the timed calls use, so
//!   their first touches (page faults, 2-4% of a Q4_K_M prefill's samples
//!   on the 2-core Zen 4) fall outside the timing
//!   (`tools/bench_vs_llamacpp.py` gives llama.cpp the same untimed prefill);
//! * every logit row the benchmark reads is checked finite.

use std::time::Instant;

use qmoe_model::weights::{GdnProj, Mat, Mixer, Mlp, SwiGlu};
use qmoe_model::{Logits, Model, Scratch};

use crate::error::{Result, RuntimeError};
use crate::sample::argmax;

/// Tokens per prefill forward call (as the generation session does).
pub const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Debug)]
pub struct BenchParams {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub reps: usize,
    pub seed: u64,
    /// Ids are drawn below this (the tokenizer's vocabulary; padding rows excluded),
    /// and the argmax is taken below it.
    pub vocab_limit: usize,
}

/// Timings of every repetition.
#[derive(Clone, Debug, Default)]
pub struct BenchRun {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub prefill_secs: Vec<f64>,
    pub decode_secs: Vec<f64>,
}

impl BenchRun {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, median(&self.prefill_secs))
    }

    pub fn decode_tok_s(&self) -> f64 {
        rate(self.gen_tokens, median(&self.decode_secs))
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if n > 0 && secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Median (mean of the middle two for an even count); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Runs the benchmark (see the module doc).
pub fn run(model: &Model, p: &BenchParams) -> Result<BenchRun> {
    if p.prompt_tokens == 0 {
        return Err(RuntimeError::Generation("bench: the prompt needs at least one token".into()));
    }
    let v = model.config.vocab_size;
    let limit = p.vocab_limit.clamp(1, v);
    let mut rng = p.seed ^ 0x5EED_BE4C;
    let prompt: Vec<u32> = (0..p.prompt_tokens).map(|_| (splitmix(&mut rng) % limit as u64) as u32).collect();
    let mut scratch = Scratch::default();

    // Untimed: page in the dense weights, grow the scratch buffers and the
    // cache to the timed calls' sizes.
    let mut cache = model.new_cache(p.prompt_tokens + p.gen_tokens);
    let warm = &prompt[..prompt.len().min(PREFILL_CHUNK)];
    let logits = model.forward(warm, &mut cache, &mut scratch, Logits::Last)?;
    check_finite(logits, "warm-up")?;

    let mut out = BenchRun { prompt_tokens: p.prompt_tokens, gen_tokens: p.gen_tokens, ..Default::default() };
    for rep in 0..p.reps.max(1) {
        cache.reset();
        let t0 = Instant::now();
        let n_chunks = prompt.len().div_ceil(PREFILL_CHUNK);
        let mut next = 0;
        for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
            let which = if i + 1 == n_chunks { Logits::Last } else { Logits::None };
            let logits = model.forward(chunk, &mut cache, &mut scratch, which)?;
            if which == Logits::Last {
                check_finite(logits, &format!("rep {rep}, prefill"))?;
                next = argmax(&logits[..limit]);
            }
        }
        out.prefill_secs.push(t0.elapsed().as_secs_f64());

        let t1 = Instant::now();
        for step in 0..p.gen_tokens {
            let logits = model.forward(&[next], &mut cache, &mut scratch, Logits::Last)?;
            check_finite(logits, &format!("rep {rep}, decode step {step}"))?;
            next = argmax(&logits[..limit]);
        }
        out.decode_secs.push(t1.elapsed().as_secs_f64());
    }
    Ok(out)
}

fn check_finite(logits: &[f32], at: &str) -> Result<()> {
    match logits.iter().position(|l| !l.is_finite()) {
        None => Ok(()),
        Some(i) => Err(RuntimeError::Generation(format!("bench: logit {i} is {} at {at}", logits[i]))),
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---- bytes per decoded token ---------------------------------------------------

/// Weight bytes one decoded token reads, by part (weights with their scales,
/// as stored; per-channel vectors at their in-memory f32 size).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenBytes {
    /// One row of the embedding table.
    pub embedding_row: f64,
    /// The whole LM head (the embedding matrix when tied).
    pub head: f64,
    pub attention: f64,
    pub deltanet: f64,
    pub dense_mlp: f64,
    /// Router, shared expert and its gate.
    pub router_shared: f64,
    /// Expected routed-expert bytes under uniform routing: per MoE layer,
    /// `top_k / n_experts` of all its experts' bytes.
    pub routed_experts: f64,
    /// Every RMSNorm, GDN conv taps, decay and gated-norm vectors.
    pub vectors: f64,
}

impl TokenBytes {
    pub fn total(&self) -> f64 {
        self.embedding_row
            + self.head
            + self.attention
            + self.deltanet
            + self.dense_mlp
            + self.router_shared
            + self.routed_experts
            + self.vectors
    }

    /// `(name, bytes)` pairs for reports.
    pub fn parts(&self) -> [(&'static str, f64); 8] {
        [
            ("embedding_row", self.embedding_row),
            ("head", self.head),
            ("attention", self.attention),
            ("deltanet", self.deltanet),
            ("dense_mlp", self.dense_mlp),
            ("router_shared", self.router_shared),
            ("routed_experts", self.routed_experts),
            ("vectors", self.vectors),
        ]
    }
}

fn swiglu_bytes(w: &SwiGlu) -> usize {
    w.gate.bytes() + w.up.bytes() + w.down.bytes()
}

fn f32_bytes(v: &[f32]) -> f64 {
    (v.len() * 4) as f64
}

/// What one decoded token reads from the loaded weights (see [`TokenBytes`]).
pub fn bytes_per_token(model: &Model) -> TokenBytes {
    let w = &model.weights;
    let k = model.config.num_experts_per_tok;
    let mut b = TokenBytes {
        embedding_row: w.embed.bytes() as f64 / w.embed.rows.max(1) as f64,
        head: w.head().bytes() as f64,
        vectors: f32_bytes(&w.final_norm),
        ..Default::default()
    };
    for layer in &w.layers {
        b.vectors += f32_bytes(&layer.input_norm) + f32_bytes(&layer.post_attn_norm);
        match &layer.mixer {
            Mixer::Attention(a) => {
                b.attention += (a.q_proj.bytes() + a.k_proj.bytes() + a.v_proj.bytes() + a.o_proj.bytes()) as f64;
                b.vectors += f32_bytes(&a.q_norm) + f32_bytes(&a.k_norm);
            }
            Mixer::Gdn(g) => {
                let proj: usize = match &g.proj {
                    GdnProj::Separate { qkv, z, b, a } => qkv.bytes() + z.bytes() + b.bytes() + a.bytes(),
                    GdnProj::FusedGrouped { qkvz, ba } => qkvz.bytes() + ba.bytes(),
                    GdnProj::SplitGroupedBa { qkv, z, ba } => qkv.bytes() + z.bytes() + ba.bytes(),
                };
                b.deltanet += (proj + g.out_proj.bytes()) as f64;
                b.vectors += f32_bytes(&g.conv) + f32_bytes(&g.a_neg_exp) + f32_bytes(&g.dt_bias) + f32_bytes(&g.norm);
            }
        }
        match &layer.mlp {
            Mlp::Dense(d) => b.dense_mlp += swiglu_bytes(d) as f64,
            Mlp::Moe(m) => {
                b.router_shared += (m.router.bytes() + swiglu_bytes(&m.shared) + m.shared_gate.bytes()) as f64;
                let all: usize = m.experts.iter().map(swiglu_bytes).sum();
                if !m.experts.is_empty() {
                    b.routed_experts += all as f64 * k.min(m.experts.len()) as f64 / m.experts.len() as f64;
                }
            }
        }
    }
    b
}

// ---- what the weights are --------------------------------------------------------

/// Every weight matrix of the model with what it is (`routed`: a routed expert's).
fn for_each_matrix(model: &Model, mut f: impl FnMut(&Mat, bool)) {
    let w = &model.weights;
    f(&w.embed, false);
    if let Some(h) = &w.lm_head {
        f(h, false);
    }
    for layer in &w.layers {
        match &layer.mixer {
            Mixer::Attention(a) => [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj].into_iter().for_each(|m| f(m, false)),
            Mixer::Gdn(g) => {
                match &g.proj {
                    GdnProj::Separate { qkv, z, b, a } => [qkv, z, b, a].into_iter().for_each(|m| f(m, false)),
                    GdnProj::FusedGrouped { qkvz, ba } => [qkvz, ba].into_iter().for_each(|m| f(m, false)),
                    GdnProj::SplitGroupedBa { qkv, z, ba } => [qkv, z, ba].into_iter().for_each(|m| f(m, false)),
                }
                f(&g.out_proj, false);
            }
        }
        match &layer.mlp {
            Mlp::Dense(d) => [&d.gate, &d.up, &d.down].into_iter().for_each(|m| f(m, false)),
            Mlp::Moe(m) => {
                [&m.router, &m.shared.gate, &m.shared.up, &m.shared.down, &m.shared_gate]
                    .into_iter()
                    .for_each(|x| f(x, false));
                for e in &m.experts {
                    [&e.gate, &e.up, &e.down].into_iter().for_each(|x| f(x, true));
                }
            }
        }
    }
}

/// Bytes of all weight matrices by storage (`BF16`, `MLX affine 4-bit, group 64`,
/// `GGUF Q4_K`, ...), largest first.
pub fn storage_mix(model: &Model) -> Vec<(String, usize)> {
    let mut by: Vec<(String, usize)> = Vec::new();
    for_each_matrix(model, |m, _| add_to(&mut by, m));
    by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by
}

fn add_to(by: &mut Vec<(String, usize)>, m: &Mat) {
    let d = m.describe();
    match by.iter_mut().find(|(k, _)| *k == d) {
        Some((_, n)) => *n += m.bytes(),
        None => by.push((d, m.bytes())),
    }
}

/// The quantization a reader means by "the model's quant": the storage
/// holding most bytes of the routed experts (of all matrices for a dense model).
pub fn quant_label(model: &Model) -> String {
    let mut experts: Vec<(String, usize)> = Vec::new();
    for_each_matrix(model, |m, routed| {
        if routed {
            add_to(&mut experts, m)
        }
    });
    let pool = if experts.is_empty() { storage_mix(model) } else { experts };
    pool.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d).unwrap_or_else(|| "none".into())
}

/// Bytes of every weight matrix (with scales).
pub fn weight_bytes(model: &Model) -> usize {
    let mut n = 0;
    for_each_matrix(model, |m, _| n += m.bytes());
    n
}

// ---- the machine ---------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`), or the architecture if unknown.
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
}

pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model") || l.starts_with("Hardware"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Machine { cpu, cores }
}

/// Peak resident set size of this process (`VmHWM`), if the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Streaming read bandwidth in GB/s (1e9 bytes/s): `threads` threads each sum
/// their own contiguous slice of a `bytes`-long buffer (written first by the
/// same thread, so its pages are resident and local); the best of `passes`
/// passes counts. The summing loop keeps eight independent u64 lanes so it
/// is not the bottleneck.
pub fn stream_read_gbs(threads: usize, bytes: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let per = (bytes / 8 / threads).max(8) & !7;
    let mut buf = vec![0u64; per * threads];
    // First touch by the reading thread (a zero page would not be read from DRAM).
    std::thread::scope(|s| {
        for (t, part) in buf.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (i, v) in part.iter_mut().enumerate() {
                    *v = (i as u64) ^ (t as u64) << 40;
                }
            });
        }
    });
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf.chunks(per).map(|part| s.spawn(move || sum_lanes(part))).collect();
            handles.into_iter().map(|h| h.join().expect("summing thread")).fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (per * threads * 8) as f64 / best / 1e9
}

fn sum_lanes(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut blocks = part.chunks_exact(8);
    for b in &mut blocks {
        for (a, &x) in acc.iter_mut().zip(b) {
            *a = a.wrapping_add(x);
        }
    }
    let tail = blocks.remainder().iter().fold(0u64, |a, &x| a.wrapping_add(x));
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn stream_and_machine_report_something() {
        assert!(stream_read_gbs(2, 8 << 20, 2) > 0.0);
        assert!(machine().cores >= 1);
        assert!(peak_rss_bytes().unwrap_or(1) > 0);
    }
}

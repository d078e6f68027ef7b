//! Next-token sampling from a logits row.
//!
//! Order (as llama.cpp's common chain and vLLM apply them): temperature scaling, top-k, softmax,
//! top-p (nucleus), min-p, then one draw. `temperature <= 0` is greedy argmax, lowest index on
//! ties, so greedy output is reproducible bit for bit.
//!
//! Why an own RNG: a fixed seed must give the same tokens across runs, machines and dependency
//! updates (`rand`'s `StdRng` algorithm is explicitly allowed to change between versions). PCG32
//! (O'Neill 2014, XSH-RR output) is small, fast and statistically sound for this use.
//!
//! Invariants: `sample` allocates nothing once its candidate buffer has grown to the vocabulary
//! size (first call); candidate ties are broken by lower id everywhere (top-k cut, nucleus sort),
//! so results never depend on unstable-sort order. NaN logits count as -inf.

use crate::error::{Result, RuntimeError};

/// Sampling settings. A filter is off at its neutral value: `top_k = 0`, `top_p = 1.0`,
/// `min_p = 0.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Logits are divided by this; `<= 0` (or NaN) means greedy.
    pub temperature: f32,
    /// Keep the `top_k` highest logits; 0 = all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p` (at least one).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely token's.
    pub min_p: f32,
    /// RNG seed; the same seed and logits give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// Plain sampling from the model's distribution (temperature 1, no filters), seed 0.
    fn default() -> Self {
        SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 0 }
    }
}

impl SamplerConfig {
    /// Greedy decoding (argmax).
    pub fn greedy() -> Self {
        SamplerConfig { temperature: 0.0, ..SamplerConfig::default() }
    }

    /// Checks ranges, for front ends that take these from users. [`Sampler`] itself accepts any
    /// values: temperature <= 0 or NaN is greedy, top_p outside (0, 1) and min_p outside (0, 1]
    /// are clamped (top_p <= 0 keeps only the top token).
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: f32, problem| RuntimeError::SamplerConfig { field, value: value.to_string(), problem };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(bad("temperature", self.temperature, "must be a finite number >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min_p", self.min_p, "must be in [0, 1]"));
        }
        Ok(())
    }
}

/// A candidate token: id and its scaled logit, later its unnormalised probability.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    weight: f32,
}

/// Descending weight, then ascending id: a total order, so selection and sorting are
/// deterministic.
fn by_weight_desc(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id))
}

/// Stateful sampler: settings, RNG state and a reusable candidate buffer.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Pcg32,
    /// Candidates of the current call; capacity kept between calls.
    candidates: Vec<Candidate>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        Sampler { cfg, rng: Pcg32::new(cfg.seed), candidates: Vec::new() }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Restarts the random stream from `seed` (same settings).
    pub fn reseed(&mut self, seed: u64) {
        self.cfg.seed = seed;
        self.rng = Pcg32::new(seed);
    }

    /// Picks the next token id from one row of logits. An empty row yields 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let t = self.cfg.temperature;
        // Greedy unless t is a positive number (NaN included). top_k == 1 is argmax as well,
        // without the RNG draw.
        let greedy = t.is_nan() || t <= 0.0;
        if greedy || self.cfg.top_k == 1 || logits.is_empty() {
            return argmax(logits);
        }

        // Temperature. NaN logits become -inf so they can never be chosen.
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| Candidate { id: i as u32, weight: if l.is_nan() { f32::NEG_INFINITY } else { l / t } }),
        );

        // Top-k: partition so the k best come first (O(n)), drop the rest.
        let k = self.cfg.top_k;
        if k > 0 && k < c.len() {
            c.select_nth_unstable_by(k - 1, by_weight_desc);
            c.truncate(k);
        }

        // Softmax, unnormalised: weights become exp(l - max), so the best token has weight 1.
        let max = c.iter().map(|x| x.weight).fold(f32::NEG_INFINITY, f32::max);
        if max.is_infinite() {
            // Every logit is -inf/NaN (no distribution), or one is +inf (or overflowed under a
            // tiny temperature): all the mass is on the best token.
            return argmax(logits);
        }
        let mut total = 0.0f64;
        for x in c.iter_mut() {
            x.weight = (x.weight - max).exp();
            total += x.weight as f64;
        }

        // Top-p: sort by probability, keep the shortest prefix whose mass reaches top_p.
        let top_p = self.cfg.top_p;
        if top_p < 1.0 {
            c.sort_unstable_by(by_weight_desc);
            let target = top_p.max(0.0) as f64 * total;
            let mut mass = 0.0f64;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                mass += x.weight as f64;
                if mass >= target {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
            total = c.iter().map(|x| x.weight as f64).sum();
        }

        // Min-p: relative to the most likely token, whose unnormalised weight is exactly 1.
        let min_p = self.cfg.min_p;
        if min_p > 0.0 {
            let threshold = min_p.min(1.0);
            c.retain(|x| x.weight >= threshold);
            total = c.iter().map(|x| x.weight as f64).sum();
        }

        // Draw: walk the cumulative weights. The best token always survives every filter, so
        // `c` is non-empty and `total` > 0 here.
        let r = self.rng.next_f64() * total;
        let mut acc = 0.0f64;
        for x in c.iter() {
            acc += x.weight as f64;
            if r < acc {
                return x.id;
            }
        }
        // Rounding left r at the very top: the last kept token.
        c.last().map_or(0, |x| x.id)
    }
}

/// Index of the largest logit, lowest index on ties; NaN never wins; 0 for an empty or all-NaN
/// row.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        if !found || l > best_value {
            best = i;
            best_value = l;
            found = true;
        }
    }
    best as u32
}

/// PCG32 (PCG-XSH-RR, 64-bit state, 32-bit output).
#[derive(Debug, Clone)]
struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    const MULTIPLIER: u64 = 6364136223846793005;
    /// Stream selector (any odd increment works); fixed so the seed alone picks the sequence.
    const STREAM: u64 = 1442695040888963407;

    fn new(seed: u64) -> Pcg32 {
        // The reference seeding procedure: advance once, add the seed, advance again.
        let mut rng = Pcg32 { state: 0, inc: Self::STREAM | 1 };
        rng.next_u32();
        rng.state = rng.state.wrapping_add(seed);
        rng.next_u32();
        rng
    }

    fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(Self::MULTIPLIER).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        let bits = ((self.next_u32() as u64) << 32) | self.next_u32() as u64;
        (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcg32_is_the_reference_generator() {
        // pcg32_srandom(42, 54) then 6 outputs, from the PCG reference implementation's demo
        // (pcg32-demo.c); checks our step/output functions against the published sequence.
        let mut rng = Pcg32 { state: 0, inc: (54u64 << 1) | 1 };
        rng.next_u32();
        rng.state = rng.state.wrapping_add(42);
        rng.next_u32();
        let got: Vec<u32> = (0..6).map(|_| rng.next_u32()).collect();
        assert_eq!(got, [0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e]);
    }

    #[test]
    fn f64_in_unit_interval() {
        let mut rng = Pcg32::new(7);
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}

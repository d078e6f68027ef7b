//! Pooled causal attention, per-token route (the kernel before query
//! blocks: one token x one KV head per unit) against the route
//! `attend_parallel` takes, at the 35B-A3B attention shape (16 query heads,
//! 2 KV heads of 256):
//! * prefill: 512 tokens from an empty cache;
//! * decode: 1 token against 512 and 4096 cached positions.
//!
//! Old and new alternate within each round (order flipped every round) so
//! drift on a shared machine hits both; printed are the median times, the
//! GFLOP/s (`4 head_dim n_heads` per query-key pair seen) and the median of
//! the per-round ratios old / new.
//!
//! `cargo run --release -p qmoe-kernels --example attention_bench --
//!  [--threads 1] [--rounds 15] [--tokens T ...]`: `--tokens` adds blocked
//! routes with T tokens per unit to compare (AVX2 only).

use std::time::Instant;

use qmoe_kernels::attention::AttnShape;
use qmoe_kernels::simd;
use qmoe_kernels::simd::attention::{attend_parallel, attend_parallel_via, Route};

fn rng_vec(state: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            (*state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

struct Case {
    name: &'static str,
    start: usize,
    tokens: usize,
    /// Calls per timed sample (decode calls are short).
    reps: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads = 1;
    let mut rounds = 15;
    let mut extra = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).and_then(|s| s.parse::<usize>().ok()).expect("option value");
        match args[i].as_str() {
            "--threads" => threads = v,
            "--rounds" => rounds = v,
            "--tokens" => extra.push(v),
            o => panic!("unknown option {o}"),
        }
        i += 2;
    }
    qmoe_kernels::threads::set(threads);
    qmoe_kernels::pool::start();
    let level = simd::level();
    let shape = AttnShape { n_heads: 16, n_kv_heads: 2, head_dim: 256 };
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    println!("level {level:?}, {threads} thread(s), {rounds} rounds, shape {shape:?}");

    let cases = [
        Case { name: "prefill 512 from 0", start: 0, tokens: 512, reps: 1 },
        Case { name: "decode at 512", start: 511, tokens: 1, reps: 50 },
        Case { name: "decode at 4096", start: 4095, tokens: 1, reps: 10 },
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for case in &cases {
        let n_ctx = case.start + case.tokens;
        let q = rng_vec(&mut state, case.tokens * shape.q_row_len());
        let k = rng_vec(&mut state, n_ctx * shape.kv_row_len());
        let v = rng_vec(&mut state, n_ctx * shape.kv_row_len());
        let pairs: usize = (0..case.tokens).map(|i| case.start + i + 1).sum();
        let flops = 4.0 * (shape.head_dim * shape.n_heads * pairs) as f64;

        // Route 0 is the old kernel, route 1 what `attend_parallel` picks.
        let mut routes: Vec<(String, Option<Route>)> =
            vec![("per-token (old)".into(), Some(Route::PerToken)), ("attend_parallel (new)".into(), None)];
        for &t in &extra {
            routes.push((format!("blocked {t}"), Some(Route::Blocked { tokens: t })));
        }
        let mut scores = Vec::new();
        let mut outs: Vec<Vec<f32>> = routes.iter().map(|_| vec![0.0; q.len()]).collect();
        let run = |ri: usize, scores: &mut Vec<f32>, out: &mut [f32]| {
            let t = Instant::now();
            for _ in 0..case.reps {
                match routes[ri].1 {
                    Some(route) => attend_parallel_via(
                        route,
                        level,
                        &q,
                        &k,
                        &v,
                        case.start,
                        case.tokens,
                        shape,
                        scale,
                        0,
                        scores,
                        out,
                    ),
                    None => attend_parallel(level, &q, &k, &v, case.start, case.tokens, shape, scale, 0, scores, out),
                }
            }
            t.elapsed().as_secs_f64() / case.reps as f64
        };
        let n_routes = outs.len();
        let mut times = vec![Vec::new(); n_routes];
        for (ri, out) in outs.iter_mut().enumerate() {
            run(ri, &mut scores, out); // warm-up
        }
        for round in 0..rounds {
            for j in 0..n_routes {
                let ri = if round % 2 == 0 { j } else { n_routes - 1 - j };
                let t = run(ri, &mut scores, &mut outs[ri]);
                times[ri].push(t);
            }
        }
        println!("\n{} ({} query-key pairs)", case.name, pairs);
        for ri in 0..n_routes {
            let d = outs[ri].iter().zip(&outs[0]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let ratio = median(times[0].iter().zip(&times[ri]).map(|(o, n)| o / n).collect());
            let t = median(times[ri].clone());
            println!(
                "  {:<24} {:>9.1} us  {:>6.1} GFLOP/s  old/this {:>5.2}x  max |diff| vs old {:.1e}",
                routes[ri].0,
                t * 1e6,
                flops / t * 1e-9,
                ratio,
                d
            );
        }
    }
}

//! Decode-shaped weight streaming on the pool, against a plain streaming
//! read with the same threads, both in one process and alternating.
//!
//! Q4_K (or `--type q6_k` / `q8_0`) weights in the shapes of a 35B-A3B MoE layer (experts of
//! `[512 x 2048]` gate and up, `[2048 x 512]` down; `--experts` of them, 8
//! chosen per step) and one large `[rows x 2048]` matrix, multiplied by one
//! token through `linear::matmul` / `matmul_many` as the model's decode does;
//! and the big matrix again split into `--threads` contiguous parts, each on
//! a plain thread calling the gemv kernel directly (`direct`: no pool,
//! no tasks). The big matrix and the stream take the best of 3 passes, the
//! MoE steps the mean of 64. Prints GB/s of weight bytes and the share of
//! the streaming read measured just before, so a noisy machine's swings
//! cancel.
//!
//! `cargo run --release -p qmoe-kernels --example decode_threads -- [--threads 2]
//!  [--experts 32] [--mb 512] [--rounds 5] [--type q4_k|q6_k|q8_0]`

use std::hint::black_box;
use std::time::Instant;

use half::f16;
use qmoe_core::GgmlType;
use qmoe_kernels::linear::{matmul, MatRef};
use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
use qmoe_kernels::simd::gemm::{matmul_many, Product};
use qmoe_kernels::simd::{self, ggml_dot::gemv_q8k, ggml_dot::gemv_q8x32};

const COLS: usize = 2048;
const INTER: usize = 512;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let threads = opt("--threads", 2);
    let n_experts = opt("--experts", 32);
    let mb = opt("--mb", 512);
    let rounds = opt("--rounds", 5);
    qmoe_kernels::threads::set(threads);

    let ty = match args.iter().position(|a| a == "--type").and_then(|i| args.get(i + 1)) {
        Some(name) => match GgmlType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name)) {
            Some(t) if matches!(t, GgmlType::Q4K | GgmlType::Q6K | GgmlType::Q8_0) => t,
            _ => panic!("--type {name}: q4_k, q6_k or q8_0"),
        },
        None => GgmlType::Q4K,
    };
    let bytes_of = |rows: usize, cols: usize| rows * cols / ty.block_size() * ty.type_size();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut fill = |n: usize| -> Vec<u8> {
        let mut v: Vec<u8> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        // Finite block scales (Q4_K: d, dmin at bytes 0 and 2 of each
        // block; Q8_0: d at byte 0).
        let s = f16::from_f32(0.01).to_le_bytes();
        let fields: &[usize] = match ty {
            GgmlType::Q4K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => &[0],
        };
        for b in v.chunks_exact_mut(ty.type_size()) {
            for &at in fields {
                b[at..at + 2].copy_from_slice(&s);
            }
        }
        v
    };
    let big_rows = (mb << 20) / bytes_of(1, COLS);
    let big = fill(bytes_of(big_rows, COLS));
    let experts: Vec<[Vec<u8>; 3]> = (0..n_experts)
        .map(|_| [fill(bytes_of(INTER, COLS)), fill(bytes_of(INTER, COLS)), fill(bytes_of(COLS, INTER))])
        .collect();
    let x: Vec<f32> = (0..COLS).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02).collect();
    let xi: Vec<f32> = x[..INTER].to_vec();
    let stream_buf: Vec<u64> = (0..(mb << 20) / 8).map(|i| i as u64).collect();

    println!("threads {threads}, {ty}, big [{big_rows} x {COLS}] ({mb} MB), {n_experts} experts, 8 per step");
    let mut pick = 0usize;
    for round in 0..rounds {
        let stream = stream_gbs(&stream_buf, threads);
        // One big matrix, one token.
        let w = MatRef::ggml(ty, big_rows, COLS, &big).unwrap();
        let mut y = vec![0.0f32; big_rows];
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            matmul(&w, &x, &mut y, 1);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let big_gbs = big.len() as f64 / best / 1e9;
        // The same rows split in `threads` contiguous parts, each thread
        // calling the kernel directly (no pool, no tasks).
        let (xk, x32) = {
            let (mut k, mut q) = (vec![BlockQ8K::default(); COLS / 256], vec![BlockQ8x32::default(); COLS / 32]);
            quantize_q8k(&x, &mut k);
            quantize_q8x32(&x, &mut q);
            (k, q)
        };
        // The gemv kernel for `ty` on rows `w`, called directly.
        let gemv = |w: &[u8], y: &mut [f32]| match ty {
            GgmlType::Q4K | GgmlType::Q6K => gemv_q8k(simd::level(), ty, w, &xk, y),
            _ => gemv_q8x32(simd::level(), ty, w, &x32, y),
        };
        let rb = bytes_of(1, COLS);
        let per = big_rows.div_ceil(threads);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            std::thread::scope(|s| {
                for (w, y) in big.chunks(per * rb).zip(y.chunks_mut(per)) {
                    let gemv = &gemv;
                    s.spawn(move || gemv(w, y));
                }
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        let direct_gbs = big.len() as f64 / best / 1e9;
        // Interleaved chunks of 256 KB: thread t takes chunks t, t + threads, ...
        let chunk_rows = (256 << 10) / rb;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            std::thread::scope(|s| {
                for th in 0..threads {
                    let (big, gemv) = (&big, &gemv);
                    s.spawn(move || {
                        let mut yl = vec![0.0f32; chunk_rows];
                        let mut c = th;
                        while c * chunk_rows < big_rows {
                            let r1 = ((c + 1) * chunk_rows).min(big_rows);
                            let w = &big[c * chunk_rows * rb..r1 * rb];
                            let y = &mut yl[..r1 - c * chunk_rows];
                            gemv(w, y);
                            c += threads;
                        }
                        black_box(&yl);
                    });
                }
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        let inter_gbs = big.len() as f64 / best / 1e9;
        black_box(&y);
        // MoE steps: gate + up of 8 experts in one call, then their downs.
        let steps = 64;
        let (mut gate, mut down) = (vec![0.0f32; 8 * INTER], vec![0.0f32; 8 * COLS]);
        let mut moved = 0usize;
        let t = Instant::now();
        for _ in 0..steps {
            let chosen: Vec<usize> = (0..8).map(|k| (pick * 8 + k * 5) % n_experts).collect();
            pick += 1;
            let mut up = vec![0.0f32; 8 * INTER];
            let mut products: Vec<Product> = Vec::new();
            for ((&e, g), u) in chosen.iter().zip(gate.chunks_mut(INTER)).zip(up.chunks_mut(INTER)) {
                products.push(Product::new(MatRef::ggml(ty, INTER, COLS, &experts[e][0]).unwrap(), &x, g, 1));
                products.push(Product::new(MatRef::ggml(ty, INTER, COLS, &experts[e][1]).unwrap(), &x, u, 1));
                moved += experts[e][0].len() + experts[e][1].len();
            }
            matmul_many(&mut products);
            let mut products: Vec<Product> = Vec::new();
            for (&e, d) in chosen.iter().zip(down.chunks_mut(COLS)) {
                products.push(Product::new(MatRef::ggml(ty, COLS, INTER, &experts[e][2]).unwrap(), &xi, d, 1));
                moved += experts[e][2].len();
            }
            matmul_many(&mut products);
        }
        let moe_gbs = moved as f64 / t.elapsed().as_secs_f64() / 1e9;
        black_box((&gate, &down));
        println!(
            "round {round}: stream {stream:6.2} GB/s | big {big_gbs:6.2} ({:3.0}%) | direct {direct_gbs:6.2} ({:3.0}%) | interleaved {inter_gbs:6.2} ({:3.0}%) | moe {moe_gbs:6.2} ({:3.0}%)",
            100.0 * big_gbs / stream,
            100.0 * direct_gbs / stream,
            100.0 * inter_gbs / stream,
            100.0 * moe_gbs / stream
        );
    }
}

/// Best of 3 passes: `threads` threads each summing a contiguous part.
fn stream_gbs(buf: &[u64], threads: usize) -> f64 {
    let per = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(per) {
                s.spawn(move || {
                    let mut acc = [0u64; 8];
                    for c in part.chunks_exact(8) {
                        for (a, v) in acc.iter_mut().zip(c) {
                            *a = a.wrapping_add(*v);
                        }
                    }
                    black_box(acc);
                });
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / best / 1e9
}

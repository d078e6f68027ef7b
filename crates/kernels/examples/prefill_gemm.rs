//! Single-thread prefill product throughput: one `[rows x cols]` quantized
//! matrix times `tokens` tokens, in GFLOP/s (`2 rows cols tokens / s`), for
//! * `multi`: the many-token int8 kernel alone (`ggml_dot::multi`, `affine_multi`);
//! * `matmul`: `linear::matmul`, the driver's route for >= 4 tokens
//!   (activation quantization + the int8 kernel over L2-sized row runs);
//! * `f32 tile`: `linear::matmul` under `with_f32_activations` (rows widened
//!   to f32 once, four tokens per FMA pass);
//! * `gemv/token`: the single-token int8 kernel once per token over the
//!   whole matrix;
//!
//! and the share of `matmul`'s time spent quantizing the activations.
//!
//! `cargo run --release -p qmoe-kernels --example prefill_gemm -- [FORMAT ...]
//!  [--tokens 64] [--iters 9] [--shape ROWSxCOLS]`; FORMAT: a ggml type (q2k .. q6k, q8_0, q4_0, iq4xs, ...), a4 a8 bf16
//! (default q4k q6k q8_0 a4). Shapes: `[512 x 2048]` (an expert's gate/up)
//! and `[2048 x 512]` (its down projection).

use std::time::Instant;

use half::f16;
use qmoe_core::dtype::DType;
use qmoe_core::GgmlType;
use qmoe_kernels::linear::{matmul, MatRef};
use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
use qmoe_kernels::simd::gemm::with_f32_activations;
use qmoe_kernels::simd::{self, affine_dot, affine_multi, ggml_dot, ActKind};

fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Byte offsets of a block's f16 scales (kept small and finite).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4NL | IQ4XS => &[0],
        Q4_1 | Q5_1 | Q4K | Q5K => &[0, 2],
        Q2K => &[80, 82],
        Q3K => &[108],
        Q6K => &[208],
        F32 | F16 | BF16 => &[],
    }
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// Median seconds of `iters` runs of `f` (after one warm-up run).
fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..iters)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

enum Format {
    Ggml(GgmlType),
    Affine(u32),
}

fn format(name: &str) -> Format {
    match name {
        "a4" => Format::Affine(4),
        "a8" => Format::Affine(8),
        n => Format::Ggml(
            GgmlType::ALL
                .into_iter()
                .find(|t| t.name().replace('_', "").eq_ignore_ascii_case(&n.replace('_', "")))
                .unwrap_or_else(|| panic!("unknown format {n}")),
        ),
    }
}

fn main() {
    let mut names = vec![];
    let (mut tokens, mut iters) = (64usize, 9usize);
    let mut shapes = vec![(512usize, 2048usize), (2048, 512)];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tokens" => tokens = it.next().unwrap().parse().unwrap(),
            "--iters" => iters = it.next().unwrap().parse().unwrap(),
            "--shape" => {
                let v = it.next().unwrap();
                let (r, c) = v.split_once('x').expect("--shape ROWSxCOLS");
                shapes = vec![(r.parse().unwrap(), c.parse().unwrap())];
            }
            n => names.push(n.to_string()),
        }
    }
    if names.is_empty() {
        names = ["q4k", "q6k", "q8_0", "a4"].map(String::from).to_vec();
    }
    qmoe_kernels::threads::set(1);
    let level = simd::level();
    println!("cpu: {}; level {level:?}; 1 thread; {tokens} tokens; median of {iters}; commit {}", cpu_name(), commit());
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    for name in &names {
        for &(rows, cols) in &shapes {
            let x: Vec<f32> =
                (0..tokens * cols).map(|_| (rng(&mut s) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).collect();
            let flops = 2.0 * (rows * cols * tokens) as f64;
            let gf = |sec: f64| flops / sec / 1e9;
            let mut y = vec![0.0f32; tokens * rows];
            if name == "bf16" {
                // Float weights: `matmul` takes the f32 tile (rows widened once).
                let bytes: Vec<u8> = (0..rows * cols)
                    .flat_map(|_| {
                        half::bf16::from_f32(((rng(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1)
                            .to_le_bytes()
                    })
                    .collect();
                let w = MatRef::new(DType::BF16, rows, cols, &bytes);
                let t = time(iters, || matmul(&w, &x, &mut y, tokens));
                println!("{name:>5} [{rows:>4} x {cols:>4}]: matmul {:6.1} GFLOP/s (f32 tile)", gf(t));
                continue;
            }
            let (bytes, scales, biases);
            let w = match format(name) {
                Format::Ggml(ty) => {
                    let mut b: Vec<u8> = (0..rows * ty.row_bytes(cols).unwrap()).map(|_| rng(&mut s) as u8).collect();
                    for blk in b.chunks_exact_mut(ty.type_size()) {
                        for &at in f16_fields(ty) {
                            let v = ((rng(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
                            blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
                        }
                    }
                    bytes = b;
                    MatRef::ggml(ty, rows, cols, &bytes).unwrap()
                }
                Format::Affine(bits) => {
                    bytes = (0..rows * cols * bits as usize / 8).map(|_| rng(&mut s) as u8).collect::<Vec<u8>>();
                    let g = rows * cols / 64;
                    scales =
                        (0..g).flat_map(|i| f16::from_f32(0.001 * (i % 7) as f32).to_le_bytes()).collect::<Vec<u8>>();
                    biases =
                        (0..g).flat_map(|i| f16::from_f32(-0.002 * (i % 5) as f32).to_le_bytes()).collect::<Vec<u8>>();
                    MatRef::affine(rows, cols, &bytes, bits, 64, &scales, &biases, DType::F16).unwrap()
                }
            };
            // The int8 kernels alone, on activations quantized once here.
            let (t_multi, t_gemv) = match format(name) {
                Format::Ggml(ty) if ggml_dot::act_kind(ty) == Some(ActKind::Q8K) => {
                    let mut xq = vec![BlockQ8K::default(); tokens * cols / 256];
                    quantize_q8k(&x, &mut xq);
                    let nb = cols / 256;
                    let m =
                        time(iters, || ggml_dot::multi::gemm_q8k(level, ty, w.bytes, rows, &xq, tokens, &mut y, rows));
                    let g = time(iters, || {
                        for (xt, yt) in xq.chunks_exact(nb).zip(y.chunks_exact_mut(rows)) {
                            ggml_dot::gemv_q8k(level, ty, w.bytes, xt, yt);
                        }
                    });
                    (m, g)
                }
                f => {
                    let mut xq = vec![BlockQ8x32::default(); tokens * cols / 32];
                    quantize_q8x32(&x, &mut xq);
                    let nb = cols / 32;
                    match f {
                        Format::Ggml(ty) => {
                            let m = time(iters, || {
                                ggml_dot::multi::gemm_q8x32(level, ty, w.bytes, rows, &xq, tokens, &mut y, rows)
                            });
                            let g = time(iters, || {
                                for (xt, yt) in xq.chunks_exact(nb).zip(y.chunks_exact_mut(rows)) {
                                    ggml_dot::gemv_q8x32(level, ty, w.bytes, xt, yt);
                                }
                            });
                            (m, g)
                        }
                        Format::Affine(_) => {
                            let m = time(iters, || {
                                affine_multi::gemm_affine(level, &w, 0..rows, &xq, tokens, &mut y, rows)
                            });
                            let g = time(iters, || {
                                for (xt, yt) in xq.chunks_exact(nb).zip(y.chunks_exact_mut(rows)) {
                                    affine_dot::gemv_affine(level, &w, 0..rows, xt, yt);
                                }
                            });
                            (m, g)
                        }
                    }
                }
            };
            // The driver quantizes the activations once per product: its share.
            let t_quant = match format(name) {
                Format::Ggml(ty) if ggml_dot::act_kind(ty) == Some(ActKind::Q8K) => {
                    let mut xq = vec![BlockQ8K::default(); tokens * cols / 256];
                    time(iters, || quantize_q8k(&x, &mut xq))
                }
                _ => {
                    let mut xq = vec![BlockQ8x32::default(); tokens * cols / 32];
                    time(iters, || quantize_q8x32(&x, &mut xq))
                }
            };
            let t_matmul = time(iters, || matmul(&w, &x, &mut y, tokens));
            let t_tile = time(iters, || with_f32_activations(|| matmul(&w, &x, &mut y, tokens)));
            println!(
                "{name:>5} [{rows:>4} x {cols:>4}]: multi {:6.1}  matmul {:6.1}  f32 tile {:6.1}  gemv/token {:6.1} GFLOP/s  (act quantization {:.0}% of matmul)",
                gf(t_multi),
                gf(t_matmul),
                gf(t_tile),
                gf(t_gemv),
                100.0 * t_quant / t_matmul
            );
        }
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

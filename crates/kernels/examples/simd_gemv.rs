//! Single-thread decode matvec throughput per weight format, in GB/s of
//! stored weight bytes (weights + scales + biases) per second, on a matrix of
//! about `--mb` MB (default 256, far beyond the caches) with rows of
//! `--cols` (default 2048) columns. A plain AVX2 read of the same bytes
//! (`stream`) is printed first as the ceiling.
//!
//! `cargo run --release -p qmoe-kernels --example simd_gemv -- [FORMAT ...]
//!  [--mb 256 | --kb K] [--cols 2048] [--iters 15] [--scalar]`
//! FORMAT: f32 f16 bf16 fp8 q2 q3 q4 q5 q6 q8 (default: all).

use std::time::Instant;

use qmoe_core::dtype::DType;
use qmoe_kernels::linear::MatRef;
use qmoe_kernels::simd::act::{quantize_q8x32, BlockQ8x32};
use qmoe_kernels::simd::{self, affine_dot, float_dot, fp8_dot, Level};

struct Args {
    formats: Vec<String>,
    kb: usize,
    cols: usize,
    iters: usize,
    level: Level,
}

fn parse() -> Args {
    let mut a = Args { formats: vec![], kb: 256 << 10, cols: 2048, iters: 15, level: simd::level() };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        match s.as_str() {
            "--mb" => a.kb = it.next().unwrap().parse::<usize>().unwrap() << 10,
            "--kb" => a.kb = it.next().unwrap().parse().unwrap(),
            "--cols" => a.cols = it.next().unwrap().parse().unwrap(),
            "--iters" => a.iters = it.next().unwrap().parse().unwrap(),
            "--scalar" => a.level = Level::Scalar,
            f => a.formats.push(f.to_string()),
        }
    }
    if a.formats.is_empty() {
        a.formats = "f32 f16 bf16 fp8 q2 q3 q4 q5 q6 q8".split(' ').map(String::from).collect();
    }
    a
}

/// xorshift64* bytes: fast enough for hundreds of MB.
fn fill(buf: &mut [u8], seed: u64) {
    let mut s = seed | 1;
    for chunk in buf.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// `n` small finite values of `dt`, as bytes.
fn floats(dt: DType, n: usize, seed: u64) -> Vec<u8> {
    let mut raw = vec![0u8; n * 2];
    fill(&mut raw, seed);
    let v = |i: usize| (u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]) as f32 / 65536.0 - 0.5) * 0.01;
    match dt {
        DType::F32 => (0..n).flat_map(|i| v(i).to_le_bytes()).collect(),
        DType::F16 => (0..n).flat_map(|i| half::f16::from_f32(v(i)).to_bits().to_le_bytes()).collect(),
        _ => (0..n).flat_map(|i| half::bf16::from_f32(v(i)).to_bits().to_le_bytes()).collect(),
    }
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// Times `f` (one whole matvec) and prints GB/s of `bytes`.
fn time(name: &str, bytes: usize, iters: usize, mut f: impl FnMut()) {
    f();
    let t: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let best = t.iter().cloned().fold(f64::INFINITY, f64::min);
    let s = median(t);
    let gbs = |s: f64| bytes as f64 / s / 1e9;
    println!(
        "{name:>8}: {:8.2} GB/s median, {:8.2} best  ({:.2} ms for {:.1} MB)",
        gbs(s),
        gbs(best),
        s * 1e3,
        bytes as f64 / 1e6
    );
}

/// Sum of all 64-bit words with four AVX2 accumulators: the read ceiling.
#[cfg(target_arch = "x86_64")]
fn stream(bytes: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2")]
    unsafe fn run(b: &[u8]) -> u64 {
        let p = b.as_ptr() as *const __m256i;
        let mut acc = [_mm256_setzero_si256(); 4];
        for i in 0..b.len() / 128 {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: 32 * (4i + k + 1) <= 128 (i + 1) <= b.len().
                *a = _mm256_add_epi64(*a, unsafe { _mm256_loadu_si256(p.add(4 * i + k)) });
            }
        }
        let mut out = [0u64; 4];
        let s = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
        // SAFETY: `out` is 32 bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s) };
        out.iter().sum()
    }
    // SAFETY: only called when the CPU has AVX2 (checked by the caller).
    unsafe { run(bytes) }
}

fn main() {
    let a = parse();
    let cols = a.cols;
    println!(
        "simd_gemv: level {:?}, cols {cols}, ~{} KB per matrix, median of {} runs, 1 thread",
        a.level, a.kb, a.iters
    );
    let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02).collect();
    let mut xq = vec![BlockQ8x32::default(); cols / 32];
    quantize_q8x32(&x, &mut xq);
    let target = a.kb << 10;

    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let mut buf = vec![0u8; target];
        fill(&mut buf, 1);
        let mut sink = 0;
        time("stream", buf.len(), a.iters, || sink ^= stream(&buf));
        std::hint::black_box(sink);
    }

    for f in &a.formats {
        match f.as_str() {
            "f32" | "f16" | "bf16" => {
                let dt = match f.as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    _ => DType::BF16,
                };
                let rows = target / (cols * dt.size());
                let bytes = floats(dt, rows * cols, 2);
                let w = MatRef::new(dt, rows, cols, &bytes);
                let mut y = vec![0.0; rows];
                time(f, w.storage_bytes(), a.iters, || float_dot::gemv_float(a.level, &w, 0..rows, &x, &mut y));
            }
            "fp8" => {
                let rows = target / cols / 128 * 128;
                let mut bytes = vec![0u8; rows * cols];
                fill(&mut bytes, 3);
                // Keep codes finite: clear the NaN pattern.
                for b in bytes.iter_mut() {
                    if *b & 0x7f == 0x7f {
                        *b = 0x7e;
                    }
                }
                let grid = rows.div_ceil(128) * cols.div_ceil(128);
                let scales = floats(DType::F32, grid, 4);
                let w = MatRef::fp8(rows, cols, &bytes, &scales, DType::F32, 128, 128).unwrap();
                let mut y = vec![0.0; rows];
                time(f, w.storage_bytes(), a.iters, || fp8_dot::gemv_fp8(a.level, &w, 0..rows, &x, &mut y));
            }
            q if q.starts_with('q') => {
                let bits: u32 = q[1..].parse().unwrap();
                let group = 64;
                if !affine_dot::supports_affine(bits, group) {
                    println!("{f:>8}: not supported");
                    continue;
                }
                let row_bytes = cols * bits as usize / 8 + cols / group * 4;
                let rows = target / row_bytes;
                let mut words = vec![0u8; rows * cols * bits as usize / 8];
                fill(&mut words, 5);
                let scales = floats(DType::BF16, rows * cols / group, 6);
                let biases = floats(DType::BF16, rows * cols / group, 7);
                let w = MatRef::affine(rows, cols, &words, bits, group, &scales, &biases, DType::BF16).unwrap();
                let mut y = vec![0.0; rows];
                time(f, w.storage_bytes(), a.iters, || affine_dot::gemv_affine(a.level, &w, 0..rows, &xq, &mut y));
            }
            other => println!("{other:>8}: unknown format"),
        }
    }
}

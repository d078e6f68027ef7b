//! Single-thread throughput of the int8 ggml gemv kernels on a matrix far
//! larger than the caches (weights streamed from DRAM, as in decode).
//!
//! `cargo run --release -p qmoe-kernels --example gemv_ggml -- [MB] [TYPE ...] [--cols N]`
//! (default 256 MB, every quantized type, rows of 2048 columns; N a
//! multiple of 256). Prints, per type and level, the
//! best of several passes as GB/s of weight bytes, next to a plain streaming
//! read of the same buffer (the roofline).

use std::hint::black_box;
use std::time::Instant;

use half::f16;
use qmoe_core::GgmlType;
use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
use qmoe_kernels::simd::ggml_dot::{act_kind, gemv_q8k, gemv_q8x32};
use qmoe_kernels::simd::{available, ActKind};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let cols = match args.iter().position(|a| a == "--cols") {
        Some(i) => {
            let n = args.get(i + 1).and_then(|v| v.parse::<usize>().ok()).filter(|n| n % 256 == 0 && *n > 0);
            args.drain(i..(i + 2).min(args.len()));
            n.expect("--cols takes a positive multiple of 256")
        }
        None => 2048,
    };
    // The size in MB, or in KB with a `k` suffix (`256k` stays in L2: the
    // kernel's compute ceiling).
    let size = |a: &String| match a.strip_suffix('k') {
        Some(kb) => kb.parse::<usize>().ok().map(|k| k << 10),
        None => a.parse::<usize>().ok().map(|m| m << 20),
    };
    let bytes: usize = args.first().and_then(size).unwrap_or(256 << 20);
    let names: Vec<&String> = args.iter().filter(|a| size(a).is_none()).collect();
    let types: Vec<GgmlType> = GgmlType::ALL
        .into_iter()
        .filter(|&t| {
            act_kind(t).is_some() && (names.is_empty() || names.iter().any(|n| n.eq_ignore_ascii_case(t.name())))
        })
        .collect();

    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Small (cache-resident) matrices get more passes: their best pass is
    // the kernel's compute ceiling, taken where no other process interrupts.
    let passes = ((2048 << 20) / bytes.max(1)).clamp(7, 500);
    let mut buf = vec![0u8; bytes];
    for c in buf.chunks_mut(8) {
        let v = next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    let x: Vec<f32> = (0..cols).map(|i| ((i * 7919 % 2003) as f32 - 1000.0) * 1e-3).collect();
    let mut xk = vec![BlockQ8K::default(); cols / 256];
    quantize_q8k(&x, &mut xk);
    let mut x32 = vec![BlockQ8x32::default(); cols / 32];
    quantize_q8x32(&x, &mut x32);

    println!("cpu: {}", cpu_name());
    println!("matrix: {} KB, rows of {cols} columns, 1 thread, best of {passes} passes", bytes >> 10);
    println!("stream read: {:.1} GB/s", stream_gbs(&buf, passes));
    for ty in types {
        let row_bytes = cols / ty.block_size() * ty.type_size();
        let rows = buf.len() / row_bytes;
        let w = &mut buf[..rows * row_bytes];
        sane_scales(ty, w);
        let w = &*w;
        let mut y = vec![0.0f32; rows];
        for level in available() {
            let mut best = f64::INFINITY;
            for _ in 0..passes {
                let t = Instant::now();
                match act_kind(ty) {
                    Some(ActKind::Q8K) => gemv_q8k(level, ty, w, &xk, &mut y),
                    _ => gemv_q8x32(level, ty, w, &x32, &mut y),
                }
                best = best.min(t.elapsed().as_secs_f64());
                black_box(&y);
            }
            let gbs = w.len() as f64 / best / 1e9;
            println!("{:<7} {:<7?} {:>7.2} GB/s  ({rows} rows, {:.1} ms)", ty.name(), level, gbs, best * 1e3);
        }
    }
}

/// Overwrites every block's f16 scales with small finite values (random
/// bytes would give infinities and NaNs, whose arithmetic may run slower).
fn sane_scales(ty: GgmlType, w: &mut [u8]) {
    use GgmlType::*;
    let at: &[usize] = match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4NL | IQ4XS => &[0],
        Q4_1 | Q5_1 | Q4K | Q5K => &[0, 2],
        Q2K => &[80, 82],
        Q3K => &[108],
        Q6K => &[208],
        F32 | F16 | BF16 => &[],
    };
    let v = f16::from_f32(0.01).to_le_bytes();
    for blk in w.chunks_exact_mut(ty.type_size()) {
        for &a in at {
            blk[a..a + 2].copy_from_slice(&v);
        }
    }
}

/// Best-of-passes plain read of `buf` (u64 sums, which the compiler
/// vectorises), in GB/s.
fn stream_gbs(buf: &[u8], passes: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..passes {
        let t = Instant::now();
        let mut acc = [0u64; 8];
        for c in buf.chunks_exact(64) {
            for (a, w) in acc.iter_mut().zip(c.chunks_exact(8)) {
                *a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
            }
        }
        black_box(acc);
        best = best.min(t.elapsed().as_secs_f64());
    }
    buf.len() as f64 / best / 1e9
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

use qmoe_core::GgmlType;
use qmoe_kernels::simd::act::{quantize_q8x32, BlockQ8x32};
use qmoe_kernels::simd::ggml_dot::gemv_q8x32;
use qmoe_kernels::simd::Level;
fn main() {
    let level = if std::env::args().nth(1).as_deref() == Some("avx2") { Level::Avx2 } else { Level::Avx512 };
    let cols = 2048; let rows = 120;
    let mut w = vec![0u8; rows * cols / 32 * 34];
    for (i, b) in w.iter_mut().enumerate() { *b = (i * 7919 % 251) as u8; }
    for blk in w.chunks_exact_mut(34) { blk[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes()); }
    let x: Vec<f32> = (0..cols).map(|i| ((i * 7919 % 2003) as f32 - 1000.0) * 1e-3).collect();
    let mut x32 = vec![BlockQ8x32::default(); cols / 32];
    quantize_q8x32(&x, &mut x32);
    let mut y = vec![0.0f32; rows];
    let t = std::time::Instant::now();
    let n = 200000;
    for _ in 0..n { gemv_q8x32(level, GgmlType::Q8_0, &w, &x32, &mut y); std::hint::black_box(&y); }
    let s = t.elapsed().as_secs_f64();
    println!("{:?} {:.2} GB/s", level, (w.len() * n) as f64 / s / 1e9);
}

//! What bounds the AVX-512 VNNI many-token Q4_K step, measured without the
//! loop around it: each variant multiplies weights held in registers with
//! the prepared activations of 8 (or 4) tokens that stay in L1, and does
//! the scaling the real step does. Cycles per (256-value block, row, token)
//! at the clock `--ghz` (default 3.6, this VM's measured clock), and GFLOP/s.
//!
//! * `16-groups`: the layout before 6e32ec7: one block a unit, lanes of 16
//!   values, 4 `vpdpbusd` and 4 scaling operations per (block, token);
//! * `pairs`: two blocks a unit, lanes of 32 values (one Q4_K sub-block),
//!   8 `vpdpbusd` and 4 scaling operations per (pair, token);
//! * `pairs, 2 rows`: the same for two rows, each activation register
//!   feeding both rows' `vpdpbusd`;
//! * `integer only`: `pairs` without the scaling (convert and add), the
//!   bound the loads and `vpdpbusd` set alone;
//!
//! and, apart, how many 512-bit `vpdpbusd` a cycle issue with every operand
//! in registers (eight independent chains), and what three independent
//! 512-bit operations of one kind cost beside each eight of them: on Zen 4
//! an FMA, a multiply, `vpmulld` or `vpmaddwd` takes a cycle from
//! `vpdpbusd` each, while adds, conversions and shifts ride free. The
//! `pairs, 2 rows` step is eight `vpdpbusd` and three multiplies (the
//! mins' product, the `fmsub`, the `fmadd`) per (pair, row, token): 11
//! cycles, 5.5 per (block, row, token), which it measures.
//!
//! `cargo run --release -p qmoe-kernels --example vnni_step -- [--ghz 3.6]`
//! (x86-64 with AVX-512 VNNI only).

// The loops index the weights and the activations with the same register
// number, as the kernel's steps do.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
mod bench {
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// A token's prepared pair of blocks (as `PairBlock` in `multi/avx512.rs`).
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Pair {
        qs: [__m512i; 8],
        bs: __m512,
        d: __m512,
    }

    /// A token's prepared block in 16-value groups (as the earlier `KBlock`).
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Groups {
        qs: [__m512i; 4],
        bs: __m512,
        d: f32,
    }

    /// Pairs of blocks per row: the activations of 8 tokens stay in L1.
    const PAIRS: usize = 4;
    const REPS: usize = 2_000_000;

    /// Keeps `w` in registers without letting the compiler fold the weights.
    macro_rules! opaque {
        ($($w:expr),*) => { $(std::arch::asm!("/* {0} */", inout(zmm_reg) $w);)* };
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn groups(x: &[[Groups; 2 * PAIRS]; 8]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut w = [_mm512_set1_epi8(1); 4];
        let (mut sc, mut mn) = (_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
        for _ in 0..REPS {
            for b in 0..2 * PAIRS {
                opaque!(w[0], w[1], w[2], w[3], sc, mn);
                for (t, a) in acc.iter_mut().enumerate() {
                    let xb = &x[t][b];
                    let mut s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], xb.qs[0]);
                    for r in 1..4 {
                        s = _mm512_dpbusd_epi32(s, w[r], xb.qs[r]);
                    }
                    let v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(s), sc, _mm512_mul_ps(xb.bs, mn));
                    *a = _mm512_fmadd_ps(v, _mm512_set1_ps(xb.d), *a);
                }
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn pairs<const SCALE: bool>(x: &[[Pair; PAIRS]; 8]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut w = [_mm512_set1_epi8(1); 8];
        let (mut sc, mut mn) = (_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
        for _ in 0..REPS {
            for p in 0..PAIRS {
                opaque!(w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], sc, mn);
                for (t, a) in acc.iter_mut().enumerate() {
                    let xb = &x[t][p];
                    let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], xb.qs[0]);
                    let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], xb.qs[1]);
                    for r in (2..8).step_by(2) {
                        s0 = _mm512_dpbusd_epi32(s0, w[r], xb.qs[r]);
                        s1 = _mm512_dpbusd_epi32(s1, w[r + 1], xb.qs[r + 1]);
                    }
                    let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                    *a = if SCALE {
                        _mm512_fmadd_ps(_mm512_fmsub_ps(s, sc, _mm512_mul_ps(xb.bs, mn)), xb.d, *a)
                    } else {
                        _mm512_add_ps(*a, s)
                    };
                }
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn pairs_two_rows(x: &[[Pair; PAIRS]; 8]) -> f32 {
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        let mut w = [[_mm512_set1_epi8(1); 8]; 2];
        let (mut sc, mut mn) = ([_mm512_set1_ps(0.5); 2], [_mm512_set1_ps(0.25); 2]);
        for _ in 0..REPS {
            for p in 0..PAIRS {
                opaque!(w[0][0], w[0][1], w[0][2], w[0][3], w[0][4], w[0][5], w[0][6], w[0][7]);
                opaque!(w[1][0], w[1][1], w[1][2], w[1][3], w[1][4], w[1][5], w[1][6], w[1][7]);
                opaque!(sc[0], sc[1], mn[0], mn[1]);
                for (t, a) in acc.iter_mut().enumerate() {
                    let xb = &x[t][p];
                    let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0][0], xb.qs[0]);
                    let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1][0], xb.qs[0]);
                    for r in 1..8 {
                        let q = xb.qs[r];
                        s0 = _mm512_dpbusd_epi32(s0, w[0][r], q);
                        s1 = _mm512_dpbusd_epi32(s1, w[1][r], q);
                    }
                    let v0 = _mm512_fmsub_ps(_mm512_cvtepi32_ps(s0), sc[0], _mm512_mul_ps(xb.bs, mn[0]));
                    let v1 = _mm512_fmsub_ps(_mm512_cvtepi32_ps(s1), sc[1], _mm512_mul_ps(xb.bs, mn[1]));
                    a[0] = _mm512_fmadd_ps(v0, xb.d, a[0]);
                    a[1] = _mm512_fmadd_ps(v1, xb.d, a[1]);
                }
            }
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(a[0]) + _mm512_reduce_add_ps(a[1])).sum()
    }

    /// 512-bit `vpdpbusd` per cycle from registers: eight chains of 8 per round.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn registers_only(ghz: f64) -> f64 {
        let mut s = [_mm512_setzero_si512(); 8];
        let (mut w, mut x) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2));
        let t = Instant::now();
        for _ in 0..REPS {
            opaque!(w, x);
            for _ in 0..8 {
                for a in s.iter_mut() {
                    *a = _mm512_dpbusd_epi32(*a, w, x);
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        (REPS * 64) as f64 / (secs * ghz * 1e9)
    }

    /// Cycles per round of eight independent `vpdpbusd` (from registers)
    /// beside three independent 512-bit operations of kind `KIND`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    unsafe fn beside<const KIND: u8>(ghz: f64) -> f64 {
        let mut s = [_mm512_setzero_si512(); 8];
        let mut f = [_mm512_set1_ps(1.0); 3];
        let (mut w, mut x) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2));
        let (mut a, mut b) = (_mm512_set1_ps(1.0001), _mm512_set1_ps(0.9999));
        let rounds = 8 * REPS;
        let t = Instant::now();
        for _ in 0..rounds {
            opaque!(w, x, a, b);
            for q in s.iter_mut() {
                *q = _mm512_dpbusd_epi32(*q, w, x);
            }
            for g in f.iter_mut() {
                let (gi, ai) = (_mm512_castps_si512(*g), _mm512_castps_si512(a));
                *g = match KIND {
                    0 => *g,
                    1 => _mm512_fmadd_ps(*g, a, b),
                    2 => _mm512_mul_ps(*g, a),
                    3 => _mm512_castsi512_ps(_mm512_mullo_epi32(gi, ai)),
                    4 => _mm512_castsi512_ps(_mm512_madd_epi16(gi, ai)),
                    5 => _mm512_add_ps(*g, a),
                    6 => _mm512_cvtepi32_ps(_mm512_add_epi32(gi, ai)),
                    _ => _mm512_castsi512_ps(_mm512_srlv_epi32(gi, ai)),
                };
            }
        }
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box((s, f));
        secs * ghz * 1e9 / rounds as f64
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let ghz: f64 = args.iter().position(|a| a == "--ghz").map_or(3.6, |i| args[i + 1].parse().expect("--ghz GHZ"));
        if !is_x86_feature_detected!("avx512vnni") || !is_x86_feature_detected!("avx512bw") {
            println!("needs AVX-512 BW + VNNI");
            return;
        }
        // SAFETY: the features were checked above; the layouts are plain vectors.
        unsafe {
            let pair = Pair { qs: [_mm512_set1_epi8(3); 8], bs: _mm512_set1_ps(1.0), d: _mm512_set1_ps(1e-3) };
            let group = Groups { qs: [_mm512_set1_epi8(3); 4], bs: _mm512_set1_ps(1.0), d: 1e-3 };
            let xp = Box::new([[pair; PAIRS]; 8]);
            let xg = Box::new([[group; 2 * PAIRS]; 8]);
            // Every variant does REPS x 8 blocks x 8 (row, token) products.
            let block_row_tokens = (REPS * 2 * PAIRS * 8) as f64;
            let report = |name: &str, f: &dyn Fn() -> f32| {
                let t = Instant::now();
                let check = f();
                let s = t.elapsed().as_secs_f64();
                println!(
                    "{name:>16}: {:5.2} cycles per block, row and token at {ghz} GHz, {:6.1} GFLOP/s  [{check:e}]",
                    s / block_row_tokens * ghz * 1e9,
                    block_row_tokens * 512.0 / s / 1e9
                );
            };
            report("16-groups", &|| groups(&xg));
            report("pairs", &|| pairs::<true>(&xp));
            report("pairs, 2 rows", &|| pairs_two_rows(&xp));
            report("integer only", &|| pairs::<false>(&xp));
            println!("vpdpbusd from registers: {:.2} a cycle at {ghz} GHz", registers_only(ghz));
            println!("cycles per 8 vpdpbusd beside 3 of:");
            type Bench = unsafe fn(f64) -> f64;
            let kinds: [(&str, Bench); 8] = [
                ("nothing", beside::<0>),
                ("vfmadd", beside::<1>),
                ("vmulps", beside::<2>),
                ("vpmulld", beside::<3>),
                ("vpmaddwd", beside::<4>),
                ("vaddps", beside::<5>),
                ("vpaddd + cvt", beside::<6>),
                ("vpsrlvd", beside::<7>),
            ];
            for (name, f) in kinds {
                println!("{name:>16}: {:5.2}", f(ghz));
            }
        }
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    bench::main();
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86-64 only");
}

//! Gated DeltaNet at speed: value heads in parallel on the [`crate::pool`],
//! each head's loops compiled for the CPU's vector unit.
//!
//! Heads are independent (each owns a `[Dk, Dv]` state and its output
//! columns), so both forms split by head. Prefill at [`Level::Avx2`] runs
//! the register-blocked chunk kernel of `simd::gdn_chunk` (`Dk`, `Dv`
//! multiples of 8; about 2.2x the auto-vectorised reference on the 35B-A3B
//! shape); every other case runs the reference's per-head arithmetic
//! ([`crate::gdn`]), instantiated per [`Level`] through `#[inline(always)]`.
//!
//! Decode uses a fused recurrence ([`recurrent_head`]) that passes over the
//! state twice instead of four times: the step is memory-bound on the
//! 64 KiB-per-head state (2 MiB per layer at the 35B-A3B shape). At
//! [`Level::Avx512`] value heads of up to 128 columns take
//! `recurrent_512`, which holds a state row in registers.

use super::Level;
use crate::gdn::{chunk_head, chunk_spans, ChunkAt, ChunkInputs, GdnScratch, GdnShape, HeadMap};
use crate::pool::SharedMut;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Each worker's buffers for the blocked AVX2 chunk kernel, kept between
    /// calls (rebuilt only for another shape or a longer chunk) so that a
    /// prefill layer does not allocate.
    static BLOCKED_SCRATCH: std::cell::RefCell<Option<super::gdn_chunk::ChunkScratch>> =
        const { std::cell::RefCell::new(None) };
}

/// [`crate::gdn::gdn_chunked`] with value heads split over the pool: one
/// scratch per task (`scratches.len()` tasks, each taking heads
/// `i, i + n, ...`). Same arguments and results as the reference, bit for
/// bit at [`Level::Scalar`]. At [`Level::Avx2`], shapes whose `Dk` and `Dv`
/// are multiples of 8 run the blocked kernel of `simd::gdn_chunk`
/// (equal to the reference up to f32 summation order) on per-thread buffers
/// of its own, and `scratches` only sets the number of tasks; other shapes
/// run the reference's arithmetic, bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn gdn_chunked_parallel(
    level: Level,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    g: &[f32],
    state: &mut [f32],
    shape: GdnShape,
    map: HeadMap,
    chunk: usize,
    scratches: &mut [GdnScratch],
    out: &mut [f32],
) {
    let (hv, dk, dv) = (shape.n_v_heads, shape.head_k_dim, shape.head_v_dim);
    let n_tokens = beta.len() / hv;
    assert!(!scratches.is_empty(), "gdn_chunked_parallel: no scratch");
    assert!(state.len() == hv * dk * dv && out.len() == n_tokens * hv * dv, "gdn_chunked_parallel: buffer lengths");
    assert!(q.len() == k.len() && q.len() == n_tokens * shape.key_dim() && v.len() == n_tokens * hv * dv);
    assert!(g.len() == beta.len() && chunk > 0);
    for s in scratches.iter() {
        assert!(s.shape() == shape && s.chunk() >= chunk, "gdn_chunked_parallel: scratch built for another shape");
    }
    let n_tasks = scratches.len().min(hv);
    let x = ChunkInputs { q, k, v, beta, g, shape, map };
    #[cfg(target_arch = "x86_64")]
    if level.runs_avx2() && n_tokens > 0 && super::gdn_chunk::blocked(shape) {
        let chunk = chunk.min(n_tokens);
        let (stp, op) = (SharedMut::new(state), SharedMut::new(out));
        let task = |i: usize| {
            BLOCKED_SCRATCH.with(|cell| {
                let mut cell = cell.borrow_mut();
                if !cell.as_ref().is_some_and(|s| s.fits(shape, chunk)) {
                    *cell = Some(super::gdn_chunk::ChunkScratch::new(shape, chunk));
                }
                let scratch = cell.as_mut().unwrap();
                for h in (i..hv).step_by(n_tasks) {
                    // SAFETY: task `i` alone uses heads `h ≡ i (mod n_tasks)`:
                    // their state rows and output columns; the lengths were
                    // checked above and the level promises AVX2 + FMA.
                    let s0 = unsafe { std::slice::from_raw_parts_mut(stp.at(h * dk * dv), dk * dv) };
                    for (start, n) in chunk_spans(n_tokens, chunk) {
                        let at = ChunkAt { h, start, n };
                        unsafe { super::gdn_chunk::chunk_head_avx2(&x, at, s0, scratch, op.at(0)) };
                    }
                }
            })
        };
        crate::pool::run(n_tasks, &task);
        return;
    }
    let (sp, stp, op) = (SharedMut::new(scratches), SharedMut::new(state), SharedMut::new(out));
    let task = |i: usize| {
        // SAFETY: task `i` alone uses scratch `i`, and heads `h ≡ i (mod
        // n_tasks)` alone: their state rows and output columns.
        let scratch = unsafe { &mut *sp.at(i) };
        for h in (i..hv).step_by(n_tasks) {
            let s0 = unsafe { std::slice::from_raw_parts_mut(stp.at(h * dk * dv), dk * dv) };
            for (start, n) in chunk_spans(n_tokens, chunk) {
                chunk_head_at(level, &x, ChunkAt { h, start, n }, s0, scratch);
                for t in 0..n {
                    let o = unsafe { std::slice::from_raw_parts_mut(op.at(((start + t) * hv + h) * dv), dv) };
                    o.copy_from_slice(scratch.head_out(t));
                }
            }
        }
    };
    crate::pool::run(n_tasks, &task);
}

fn chunk_head_at(level: Level, x: &ChunkInputs, at: ChunkAt, s0: &mut [f32], scratch: &mut GdnScratch) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
        Level::Avx2 | Level::Avx512 => unsafe { chunk_head_avx2(x, at, s0, scratch) },
        _ => chunk_head(x, at, s0, scratch),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chunk_head_avx2(x: &ChunkInputs, at: ChunkAt, s0: &mut [f32], scratch: &mut GdnScratch) {
    chunk_head(x, at, s0, scratch)
}

/// [`crate::gdn::gdn_recurrent`] with value heads split over the pool and
/// the fused two-pass step of [`recurrent_head`]. Equal to the reference up
/// to f32 rounding (the decay is applied inside the products).
#[allow(clippy::too_many_arguments)]
pub fn gdn_recurrent_parallel(
    level: Level,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    g: &[f32],
    state: &mut [f32],
    shape: GdnShape,
    map: HeadMap,
    out: &mut [f32],
) {
    let GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv } = shape;
    let n_tokens = beta.len() / hv;
    assert!(state.len() == hv * dk * dv && out.len() == n_tokens * hv * dv, "gdn_recurrent_parallel: buffer lengths");
    assert!(q.len() == k.len() && q.len() == n_tokens * hk * dk && v.len() == n_tokens * hv * dv);
    assert!(g.len() == beta.len());
    let (stp, op) = (SharedMut::new(state), SharedMut::new(out));
    let task = |h: usize| {
        let kh = map.key_head(h, shape);
        // SAFETY: task `h` alone touches head `h`'s state and output rows.
        let s = unsafe { std::slice::from_raw_parts_mut(stp.at(h * dk * dv), dk * dv) };
        for t in 0..n_tokens {
            let o = unsafe { std::slice::from_raw_parts_mut(op.at((t * hv + h) * dv), dv) };
            let qt = &q[(t * hk + kh) * dk..][..dk];
            let kt = &k[(t * hk + kh) * dk..][..dk];
            let vt = &v[(t * hv + h) * dv..][..dv];
            let (b, alpha) = (beta[t * hv + h], g[t * hv + h].exp());
            match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Level::Avx512` is only reported when the CPU has
                // AVX-512 F (and AVX2 + FMA); `recurrent_512` takes this `dv`.
                Level::Avx512 if recurrent_512::takes(dv) => unsafe { recurrent_512::head(qt, kt, vt, b, alpha, s, o) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
                Level::Avx2 | Level::Avx512 => unsafe { recurrent_head_avx2(qt, kt, vt, b, alpha, s, o) },
                _ => recurrent_head(qt, kt, vt, b, alpha, s, o),
            }
        }
    };
    if hv * dk * dv < 1 << 14 {
        (0..hv).for_each(task); // tiny models: not worth waking the pool
    } else {
        crate::pool::run(hv, &task);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn recurrent_head_avx2(q: &[f32], k: &[f32], v: &[f32], beta: f32, alpha: f32, s: &mut [f32], o: &mut [f32]) {
    recurrent_head(q, k, v, beta, alpha, s, o)
}

/// One token of one head: `S <- a S + k d^T` with `d = beta (v - k^T (a S))`,
/// then `o = q^T S`, in two passes over `S` (`[Dk, Dv]`):
/// 1. `p = k^T S` on the old state (`k^T (a S) = a p`);
/// 2. per row `i`: `S_i <- a S_i + k_i d`, and `o += q_i S_i` on the new row.
#[inline(always)]
pub fn recurrent_head(q: &[f32], k: &[f32], v: &[f32], beta: f32, alpha: f32, s: &mut [f32], o: &mut [f32]) {
    let dv = o.len();
    // Pass 1: o holds p.
    o.fill(0.0);
    for (row, &k_i) in s.chunks_exact(dv).zip(k) {
        for (p, &s_ij) in o.iter_mut().zip(row) {
            *p += k_i * s_ij;
        }
    }
    // d = beta (v - a p), kept in o until pass 2 consumes it row by row...
    for (p, &v_j) in o.iter_mut().zip(v) {
        *p = beta * (v_j - alpha * *p);
    }
    // ...so pass 2 needs it in a separate buffer: the output accumulates there.
    const MAX_DV: usize = 512;
    if dv <= MAX_DV {
        let mut d = [0.0f32; MAX_DV];
        d[..dv].copy_from_slice(o);
        let d = &d[..dv];
        o.fill(0.0);
        for ((row, &k_i), &q_i) in s.chunks_exact_mut(dv).zip(k).zip(q) {
            for ((s_ij, &d_j), o_j) in row.iter_mut().zip(d).zip(o.iter_mut()) {
                let nv = alpha * *s_ij + k_i * d_j;
                *s_ij = nv;
                *o_j += q_i * nv;
            }
        }
    } else {
        // Wider than any released head: three passes, no stack buffer.
        for (row, &k_i) in s.chunks_exact_mut(dv).zip(k) {
            for (s_ij, &d_j) in row.iter_mut().zip(o.iter()) {
                *s_ij = alpha * *s_ij + k_i * d_j;
            }
        }
        o.fill(0.0);
        for (row, &q_i) in s.chunks_exact(dv).zip(q) {
            for (o_j, &s_ij) in o.iter_mut().zip(row) {
                *o_j += q_i * s_ij;
            }
        }
    }
}

/// The recurrent step at AVX-512 for value heads of up to 128 columns (a
/// multiple of 16: eight registers at most, the released heads' 128
/// included), the state's columns held in registers.
///
/// One pass reads the old state for both `p = k^T S` and `r = q^T S`; then
/// `d = beta (v - a p)` and `o = a r + (q . k) d` (that is `q^T S_new`, with
/// `S_new = a S + k d^T`), and a second pass writes `S_new`. The first pass
/// is the one that reads the state from memory (2 MiB per layer at the
/// 35B-A3B shape); the second finds it in L2. The fused form above, compiled
/// for AVX2, kept `o` in memory across its rows and ran at about half the
/// DRAM rate (8.4% of a Q8_0 decode's samples on the 2-core Zen 4, 30 layers
/// x 4 MiB of state traffic per token in about 7.5 ms).
#[cfg(target_arch = "x86_64")]
mod recurrent_512 {
    use std::arch::x86_64::*;

    /// Most registers per state row.
    const MAX_REGS: usize = 8;

    /// Whether [`head`] takes rows of `dv` values.
    pub(super) fn takes(dv: usize) -> bool {
        dv.is_multiple_of(16) && dv / 16 <= MAX_REGS && dv > 0
    }

    /// As [`super::recurrent_head`], for `dv` that [`takes`] accepts.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, AVX2 and FMA; `takes(o.len())`; `s` holds
    /// `k.len()` rows of `o.len()`, `q`, `k` are as long and `v` as `o`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn head(q: &[f32], k: &[f32], v: &[f32], beta: f32, alpha: f32, s: &mut [f32], o: &mut [f32]) {
        match o.len() / 16 {
            8 => head_n::<8>(q, k, v, beta, alpha, s, o),
            7 => head_n::<7>(q, k, v, beta, alpha, s, o),
            6 => head_n::<6>(q, k, v, beta, alpha, s, o),
            5 => head_n::<5>(q, k, v, beta, alpha, s, o),
            4 => head_n::<4>(q, k, v, beta, alpha, s, o),
            3 => head_n::<3>(q, k, v, beta, alpha, s, o),
            2 => head_n::<2>(q, k, v, beta, alpha, s, o),
            _ => head_n::<1>(q, k, v, beta, alpha, s, o),
        }
    }

    /// [`head`] for rows of `16 N` values.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn head_n<const N: usize>(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        beta: f32,
        alpha: f32,
        s: &mut [f32],
        o: &mut [f32],
    ) {
        let dv = 16 * N;
        debug_assert!(o.len() == dv && v.len() == dv && s.len() == k.len() * dv && q.len() == k.len());
        // Pass 1: p = k^T S and r = q^T S on the old state.
        let (mut p, mut r) = ([_mm512_setzero_ps(); N], [_mm512_setzero_ps(); N]);
        for (row, (&k_i, &q_i)) in s.chunks_exact(dv).zip(k.iter().zip(q)) {
            let (kb, qb) = (_mm512_set1_ps(k_i), _mm512_set1_ps(q_i));
            for j in 0..N {
                let x = _mm512_loadu_ps(row.as_ptr().add(16 * j));
                p[j] = _mm512_fmadd_ps(kb, x, p[j]);
                r[j] = _mm512_fmadd_ps(qb, x, r[j]);
            }
        }
        let qk: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
        let (a, b, qkb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta), _mm512_set1_ps(qk));
        let mut d = [_mm512_setzero_ps(); N];
        for j in 0..N {
            let vj = _mm512_loadu_ps(v.as_ptr().add(16 * j));
            // d = beta (v - a p), o = a r + (q . k) d.
            d[j] = _mm512_mul_ps(b, _mm512_fnmadd_ps(a, p[j], vj));
            _mm512_storeu_ps(o.as_mut_ptr().add(16 * j), _mm512_fmadd_ps(a, r[j], _mm512_mul_ps(qkb, d[j])));
        }
        // Pass 2: S <- a S + k d^T.
        for (row, &k_i) in s.chunks_exact_mut(dv).zip(k) {
            let kb = _mm512_set1_ps(k_i);
            for (j, &dj) in d.iter().enumerate() {
                let at = row.as_mut_ptr().add(16 * j);
                _mm512_storeu_ps(at, _mm512_fmadd_ps(kb, dj, _mm512_mul_ps(a, _mm512_loadu_ps(at))));
            }
        }
    }
}

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
//! 64 KiB-per-head state (2 MiB per layer at the 35B-A3B shape).

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

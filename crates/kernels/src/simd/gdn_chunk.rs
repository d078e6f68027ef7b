//! AVX2 + FMA chunk step of the chunked Gated DeltaNet: the reference's
//! [`crate::gdn::chunk_head`] recast as register-blocked small GEMMs.
//!
//! The reference walks 128-wide rows with axpy chains, each of which loads
//! and stores its output row (store-bound). Here every product — `Q K^T`,
//! `K K^T`, `W S0`, `q^T S0`, `A Vnew` and the state update — runs through
//! one micro-kernel that keeps a block of output in registers for the whole
//! reduction, and the forward substitution accumulates each new row of `U`
//! and `W` in registers too. The decay factors are the reference's own
//! ([`crate::gdn::chunk_decays`]), so the result differs from the twin only
//! by summation order.
//!
//! Shapes with `Dk` or `Dv` not a multiple of 8 are not blocked here: the
//! driver runs the twin for them.

use crate::gdn::{ChunkAt, ChunkInputs, GdnShape};
use std::arch::x86_64::*;

/// Per-worker buffers for [`chunk_head_avx2`], sized for a shape and a chunk.
/// Row strides of the `[chunk, chunk]` and `[Dk, chunk]` matrices are the
/// chunk rounded up to 8 so that their rows are whole vectors.
pub(crate) struct ChunkScratch {
    shape: GdnShape,
    chunk: usize,
    cp: usize,
    g_cum: Vec<f64>,
    decay_in: Vec<f32>,
    decay_out: Vec<f32>,
    /// `[chunk, cp]`: `Gamma[i][j] = exp(G_i - G_j)`, `j <= i`.
    gamma: Vec<f32>,
    /// `[Dk, cp]`: `K^T` (zero past the chunk's tokens).
    kt: Vec<f32>,
    /// `[Dk, cp]`: `K^T` with column `j` scaled by `exp(G_last - G_j)`.
    ktd: Vec<f32>,
    /// `[chunk, cp]`: `A = (Q K^T) * Gamma`, zero above the diagonal.
    a: Vec<f32>,
    /// `[chunk, cp]`: `L = beta (K K^T) * Gamma`, zero on and above the diagonal.
    l: Vec<f32>,
    /// `[chunk, Dv]`: `U`, then `Vnew` in place.
    u: Vec<f32>,
    /// `[chunk, Dk]`: `W`.
    w: Vec<f32>,
    /// The `A` operand of the current product, repacked by [`gemm`].
    pack: Vec<f32>,
}

impl ChunkScratch {
    pub(crate) fn new(shape: GdnShape, chunk: usize) -> Self {
        let (dk, dv) = (shape.head_k_dim, shape.head_v_dim);
        let cp = chunk.div_ceil(8) * 8;
        Self {
            shape,
            chunk,
            cp,
            g_cum: vec![0.0; chunk],
            decay_in: vec![0.0; chunk],
            decay_out: vec![0.0; chunk],
            gamma: vec![0.0; chunk * cp],
            kt: vec![0.0; dk * cp],
            ktd: vec![0.0; dk * cp],
            a: vec![0.0; chunk * cp],
            l: vec![0.0; chunk * cp],
            u: vec![0.0; chunk * dv],
            w: vec![0.0; chunk * dk],
            pack: vec![0.0; chunk.max(dk).div_ceil(MR) * MR * chunk.max(dk)],
        }
    }

    /// Whether this scratch serves `shape` with chunks of `chunk` tokens.
    pub(crate) fn fits(&self, shape: GdnShape, chunk: usize) -> bool {
        self.shape == shape && self.chunk >= chunk
    }
}

/// Whether [`chunk_head_avx2`] handles this shape (rows of whole vectors).
pub(crate) fn blocked(shape: GdnShape) -> bool {
    shape.head_k_dim.is_multiple_of(8) && shape.head_v_dim.is_multiple_of(8)
}

/// `C <- cscale C + rs_i (A B)` for rows `0..m`, columns `0..nn` (a multiple
/// of 8), reduction `0..kk`; row `i` of `A` starts at `a + i lda`, row `p` of
/// `B` at `b + p ldb`, row `i` of `C` at `c + i ldc`; `rs_i = *rs.add(i rs_stride)`.
/// With `cscale == 0` `C` is not read. `tri`: row `i` only needs `p <= i`
/// (the rest of `A` is zero), so each row block stops its reduction there.
/// `lower`: only `C[i][j]` with `j <= i` is wanted, so blocks wholly above
/// the diagonal are skipped (left as they were).
#[derive(Clone, Copy)]
struct Gemm {
    m: usize,
    nn: usize,
    kk: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cscale: f32,
    rs: *const f32,
    rs_stride: usize,
    tri: bool,
    lower: bool,
    /// Room for `A` repacked: `m` rounded up to [`MR`] times `kk` floats.
    pack: *mut f32,
}

/// Rows per block when there are several: 6 rows x 16 columns is 12
/// accumulators, leaving registers for two `B` vectors and a broadcast.
const MR: usize = 6;

#[target_feature(enable = "avx2,fma")]
unsafe fn gemm(g: Gemm) {
    debug_assert!(g.nn.is_multiple_of(8));
    if g.m == 1 {
        // One row (the forward substitution): 64-column blocks give eight
        // independent FMA chains, enough to hide the FMA latency.
        let mut j = 0;
        while j + 64 <= g.nn {
            block::<1, 8>(g, g.a, 1, 0, j);
            j += 64;
        }
        while j < g.nn {
            block::<1, 1>(g, g.a, 1, 0, j);
            j += 8;
        }
        return;
    }
    // A in panels of MR rows, each stored column by column, so that a
    // block's broadcasts are fixed offsets from one pointer that advances by
    // MR per step of the reduction.
    for i0 in (0..g.m).step_by(MR) {
        let panel = g.pack.add(i0 * g.kk);
        for p in 0..g.kk {
            for r in 0..MR {
                *panel.add(p * MR + r) = if i0 + r < g.m { *g.a.add((i0 + r) * g.lda + p) } else { 0.0 };
            }
        }
    }
    // Column strips outside, row blocks inside: a 16-column strip of `B`
    // (8 KiB for 128 rows) stays in L1 while every row block passes over it.
    let mut j = 0;
    while j < g.nn {
        let wide = g.nn - j >= 16;
        let mut i = 0;
        if g.lower {
            i = (j + 1).saturating_sub(MR); // first block with a row i >= j
            i -= i % MR;
        }
        while i < g.m {
            match (g.m - i, wide) {
                (1, true) => block::<1, 2>(g, g.pack.add(i * g.kk), MR, i, j),
                (2, true) => block::<2, 2>(g, g.pack.add(i * g.kk), MR, i, j),
                (3, true) => block::<3, 2>(g, g.pack.add(i * g.kk), MR, i, j),
                (4, true) => block::<4, 2>(g, g.pack.add(i * g.kk), MR, i, j),
                (5, true) => block::<5, 2>(g, g.pack.add(i * g.kk), MR, i, j),
                (_, true) => block::<MR, 2>(g, g.pack.add(i * g.kk), MR, i, j),
                (1, false) => block::<1, 1>(g, g.pack.add(i * g.kk), MR, i, j),
                (2, false) => block::<2, 1>(g, g.pack.add(i * g.kk), MR, i, j),
                (3, false) => block::<3, 1>(g, g.pack.add(i * g.kk), MR, i, j),
                (4, false) => block::<4, 1>(g, g.pack.add(i * g.kk), MR, i, j),
                (5, false) => block::<5, 1>(g, g.pack.add(i * g.kk), MR, i, j),
                (_, false) => block::<MR, 1>(g, g.pack.add(i * g.kk), MR, i, j),
            }
            i += MR;
        }
        j += if wide { 16 } else { 8 };
    }
}

/// One `R x 8NV` block of [`gemm`] at row `i0`, column `j0`; `A[i0 + r][p]`
/// is read at `ap + p step + r`.
#[inline(always)]
unsafe fn block<const R: usize, const NV: usize>(g: Gemm, ap: *const f32, step: usize, i0: usize, j0: usize) {
    let kk = if g.tri { g.kk.min(i0 + R) } else { g.kk };
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    let mut ap = ap;
    let mut bp = g.b.add(j0);
    for _ in 0..kk {
        let mut bv = [_mm256_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(bp.add(8 * v));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let a_rp = _mm256_broadcast_ss(&*ap.add(r));
            for v in 0..NV {
                acc_r[v] = _mm256_fmadd_ps(a_rp, bv[v], acc_r[v]);
            }
        }
        bp = bp.add(g.ldb);
        ap = ap.add(step);
    }
    let cs = _mm256_set1_ps(g.cscale);
    for (r, acc_r) in acc.iter().enumerate() {
        let rs = _mm256_set1_ps(*g.rs.add((i0 + r) * g.rs_stride));
        let cr = g.c.add((i0 + r) * g.ldc + j0);
        for (v, &x) in acc_r.iter().enumerate() {
            let out = if g.cscale == 0.0 {
                _mm256_mul_ps(x, rs)
            } else {
                _mm256_fmadd_ps(x, rs, _mm256_mul_ps(cs, _mm256_loadu_ps(cr.add(8 * v))))
            };
            _mm256_storeu_ps(cr.add(8 * v), out);
        }
    }
}

/// One value head `h` over tokens `start..start + n` (`1 <= n <= chunk`):
/// the math of [`crate::gdn::chunk_head`], advancing `s0` (`[Dk, Dv]`) and
/// writing the outputs straight into `out` (the full `[T, Hv, Dv]` tensor,
/// through a raw pointer because other workers own the other heads' columns).
///
/// # Safety
/// The CPU has AVX2 + FMA; [`blocked`]`(shape)`; `sc.fits(shape, n)`; the
/// tensors have the lengths [`crate::gdn::gdn_chunked`] checks; `out` is
/// valid for `[T, Hv, Dv]` and no one else touches head `h`'s rows of it.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn chunk_head_avx2(
    x: &ChunkInputs,
    at: ChunkAt,
    s0: &mut [f32],
    sc: &mut ChunkScratch,
    out: *mut f32,
) {
    let ChunkInputs { q, k, v, beta, g, shape, map } = *x;
    let ChunkAt { h, start, n } = at;
    let GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv } = shape;
    debug_assert!(blocked(shape) && sc.fits(shape, n) && n >= 1);
    debug_assert_eq!(s0.len(), dk * dv);
    let cp = sc.cp;
    let np = n.div_ceil(8) * 8; // columns of the [n, n] products, whole vectors
    let kh = map.key_head(h, shape);
    let qk_at = (start * hk + kh) * dk; // row i of Q or K: + i hk dk
    let qk_stride = hk * dk;
    let bh_at = start * hv + h; // beta / g of token i: + i hv
    let k_row = |i: usize| &k[qk_at + i * qk_stride..][..dk];
    let one = 1.0f32;
    let minus_one = -1.0f32;
    let pack = sc.pack.as_mut_ptr();

    // Decays: the reference's own function, so only summation order differs.
    crate::gdn::chunk_decays(&g[bh_at..], hv, n, &mut sc.g_cum, &mut sc.decay_in, &mut sc.decay_out, &mut sc.gamma, cp);

    // K^T, plain and scaled by the decay to the chunk's end; the padding
    // columns n..np are zeroed so the square products stay finite.
    for a in 0..dk {
        sc.kt[a * cp..][n..np].fill(0.0);
        sc.ktd[a * cp..][n..np].fill(0.0);
    }
    for j in 0..n {
        let d = sc.decay_out[j];
        for (a, &x) in k_row(j).iter().enumerate() {
            sc.kt[a * cp + j] = x;
            sc.ktd[a * cp + j] = d * x;
        }
    }

    // A = (Q K^T) * Gamma (lower, diagonal included); L = beta (K K^T) * Gamma
    // (strictly lower). The rest of each row is zeroed for the triangular
    // products below.
    let square = |a: *const f32, c: *mut f32, rs: *const f32, rs_stride: usize| Gemm {
        m: n,
        nn: np,
        kk: dk,
        a,
        lda: qk_stride,
        b: sc.kt.as_ptr(),
        ldb: cp,
        c,
        ldc: cp,
        cscale: 0.0,
        rs,
        rs_stride,
        tri: false,
        lower: true,
        pack,
    };
    gemm(square(q.as_ptr().add(qk_at), sc.a.as_mut_ptr(), &one, 0));
    gemm(square(k.as_ptr().add(qk_at), sc.l.as_mut_ptr(), beta.as_ptr().add(bh_at), hv));
    for i in 0..n {
        let (a_i, l_i, gm_i) = (&mut sc.a[i * cp..][..np], &mut sc.l[i * cp..][..np], &sc.gamma[i * cp..][..np]);
        for j in 0..np {
            a_i[j] = if j <= i { a_i[j] * gm_i[j] } else { 0.0 };
            l_i[j] = if j < i { l_i[j] * gm_i[j] } else { 0.0 };
        }
    }

    // Forward substitution with (I + L), one row at a time, each row's sum
    // held in registers: U_i = beta_i v_i - sum_{j<i} L[i][j] U_j, and
    // W_i = beta_i e^(G_i) k_i - sum_{j<i} L[i][j] W_j.
    for i in 0..n {
        let beta_i = beta[bh_at + i * hv];
        let v_i = &v[(bh_at + i * hv) * dv..][..dv];
        for (x, &y) in sc.u[i * dv..][..dv].iter_mut().zip(v_i) {
            *x = beta_i * y;
        }
        let bk = beta_i * sc.decay_in[i];
        for (x, &y) in sc.w[i * dk..][..dk].iter_mut().zip(k_row(i)) {
            *x = bk * y;
        }
        if i == 0 {
            continue;
        }
        let l_i = sc.l.as_ptr().add(i * cp);
        for (buf, d) in [(&mut sc.u, dv), (&mut sc.w, dk)] {
            let base = buf.as_mut_ptr();
            #[rustfmt::skip]
            gemm(Gemm {
                m: 1, nn: d, kk: i, a: l_i, lda: 0, b: base, ldb: d, c: base.add(i * d), ldc: 0,
                cscale: 1.0, rs: &minus_one, rs_stride: 0, tri: false, lower: false, pack,
            });
        }
    }

    // Vnew = U - W S0, in place in u.
    #[rustfmt::skip]
    gemm(Gemm {
        m: n, nn: dv, kk: dk, a: sc.w.as_ptr(), lda: dk, b: s0.as_ptr(), ldb: dv,
        c: sc.u.as_mut_ptr(), ldc: dv, cscale: 1.0, rs: &minus_one, rs_stride: 0, tri: false, lower: false, pack,
    });

    // O = diag(e^G) (Q S0) + A Vnew, written to the output rows directly.
    let o = out.add(bh_at * dv);
    #[rustfmt::skip]
    gemm(Gemm {
        m: n, nn: dv, kk: dk, a: q.as_ptr().add(qk_at), lda: qk_stride, b: s0.as_ptr(), ldb: dv,
        c: o, ldc: hv * dv, cscale: 0.0, rs: sc.decay_in.as_ptr(), rs_stride: 1, tri: false, lower: false, pack,
    });
    #[rustfmt::skip]
    gemm(Gemm {
        m: n, nn: dv, kk: n, a: sc.a.as_ptr(), lda: cp, b: sc.u.as_ptr(), ldb: dv,
        c: o, ldc: hv * dv, cscale: 1.0, rs: &one, rs_stride: 0, tri: true, lower: false, pack,
    });

    // S <- e^(G_n) S0 + (K^T diag(e^(G_n - G_j))) Vnew, last: the products
    // above still read the incoming state.
    #[rustfmt::skip]
    gemm(Gemm {
        m: dk, nn: dv, kk: n, a: sc.ktd.as_ptr(), lda: cp, b: sc.u.as_ptr(), ldb: dv,
        c: s0.as_mut_ptr(), ldc: dv, cscale: sc.decay_in[n - 1], rs: &one, rs_stride: 0, tri: false, lower: false, pack,
    });
}

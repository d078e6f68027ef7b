//! Causal attention at speed: the reference [`crate::attention::attend`]
//! reorganised around the KV head.
//!
//! Two routes, both pooled over units of work that each own one KV head:
//!
//! * per token (every level; the scalar twin): a unit is one query token
//!   and one KV head; the `r = n_heads / n_kv_heads` query heads sharing
//!   the KV head are scored together, so each cached key and value row is
//!   read once for all of them (GQA sharing). Generic loops over the
//!   eight-lane [`crate::vecops::dot`], instantiated per [`Level`].
//! * blocked (AVX2, `head_dim % 8 == 0`): a unit is a block of up to
//!   [`BLOCK_TOKENS`] consecutive query tokens and one KV head, so each K/V
//!   row brought from the cache serves `tokens x r` query rows (prefill
//!   re-streams the cache `BLOCK_TOKENS` times less). Scores come from a
//!   2-row x 4-key register tile whose horizontal sums are one transpose,
//!   the softmax uses the polynomial [`super::expf`], and the weighted V
//!   sum is a 4-row x 16-column tile over blocks of keys.
//!
//! Both routes keep the reference's order of operations per query (scores
//! scaled, max subtracted, probabilities normalised before the V sum), and
//! on the blocked route a query's result does not depend on which block or
//! tile row it lands in: every score and every output element is summed in
//! one fixed order, and masked keys contribute exact zeros. So prefill and
//! decode agree bit for bit there too (the tests check it).

use super::Level;
use crate::attention::AttnShape;
use crate::pool::SharedMut;
use crate::vecops::{axpy, dot};

/// Query tokens per unit on the blocked route. Larger blocks read the
/// cache fewer times but keep more query rows (`tokens x r x head_dim`) and
/// scores in cache per unit, and leave fewer units to share among threads.
pub const BLOCK_TOKENS: usize = 4;

/// Which loops [`attend_parallel_via`] runs (benchmarks and tests pick one;
/// [`attend_parallel`] picks the fastest the level and shape allow).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// One query token per unit, generic loops.
    PerToken,
    /// `tokens` query tokens per unit, AVX2 tiles; needs [`Level::Avx2`]
    /// and `head_dim % 8 == 0`.
    Blocked { tokens: usize },
}

/// Same contract as [`crate::attention::attend`]; `scores` is grow-only
/// scratch owned by the caller, sized here for `max(n_ctx, ctx_capacity)`
/// positions, so a caller passing its KV cache's capacity sees it grow
/// with the cache, not token by token.
#[allow(clippy::too_many_arguments)]
pub fn attend_parallel(
    level: Level,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    start_pos: usize,
    n_tokens: usize,
    shape: AttnShape,
    scale: f32,
    ctx_capacity: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let route = if level.runs_avx2() && shape.head_dim.is_multiple_of(8) && shape.head_dim > 0 {
        Route::Blocked { tokens: BLOCK_TOKENS }
    } else {
        Route::PerToken
    };
    attend_parallel_via(route, level, q, k_cache, v_cache, start_pos, n_tokens, shape, scale, ctx_capacity, scores, out)
}

/// [`attend_parallel`] on a chosen [`Route`].
///
/// # Panics
/// As [`attend_parallel`], and if `route` is blocked while `level` is not
/// AVX2, `head_dim % 8 != 0` or `tokens == 0`.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn attend_parallel_via(
    route: Route,
    level: Level,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    start_pos: usize,
    n_tokens: usize,
    shape: AttnShape,
    scale: f32,
    ctx_capacity: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let AttnShape { n_heads, n_kv_heads, head_dim } = shape;
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attend: n_kv_heads must divide n_heads");
    let n_ctx = start_pos + n_tokens;
    let (q_row, kv_row, r) = (shape.q_row_len(), shape.kv_row_len(), n_heads / n_kv_heads);
    assert!(q.len() == n_tokens * q_row && out.len() == n_tokens * q_row, "attend: q/out length");
    assert!(k_cache.len() >= n_ctx * kv_row && v_cache.len() >= n_ctx * kv_row, "attend: cache too short");
    let tq = match route {
        Route::PerToken => 1,
        Route::Blocked { tokens } => {
            assert!(
                level.runs_avx2() && head_dim.is_multiple_of(8) && tokens > 0,
                "attend: the blocked route needs AVX2, head_dim % 8 == 0 and tokens > 0"
            );
            tokens
        }
    };
    if n_tokens == 0 || n_heads == 0 {
        return;
    }

    let units = n_tokens.div_ceil(tq) * n_kv_heads;
    let groups = crate::threads::get().min(units).max(1);
    // A unit's scores: `rows` query rows of `stride` positions, the stride
    // rounded up to whole vectors so the softmax never steps into the next
    // row. Sized from the capacity too, so decode does not grow it per token.
    let rows = tq.min(n_tokens) * r;
    let stride = n_ctx.next_multiple_of(8);
    let per_group = rows * stride;
    let want = crate::threads::get().max(groups) * rows * n_ctx.max(ctx_capacity).next_multiple_of(8);
    if scores.len() < want {
        scores.resize(want, 0.0);
    }
    let (sp, op) = (SharedMut::new(scores), SharedMut::new(out));
    let task = |gi: usize| {
        // SAFETY: group `gi` alone uses scores `[gi * per_group, +per_group)`
        // and units `u ≡ gi (mod groups)`, whose output rows (query tokens
        // of block `u / n_kv`, heads of KV head `u % n_kv`) no other unit
        // writes.
        let sc = unsafe { std::slice::from_raw_parts_mut(sp.at(gi * per_group), per_group) };
        for u in (gi..units).step_by(groups) {
            let (b, kvh) = (u / n_kv_heads, u % n_kv_heads);
            match route {
                Route::PerToken => {
                    let i = b;
                    let n_seen = start_pos + i + 1;
                    let qs = &q[i * q_row + kvh * r * head_dim..][..r * head_dim];
                    let os =
                        unsafe { std::slice::from_raw_parts_mut(op.at(i * q_row + kvh * r * head_dim), r * head_dim) };
                    let args = Unit { qs, k_cache, v_cache, kvh, head_dim, kv_row, r, n_seen, scale };
                    match level {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
                        Level::Avx2 | Level::Avx512 => unsafe { unit_avx2(&args, sc, os) },
                        _ => unit(&args, sc, os),
                    }
                }
                Route::Blocked { .. } => {
                    let first = b * tq;
                    let blk = Block {
                        q,
                        k_cache,
                        v_cache,
                        out: op,
                        q_row,
                        kv_row,
                        head_dim,
                        r,
                        kvh,
                        first,
                        n_tok: tq.min(n_tokens - first),
                        start_pos,
                        scale,
                        stride,
                    };
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the route was checked to run at `Level::Avx2`
                    // (AVX2 + FMA present) with `head_dim % 8 == 0`; this unit
                    // owns its output rows (above) and `sc`.
                    unsafe {
                        blocked::unit(&blk, sc)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = (blk, sc);
                        unreachable!("the blocked route is checked to need AVX2");
                    }
                }
            }
        }
    };
    if groups == 1 || n_ctx * n_heads * head_dim * n_tokens < 1 << 15 {
        (0..groups).for_each(task);
    } else {
        crate::pool::run(groups, &task);
    }
}

struct Unit<'a> {
    /// `[r, head_dim]` the query heads sharing KV head `kvh`.
    qs: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    kvh: usize,
    head_dim: usize,
    kv_row: usize,
    r: usize,
    n_seen: usize,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2(u: &Unit, scores: &mut [f32], out: &mut [f32]) {
    unit(u, scores, out)
}

/// One query token, one KV head: scores `[r, n_seen]`, softmax, weighted V.
#[inline(always)]
fn unit(u: &Unit, scores: &mut [f32], out: &mut [f32]) {
    let (hd, n) = (u.head_dim, u.n_seen);
    let key = |p: usize| &u.k_cache[p * u.kv_row + u.kvh * hd..][..hd];
    let val = |p: usize| &u.v_cache[p * u.kv_row + u.kvh * hd..][..hd];
    for p in 0..n {
        let kp = key(p);
        for j in 0..u.r {
            scores[j * n + p] = dot(&u.qs[j * hd..][..hd], kp) * u.scale;
        }
    }
    for j in 0..u.r {
        let s = &mut scores[j * n..][..n];
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for v in s.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        s.iter_mut().for_each(|v| *v *= inv);
    }
    out.fill(0.0);
    for p in 0..n {
        let vp = val(p);
        for j in 0..u.r {
            axpy(scores[j * n + p], vp, &mut out[j * hd..][..hd]);
        }
    }
}

/// One unit of the blocked route: query tokens `first..first + n_tok` of
/// the call, KV head `kvh`. Its `n_tok * r` query rows are ordered token
/// by token, heads within a token; row `m` sees `start_pos + first + m / r
/// + 1` positions.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Block<'a> {
    q: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    out: SharedMut<f32>,
    q_row: usize,
    kv_row: usize,
    head_dim: usize,
    r: usize,
    kvh: usize,
    first: usize,
    n_tok: usize,
    start_pos: usize,
    scale: f32,
    /// Floats between score rows in the unit's scratch (a multiple of 8,
    /// at least the unit's widest row).
    stride: usize,
}

#[cfg(target_arch = "x86_64")]
mod blocked {
    use super::Block;
    use crate::simd::expf::exp_avx2;
    use std::arch::x86_64::*;

    /// Keys per step of the weighted V sum: the 4-row output tile is
    /// loaded and stored once per step, and a step's V rows
    /// (`KEYS_PER_STEP x head_dim` floats) stay in L1 for all row tiles.
    const KEYS_PER_STEP: usize = 16;

    impl Block<'_> {
        fn rows(&self) -> usize {
            self.n_tok * self.r
        }

        /// Positions row `m` sees (causal horizon).
        fn seen(&self, m: usize) -> usize {
            self.start_pos + self.first + m / self.r + 1
        }

        fn q_at(&self, m: usize) -> *const f32 {
            let (t, j) = (m / self.r, m % self.r);
            self.q[(self.first + t) * self.q_row + (self.kvh * self.r + j) * self.head_dim..].as_ptr()
        }

        fn out_at(&self, m: usize) -> *mut f32 {
            let (t, j) = (m / self.r, m % self.r);
            self.out.at((self.first + t) * self.q_row + (self.kvh * self.r + j) * self.head_dim)
        }

        /// Key (or value) row of position `p` in `cache`.
        fn kv_at(&self, cache: &[f32], p: usize) -> *const f32 {
            cache[p * self.kv_row + self.kvh * self.head_dim..][..self.head_dim].as_ptr()
        }
    }

    /// Scores, softmax and weighted V sum of one unit (see [`Block`]).
    ///
    /// # Safety
    /// AVX2 + FMA present, `head_dim % 8 == 0`, the unit's output rows
    /// written by no one else, `sc` at least `rows x stride` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn unit(b: &Block, sc: &mut [f32]) {
        let (rows, stride) = (b.rows(), b.stride);
        let sc = &mut sc[..rows * stride];
        unsafe {
            scores(b, sc);
            for m in 0..rows {
                softmax_row(&mut sc[m * stride..][..stride], b.seen(m), b.seen(rows - 1));
            }
            weighted_values(b, sc);
        }
    }

    /// `sc[m][p] = scale * q_m . k_p` for every row and every position up
    /// to the last row's horizon (rounded up to 4; the extra positions and
    /// those past a row's own horizon are overwritten by the softmax).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores(b: &Block, sc: &mut [f32]) {
        let (rows, n, hd, stride) = (b.rows(), b.seen(b.rows() - 1), b.head_dim, b.stride);
        let scale = _mm256_set1_ps(b.scale);
        let mut p = 0;
        while p < n {
            // Positions past `n` repeat the last one: no read beyond the
            // horizon, and the tile keeps one shape.
            let k = [0, 1, 2, 3].map(|i| b.kv_at(b.k_cache, (p + i).min(n - 1)));
            let mut m = 0;
            while m < rows {
                let m1 = (m + 1).min(rows - 1);
                unsafe {
                    let s = _mm256_mul_ps(dot_2x4(b.q_at(m), b.q_at(m1), k, hd), scale);
                    // p + 4 <= n rounded up to 4 <= stride.
                    _mm_storeu_ps(sc.as_mut_ptr().add(m * stride + p), _mm256_castps256_ps128(s));
                    if m + 1 < rows {
                        _mm_storeu_ps(sc.as_mut_ptr().add((m + 1) * stride + p), _mm256_extractf128_ps::<1>(s));
                    }
                }
                m += 2;
            }
            p += 4;
        }
    }

    /// Dot products of two query rows with four key rows, `hd` floats
    /// each: lanes `[q0.k0, q0.k1, q0.k2, q0.k3, q1.k0, .., q1.k3]`. Eight
    /// accumulators of eight lanes, summed across lanes in one transpose,
    /// so every lane adds its partials in the same order.
    #[inline(always)]
    unsafe fn dot_2x4(q0: *const f32, q1: *const f32, k: [*const f32; 4], hd: usize) -> __m256 {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut d = 0;
            while d < hd {
                let (a0, a1) = (_mm256_loadu_ps(q0.add(d)), _mm256_loadu_ps(q1.add(d)));
                for j in 0..4 {
                    let kj = _mm256_loadu_ps(k[j].add(d));
                    acc[j] = _mm256_fmadd_ps(a0, kj, acc[j]);
                    acc[4 + j] = _mm256_fmadd_ps(a1, kj, acc[4 + j]);
                }
                d += 8;
            }
            transpose_sum(acc)
        }
    }

    /// Lane `j` of the result is the sum of the eight lanes of `v[j]`,
    /// `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`.
    #[inline(always)]
    unsafe fn transpose_sum(v: [__m256; 8]) -> __m256 {
        unsafe {
            let (t0, t1) = (_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
            let (t2, t3) = (_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
            // u0: lanes 0-3 the low-half sums of v0..v3, lanes 4-7 their high-half sums.
            let (u0, u1) = (_mm256_hadd_ps(t0, t1), _mm256_hadd_ps(t2, t3));
            let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
            let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
            _mm256_add_ps(lo, hi)
        }
    }

    /// Softmax of `row[..n]` in place; `row[n..zero_to]` set to 0 so the
    /// weighted V sum may run a row past its horizon (to the tile's widest).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_row(row: &mut [f32], n: usize, zero_to: usize) {
        let full = n / 8 * 8;
        let whole = n.next_multiple_of(8);
        assert!(whole <= row.len() && zero_to <= row.len());
        let ptr = row.as_mut_ptr();
        unsafe {
            let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
            for p in (0..full).step_by(8) {
                mv = _mm256_max_ps(mv, _mm256_loadu_ps(ptr.add(p)));
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
            let max = lanes.iter().chain(&row[full..n]).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mv = _mm256_set1_ps(max);

            let mut sum = _mm256_setzero_ps();
            for p in (0..full).step_by(8) {
                let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(p)), mv));
                _mm256_storeu_ps(ptr.add(p), e);
                sum = _mm256_add_ps(sum, e);
            }
            if full < n {
                // Lanes past the horizon may hold anything: zero them after exp.
                let keep =
                    _mm256_cmpgt_epi32(_mm256_set1_epi32((n - full) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(full)), mv));
                let e = _mm256_and_ps(e, _mm256_castsi256_ps(keep));
                _mm256_storeu_ps(ptr.add(full), e);
                sum = _mm256_add_ps(sum, e);
            }
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
            let total =
                ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            let inv = _mm256_set1_ps(1.0 / total);
            for p in (0..whole).step_by(8) {
                _mm256_storeu_ps(ptr.add(p), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(p)), inv));
            }
        }
        if zero_to > whole {
            row[whole..zero_to].fill(0.0);
        }
    }

    /// `out_m = sum_p sc[m][p] v_p`, tiles of 4 rows x 16 (or 8) columns
    /// over steps of [`KEYS_PER_STEP`] positions, each output element
    /// summed in position order from zero.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_values(b: &Block, sc: &[f32]) {
        let (rows, hd, stride) = (b.rows(), b.head_dim, b.stride);
        let n = b.seen(rows - 1);
        let mut p0 = 0;
        while p0 < n {
            let mut m = 0;
            while m < rows {
                // Rows past the end repeat the last one (not stored); the
                // tile stops at its widest row's horizon, the other rows
                // having zero weights there.
                let ms = [0, 1, 2, 3].map(|i| (m + i).min(rows - 1));
                let p1 = (p0 + KEYS_PER_STEP).min(b.seen(ms[3]));
                if p1 > p0 {
                    let w = ms.map(|mi| sc[mi * stride..].as_ptr());
                    let o = ms.map(|mi| b.out_at(mi));
                    let valid = (rows - m).min(4);
                    let mut c = 0;
                    while c + 16 <= hd {
                        unsafe { tile::<2>(b, w, o, valid, c, p0, p1) };
                        c += 16;
                    }
                    if c < hd {
                        unsafe { tile::<1>(b, w, o, valid, c, p0, p1) };
                    }
                }
                m += 4;
            }
            p0 += KEYS_PER_STEP;
        }
    }

    /// Columns `c..c + 8 NV` of four output rows, positions `p0..p1`
    /// added to what earlier steps stored (zero at `p0 == 0`). Only the
    /// first `valid` rows are stored.
    #[inline(always)]
    unsafe fn tile<const NV: usize>(
        b: &Block,
        w: [*const f32; 4],
        o: [*mut f32; 4],
        valid: usize,
        c: usize,
        p0: usize,
        p1: usize,
    ) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NV]; 4];
            if p0 > 0 {
                for (acc_i, o_i) in acc.iter_mut().zip(o) {
                    for (v, a) in acc_i.iter_mut().enumerate() {
                        *a = _mm256_loadu_ps(o_i.add(c + 8 * v));
                    }
                }
            }
            // In bounds: p < n_ctx, and the cache holds n_ctx rows (asserted).
            let v0 = b.v_cache.as_ptr().add(b.kvh * b.head_dim + c);
            for p in p0..p1 {
                let vp = v0.add(p * b.kv_row);
                let x = [0, 1].map(|v| if v < NV { _mm256_loadu_ps(vp.add(8 * v)) } else { _mm256_setzero_ps() });
                for i in 0..4 {
                    let wi = _mm256_broadcast_ss(&*w[i].add(p));
                    for v in 0..NV {
                        acc[i][v] = _mm256_fmadd_ps(wi, x[v], acc[i][v]);
                    }
                }
            }
            for (acc_i, o_i) in acc.iter().zip(o).take(valid) {
                for (v, a) in acc_i.iter().enumerate() {
                    _mm256_storeu_ps(o_i.add(c + 8 * v), *a);
                }
            }
        }
    }
}

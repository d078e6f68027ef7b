//! Feed-forward sub-layers: dense SwiGLU (spec 2.6) and the sparse MoE with
//! a sigmoid-gated shared expert (spec 2.7).

use std::ops::Range;

use qmoe_kernels::act::{sigmoid, softmax, swiglu, top_k};
use qmoe_kernels::linear::{matmul, MatRef};
use qmoe_kernels::pool::for_chunk_pieces;
use qmoe_kernels::simd::gemm::{int8_input, matmul_many, with_f32_activations, Product, Quantized};
use qmoe_kernels::simd::ActKind;

use crate::config::Config;
use crate::scratch::{take, MoeScratch};
use crate::weights::{Moe, SwiGlu};

/// `y = down · (silu(gate · x) ⊙ (up · x))` for `[T, H]` rows.
pub fn dense(w: &SwiGlu, x: &[f32], n_tokens: usize, s: &mut MoeScratch, y: &mut [f32]) {
    let t = n_tokens;
    let f = w.gate.rows;
    let gate = take(&mut s.sh_gate, t * f);
    matmul(&w.gate.view(), x, gate, t);
    let up = take(&mut s.sh_up, t * f);
    matmul(&w.up.view(), x, up, t);
    let act = take(&mut s.sh_act, t * f);
    swiglu(gate, up, act);
    matmul(&w.down.view(), act, y, t);
}

/// Softmax over all experts, top-k, renormalise (when `norm_topk_prob`),
/// weighted sum of the chosen experts, plus the gated shared expert.
///
/// Fused (issue: CPU speed): the routed experts run grouped by expert, so
/// each chosen expert's weights are read once per call however many tokens
/// chose it, and all projections of a step go to the kernels in one
/// [`matmul_many`] call: gate and up of every expert, of the shared expert
/// and the shared gate together (one call, one quantization of a token's
/// input shared by all of them: for several tokens the input is quantized
/// once and its blocks gathered by expert), then every down projection
/// together.
pub fn moe(w: &Moe, cfg: &Config, x: &[f32], n_tokens: usize, s: &mut MoeScratch, y: &mut [f32]) {
    let (t, h, e, k) = (n_tokens, cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok);
    let inter = cfg.moe_intermediate_size;
    let sh_inter = w.shared.gate.rows;

    // Router in f32 (f32 activations even for quantized gates: routing
    // margins can be far below int8 activation noise), ranked in f32.
    let mut probs = std::mem::take(&mut s.probs);
    with_f32_activations(|| matmul(&w.router.view(), x, take(&mut probs, t * e), t));
    route(cfg, &mut probs[..t * e], t, s);
    s.probs = probs;

    // Gather each expert's tokens into one contiguous block (a single token
    // needs no copy: every expert reads `x` itself). Where every chosen
    // expert's gate and up take int8 activations of one form, `x` is
    // quantized once and the blocks are gathered: quantizing each gathered
    // copy quantized every token k + 1 times, and the f32 copies are four
    // times the bytes (1.2% of a Q4_K_M prefill's samples in `memmove`).
    let n_routed = t * k;
    let int8 = if t > 1 { routed_int8_form(w, &s.offsets) } else { None };
    let xq = int8.map(|form| s.xq.quantize(form, x));
    let routed = if t == 1 {
        Routed::Token(x)
    } else if let Some(xq) = xq {
        let order = &s.order;
        Routed::Quantized(s.xqs.gather(xq, h, n_routed, &|slot| order[slot].0))
    } else {
        let xs = take(&mut s.xs, n_routed * h);
        let order = &s.order;
        for_chunk_pieces(xs, h, ROWS_A_PIECE, &|a, rows| {
            for (row, &(tok, _)) in rows.chunks_exact_mut(h).zip(&order[a..]) {
                row.copy_from_slice(&x[tok * h..(tok + 1) * h]);
            }
        });
        Routed::Rows(&*xs)
    };

    // Step 1: gate and up of every chosen expert and of the shared expert.
    let gate = take(&mut s.gate, n_routed * inter);
    let up = take(&mut s.up, n_routed * inter);
    let sh_gate = take(&mut s.sh_gate, t * sh_inter);
    let sh_up = take(&mut s.sh_up, t * sh_inter);
    let sh_scale = take(&mut s.sh_scale, t);
    {
        let mut products = recycle(&mut s.products);
        products.push(on_input(w.shared.gate.view(), x, xq, sh_gate, t));
        products.push(on_input(w.shared.up.view(), x, xq, sh_up, t));
        products.push(on_input(w.shared_gate.view(), x, xq, sh_scale, t));
        let (mut g_rest, mut u_rest) = (&mut gate[..], &mut up[..]);
        for ex in 0..e {
            let n = s.offsets[ex + 1] - s.offsets[ex];
            if n == 0 {
                continue;
            }
            let (g, gr) = g_rest.split_at_mut(n * inter);
            let (u, ur) = u_rest.split_at_mut(n * inter);
            (g_rest, u_rest) = (gr, ur);
            let (expert, slots) = (&w.experts[ex], s.offsets[ex]..s.offsets[ex + 1]);
            products.push(routed.product(expert.gate.view(), slots.clone(), h, g));
            products.push(routed.product(expert.up.view(), slots, h, u));
        }
        matmul_many(&mut products);
        s.products = recycle(&mut products);
    }
    let act = take(&mut s.act, n_routed * inter);
    swiglu_rows(gate, up, act, inter);
    let sh_act = take(&mut s.sh_act, t * sh_inter);
    swiglu_rows(sh_gate, sh_up, sh_act, sh_inter);

    // Step 2: every down projection; the shared expert writes all of y.
    let out = take(&mut s.out, n_routed * h);
    {
        let mut products = recycle(&mut s.products);
        products.push(Product::new(w.shared.down.view(), sh_act, y, t));
        let (mut a_rest, mut o_rest) = (&act[..], &mut out[..]);
        for ex in 0..e {
            let n = s.offsets[ex + 1] - s.offsets[ex];
            if n == 0 {
                continue;
            }
            let (a, ar) = a_rest.split_at(n * inter);
            let (o, or) = o_rest.split_at_mut(n * h);
            (a_rest, o_rest) = (ar, or);
            products.push(Product::new(w.experts[ex].down.view(), a, o, n));
        }
        matmul_many(&mut products);
        s.products = recycle(&mut products);
    }

    // Combine: y = sigmoid(shared gate) * shared + Σ weight * expert.
    // Per token, its slots in increasing order: the sums of the one-thread
    // loop over slots, in its order, so the pieces change no bit.
    let (order, token_slots) = (&s.order, &s.token_slots);
    for_chunk_pieces(y, h, ROWS_A_PIECE, &|a, rows| {
        for (tok, row) in (a..).zip(rows.chunks_exact_mut(h)) {
            let gate = sigmoid(sh_scale[tok]);
            row.iter_mut().for_each(|v| *v *= gate);
            for &slot in &token_slots[tok * k..(tok + 1) * k] {
                let weight = order[slot].1;
                for (yv, &ov) in row.iter_mut().zip(&out[slot * h..(slot + 1) * h]) {
                    *yv += weight * ov;
                }
            }
        }
    });
}

/// The routed experts' input: one token (every expert reads it), rows
/// gathered by expert in f32, or gathered quantized.
enum Routed<'a> {
    Token(&'a [f32]),
    Rows(&'a [f32]),
    Quantized(Quantized<'a>),
}

impl<'a> Routed<'a> {
    /// `m` times the input of routing slots `slots` (rows of `h` values), into `y`.
    fn product(&self, m: MatRef<'a>, slots: Range<usize>, h: usize, y: &'a mut [f32]) -> Product<'a> {
        let n = slots.len();
        match *self {
            Routed::Token(x) => Product::new(m, x, y, n),
            Routed::Rows(xs) => Product::new(m, &xs[slots.start * h..slots.end * h], y, n),
            Routed::Quantized(q) => Product::quantized(m, q.rows(slots, h), y, n),
        }
    }
}

/// `m` times `x` (`t` tokens), taking `x` quantized as `xq` where `m` takes
/// that form (the shared expert beside the routed ones).
fn on_input<'a>(m: MatRef<'a>, x: &'a [f32], xq: Option<Quantized<'a>>, y: &'a mut [f32], t: usize) -> Product<'a> {
    let pre = xq.filter(|q| int8_input(&m.enc, t) == Some(q.kind()));
    Product { pre, ..Product::new(m, x, y, t) }
}

/// The int8 activation form that gate and up of every expert with tokens
/// take (their token counts in `offsets`), when it is one form for all.
fn routed_int8_form(w: &Moe, offsets: &[usize]) -> Option<ActKind> {
    let mut form = None;
    for (ex, expert) in w.experts.iter().enumerate() {
        let n = offsets[ex + 1] - offsets[ex];
        if n == 0 {
            continue;
        }
        for m in [&expert.gate, &expert.up] {
            let f = int8_input(&m.view().enc, n)?;
            if *form.get_or_insert(f) != f {
                return None;
            }
        }
    }
    form
}

/// Rows a piece for the row-wise steps of a prefill's MoE on the pool
/// (gather, SwiGLU, combine): done on one thread they left the other idle
/// (`memmove` of the gather alone 1.4% of a Q4_K_M prefill's samples).
const ROWS_A_PIECE: usize = 8;

/// [`swiglu`] in pieces of whole rows of `row` values. Where a row is a
/// whole number of vectors (every released model's: 256-1024 values), each
/// piece splits into vectors and a scalar tail as one call would, so the
/// values are that call's exactly.
fn swiglu_rows(gate: &[f32], up: &[f32], act: &mut [f32], row: usize) {
    debug_assert!(row > 0 && act.len().is_multiple_of(row));
    for_chunk_pieces(act, row, ROWS_A_PIECE, &|a, out| {
        let at = a * row..a * row + out.len();
        swiglu(&gate[at.clone()], &up[at], out);
    });
}

/// Top-k routing of every token, then the (token, weight) pairs sorted by
/// expert into `s.order`, with expert `e`'s run at `offsets[e]..offsets[e+1]`.
fn route(cfg: &Config, probs: &mut [f32], t: usize, s: &mut MoeScratch) {
    let (e, k) = (cfg.num_experts, cfg.num_experts_per_tok);
    // Each token's softmax and top k, in pool pieces for a prefill (top k
    // is k passes over the experts: 256 of them in the released models).
    for_chunk_pieces(probs, e, ROWS_A_PIECE, &|_, p| p.chunks_exact_mut(e).for_each(softmax));
    let probs = &*probs;
    s.top.clear();
    s.top.resize(t * k, 0);
    for_chunk_pieces(&mut s.top, k, ROWS_A_PIECE, &|a, tops| {
        for (ti, top) in (a..).zip(tops.chunks_exact_mut(k)) {
            top_k(&probs[ti * e..(ti + 1) * e], k, top);
        }
    });
    s.routes.clear();
    for (ti, top) in s.top.chunks_exact(k).enumerate() {
        let p = &probs[ti * e..(ti + 1) * e];
        let norm = if cfg.norm_topk_prob { top.iter().map(|&i| p[i]).sum::<f32>() } else { 1.0 };
        s.routes.extend(top.iter().map(|&ex| (ex, ti, p[ex] / norm)));
    }
    // Counting sort by expert keeps each expert's tokens in token order.
    s.offsets.clear();
    s.offsets.resize(e + 1, 0);
    for &(ex, _, _) in &s.routes {
        s.offsets[ex + 1] += 1;
    }
    for i in 0..e {
        s.offsets[i + 1] += s.offsets[i];
    }
    s.order.clear();
    s.order.resize(s.routes.len(), (0, 0.0));
    s.fill.clear();
    s.fill.extend_from_slice(&s.offsets[..e]);
    for &(ex, tok, weight) in &s.routes {
        s.order[s.fill[ex]] = (tok, weight);
        s.fill[ex] += 1;
    }
    // Each token's k slots, in increasing slot order.
    s.token_slots.clear();
    s.token_slots.resize(t * k, 0);
    s.fill.clear();
    s.fill.resize(t, 0);
    for (slot, &(tok, _)) in s.order.iter().enumerate() {
        s.token_slots[tok * k + s.fill[tok]] = slot;
        s.fill[tok] += 1;
    }
}

/// An empty vector of products with a fresh lifetime, keeping `v`'s
/// allocation: the products of one call borrow that call's buffers, and the
/// scratch keeps only the capacity between calls (no allocation per token).
fn recycle<'a, 'b>(v: &mut Vec<Product<'a>>) -> Vec<Product<'b>> {
    v.clear();
    // Same element layout: the standard library reuses the allocation.
    std::mem::take(v).into_iter().map(|_| unreachable!("the vector is empty")).collect()
}

//! The matmul driver: activation quantization, task splitting over the
//! [`crate::pool`], and dispatch to the per-format kernels.
//!
//! Several products can run in one pool call ([`matmul_many`]): the MoE
//! layer submits every routed expert's gate and up projections (and the
//! shared expert's) together, so their common input is quantized once and
//! the threads stay busy across small matrices.
//!
//! Splitting: a task is a run of weight rows, a product cut into equal
//! tasks of at most [`DECODE_TASK_BYTES`] for one token (long streams, few
//! enough to balance) or [`PREFILL_TASK_BYTES`] for many (about a whole
//! expert matrix; the kernels block its rows to stay in L2 while every
//! token passes over them, so a prefill reads each weight from DRAM once).

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use qmoe_core::{DType, GgmlType};

use super::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
use super::{ActKind, Level};
use crate::linear::{Encoding, MatRef};
use crate::pool::SharedMut;

/// Weight bytes per task, at most, for a single token and for several: a
/// product is cut into equal tasks no larger, so no short one is left at
/// the end.
///
/// One token: long runs let the hardware prefetcher stream and pay the
/// hand-out once per run. Each task starts a new stream, and two threads
/// taking 256 KiB runs in turn read a 512 MB Q8_0 matrix 5-8% below one
/// contiguous half each (`examples/decode_threads.rs --type q8_0`, Zen 4).
/// Measured on the synthetic 35B-A3B shape (2 threads, decode tok/s, means
/// of alternating runs on a Zen 4 VM whose memory speed wanders): Q8_0 256
/// KiB 9.42, 1 MiB 9.83 (4 each); Q4_K_M 13.80 against 14.34 (4 each); in a
/// fast phase Q8_0 512 KiB 10.67, 1 MiB 10.93, 2 MiB 11.08 (2-3 each). An
/// earlier host measured 32 KiB 7.5, 64 KiB 7.8, 128 KiB 8.9, 256 KiB 9.0,
/// 512 KiB 9.0 on Q4_K_M.
const DECODE_TASK_BYTES: usize = 1 << 20;
/// Several tokens: the many-token kernels keep their own row blocks in L2
/// (`columns::unpacked`), so a task need not fit there, and 768 KiB takes a
/// whole expert matrix at Q4_K (576 KiB) as one task. `qmoe bench -p 512`
/// at 2 threads on the synthetic shape (Zen 4, prefill tok/s, 2 runs each,
/// alternating): Q4_K_M 96 KiB 68.6 / 68.9, 384 KiB 72.6 / 73.1, 768 KiB
/// 75.5 / 76.5, 1.5 MiB 74.1 / 73.1; cut evenly at 768 KiB 79.5 / 78.6
/// (1 MiB 77.5 / 76.0); bf16 96 KiB 23.3 / 25.1 against 26.0 / 28.2; Q8_0
/// and MLX 4-bit no lower. At 1 thread Q4_K_M gains 3%, so most of the gain
/// is in how two threads share the work; which cost it removes (each
/// thread lays out an input's activations once for the tasks it takes of
/// it; task ends leave the other thread idle) was not pinned down.
const PREFILL_TASK_BYTES: usize = 768 << 10;
/// From this many tokens a product runs as a many-token kernel: int8 for
/// quantized weights that have one, else row-widening f32 tiles ([`super::tile`]).
const TILE_MIN_TOKENS: usize = 4;
/// Below this many weight bytes x tokens a product runs on the calling thread.
const SERIAL_BYTES: usize = 48 << 10;

/// Activations as a kernel consumes them, for one token.
#[derive(Clone, Copy)]
pub enum ActRef<'a> {
    F32(&'a [f32]),
    Q8K(&'a [BlockQ8K]),
    Q8x32(&'a [BlockQ8x32]),
}

thread_local! {
    static EXACT: Cell<bool> = const { Cell::new(false) };
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with f32 activations for every weight format on this thread
/// (quantized weights then take the reference path: dequantise, f32 dot),
/// for comparisons with references that do not quantize activations.
pub fn with_f32_activations<R>(f: impl FnOnce() -> R) -> R {
    let before = EXACT.with(|e| e.replace(true));
    let r = f();
    EXACT.with(|e| e.set(before));
    r
}

/// The activation form the fast kernel for `enc` consumes, or `None` when
/// there is no fast kernel (the reference path runs instead).
pub fn act_kind(enc: &Encoding) -> Option<ActKind> {
    match *enc {
        Encoding::Float(DType::F32 | DType::F16 | DType::BF16) => Some(ActKind::F32),
        Encoding::Float(_) => None,
        Encoding::Fp8Block { .. } => Some(ActKind::F32),
        Encoding::Affine { bits, group_size, .. } => {
            super::affine_dot::supports_affine(bits, group_size).then_some(ActKind::Q8x32)
        }
        Encoding::Ggml(GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => Some(ActKind::F32),
        Encoding::Ggml(ty) => super::ggml_dot::act_kind(ty),
    }
}

/// `y[i] = row (rows.start + i) · x` with the fast kernel for `w`'s encoding;
/// `x` must be the form [`act_kind`] names. `acts_id` names a quantized `x`
/// for the kernels that lay it out (see [`super::ggml_dot::gemv_q8k_named`];
/// 0: unnamed).
pub fn gemv(level: Level, w: &MatRef, rows: Range<usize>, x: ActRef, y: &mut [f32], acts_id: u64) {
    debug_assert_eq!(y.len(), rows.len());
    match (w.enc, x) {
        (Encoding::Float(_), ActRef::F32(x)) => super::float_dot::gemv_float(level, w, rows, x, y),
        (Encoding::Fp8Block { .. }, ActRef::F32(x)) => super::fp8_dot::gemv_fp8(level, w, rows, x, y),
        (Encoding::Affine { .. }, ActRef::Q8x32(x)) => super::affine_dot::gemv_affine(level, w, rows, x, y),
        (Encoding::Ggml(ty), x) => {
            let rb = w.bytes.len() / w.rows.max(1);
            let bytes = &w.bytes[rows.start * rb..rows.end * rb];
            match x {
                ActRef::F32(x) => {
                    let dt = match ty {
                        GgmlType::F32 => DType::F32,
                        GgmlType::F16 => DType::F16,
                        _ => DType::BF16,
                    };
                    let m = MatRef::new(dt, rows.len(), w.cols, bytes);
                    super::float_dot::gemv_float(level, &m, 0..rows.len(), x, y)
                }
                ActRef::Q8K(x) => super::ggml_dot::gemv_q8k_named(level, ty, bytes, x, y, acts_id),
                ActRef::Q8x32(x) => super::ggml_dot::gemv_q8x32_named(level, ty, bytes, x, y, acts_id),
            }
        }
        _ => unreachable!("gemv: activation form does not match the encoding"),
    }
}

/// One product of a [`matmul_many`] call: `y[t] = W x[t]`, `x` `[T, cols]`,
/// `y` `[T, rows]`.
pub struct Product<'a> {
    pub w: MatRef<'a>,
    /// The input; may be empty when `pre` holds it.
    pub x: &'a [f32],
    pub y: &'a mut [f32],
    pub n_tokens: usize,
    /// The input already quantized by the caller, in the form
    /// [`int8_input`] names for this product (the call panics on another):
    /// the MoE quantizes a prefill's input once and gathers its blocks for
    /// the experts, instead of quantizing each gathered copy.
    pub pre: Option<Quantized<'a>>,
}

impl<'a> Product<'a> {
    /// The product of `w` and the `n_tokens` rows of `x`, into `y`.
    pub fn new(w: MatRef<'a>, x: &'a [f32], y: &'a mut [f32], n_tokens: usize) -> Self {
        Product { w, x, y, n_tokens, pre: None }
    }

    /// The product of `w` and the `n_tokens` quantized rows `x`, into `y`.
    pub fn quantized(w: MatRef<'a>, x: Quantized<'a>, y: &'a mut [f32], n_tokens: usize) -> Self {
        Product { w, x: &[], y, n_tokens, pre: Some(x) }
    }
}

/// Activations quantized for the int8 kernels, token after token.
#[derive(Clone, Copy)]
pub enum Quantized<'a> {
    Q8K(&'a [BlockQ8K]),
    Q8x32(&'a [BlockQ8x32]),
}

impl<'a> Quantized<'a> {
    /// The form.
    pub fn kind(&self) -> ActKind {
        match self {
            Quantized::Q8K(_) => ActKind::Q8K,
            Quantized::Q8x32(_) => ActKind::Q8x32,
        }
    }

    /// Rows `rows` (of `cols` values each).
    pub fn rows(&self, rows: Range<usize>, cols: usize) -> Quantized<'a> {
        match *self {
            Quantized::Q8K(b) => Quantized::Q8K(&b[rows.start * cols / 256..rows.end * cols / 256]),
            Quantized::Q8x32(b) => Quantized::Q8x32(&b[rows.start * cols / 32..rows.end * cols / 32]),
        }
    }

    /// Whether `other` is the same slice.
    fn same_as(&self, other: &Quantized) -> bool {
        match (self, other) {
            (Quantized::Q8K(a), Quantized::Q8K(b)) => std::ptr::eq(*a, *b),
            (Quantized::Q8x32(a), Quantized::Q8x32(b)) => std::ptr::eq(*a, *b),
            _ => false,
        }
    }

    /// Values covered (blocks times block size).
    fn values(&self) -> usize {
        match self {
            Quantized::Q8K(b) => b.len() * 256,
            Quantized::Q8x32(b) => b.len() * 32,
        }
    }
}

/// The activation form a product of `n_tokens` tokens on `enc` quantizes
/// its input to, or `None` when it takes f32 (float weights, no int8
/// kernel, or inside [`with_f32_activations`]).
pub fn int8_input(enc: &Encoding, n_tokens: usize) -> Option<ActKind> {
    match route(enc, n_tokens, EXACT.with(|e| e.get())) {
        Route::Gemv(k) | Route::Multi(k) if k != ActKind::F32 => Some(k),
        _ => None,
    }
}

/// Quantized activations a caller keeps between calls (grow-only).
#[derive(Default)]
pub struct QuantBuf {
    q8k: Vec<BlockQ8K>,
    q8x32: Vec<BlockQ8x32>,
}

impl QuantBuf {
    /// `x` (rows of a multiple of the block size) quantized to `kind`, on
    /// the pool; each block as [`matmul_many`] would quantize it.
    ///
    /// # Panics
    /// If `kind` is [`ActKind::F32`].
    pub fn quantize(&mut self, kind: ActKind, x: &[f32]) -> Quantized<'_> {
        match kind {
            ActKind::Q8K => {
                self.q8k.resize(x.len() / 256, BlockQ8K::default());
                quantize_on_pool(x, &mut self.q8k, 256, quantize_q8k);
                Quantized::Q8K(&self.q8k)
            }
            ActKind::Q8x32 => {
                self.q8x32.resize(x.len() / 32, BlockQ8x32::default());
                quantize_on_pool(x, &mut self.q8x32, 32, quantize_q8x32);
                Quantized::Q8x32(&self.q8x32)
            }
            ActKind::F32 => panic!("QuantBuf::quantize: f32 is not a quantized form"),
        }
    }

    /// Row `src_row(i)` of `src` as row `i`, for `i < n` (rows of `cols`
    /// values), copied on the pool.
    pub fn gather(
        &mut self,
        src: Quantized,
        cols: usize,
        n: usize,
        src_row: &(dyn Fn(usize) -> usize + Sync),
    ) -> Quantized<'_> {
        fn rows<B: Copy + Default + Send + Sync>(
            dst: &mut Vec<B>,
            src: &[B],
            per_row: usize,
            n: usize,
            src_row: &(dyn Fn(usize) -> usize + Sync),
        ) {
            dst.resize(n * per_row, B::default());
            crate::pool::for_chunk_pieces(dst, per_row, GATHER_ROWS, &|a, piece| {
                for (i, row) in (a..).zip(piece.chunks_exact_mut(per_row)) {
                    let r = src_row(i);
                    row.copy_from_slice(&src[r * per_row..(r + 1) * per_row]);
                }
            });
        }
        match src {
            Quantized::Q8K(b) => {
                rows(&mut self.q8k, b, cols / 256, n, src_row);
                Quantized::Q8K(&self.q8k)
            }
            Quantized::Q8x32(b) => {
                rows(&mut self.q8x32, b, cols / 32, n, src_row);
                Quantized::Q8x32(&self.q8x32)
            }
        }
    }
}

/// Rows a piece of [`QuantBuf::gather`] (each a few KiB of blocks).
const GATHER_ROWS: usize = 16;

/// Quantized activations of one input, reused across calls (grow-only).
#[derive(Default)]
struct Prepared {
    key: (usize, usize, Option<ActKind>),
    /// Names these contents for the kernels that keep a rearranged copy
    /// per thread across a product's row tasks (the many-token kernels, and
    /// the AVX-512 Q4_K / Q5_K / Q8_0 gemv for one token): a fresh
    /// value from [`NEXT_ACTS_ID`] at every fill, so no later contents at
    /// the same address can be taken for these.
    id: u64,
    buf: QuantBuf,
}

/// The next [`Prepared::id`] (0 is "unnamed").
static NEXT_ACTS_ID: AtomicU64 = AtomicU64::new(1);

impl Prepared {
    /// `x` quantized to `kind` (Q8K or Q8x32) under a fresh name.
    fn fill(&mut self, kind: ActKind, x: &[f32]) {
        self.id = NEXT_ACTS_ID.fetch_add(1, Ordering::Relaxed);
        self.buf.quantize(kind, x);
    }
}

/// A task's quantized activations: the call's [`Prepared`] or the caller's
/// [`Product::pre`], with their name for the kernels.
#[derive(Clone, Copy)]
struct Acts<'a> {
    q8k: &'a [BlockQ8K],
    q8x32: &'a [BlockQ8x32],
    id: u64,
}

impl<'a> Acts<'a> {
    fn from_prepared(p: &'a Prepared) -> Self {
        Acts { q8k: &p.buf.q8k, q8x32: &p.buf.q8x32, id: p.id }
    }

    fn from_pre(pre: Quantized<'a>, id: u64) -> Self {
        match pre {
            Quantized::Q8K(q8k) => Acts { q8k, q8x32: &[], id },
            Quantized::Q8x32(q8x32) => Acts { q8k: &[], q8x32, id },
        }
    }
}

/// `quant(x, out)` (blocks of `block` values, each quantized on its own),
/// in pieces on the pool for a prefill's inputs: done here alone it left
/// the other thread idle for 1.3% of a Q4_K_M prefill's samples.
fn quantize_on_pool<B: Send>(x: &[f32], out: &mut [B], block: usize, quant: fn(&[f32], &mut [B])) {
    // Blocks a piece: 8 tokens of a 2048-wide input at 256 values a block.
    const MIN_VALUES: usize = 16 << 10;
    crate::pool::for_chunk_pieces(out, 1, MIN_VALUES / block, &|a, piece| {
        quant(&x[a * block..(a + piece.len()) * block], piece);
    });
}

/// Per-thread buffers of [`matmul_many`], grow-only so that steady decoding
/// allocates nothing.
#[derive(Default)]
struct Scratch {
    prepared: Vec<Prepared>,
    plans: Vec<Plan>,
    /// Each product's output (tasks write disjoint row ranges of it).
    outs: Vec<SharedMut<f32>>,
}

/// Which kernel runs a product's rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The single-token fast kernel, once per token.
    Gemv(ActKind),
    /// Many tokens, quantized weights: each weight block unpacked once per
    /// group of tokens, int8 dot products ([`super::ggml_dot::multi`],
    /// [`super::affine_multi`]).
    Multi(ActKind),
    /// Many tokens: widen each row to f32 once, multiply four tokens at a time.
    Tile,
    /// No fast kernel: the reference path.
    Reference,
}

/// How one product runs: its tasks are `row_tasks x token_parts`, each a
/// run of rows for a run of tokens (with the last row task in `tail`
/// pieces: `row_tasks - 1 + tail` row tasks).
struct Plan {
    route: Route,
    /// Index into the prepared activations (when quantized by the call).
    prep: usize,
    /// The name of a caller-quantized input ([`Product::pre`]; else 0).
    pre_id: u64,
    rows_per_task: usize,
    row_tasks: usize,
    /// Tokens a task, and the runs of tokens (1 unless a short call is
    /// split along tokens, see [`matmul_many`]).
    tokens_per_part: usize,
    token_parts: usize,
    first_task: usize,
    /// Tasks the last row task is cut into (1: not cut; see [`tail_split`]).
    tail: usize,
}

impl Plan {
    /// Tasks of this plan.
    fn tasks(&self) -> usize {
        (self.row_tasks - 1 + self.tail) * self.token_parts
    }

    /// Rows of local row task `k` (`0..row_tasks - 1 + tail`) of a product of `rows` rows.
    fn rows_of(&self, k: usize, rows: usize) -> Range<usize> {
        let r0 = k.min(self.row_tasks - 1) * self.rows_per_task;
        if k + 1 < self.row_tasks {
            return r0..r0 + self.rows_per_task;
        }
        let piece = (rows - r0).div_ceil(self.tail);
        let start = r0 + (k + 1 - self.row_tasks) * piece;
        start..(start + piece).min(rows)
    }
}

/// Pieces the last task of a one-token call is cut into, per thread: the
/// pool hands tasks out in order, so the call ends on pieces a quarter the
/// size (at two threads) instead of on whole tasks, and the threads finish
/// together. Before, a call of an odd number of equal tasks (the MoE's
/// nine down projections: eight experts and the shared one) left one
/// thread idle for a whole task at its end.
const TAIL_PIECES_PER_THREAD: usize = 2;

/// [`TAIL_PIECES_PER_THREAD`] applied to `plan` (the call's last) of a
/// product of `rows` rows of `row_bytes` bytes: its last row task cut into
/// pieces of at least [`MIN_TASK_BYTES`].
fn tail_split(plan: &mut Plan, rows: usize, row_bytes: usize, threads: usize) {
    let last_rows = rows - (plan.row_tasks - 1) * plan.rows_per_task;
    let min_rows = MIN_TASK_BYTES.div_ceil(row_bytes.max(1)).max(1);
    let want = (threads * TAIL_PIECES_PER_THREAD).min(last_rows / min_rows).max(1);
    let piece = last_rows.div_ceil(want);
    plan.tail = last_rows.div_ceil(piece);
}

/// Fewest tokens in a run of a short call's product (see [`matmul_many`]):
/// four groups of a many-token kernel.
const MIN_PART_TOKENS: usize = 4 * TILE_MIN_TOKENS;
/// Fewest weight bytes in a task that a short call's rows are cut into.
const MIN_TASK_BYTES: usize = 16 << 10;

/// Runs every product, sharing the pool call and the activation
/// quantization of inputs that are the same slice.
pub fn matmul_many(products: &mut [Product]) {
    let exact = EXACT.with(|e| e.get());
    let level = super::level();
    let threads = crate::threads::get();
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let Scratch { prepared, plans, outs } = &mut *scratch;
        plans.clear();
        outs.clear();
        if prepared.is_empty() {
            prepared.push(Prepared::default()); // index 0 for float products
        }
        let mut n_prep = 0;
        let mut n_tasks = 0;
        let mut total_bytes = 0usize;
        for (j, p) in products.iter().enumerate() {
            assert_eq!(p.y.len(), p.n_tokens * p.w.rows, "matmul: y length");
            let route = route(&p.w.enc, p.n_tokens, exact);
            let kind = match route {
                Route::Gemv(k) | Route::Multi(k) => Some(k),
                Route::Tile | Route::Reference => None,
            };
            let mut pre_id = 0;
            if let Some(pre) = p.pre {
                assert_eq!(Some(pre.kind()), kind, "matmul: the caller quantized x to another form than the product's");
                assert_eq!(pre.values(), p.n_tokens * p.w.cols, "matmul: quantized x length");
                // One name per input: gate and up of an expert share the kernels' layout of it.
                let same = |q: &Product| q.pre.is_some_and(|o| o.same_as(&pre));
                pre_id = match products[..j].iter().zip(plans.iter()).find(|(q, _)| same(q)) {
                    Some((_, plan)) => plan.pre_id,
                    None => NEXT_ACTS_ID.fetch_add(1, Ordering::Relaxed),
                };
            } else {
                assert_eq!(p.x.len(), p.n_tokens * p.w.cols, "matmul: x length");
            }
            // Share the quantized input with an earlier product of the same slice.
            let key = (p.x.as_ptr() as usize, p.x.len(), kind);
            let prep = match kind {
                _ if p.pre.is_some() => 0,
                Some(ActKind::Q8K | ActKind::Q8x32) => match prepared[..n_prep].iter().position(|q| q.key == key) {
                    Some(i) => i,
                    None => {
                        if prepared.len() == n_prep {
                            prepared.push(Prepared::default());
                        }
                        prepared[n_prep].key = key;
                        prepared[n_prep].fill(kind.expect("quantized kind"), p.x);
                        n_prep += 1;
                        n_prep - 1
                    }
                },
                _ => 0,
            };
            let budget = if p.n_tokens == 1 { DECODE_TASK_BYTES } else { PREFILL_TASK_BYTES };
            // Equal tasks of at most the budget.
            let rows_per_task = p.w.rows.div_ceil(p.w.storage_bytes().div_ceil(budget).max(1)).max(1);
            let row_tasks = p.w.rows.div_ceil(rows_per_task);
            plans.push(Plan {
                route,
                prep,
                pre_id,
                rows_per_task,
                row_tasks,
                tokens_per_part: p.n_tokens,
                token_parts: 1,
                first_task: n_tasks,
                tail: 1,
            });
            n_tasks += row_tasks;
            total_bytes += p.w.storage_bytes() * p.n_tokens;
        }
        // A call whose rows make fewer than two tasks a thread (a router: f32
        // `[E x H]` is one task, which ran on one thread for 0.3% of a Q4_K_M
        // prefill's samples with the other idle) has each product cut `want`
        // times finer: into runs of at least MIN_PART_TOKENS tokens, or, with
        // too few tokens for two runs, into row tasks of at least
        // MIN_TASK_BYTES.
        let row_tasks = n_tasks;
        if threads > 1 && row_tasks < 2 * threads {
            let want = (2 * threads).div_ceil(row_tasks.max(1));
            n_tasks = 0;
            for (plan, p) in plans.iter_mut().zip(products.iter()) {
                let parts = want.min(p.n_tokens / MIN_PART_TOKENS);
                if parts > 1 {
                    plan.tokens_per_part = p.n_tokens.div_ceil(parts);
                    plan.token_parts = p.n_tokens.div_ceil(plan.tokens_per_part);
                } else {
                    let row_bytes = p.w.storage_bytes() / p.w.rows.max(1);
                    let min_rows = (MIN_TASK_BYTES / row_bytes.max(1)).clamp(1, plan.rows_per_task);
                    plan.rows_per_task = plan.rows_per_task.div_ceil(want).max(min_rows);
                    plan.row_tasks = p.w.rows.div_ceil(plan.rows_per_task);
                }
                plan.first_task = n_tasks;
                n_tasks += plan.row_tasks * plan.token_parts;
            }
        }
        if let (Some(plan), Some(p)) = (plans.last_mut(), products.last()) {
            if threads > 1 && p.n_tokens == 1 && p.w.rows > 0 {
                tail_split(plan, p.w.rows, p.w.storage_bytes() / p.w.rows, threads);
                n_tasks = plan.first_task + plan.tasks();
            }
        }
        outs.extend(products.iter_mut().map(|p| SharedMut::new(p.y)));
        let (prepared, plans, outs) = (&*prepared, &*plans, &*outs);
        let task = |i: usize| {
            let j = plans.partition_point(|pl| pl.first_task <= i) - 1;
            let (p, plan) = (&products[j], &plans[j]);
            let (row_task, part) = ((i - plan.first_task) / plan.token_parts, (i - plan.first_task) % plan.token_parts);
            let rows = plan.rows_of(row_task, p.w.rows);
            let t0 = part * plan.tokens_per_part;
            let tokens = t0..(t0 + plan.tokens_per_part).min(p.n_tokens);
            let acts = match p.pre {
                Some(pre) => Acts::from_pre(pre, plan.pre_id),
                None => Acts::from_prepared(&prepared[plan.prep]),
            };
            run_rows(level, p, plan, acts, outs[j], rows, tokens);
        };
        if threads <= 1 || total_bytes < SERIAL_BYTES {
            (0..n_tasks).for_each(task);
        } else {
            crate::pool::run(n_tasks, &task);
        }
    });
}

/// How a product of `n_tokens` tokens on weights `enc` runs. From
/// [`TILE_MIN_TOKENS`] tokens, quantized weights with a many-token int8
/// kernel take it and everything else the f32 tile; under
/// [`with_f32_activations`] quantized weights never see int8 activations
/// (the tile, or the reference path for one to three tokens).
fn route(enc: &Encoding, n_tokens: usize, exact: bool) -> Route {
    let kind = act_kind(enc);
    if n_tokens >= TILE_MIN_TOKENS {
        return match kind {
            Some(k @ (ActKind::Q8K | ActKind::Q8x32)) if !exact && has_multi(enc) => Route::Multi(k),
            _ => Route::Tile,
        };
    }
    match kind {
        Some(k) if !exact || k == ActKind::F32 => Route::Gemv(k),
        _ => Route::Reference,
    }
}

/// Whether a many-token int8 kernel exists for `enc`.
fn has_multi(enc: &Encoding) -> bool {
    match *enc {
        Encoding::Ggml(ty) => super::ggml_dot::multi::has_multi(ty),
        Encoding::Affine { bits, group_size, .. } => super::affine_multi::has_multi(bits, group_size),
        _ => false,
    }
}

/// One task: rows `rows` of product `p` for tokens `tokens`.
fn run_rows(
    level: Level,
    p: &Product,
    plan: &Plan,
    acts: Acts,
    out: SharedMut<f32>,
    rows: Range<usize>,
    tokens: Range<usize>,
) {
    let (n_rows, cols) = (p.w.rows, p.w.cols);
    let (t0, n) = (tokens.start, tokens.len());
    // The f32 input (empty when the caller quantized it: such products take the int8 routes).
    let x = || &p.x[t0 * cols..tokens.end * cols];
    // The part's output: row `r` of its token `t` at `t * n_rows + r`.
    let y = out.at(t0 * n_rows);
    let kind = match plan.route {
        Route::Tile => {
            // SAFETY: `y` is this product's `[T, rows]` output from token
            // `t0` on, and this task alone writes rows `rows` of tokens
            // `tokens` (see `SharedMut`).
            unsafe { super::tile::rows_many_tokens(level, &p.w, rows, x(), n, y) };
            return;
        }
        Route::Reference => {
            crate::linear::reference_rows(&p.w, x(), y, n, rows);
            return;
        }
        Route::Multi(kind) => {
            run_multi(level, p, kind, acts, out, rows, tokens);
            return;
        }
        Route::Gemv(kind) => kind,
    };
    // The input's name covers all its tokens; the kernels see one at a time.
    let acts_id = if p.n_tokens == 1 { acts.id } else { 0 };
    for t in tokens {
        // SAFETY: `t < n_tokens` and `rows` lies inside `0..n_rows`, so the
        // slice is inside this product's `[T, rows]` output; no other task
        // writes these rows of this token (see `SharedMut`).
        let y = unsafe { std::slice::from_raw_parts_mut(out.at(t * n_rows + rows.start), rows.len()) };
        let x = match kind {
            ActKind::F32 => ActRef::F32(&p.x[t * cols..(t + 1) * cols]),
            ActKind::Q8K => {
                let nb = cols / 256;
                ActRef::Q8K(&acts.q8k[t * nb..(t + 1) * nb])
            }
            ActKind::Q8x32 => {
                let nb = cols / 32;
                ActRef::Q8x32(&acts.q8x32[t * nb..(t + 1) * nb])
            }
        };
        gemv(level, &p.w, rows.clone(), x, y, acts_id);
    }
}

/// Rows `rows` of a quantized product for tokens `tokens` with the
/// many-token int8 kernel (activations prepared for all tokens).
fn run_multi(
    level: Level,
    p: &Product,
    kind: ActKind,
    acts: Acts,
    out: SharedMut<f32>,
    rows: Range<usize>,
    tokens: Range<usize>,
) {
    let (n_rows, cols, n) = (p.w.rows, p.w.cols, tokens.len());
    // The input's name covers all its tokens: a run of them is unnamed.
    let id = if n == p.n_tokens { acts.id } else { 0 };
    // SAFETY: `out` is this product's `[T, n_rows]` output; offset to the
    // task's first token and row, element `t * n_rows + i` for `t < n`,
    // `i < rows.len()` is row `rows.start + i` of token `tokens.start + t`,
    // which this task alone writes (`SharedMut`).
    let y = out.at(tokens.start * n_rows + rows.start);
    let q8k = || &acts.q8k[tokens.start * cols / 256..tokens.end * cols / 256];
    let q8x32 = || &acts.q8x32[tokens.start * cols / 32..tokens.end * cols / 32];
    match (p.w.enc, kind) {
        (Encoding::Ggml(ty), _) => {
            let rb = p.w.bytes.len() / n_rows.max(1);
            let w = &p.w.bytes[rows.start * rb..rows.end * rb];
            // SAFETY: as above; the kernels check `w` and `x` against the shapes.
            unsafe {
                match kind {
                    ActKind::Q8K => {
                        super::ggml_dot::multi::gemm_q8k_raw(level, ty, w, rows.len(), q8k(), n, y, n_rows, id)
                    }
                    _ => super::ggml_dot::multi::gemm_q8x32_raw(level, ty, w, rows.len(), q8x32(), n, y, n_rows, id),
                }
            }
        }
        // SAFETY: as above.
        _ => unsafe { super::affine_multi::gemm_affine_raw(level, &p.w, rows, q8x32(), n, y, n_rows, id) },
    }
}

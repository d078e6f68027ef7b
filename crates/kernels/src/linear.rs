//! Linear layers over weights still in their stored encoding.
//!
//! A [`MatRef`] borrows the checkpoint's bytes (row-major `[rows, cols]`,
//! i.e. HF `[out, in]`) and is widened to f32 a block of columns at a time on
//! the stack, so no call allocates and no weight is ever copied whole.
//! These are the reference versions: plain loops, f32 accumulation.
//!
//! The encoding axis lives here as a dispatch only: float rows are widened by
//! [`qmoe_core::dtype::to_f32`], quantized rows by the decoders in
//! [`crate::quant`] and [`crate::ggml`]. Every encoding goes through the same
//! block loop, so a quantized product is exactly "dequantise, then the float
//! matmul".

use qmoe_core::dtype::{to_f32, DType};
use qmoe_core::GgmlType;

pub use crate::quant::QuantError;
use crate::quant::{array_bytes, AffineRow, Fp8Row, AFFINE_BITS};

/// Columns widened per step; fits comfortably on the stack. A multiple of 32,
/// so every affine block starts on a uint32 word boundary whatever the bits,
/// and of 256, so every step is a whole number of ggml blocks (1, 32 or 256
/// values) whatever the type.
const BLOCK: usize = 256;

/// How a matrix's bytes encode its values.
#[derive(Clone, Copy, Debug)]
pub enum Encoding<'a> {
    /// Plain F32 / F16 / BF16 elements.
    Float(DType),
    /// float8_e4m3fn codes times a per-block scale (HF FP8 releases):
    /// `w[r][c] = f32(code) * scales[r / block_rows][c / block_cols]`,
    /// `scales` `[ceil(rows / block_rows), ceil(cols / block_cols)]`.
    Fp8Block { scales: &'a [u8], scale_dtype: DType, block_rows: usize, block_cols: usize },
    /// MLX affine: packed uint32 words `[rows, cols * bits / 32]`,
    /// `w[r][c] = scales[r][c / G] * q + biases[r][c / G]`,
    /// `scales`, `biases` `[rows, cols / G]`.
    Affine { bits: u32, group_size: usize, scales: &'a [u8], biases: &'a [u8], scale_dtype: DType },
    /// A ggml tensor (GGUF): each row `cols / block_size` blocks of the type,
    /// scales inside the blocks.
    Ggml(GgmlType),
}

/// A borrowed weight matrix `[rows, cols]` in any supported encoding.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub enc: Encoding<'a>,
    pub rows: usize,
    pub cols: usize,
    /// The weight tensor's bytes (float elements, e4m3 codes, packed words or
    /// ggml blocks).
    pub bytes: &'a [u8],
}

/// One row, ready to be widened block by block.
enum RowView<'a> {
    Float(DType, &'a [u8]),
    Fp8(Fp8Row<'a>),
    Affine(AffineRow<'a>),
    Ggml(GgmlType, &'a [u8]),
}

impl RowView<'_> {
    /// Widens columns `c0 .. c0 + out.len()` (`c0` a multiple of [`BLOCK`]).
    #[inline]
    fn decode(&self, c0: usize, out: &mut [f32]) {
        match self {
            RowView::Float(dt, row) => {
                let es = dt.size();
                to_f32(*dt, &row[c0 * es..(c0 + out.len()) * es], out);
            }
            RowView::Fp8(row) => row.decode(c0, out),
            RowView::Affine(row) => row.decode(c0, out),
            RowView::Ggml(ty, row) => {
                // `c0` and `out.len()` are whole blocks: BLOCK and `cols`
                // are multiples of every block size.
                let (bs, ts) = (ty.block_size(), ty.type_size());
                let b0 = c0 / bs * ts;
                crate::ggml::decode_blocks(*ty, &row[b0..b0 + out.len() / bs * ts], out);
            }
        }
    }
}

/// Checks that `got` bytes hold a `[rows, cols]` array of `elem`.
fn check_bytes(what: &'static str, rows: usize, cols: usize, elem: DType, got: usize) -> Result<(), QuantError> {
    let expected = array_bytes(rows, cols, elem.size()).ok_or(QuantError::TooLarge { rows, cols })?;
    if expected != got {
        return Err(QuantError::ByteCount { what, shape: [rows, cols], elem: elem.name(), expected, got });
    }
    Ok(())
}

impl<'a> MatRef<'a> {
    /// Wraps float bytes, checking the byte count (callers validate shapes
    /// first, so a mismatch here is a loader bug, not bad input).
    pub fn new(dtype: DType, rows: usize, cols: usize, bytes: &'a [u8]) -> Self {
        assert!(dtype.is_float(), "MatRef: {dtype} is not a float type");
        assert_eq!(bytes.len(), rows * cols * dtype.size(), "MatRef: byte count");
        MatRef { enc: Encoding::Float(dtype), rows, cols, bytes }
    }

    /// Wraps an FP8 E4M3 matrix `bytes` `[rows, cols]` with block scales
    /// `scales` `[ceil(rows / block_rows), ceil(cols / block_cols)]` of
    /// `scale_dtype` (F32, F16 or BF16). Edge blocks may be partial.
    pub fn fp8(
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
        scales: &'a [u8],
        scale_dtype: DType,
        block_rows: usize,
        block_cols: usize,
    ) -> Result<Self, QuantError> {
        if !scale_dtype.is_float() {
            return Err(QuantError::ScaleDType(scale_dtype));
        }
        if block_rows == 0 || block_cols == 0 {
            return Err(QuantError::BlockSize { block_rows, block_cols });
        }
        check_bytes("fp8 weight", rows, cols, DType::F8E4M3, bytes.len())?;
        let grid = [rows.div_ceil(block_rows), cols.div_ceil(block_cols)];
        check_bytes("fp8 scales", grid[0], grid[1], scale_dtype, scales.len())?;
        let enc = Encoding::Fp8Block { scales, scale_dtype, block_rows, block_cols };
        Ok(MatRef { enc, rows, cols, bytes })
    }

    /// Wraps an MLX affine matrix: `bytes` packed uint32 words
    /// `[rows, cols * bits / 32]`, `scales` and `biases` `[rows, cols / group_size]`
    /// of `scale_dtype` (F32, F16 or BF16).
    #[allow(clippy::too_many_arguments)] // mirrors the tensors a checkpoint stores
    pub fn affine(
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
        bits: u32,
        group_size: usize,
        scales: &'a [u8],
        biases: &'a [u8],
        scale_dtype: DType,
    ) -> Result<Self, QuantError> {
        if !AFFINE_BITS.contains(&bits) {
            return Err(QuantError::Bits(bits));
        }
        if !scale_dtype.is_float() {
            return Err(QuantError::ScaleDType(scale_dtype));
        }
        if group_size == 0 || !cols.is_multiple_of(group_size) {
            return Err(QuantError::GroupSize { group_size, cols });
        }
        let row_bits = cols.checked_mul(bits as usize).ok_or(QuantError::TooLarge { rows, cols })?;
        if row_bits % 32 != 0 {
            return Err(QuantError::RowWords { cols, bits });
        }
        check_bytes("affine weight", rows, row_bits / 32, DType::U32, bytes.len())?;
        let groups = cols / group_size;
        check_bytes("affine scales", rows, groups, scale_dtype, scales.len())?;
        check_bytes("affine biases", rows, groups, scale_dtype, biases.len())?;
        let enc = Encoding::Affine { bits, group_size, scales, biases, scale_dtype };
        Ok(MatRef { enc, rows, cols, bytes })
    }

    /// Wraps a ggml tensor `[rows, cols]` of `ty` (GGUF order: `cols` is
    /// `ne[0]`, the contiguous axis): `cols` must be a whole number of
    /// blocks and `bytes` exactly `rows * ty.row_bytes(cols)`.
    pub fn ggml(ty: GgmlType, rows: usize, cols: usize, bytes: &'a [u8]) -> Result<Self, QuantError> {
        let block_size = ty.block_size();
        if !cols.is_multiple_of(block_size) {
            return Err(QuantError::GgmlBlock { ty, block_size, cols });
        }
        let blocks = cols / block_size;
        let expected = array_bytes(rows, blocks, ty.type_size()).ok_or(QuantError::TooLarge { rows, cols })?;
        if expected != bytes.len() {
            let got = bytes.len();
            return Err(QuantError::ByteCount {
                what: "ggml weight",
                shape: [rows, cols],
                elem: ty.name(),
                expected,
                got,
            });
        }
        Ok(MatRef { enc: Encoding::Ggml(ty), rows, cols, bytes })
    }

    /// Bytes this matrix occupies in the checkpoint: weight, scales and biases.
    pub fn storage_bytes(&self) -> usize {
        self.bytes.len()
            + match self.enc {
                Encoding::Float(_) | Encoding::Ggml(_) => 0,
                Encoding::Fp8Block { scales, .. } => scales.len(),
                Encoding::Affine { scales, biases, .. } => scales.len() + biases.len(),
            }
    }

    /// Row `r`'s slices of every tensor of the encoding.
    fn row_view(&self, r: usize) -> RowView<'a> {
        match self.enc {
            Encoding::Float(dt) => {
                let w = self.cols * dt.size();
                RowView::Float(dt, &self.bytes[r * w..(r + 1) * w])
            }
            Encoding::Fp8Block { scales, scale_dtype, block_rows, block_cols } => {
                // Scale row of this block row: `[ceil(cols / block_cols)]`.
                let sw = self.cols.div_ceil(block_cols) * scale_dtype.size();
                let sr = r / block_rows;
                RowView::Fp8(Fp8Row {
                    codes: &self.bytes[r * self.cols..(r + 1) * self.cols],
                    scales: &scales[sr * sw..(sr + 1) * sw],
                    scale_dtype,
                    block_cols,
                })
            }
            Encoding::Affine { bits, group_size, scales, biases, scale_dtype } => {
                let ww = self.cols * bits as usize / 8;
                let sw = self.cols / group_size * scale_dtype.size();
                RowView::Affine(AffineRow {
                    words: &self.bytes[r * ww..(r + 1) * ww],
                    scales: &scales[r * sw..(r + 1) * sw],
                    biases: &biases[r * sw..(r + 1) * sw],
                    scale_dtype,
                    bits,
                    group_size,
                })
            }
            Encoding::Ggml(ty) => {
                let w = self.cols / ty.block_size() * ty.type_size();
                RowView::Ggml(ty, &self.bytes[r * w..(r + 1) * w])
            }
        }
    }

    /// Widen row `r` into `out` (`[cols]`): embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "row_to_f32: out length");
        self.row_view(r).decode(0, out);
    }
}

/// `y = W x`: `x` `[cols]`, `y` `[rows]`.
pub fn matvec(w: &MatRef, x: &[f32], y: &mut [f32]) {
    matmul(w, x, y, 1);
}

/// `y[t] = W x[t]` for `n_tokens` rows: `x` `[T, cols]`, `y` `[T, rows]`.
///
/// Runs the fast kernel for the encoding on the worker pool (see
/// [`crate::simd::gemm`]); quantized weights then see int8-quantized
/// activations. Encodings without a fast kernel take the reference path.
pub fn matmul(w: &MatRef, x: &[f32], y: &mut [f32], n_tokens: usize) {
    crate::simd::gemm::matmul_many(&mut [crate::simd::gemm::Product::new(*w, x, y, n_tokens)]);
}

/// The reference product on the calling thread: every weight widened to f32
/// exactly, f32 activations, plain dot products. The twin the fast kernels
/// are tested against.
pub fn reference_matmul(w: &MatRef, x: &[f32], y: &mut [f32], n_tokens: usize) {
    assert_eq!(x.len(), n_tokens * w.cols, "matmul: x length");
    assert_eq!(y.len(), n_tokens * w.rows, "matmul: y length");
    reference_rows(w, x, y.as_mut_ptr(), n_tokens, 0..w.rows);
}

/// Reference rows `rows` of `y = W x` for every token, into `y` (`[T, rows]`,
/// a raw pointer so that threads can fill disjoint row ranges).
///
/// Each weight block is widened once and applied to every token, so a
/// prefill reads the weights once however many tokens it carries.
pub(crate) fn reference_rows(w: &MatRef, x: &[f32], y: *mut f32, n_tokens: usize, rows: std::ops::Range<usize>) {
    assert!(rows.end <= w.rows && x.len() == n_tokens * w.cols);
    let mut buf = [0.0f32; BLOCK];
    let at = |t: usize, r: usize| {
        // SAFETY: t < n_tokens and r < w.rows, so the index is inside the
        // caller's `[T, rows]` output; callers give threads disjoint rows.
        unsafe { &mut *y.add(t * w.rows + r) }
    };
    for r in rows {
        let row = w.row_view(r);
        for t in 0..n_tokens {
            *at(t, r) = 0.0;
        }
        let mut c0 = 0;
        while c0 < w.cols {
            let n = BLOCK.min(w.cols - c0);
            let wb = &mut buf[..n];
            row.decode(c0, wb);
            for t in 0..n_tokens {
                let xs = &x[t * w.cols + c0..t * w.cols + c0 + n];
                *at(t, r) += dot(wb, xs);
            }
            c0 += n;
        }
    }
}

/// Dot product with four independent partial sums (keeps the reference fast
/// enough for tests without changing accuracy meaningfully).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let (ac, ar) = a.split_at(a.len() / 4 * 4);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(4).zip(bc.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matmul_matches_f64_for_each_dtype_and_odd_sizes() {
        let mut s = 7u64;
        for &(rows, cols, t) in &[(1, 1, 1), (5, 300, 3), (17, 513, 2), (3, 7, 4)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let x: Vec<f32> = (0..t * cols).map(|_| lcg(&mut s)).collect();
            let encodings: [(DType, Vec<u8>, Vec<f32>); 3] = [
                (DType::F32, w.iter().flat_map(|v| v.to_le_bytes()).collect(), w.clone()),
                (
                    DType::F16,
                    w.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                    w.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
                ),
                (
                    DType::BF16,
                    w.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
                    w.iter().map(|v| bf16::from_f32(*v).to_f32()).collect(),
                ),
            ];
            for (dt, bytes, wq) in encodings.iter() {
                let m = MatRef::new(*dt, rows, cols, bytes);
                let mut y = vec![0.0; t * rows];
                matmul(&m, &x, &mut y, t);
                for tt in 0..t {
                    for r in 0..rows {
                        let want: f64 = (0..cols).map(|c| wq[r * cols + c] as f64 * x[tt * cols + c] as f64).sum();
                        let got = y[tt * rows + r] as f64;
                        assert!((got - want).abs() < 1e-4, "{dt} {rows}x{cols} t{tt} r{r}: {got} vs {want}");
                    }
                }
                // One token takes the gemv kernel, several the tile: same
                // values up to summation order.
                let mut y1 = vec![0.0; rows];
                matvec(&m, &x[..cols], &mut y1);
                for (a, b) in y1.iter().zip(&y[..rows]) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{dt} {rows}x{cols}: matvec {a} vs matmul {b}");
                }
            }
        }
    }
}

#[cfg(test)]
mod thread_tests {
    use super::*;

    #[test]
    fn threaded_matmul_equals_single_thread() {
        let (rows, cols, t) = (1031, 1100, 2);
        let w: Vec<u8> =
            (0..rows * cols).flat_map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes()).collect();
        let x: Vec<f32> = (0..t * cols).map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5).collect();
        let m = MatRef::new(DType::F32, rows, cols, &w);
        let mut y1 = vec![0.0; t * rows];
        let mut y4 = vec![0.0; t * rows];
        crate::threads::set(1);
        matmul(&m, &x, &mut y1, t);
        crate::threads::set(4);
        matmul(&m, &x, &mut y4, t);
        crate::threads::set(0);
        assert_eq!(y1, y4);
    }
}

//! Reading typed tensors out of a checkpoint, one primitive per kind.
//!
//! Each primitive checks name, dtype, shape and quantization against the
//! config and either returns the typed value or records a [`Problem`] and
//! returns `None`, so the caller can go on and the gate reports everything.

use std::collections::BTreeMap;

use qmoe_core::DType;
use qmoe_formats::{Checkpoint, TensorInfo};
use qmoe_kernels::linear::MatRef;

use super::gate::Problem;
use crate::quant::{AffineParams, ModuleQuant, QuantScheme};
use crate::weights::{Mat, Storage};

/// What a tensor is for, for the byte accounting in `inspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Embedding,
    Head,
    Attention,
    DeltaNet,
    Experts,
    SharedExpert,
    Router,
    DenseMlp,
    Norms,
    /// The MTP draft head (all of its tensors).
    Mtp,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Embedding => "embeddings",
            Category::Head => "lm head",
            Category::Attention => "attention",
            Category::DeltaNet => "gated deltanet",
            Category::Experts => "routed experts",
            Category::SharedExpert => "shared expert",
            Category::Router => "router",
            Category::DenseMlp => "dense mlp",
            Category::Norms => "norms",
            Category::Mtp => "mtp head",
        }
    }
}

/// One tensor the model uses, as `inspect` reports it.
#[derive(Clone, Debug)]
pub struct TensorUse {
    pub category: Category,
    /// `F32`, `BF16`, `FP8 E4M3, 128x128 blocks, ...`, `MLX affine 4-bit, group 64`.
    pub storage: String,
    /// Bytes including scales / biases.
    pub bytes: usize,
}

pub struct Source<'a> {
    pub ckpt: &'a Checkpoint,
    pub prefix: &'static str,
    pub scheme: QuantScheme,
    /// Every consumed tensor name (weights and their scales).
    pub used: BTreeMap<String, Option<TensorUse>>,
    pub problems: Vec<Problem>,
}

impl<'a> Source<'a> {
    pub fn full(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    pub fn has(&self, rel: &str) -> bool {
        self.ckpt.contains(&self.full(rel))
    }

    fn take(&mut self, name: &str, what: &str) -> Option<&'a TensorInfo> {
        match self.ckpt.get(name) {
            Some(t) => {
                self.used.entry(name.to_string()).or_insert(None);
                Some(t)
            }
            None => {
                self.problems.push(Problem::Missing { name: name.to_string(), what: what.to_string() });
                None
            }
        }
    }

    fn shape_ok(&mut self, t: &TensorInfo, expected: &[usize]) -> bool {
        if t.shape == expected {
            return true;
        }
        self.problems.push(Problem::Shape {
            name: t.name.clone(),
            file: t.file.to_path_buf(),
            expected: expected.to_vec(),
            found: t.shape.clone(),
        });
        false
    }

    fn invalid(&mut self, name: &str, reason: String) {
        self.problems.push(Problem::Invalid { name: name.to_string(), reason });
    }

    fn record(&mut self, name: &str, m: &Mat, category: Category) {
        self.used.insert(name.to_string(), Some(TensorUse { category, storage: m.describe(), bytes: m.bytes() }));
    }

    /// A 2-D linear weight `[rows, cols]` at `rel` (relative to the trunk).
    pub fn linear(&mut self, rel: &str, rows: usize, cols: usize, cat: Category) -> Option<Mat> {
        let name = self.full(rel);
        self.linear_abs(&name, rows, cols, cat)
    }

    /// A 2-D linear weight by its full name (the LM head lives outside the trunk).
    pub fn linear_abs(&mut self, name: &str, rows: usize, cols: usize, cat: Category) -> Option<Mat> {
        self.matrix(name, &[], rows, cols, cat)
    }

    /// A stack `[n, rows, cols]` at `rel`, returned as one `(n*rows) x cols`
    /// matrix (split per expert with [`Mat::rows`]).
    pub fn stacked(&mut self, rel: &str, n: usize, rows: usize, cols: usize, cat: Category) -> Option<Mat> {
        let name = self.full(rel);
        self.matrix(&name, &[n], rows, cols, cat)
    }

    /// Float, FP8 or MLX affine, decided by the tensor's siblings and
    /// checked against the config.
    fn matrix(&mut self, name: &str, lead: &[usize], rows: usize, cols: usize, cat: Category) -> Option<Mat> {
        let what = cat.name();
        let t = self.take(name, what)?;
        let module = name.strip_suffix(".weight").unwrap_or(name).to_string();
        let n: usize = lead.iter().product::<usize>().max(1);
        let m = if self.ckpt.contains(&format!("{module}.scales")) {
            self.affine(t, &module, lead, rows, cols)?
        } else if self.ckpt.contains(&format!("{module}.weight_scale_inv")) || t.dtype == DType::F8E4M3 {
            if !lead.is_empty() {
                self.invalid(
                    name,
                    "FP8 expert stacks are not supported (FP8 releases store experts one by one)".into(),
                );
                return None;
            }
            self.fp8(t, &module, rows, cols)?
        } else {
            let shape: Vec<usize> = lead.iter().copied().chain([rows, cols]).collect();
            if !self.shape_ok(t, &shape) {
                return None;
            }
            if !t.dtype.is_float() {
                let hint = if t.dtype == DType::U32 { " (packed quantized weight without `.scales`?)" } else { "" };
                self.invalid(name, format!("stored as {}, not a float type{hint}", t.dtype));
                return None;
            }
            if let ModuleQuant::Affine(p) = self.scheme.module(&module) {
                if self.is_mlx_explicit(&module) {
                    self.invalid(
                        name,
                        format!(
                            "the config quantizes it ({}-bit, group {}) but it is stored as {}",
                            p.bits, p.group, t.dtype
                        ),
                    );
                    return None;
                }
            }
            Mat { rows: n * rows, cols, data: t.data.clone(), storage: Storage::Float(t.dtype) }
        };
        self.record(name, &m, cat);
        Some(m)
    }

    /// Only a per-path entry is a firm statement: mlx-lm leaves modules whose
    /// input size is not a multiple of the group in float without writing an
    /// entry, so the global setting does not contradict a float tensor.
    fn is_mlx_explicit(&self, module: &str) -> bool {
        matches!(&self.scheme, QuantScheme::Mlx { overrides, .. } if overrides.iter().any(|(k, _)| k == module))
    }

    fn affine(&mut self, t: &'a TensorInfo, module: &str, lead: &[usize], rows: usize, cols: usize) -> Option<Mat> {
        let name = t.name.clone();
        let scales = self.take(&format!("{module}.scales"), "MLX affine scales")?;
        let biases = self.take(&format!("{module}.biases"), "MLX affine biases")?;
        if t.dtype != DType::U32 {
            self.invalid(&name, format!("has `.scales` but is stored as {}, not packed U32", t.dtype));
            return None;
        }
        let (Some(&packed), Some(&groups)) = (t.shape.last(), scales.shape.last()) else {
            self.invalid(&name, "packed weight or scales have no dimensions".into());
            return None;
        };
        // Parameters the shapes imply (what mlx-lm infers for unlisted paths).
        if groups == 0 || !cols.is_multiple_of(groups) || (packed * 32) % cols != 0 {
            self.invalid(
                &name,
                format!(
                    "packed shape {:?} with scales {:?} fits no bit width / group size for {cols} inputs",
                    t.shape, scales.shape
                ),
            );
            return None;
        }
        let shapes = AffineParams { bits: (packed * 32 / cols) as u32, group: cols / groups };
        let params = match self.scheme.module(module) {
            ModuleQuant::Affine(p) if p != shapes => {
                self.invalid(
                    &name,
                    format!(
                        "the config says {}-bit group {} but the stored shapes mean {}-bit group {} (weight {:?}, scales {:?})",
                        p.bits, p.group, shapes.bits, shapes.group, t.shape, scales.shape
                    ),
                );
                return None;
            }
            ModuleQuant::Float if self.is_mlx_explicit(module) => {
                self.invalid(&name, "the config marks it not quantized but it is stored packed with scales".into());
                return None;
            }
            _ => shapes,
        };
        let w_shape: Vec<usize> = lead.iter().copied().chain([rows, packed]).collect();
        let s_shape: Vec<usize> = lead.iter().copied().chain([rows, groups]).collect();
        let ok = self.shape_ok(t, &w_shape) & self.shape_ok(scales, &s_shape) & self.shape_ok(biases, &s_shape);
        if !ok {
            return None;
        }
        if !scales.dtype.is_float() || scales.dtype != biases.dtype {
            self.invalid(
                &name,
                format!("scales ({}) and biases ({}) must share one float type", scales.dtype, biases.dtype),
            );
            return None;
        }
        let n: usize = lead.iter().product::<usize>().max(1);
        let storage = Storage::Affine {
            bits: params.bits,
            group: params.group,
            scales: scales.data.clone(),
            biases: biases.data.clone(),
            scale_dtype: scales.dtype,
        };
        let m = Mat { rows: n * rows, cols, data: t.data.clone(), storage };
        self.validated(&name, m)
    }

    fn fp8(&mut self, t: &'a TensorInfo, module: &str, rows: usize, cols: usize) -> Option<Mat> {
        let name = t.name.clone();
        let QuantScheme::Fp8 { block, .. } = self.scheme.clone() else {
            self.invalid(
                &name,
                "FP8 weight (or `weight_scale_inv`) but the config has no fp8 quantization_config".into(),
            );
            return None;
        };
        if self.scheme.module(module) == ModuleQuant::Float {
            self.invalid(&name, "listed in modules_to_not_convert but stored as FP8".into());
            return None;
        }
        let scale = self.take(&format!("{module}.weight_scale_inv"), "the FP8 block scales")?;
        if t.dtype != DType::F8E4M3 {
            self.invalid(&name, format!("has `weight_scale_inv` but is stored as {}, not F8_E4M3", t.dtype));
            return None;
        }
        let grid = [rows.div_ceil(block[0]), cols.div_ceil(block[1])];
        if !(self.shape_ok(t, &[rows, cols]) & self.shape_ok(scale, &grid)) {
            return None;
        }
        if !scale.dtype.is_float() {
            self.invalid(&scale.name.clone(), format!("scales stored as {}, not a float type", scale.dtype));
            return None;
        }
        let storage = Storage::Fp8 { scales: scale.data.clone(), scale_dtype: scale.dtype, block };
        let m = Mat { rows, cols, data: t.data.clone(), storage };
        self.validated(&name, m)
    }

    /// Final length check by the kernel's own constructor.
    fn validated(&mut self, name: &str, m: Mat) -> Option<Mat> {
        let check = match &m.storage {
            Storage::Float(_) | Storage::Ggml(_) => Ok(()),
            Storage::Fp8 { scales, scale_dtype, block } => {
                MatRef::fp8(m.rows, m.cols, m.data.bytes(), scales.bytes(), *scale_dtype, block[0], block[1])
                    .map(|_| ())
            }
            Storage::Affine { bits, group, scales, biases, scale_dtype } => MatRef::affine(
                m.rows,
                m.cols,
                m.data.bytes(),
                *bits,
                *group,
                scales.bytes(),
                biases.bytes(),
                *scale_dtype,
            )
            .map(|_| ()),
        };
        match check {
            Ok(()) => Some(m),
            Err(e) => {
                self.invalid(name, e.to_string());
                None
            }
        }
    }

    /// A 1-D float tensor of `n` values, widened to f32.
    pub fn vector(&mut self, rel: &str, n: usize, cat: Category) -> Option<Vec<f32>> {
        let name = self.full(rel);
        let t = self.take(&name, cat.name())?;
        if !self.shape_ok(t, &[n]) {
            return None;
        }
        if !t.dtype.is_float() {
            self.invalid(&name, format!("stored as {}, not a float type", t.dtype));
            return None;
        }
        self.used.insert(name, Some(TensorUse { category: cat, storage: t.dtype.name().into(), bytes: t.byte_len() }));
        Some(qmoe_core::dtype::to_f32_vec(t.dtype, t.data.bytes()))
    }

    /// The GDN conv taps as f32 `[C, K]`, from HF `[C,1,K]` or MLX `[C,K,1]`
    /// (the same values in the same order).
    pub fn conv(&mut self, rel: &str, c: usize, k: usize) -> Option<Vec<f32>> {
        let name = self.full(rel);
        let t = self.take(&name, "the GDN causal conv")?;
        if t.shape != [c, 1, k] && t.shape != [c, k, 1] {
            self.shape_ok(t, &[c, 1, k]);
            return None;
        }
        if !t.dtype.is_float() {
            self.invalid(&name, format!("stored as {}, not a float type", t.dtype));
            return None;
        }
        self.used.insert(
            name,
            Some(TensorUse { category: Category::DeltaNet, storage: t.dtype.name().into(), bytes: t.byte_len() }),
        );
        Some(qmoe_core::dtype::to_f32_vec(t.dtype, t.data.bytes()))
    }
}

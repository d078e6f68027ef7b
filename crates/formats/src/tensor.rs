//! Borrowed tensor bytes: a cheap handle into a memory map.
//!
//! Invariant: `start + len <= mmap.len()` for every `TensorData`; every
//! constructor checks it, so `bytes()` never fails. Cloning a handle clones an
//! `Arc`, never tensor bytes; the mapping lives as long as its last handle.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};
use qmoe_core::DType;

use crate::error::{FormatError, Result};

/// A byte range of a read-only memory map (file-backed, or anonymous for
/// tensors built in memory).
#[derive(Clone)]
pub struct TensorData {
    mmap: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl TensorData {
    /// The whole of `mmap`.
    pub fn whole(mmap: Arc<Mmap>) -> TensorData {
        let len = mmap.len();
        TensorData { mmap, start: 0, len }
    }

    /// `len` bytes of `mmap` from `start`, bounds-checked.
    pub fn new(mmap: Arc<Mmap>, start: usize, len: usize) -> Result<TensorData> {
        match start.checked_add(len) {
            Some(end) if end <= mmap.len() => Ok(TensorData { mmap, start, len }),
            _ => Err(FormatError::SliceOutOfRange { offset: start, len, available: mmap.len() }),
        }
    }

    /// Copy `bytes` into a fresh anonymous read-only mapping. For tensors that
    /// are built rather than read (tests, repacked layouts); loading a checkpoint
    /// never goes through here.
    pub fn from_bytes(bytes: &[u8]) -> Result<TensorData> {
        let mut anon =
            MmapMut::map_anon(bytes.len()).map_err(|source| FormatError::AnonMap { len: bytes.len(), source })?;
        anon.copy_from_slice(bytes);
        let mmap = anon.make_read_only().map_err(|source| FormatError::AnonMap { len: bytes.len(), source })?;
        Ok(TensorData::whole(Arc::new(mmap)))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.start..self.start + self.len]
    }

    /// A sub-range `[offset, offset + len)` of this view, sharing the mapping.
    pub fn slice(&self, offset: usize, len: usize) -> Result<TensorData> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(TensorData { mmap: self.mmap.clone(), start: self.start + offset, len }),
            _ => Err(FormatError::SliceOutOfRange { offset, len, available: self.len }),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of this view inside its mapping (for a file: from the file start).
    pub fn start(&self) -> usize {
        self.start
    }

    /// Whether two views share one mapping (i.e. come from the same file).
    pub fn same_mapping(&self, other: &TensorData) -> bool {
        Arc::ptr_eq(&self.mmap, &other.mmap)
    }
}

impl fmt::Debug for TensorData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorData {{ start: {}, len: {} }}", self.start, self.len)
    }
}

/// One tensor of a checkpoint: what the header says plus its bytes.
///
/// Invariant (checked when the header is read): `data.len() == numel() * dtype.size()`,
/// and `numel()` does not overflow.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
    /// The file the bytes come from (for error messages).
    pub file: Arc<Path>,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar of shape `[]`).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Widen a float tensor (F32/F16/BF16) to a new f32 vector. Meant for small
    /// tensors (norms, `A_log`, `dt_bias`); big weights stay in their stored form.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if !self.dtype.is_float() {
            return Err(FormatError::NotFloat {
                path: self.file.to_path_buf(),
                tensor: self.name.clone(),
                dtype: self.dtype,
            });
        }
        Ok(qmoe_core::dtype::to_f32_vec(self.dtype, self.data.bytes()))
    }
}

//! Helpers for the GGUF tests: a byte-level file builder that is independent
//! of `GgufWriter` (so reader and writer are not only checked against each
//! other), parsing from memory, and a self-cleaning temp directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use memmap2::MmapMut;
use qmoe_formats::{FormatError, GgufArray, GgufFile, GgufValue};

/// Name used for in-memory files in messages.
pub const PATH: &str = "mem.gguf";

/// Parse `bytes` as a GGUF file named [`PATH`].
pub fn parse(bytes: &[u8]) -> Result<GgufFile, FormatError> {
    if bytes.is_empty() {
        // An anonymous mapping cannot be empty: go through a real empty file.
        let dir = TempDir::new("empty");
        let p = dir.write(PATH, bytes);
        return GgufFile::open(&p);
    }
    let mut anon = MmapMut::map_anon(bytes.len()).unwrap();
    anon.copy_from_slice(bytes);
    GgufFile::from_mmap(Path::new(PATH), Arc::new(anon.make_read_only().unwrap()))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("qmoe-gguf-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GGUF bytes written by hand, field by field.
#[derive(Default)]
pub struct Raw {
    pub buf: Vec<u8>,
}

impl Raw {
    /// Magic, version, counts.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.buf.extend_from_slice(b"GGUF");
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A key, its type id and its value.
    pub fn kv(&mut self, key: &str, v: &GgufValue) -> &mut Self {
        self.str(key).u32(v.value_type().id());
        self.value(v)
    }
    pub fn value(&mut self, v: &GgufValue) -> &mut Self {
        match v {
            GgufValue::U8(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::I8(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::U16(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::I16(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::U32(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::I32(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::F32(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::Bool(x) => self.u8(*x as u8),
            GgufValue::String(s) => self.str(s),
            GgufValue::Array(a) => self.array(a),
            GgufValue::U64(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::I64(x) => self.bytes(&x.to_le_bytes()),
            GgufValue::F64(x) => self.bytes(&x.to_le_bytes()),
        }
    }
    pub fn array(&mut self, a: &GgufArray) -> &mut Self {
        self.u32(a.elem_type().id()).u64(a.len() as u64);
        macro_rules! each {
            ($v:expr) => {
                for x in $v {
                    self.bytes(&x.to_le_bytes());
                }
            };
        }
        match a {
            GgufArray::U8(v) => each!(v),
            GgufArray::I8(v) => each!(v),
            GgufArray::U16(v) => each!(v),
            GgufArray::I16(v) => each!(v),
            GgufArray::U32(v) => each!(v),
            GgufArray::I32(v) => each!(v),
            GgufArray::F32(v) => each!(v),
            GgufArray::U64(v) => each!(v),
            GgufArray::I64(v) => each!(v),
            GgufArray::F64(v) => each!(v),
            GgufArray::Bool(v) => each!(v.iter().map(|&b| b as u8)),
            GgufArray::String(v) => {
                for x in v {
                    self.str(x);
                }
            }
            GgufArray::Array(v) => {
                for x in v {
                    self.array(x);
                }
            }
        }
        self
    }
    /// One tensor info.
    pub fn tensor_info(&mut self, name: &str, ne: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(type_id).u64(offset)
    }
    /// Zero bytes up to a multiple of `align`.
    pub fn pad(&mut self, align: usize) -> &mut Self {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
        self
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
}

/// A small valid file description, for building by hand.
#[derive(Clone, Debug)]
pub struct Spec {
    pub version: u32,
    pub alignment: Option<u32>,
    pub kvs: Vec<(String, GgufValue)>,
    /// name, ggml type id, ne; laid out back to back in this order.
    pub tensors: Vec<(String, u32, Vec<u64>)>,
}

/// `(block_size, type_size)` of the type ids the specs use.
pub fn geometry(type_id: u32) -> (u64, u64) {
    let info = qmoe_formats::gguf::ggml_type_info(type_id).expect("spec uses known types");
    (info.block_size, info.type_size)
}

pub fn byte_len(type_id: u32, ne: &[u64]) -> u64 {
    let (b, t) = geometry(type_id);
    ne[0] / b * t * ne[1..].iter().product::<u64>()
}

/// Build `spec` into bytes: data section aligned, each tensor aligned, no
/// padding after the last tensor. Tensor bytes are a counter pattern.
pub fn build(spec: &Spec) -> Vec<u8> {
    // Invalid alignments (for tests of their refusal) lay out as the default.
    let align = spec.alignment.filter(|a| a.is_power_of_two()).unwrap_or(32) as u64;
    let n_kv = spec.kvs.len() + usize::from(spec.alignment.is_some());
    let mut r = Raw::header(spec.version, spec.tensors.len() as u64, n_kv as u64);
    if let Some(a) = spec.alignment {
        r.kv("general.alignment", &GgufValue::U32(a));
    }
    for (k, v) in &spec.kvs {
        r.kv(k, v);
    }
    let mut offset = 0u64;
    let mut layout = Vec::new();
    for (name, ty, ne) in &spec.tensors {
        offset = offset.div_ceil(align) * align;
        r.tensor_info(name, ne, *ty, offset);
        let len = byte_len(*ty, ne);
        layout.push((offset, len));
        offset += len;
    }
    r.pad(align as usize);
    let data_start = r.len() as u64;
    for (i, (off, len)) in layout.iter().enumerate() {
        while (r.len() as u64) < data_start + off {
            r.u8(0);
        }
        for j in 0..*len {
            r.u8((j as u8).wrapping_mul(7).wrapping_add(i as u8));
        }
    }
    r.buf
}

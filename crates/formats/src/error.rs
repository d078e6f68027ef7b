//! The one error type of `qmoe-formats`.
//!
//! Every variant that comes from reading a file names that file; every variant
//! about one tensor names the tensor too. Messages are written for a user who
//! has to find the broken file, not for a debugger.

use std::path::PathBuf;

use qmoe_core::DType;

pub type Result<T> = std::result::Result<T, FormatError>;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- safetensors header -------------------------------------------------
    #[error("{path}: file is {len} bytes, shorter than the 8-byte safetensors header length")]
    FileTooShort { path: PathBuf, len: u64 },

    #[error("{path}: safetensors header length {header_len} exceeds the limit of {limit} bytes")]
    HeaderTooLarge { path: PathBuf, header_len: u64, limit: u64 },

    #[error("{path}: safetensors header length {header_len} runs past the end of the file ({file_len} bytes)")]
    HeaderBeyondFile { path: PathBuf, header_len: u64, file_len: u64 },

    #[error("{path}: safetensors header is not valid UTF-8 (at byte {valid_up_to} of the header)")]
    HeaderNotUtf8 { path: PathBuf, valid_up_to: usize },

    #[error("{path}: safetensors header is not valid JSON: {message}")]
    HeaderJson { path: PathBuf, message: String },

    #[error("{path}: safetensors header must be a JSON object (found {found})")]
    HeaderNotObject { path: PathBuf, found: String },

    #[error("{path}: tensor `{tensor}` appears twice in the safetensors header")]
    DuplicateInHeader { path: PathBuf, tensor: String },

    #[error("{path}: tensor `{tensor}`: {reason}")]
    BadTensorEntry { path: PathBuf, tensor: String, reason: String },

    #[error("{path}: `__metadata__` {reason}")]
    BadMetadata { path: PathBuf, reason: String },

    #[error("{path}: tensor `{tensor}` has dtype `{dtype}`, which qmoe does not read (supported: F32, F16, BF16, F8_E4M3, U8, I8, U32, I32, I64)")]
    UnknownDType { path: PathBuf, tensor: String, dtype: String },

    #[error("{path}: tensor `{tensor}`: shape {shape:?} ({dtype}) overflows the element or byte count")]
    ShapeOverflow { path: PathBuf, tensor: String, dtype: DType, shape: Vec<u64> },

    #[error("{path}: tensor `{tensor}`: data_offsets [{start}, {end}] are reversed")]
    OffsetsReversed { path: PathBuf, tensor: String, start: u64, end: u64 },

    #[error("{path}: tensor `{tensor}`: data_offsets [{start}, {end}] lie outside the {buffer_len}-byte data buffer")]
    OffsetsOutOfRange { path: PathBuf, tensor: String, start: u64, end: u64, buffer_len: u64 },

    #[error(
        "{path}: tensor `{tensor}`: data_offsets [{start}, {end}] overlap tensor `{other}` (which ends at {other_end})"
    )]
    OffsetsOverlap { path: PathBuf, tensor: String, start: u64, end: u64, other: String, other_end: u64 },

    #[error("{path}: data buffer bytes [{gap_start}, {gap_end}) belong to no tensor (next tensor: `{next}`); safetensors requires the tensors to cover the buffer without holes")]
    OffsetsGap { path: PathBuf, gap_start: u64, gap_end: u64, next: String },

    #[error("{path}: data buffer is {buffer_len} bytes but the tensors cover only {covered}; safetensors requires the tensors to cover it exactly")]
    BufferNotCovered { path: PathBuf, covered: u64, buffer_len: u64 },

    #[error(
        "{path}: tensor `{tensor}`: shape {shape:?} of {dtype} needs {expected} bytes but data_offsets give {found}"
    )]
    ByteCountMismatch { path: PathBuf, tensor: String, dtype: DType, shape: Vec<usize>, expected: u64, found: u64 },

    // ---- checkpoints (directories, shards) -----------------------------------
    #[error("tensor `{tensor}` is stored twice: in {first} and in {second}")]
    DuplicateTensor { tensor: String, first: PathBuf, second: PathBuf },

    #[error("{dir}: no *.safetensors files in this directory")]
    NoSafetensors { dir: PathBuf },

    #[error("{path}: not a directory or a .safetensors file")]
    NotACheckpoint { path: PathBuf },

    #[error("{index}: {reason}")]
    BadIndex { index: PathBuf, reason: String },

    #[error("{index}: tensor `{tensor}` is mapped to shard `{shard}`, which does not exist ({source})")]
    MissingShard {
        index: PathBuf,
        tensor: String,
        shard: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{index}: tensor `{tensor}` is mapped to shard {shard}, but that shard does not contain it{}", found_in.as_ref().map(|p| format!(" (it is in {})", p.display())).unwrap_or_default())]
    TensorNotInShard { index: PathBuf, tensor: String, shard: PathBuf, found_in: Option<PathBuf> },

    #[error("{dir}: checkpoint has no tensor `{tensor}`")]
    MissingTensor { dir: PathBuf, tensor: String },

    // ---- tensor views ----------------------------------------------------------
    #[error("slice [{offset}, {offset}+{len}) is outside a {available}-byte tensor view")]
    SliceOutOfRange { offset: usize, len: usize, available: usize },

    #[error("{path}: tensor `{tensor}` has dtype {dtype}, which is not a float type widenable to f32")]
    NotFloat { path: PathBuf, tensor: String, dtype: DType },

    #[error("could not allocate an anonymous mapping of {len} bytes: {source}")]
    AnonMap {
        len: usize,
        #[source]
        source: std::io::Error,
    },

    // ---- writing -----------------------------------------------------------
    #[error("{path}: tensor `{tensor}`: {reason}")]
    BadTensorToWrite { path: PathBuf, tensor: String, reason: String },

    // ---- GGUF ------------------------------------------------------------------
    #[error("{path}: file ends while reading {what}: {need} bytes needed at offset {offset}, but the file is {file_len} bytes")]
    GgufTruncated { path: PathBuf, what: String, offset: u64, need: u64, file_len: u64 },

    #[error("{path}: not a GGUF file (starts with {found:02x?}, expected the magic `GGUF`)")]
    GgufBadMagic { path: PathBuf, found: Vec<u8> },

    #[error("{path}: big-endian GGUF ({evidence}); qmoe reads only little-endian GGUF files")]
    GgufBigEndian { path: PathBuf, evidence: String },

    #[error("{path}: GGUF version {version} is not supported (qmoe reads v2 and v3{})", if *version == 1 { "; v1 files predate 64-bit counts, re-convert with a current llama.cpp" } else { "" })]
    GgufVersion { path: PathBuf, version: u32 },

    #[error("{path}: GGUF header claims {count} {what}, but the {remaining} bytes left hold at most {max}")]
    GgufCount { path: PathBuf, what: &'static str, count: u64, remaining: u64, max: u64 },

    #[error("{path}: {what} (at byte {offset}) is not valid UTF-8")]
    GgufNotUtf8 { path: PathBuf, what: String, offset: u64 },

    #[error("{path}: metadata key `{key}`: {reason}")]
    GgufBadValue { path: PathBuf, key: String, reason: String },

    #[error("{path}: metadata key `{key}` appears twice")]
    GgufDuplicateKey { path: PathBuf, key: String },

    #[error("{path}: `general.alignment` {reason}")]
    GgufBadAlignment { path: PathBuf, reason: String },

    #[error("{path}: tensor `{tensor}`: {reason}")]
    GgufBadTensor { path: PathBuf, tensor: String, reason: String },

    #[error("{path}: tensor `{tensor}` appears twice in the GGUF tensor infos")]
    GgufDuplicateTensor { path: PathBuf, tensor: String },

    #[error("{path}: tensor `{tensor}` (data bytes [{start}, {end})) overlaps tensor `{other}` (which ends at {other_end}); offsets are relative to the data section")]
    GgufTensorOverlap { path: PathBuf, tensor: String, start: u64, end: u64, other: String, other_end: u64 },

    #[error("{path}: tensor `{tensor}` has ggml type {type_name} (id {type_id}), which qmoe cannot decode")]
    GgufUnsupportedType { path: PathBuf, tensor: String, type_id: u32, type_name: String },

    #[error("{path}: tensor `{tensor}` is {type_name}; only F32/F16/BF16 tensors widen to f32 here (quantized weights go through the block decoders)")]
    GgufNotFloat { path: PathBuf, tensor: String, type_name: String },

    #[error("{path}: GGUF metadata has no key `{key}`")]
    GgufMissingKey { path: PathBuf, key: String },

    #[error("{path}: GGUF metadata key `{key}` is {found}, expected {expected}")]
    GgufKeyType { path: PathBuf, key: String, expected: &'static str, found: String },

    #[error("{path}: GGUF writer: {reason}")]
    GgufWrite { path: PathBuf, reason: String },

    // ---- .npy ------------------------------------------------------------------
    #[error("{path}: not a readable .npy file: {reason}")]
    NpyHeader { path: PathBuf, reason: String },

    #[error("{path}: .npy {what} is {found}; only little-endian float32 ('<f4'), C order is supported")]
    NpyUnsupported { path: PathBuf, what: &'static str, found: String },

    #[error("{path}: .npy shape {shape:?} needs {expected} data bytes but the file holds {found}")]
    NpyDataSize { path: PathBuf, shape: Vec<usize>, expected: u64, found: u64 },

    #[error("{path}: shape {shape:?} has {expected} elements but {found} values were given")]
    NpyShapeMismatch { path: PathBuf, shape: Vec<usize>, expected: usize, found: usize },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.into(), source }
    }
}

//! Single safetensors files: round trips and every hostile header case.
//! Each hostile test checks that the error names the file (and the tensor).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{assert_mentions, err_msg, f32_file, raw_file, TempDir};
use qmoe_core::DType;
use qmoe_formats::{write_safetensors, Checkpoint, FormatError, SafetensorsFile, TensorData, TensorToWrite};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn open(dir: &TempDir, bytes: &[u8]) -> (std::path::PathBuf, Result<SafetensorsFile, FormatError>) {
    let path = dir.write("model.safetensors", bytes);
    let r = SafetensorsFile::open(&path);
    (path, r)
}

#[test]
fn round_trip_hand_written_mixed_dtypes() {
    let dir = TempDir::new("rt");
    // bf16 [2] = 1.0, -2.0; u32 [1,2]; scalar f32; zero-sized f16 [0, 3].
    let mut data = Vec::new();
    data.extend_from_slice(&0x3f80u16.to_le_bytes());
    data.extend_from_slice(&0xc000u16.to_le_bytes());
    data.extend_from_slice(&7u32.to_le_bytes());
    data.extend_from_slice(&9u32.to_le_bytes());
    data.extend_from_slice(&2.5f32.to_le_bytes());
    let header = r#"{"__metadata__":{"format":"pt","n":3},
        "w.bf":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},
        "q.packed":{"dtype":"U32","shape":[1,2],"data_offsets":[4,12]},
        "empty":{"dtype":"F16","shape":[0,3],"data_offsets":[16,16]},
        "s":{"dtype":"F32","shape":[],"data_offsets":[12,16]}}"#;
    let path = dir.write("one.safetensors", &raw_file(header, &data));

    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 4);
    assert_eq!(f.metadata().get("format").map(String::as_str), Some("pt"));
    // Non-string metadata values are kept as JSON text.
    assert_eq!(f.metadata().get("n").map(String::as_str), Some("3"));
    assert_eq!(f.header_len(), header.len());

    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.len(), 4);
    assert_eq!(ck.names().collect::<Vec<_>>(), ["empty", "q.packed", "s", "w.bf"]);
    assert_eq!(ck.dir(), dir.path());
    assert_eq!(ck.files().len(), 1);
    assert_eq!(&*ck.files()[0], path.as_path());
    assert_eq!(ck.total_bytes(), 16);
    assert_eq!(ck.metadata(&path).unwrap().get("format").unwrap(), "pt");

    let bf = ck.get("w.bf").unwrap();
    assert_eq!((bf.dtype, bf.shape.as_slice(), bf.numel()), (DType::BF16, &[2usize][..], 2));
    assert_eq!(bf.to_f32_vec().unwrap(), [1.0, -2.0]);
    assert_eq!(&*bf.file, path.as_path());
    let q = ck.get("q.packed").unwrap();
    assert_eq!(q.bytes(), &data[4..12]);
    let msg = err_msg(q.to_f32_vec());
    assert_mentions(&msg, &[p(&path), "q.packed", "U32"]);
    let s = ck.get("s").unwrap();
    assert_eq!((s.numel(), s.to_f32_vec().unwrap()), (1, vec![2.5]));
    let e = ck.get("empty").unwrap();
    assert_eq!((e.numel(), e.byte_len()), (0, 0));
    assert!(ck.get("nope").is_none());
    assert_mentions(&err_msg(ck.require("nope")), &["nope", p(dir.path())]);

    // All views share the file's one mapping: no copies.
    assert!(bf.data.same_mapping(&q.data));
    assert_eq!(bf.data.start(), 8 + header.len());
}

#[test]
fn tensor_data_slices_are_bounds_checked() {
    let d = TensorData::from_bytes(&[1, 2, 3, 4, 5, 6]).unwrap();
    let s = d.slice(2, 3).unwrap();
    assert_eq!(s.bytes(), &[3, 4, 5]);
    assert!(s.same_mapping(&d));
    assert_eq!(s.slice(1, 2).unwrap().bytes(), &[4, 5]);
    assert_eq!(s.slice(3, 0).unwrap().bytes(), &[] as &[u8]);
    assert!(matches!(s.slice(2, 2), Err(FormatError::SliceOutOfRange { offset: 2, len: 2, available: 3 })));
    assert!(s.slice(usize::MAX, 2).is_err());
    assert!(d.slice(0, 7).is_err());
    let c = s.clone();
    assert_eq!(c.bytes(), s.bytes());
    let empty = TensorData::from_bytes(&[]).unwrap();
    assert!(empty.is_empty() && empty.bytes().is_empty());
}

#[test]
fn writer_round_trips_and_official_crate_agrees() {
    let dir = TempDir::new("writer");
    let path = dir.join("w.safetensors");
    let a: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let b: Vec<u8> = vec![0x38, 0x40, 0xc0]; // F8_E4M3 bytes
    let meta = BTreeMap::from([("format".to_string(), "mlx".to_string())]);
    write_safetensors(
        &path,
        &[
            TensorToWrite { name: "a", dtype: DType::F32, shape: &[2, 3], bytes: &a },
            TensorToWrite { name: "b.weight", dtype: DType::F8E4M3, shape: &[3], bytes: &b },
        ],
        &meta,
    )
    .unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.get("a").unwrap().shape, [2, 3]);
    assert_eq!(ck.get("a").unwrap().to_f32_vec().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(ck.get("b.weight").unwrap().dtype, DType::F8E4M3);
    assert_eq!(ck.get("b.weight").unwrap().bytes(), &b[..]);
    assert_eq!(ck.metadata(&path).unwrap(), &meta);

    // The reference implementation reads what we wrote ...
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("a").unwrap().data(), &a[..]);
    assert_eq!(st.tensor("b.weight").unwrap().shape(), &[3]);

    // ... and we read what it writes.
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2, 2], &[0u8; 8]).unwrap();
    let view2 =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1], &[5u8, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    let official = safetensors::tensor::serialize([("x", view), ("y.idx", view2)], None).unwrap();
    let opath = dir.write("official.safetensors", &official);
    let f = SafetensorsFile::open(&opath).unwrap();
    assert_eq!(f.get("x").unwrap().shape, [2, 2]);
    assert_eq!(f.get("y.idx").unwrap().dtype, DType::I64);
    assert_eq!(f.get("y.idx").unwrap().bytes(), &[5, 0, 0, 0, 0, 0, 0, 0]);

    // Bad input to the writer is refused, naming the tensor.
    let msg = err_msg(write_safetensors(
        &dir.join("bad.safetensors"),
        &[TensorToWrite { name: "short", dtype: DType::F32, shape: &[3], bytes: &[0; 8] }],
        &BTreeMap::new(),
    ));
    assert_mentions(&msg, &["short", "[3]"]);
}

#[test]
fn empty_header_object_is_a_valid_empty_file() {
    let dir = TempDir::new("empty");
    let (_, r) = open(&dir, &raw_file("{}  ", &[]));
    assert!(r.unwrap().tensors().is_empty());
}

// ---- hostile inputs -----------------------------------------------------------

#[test]
fn file_shorter_than_8_bytes() {
    let dir = TempDir::new("short");
    for len in [0usize, 1, 7] {
        let (path, r) = open(&dir, &vec![0u8; len]);
        let msg = err_msg(r);
        assert_mentions(&msg, &[p(&path), "shorter than the 8-byte"]);
    }
}

#[test]
fn header_length_beyond_file() {
    let dir = TempDir::new("beyond");
    let mut bytes = raw_file("{}", &[]);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    let (path, r) = open(&dir, &bytes);
    let msg = err_msg(r);
    assert_mentions(&msg, &[p(&path), "1000", "past the end"]);
}

#[test]
fn header_length_absurd() {
    let dir = TempDir::new("absurd");
    for n in [100_000_001u64, 1 << 40, u64::MAX] {
        let mut bytes = raw_file("{}", &[]);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let (path, r) = open(&dir, &bytes);
        let msg = err_msg(r);
        assert_mentions(&msg, &[p(&path), &n.to_string(), "limit"]);
    }
}

#[test]
fn header_not_utf8() {
    let dir = TempDir::new("utf8");
    let mut bytes = raw_file(r#"{"a":1}"#, &[]);
    bytes[10] = 0xff;
    let (path, r) = open(&dir, &bytes);
    assert_mentions(&err_msg(r), &[p(&path), "UTF-8"]);
}

#[test]
fn header_invalid_json() {
    let dir = TempDir::new("json");
    for h in [r#"{"a":{"dtype":"F32""#, "", "{} x", r#"{"a":}"#] {
        let (path, r) = open(&dir, &raw_file(h, &[]));
        assert_mentions(&err_msg(r), &[p(&path), "not valid JSON"]);
    }
}

#[test]
fn header_not_an_object() {
    let dir = TempDir::new("notobj");
    let (path, r) = open(&dir, &raw_file("[1,2]", &[]));
    assert_mentions(&err_msg(r), &[p(&path), "JSON object", "array"]);
}

#[test]
fn unknown_dtype_names_tensor_and_dtype() {
    let dir = TempDir::new("dtype");
    for dt in ["F64", "Q4_K", "f32", "BOOL"] {
        let h = format!(r#"{{"layers.0.w":{{"dtype":"{dt}","shape":[1],"data_offsets":[0,8]}}}}"#);
        let (path, r) = open(&dir, &raw_file(&h, &[0; 8]));
        let e = r.unwrap_err();
        assert!(matches!(e, FormatError::UnknownDType { .. }), "{e}");
        assert_mentions(&e.to_string(), &[p(&path), "layers.0.w", dt]);
    }
}

#[test]
fn offsets_out_of_range() {
    let dir = TempDir::new("oor");
    let h = r#"{"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let (path, r) = open(&dir, &raw_file(h, &[0; 3]));
    let e = r.unwrap_err();
    assert!(matches!(e, FormatError::OffsetsOutOfRange { .. }), "{e}");
    assert_mentions(&e.to_string(), &[p(&path), "`t`", "[0, 4]", "3-byte"]);
}

#[test]
fn offsets_reversed() {
    let dir = TempDir::new("rev");
    let h = r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[4,2]}}"#;
    let (path, r) = open(&dir, &raw_file(h, &[0; 4]));
    let e = r.unwrap_err();
    assert!(matches!(e, FormatError::OffsetsReversed { .. }), "{e}");
    assert_mentions(&e.to_string(), &[p(&path), "`t`", "reversed"]);
}

#[test]
fn offsets_overlapping() {
    let dir = TempDir::new("overlap");
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
               "b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
    let (path, r) = open(&dir, &raw_file(h, &[0; 6]));
    let e = r.unwrap_err();
    assert!(matches!(e, FormatError::OffsetsOverlap { .. }), "{e}");
    assert_mentions(&e.to_string(), &[p(&path), "`b`", "`a`", "overlap"]);
    // A zero-sized tensor inside another one overlaps too.
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},
               "z":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}}"#;
    let (_, r) = open(&dir, &raw_file(h, &[0; 4]));
    assert_mentions(&err_msg(r), &["`z`", "overlap"]);
}

#[test]
fn offsets_leave_a_hole() {
    let dir = TempDir::new("gap");
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},
               "b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#;
    let (path, r) = open(&dir, &raw_file(h, &[0; 6]));
    let e = r.unwrap_err();
    assert!(matches!(e, FormatError::OffsetsGap { gap_start: 2, gap_end: 4, .. }), "{e}");
    assert_mentions(&e.to_string(), &[p(&path), "`b`", "[2, 4)"]);
}

#[test]
fn trailing_bytes_not_covered() {
    let dir = TempDir::new("trail");
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    let (path, r) = open(&dir, &raw_file(h, &[0; 5]));
    let e = r.unwrap_err();
    assert!(matches!(e, FormatError::BufferNotCovered { covered: 2, buffer_len: 5, .. }), "{e}");
    assert_mentions(&e.to_string(), &[p(&path), "5 bytes", "only 2"]);
}

#[test]
fn byte_count_not_numel_times_size() {
    let dir = TempDir::new("bytes");
    let h = r#"{"model.norm.weight":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}}"#;
    let (path, r) = open(&dir, &raw_file(h, &[0; 10]));
    let e = r.unwrap_err();
    assert!(matches!(e, FormatError::ByteCountMismatch { expected: 12, found: 10, .. }), "{e}");
    assert_mentions(&e.to_string(), &[p(&path), "model.norm.weight", "[2, 3]", "BF16", "12 bytes", "give 10"]);
}

#[test]
fn shape_product_overflow() {
    let dir = TempDir::new("overflow");
    let big = u64::MAX / 2;
    for shape in [format!("[{big},{big}]"), format!("[{},4]", u64::MAX / 4 + 1), format!("[{big}]")] {
        let h = format!(r#"{{"huge":{{"dtype":"F32","shape":{shape},"data_offsets":[0,4]}}}}"#);
        let (path, r) = open(&dir, &raw_file(&h, &[0; 4]));
        let e = r.unwrap_err();
        assert!(matches!(e, FormatError::ShapeOverflow { .. }), "{shape}: {e}");
        assert_mentions(&e.to_string(), &[p(&path), "huge", "overflows"]);
    }
}

#[test]
fn duplicate_name_in_one_header() {
    let dir = TempDir::new("dup");
    let h = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},
               "a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    let (path, r) = open(&dir, &raw_file(h, &[0; 2]));
    assert_mentions(&err_msg(r), &[p(&path), "`a`", "twice"]);
}

#[test]
fn malformed_entries() {
    let dir = TempDir::new("entry");
    let cases = [
        (r#"{"t":[1,2]}"#, "must be an object"),
        (r#"{"t":{"shape":[1],"data_offsets":[0,1]}}"#, "missing `dtype`"),
        (r#"{"t":{"dtype":5,"shape":[1],"data_offsets":[0,1]}}"#, "`dtype` must be a string"),
        (r#"{"t":{"dtype":"U8","data_offsets":[0,1]}}"#, "missing `shape`"),
        (r#"{"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, "non-negative integers"),
        (r#"{"t":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}"#, "non-negative integers"),
        (r#"{"t":{"dtype":"U8","shape":"1","data_offsets":[0,1]}}"#, "`shape` must be an array"),
        (r#"{"t":{"dtype":"U8","shape":[1]}}"#, "missing `data_offsets`"),
        (r#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#, "2 entries"),
        (r#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,-1]}}"#, "two non-negative integers"),
    ];
    for (h, what) in cases {
        let (path, r) = open(&dir, &raw_file(h, &[0; 1]));
        assert_mentions(&err_msg(r), &[p(&path), "`t`", what]);
    }
}

#[test]
fn metadata_must_be_an_object() {
    let dir = TempDir::new("meta");
    let (path, r) = open(&dir, &raw_file(r#"{"__metadata__":[1]}"#, &[]));
    assert_mentions(&err_msg(r), &[p(&path), "__metadata__"]);
}

#[test]
fn hostile_file_errors_name_the_file_through_checkpoint_open() {
    let dir = TempDir::new("ckfile");
    let good = dir.write("a.safetensors", &f32_file(&[("x", &[1.0])]));
    let bad =
        dir.write("b.safetensors", &raw_file(r#"{"y":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, &[0; 4]));
    let msg = err_msg(Checkpoint::open(dir.path()));
    assert_mentions(&msg, &[p(&bad), "`y`"]);
    assert!(!msg.contains(p(&good)));
}

#[test]
fn missing_path_is_an_io_error_naming_it() {
    let dir = TempDir::new("missing");
    let path = dir.join("nope.safetensors");
    assert_mentions(&err_msg(Checkpoint::open(&path)), &[p(&path)]);
}

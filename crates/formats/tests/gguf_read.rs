//! GGUF reader: every value type, v2/v3, typed getters, a file written by the
//! reference Python writer (gguf-py), and each kind of hostile input refused
//! with an error that names the file and the key or tensor.

mod gguf_common;

use gguf_common::{build, parse, Raw, Spec, TempDir, PATH};
use qmoe_core::GgmlType;
use qmoe_formats::{FormatError, GgufArray, GgufValue};

fn all_value_kvs() -> Vec<(String, GgufValue)> {
    let kvs: Vec<(&str, GgufValue)> = vec![
        ("general.architecture", "qwen35".into()),
        ("t.u8", 200u8.into()),
        ("t.i8", (-100i8).into()),
        ("t.u16", 60000u16.into()),
        ("t.i16", (-30000i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-2_000_000_000i32).into()),
        ("t.f32", 1.5f32.into()),
        ("t.bool", true.into()),
        ("t.str", "héllo".into()),
        ("t.u64", (1u64 << 60).into()),
        ("t.i64", (-(1i64 << 60)).into()),
        ("t.f64", 2.25f64.into()),
        ("t.arr_u8", vec![1u8, 2, 255].into()),
        ("t.arr_i8", vec![-1i8, 2].into()),
        ("t.arr_u16", vec![1u16, 65535].into()),
        ("t.arr_i16", vec![-1i16].into()),
        ("t.arr_u32", vec![7u32; 3].into()),
        ("t.arr_i32", vec![11i32, 11, 10, 0].into()),
        ("t.arr_f32", vec![0.5f32, -1.0].into()),
        ("t.arr_bool", vec![true, false, true].into()),
        ("t.arr_str", vec!["a".to_string(), "Ġb".into(), String::new()].into()),
        ("t.arr_u64", vec![u64::MAX].into()),
        ("t.arr_i64", vec![i64::MIN].into()),
        ("t.arr_f64", vec![1e300f64].into()),
        ("t.arr_empty", Vec::<f64>::new().into()),
        (
            "t.nested",
            vec![GgufArray::I32(vec![1, 2]), GgufArray::String(vec!["x".into()]), GgufArray::U8(vec![])].into(),
        ),
    ];
    kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn spec_with_tensors() -> Spec {
    Spec {
        version: 3,
        alignment: None,
        kvs: all_value_kvs(),
        tensors: vec![
            ("output_norm.weight".into(), 0, vec![8]),
            ("blk.0.attn_q.weight".into(), 1, vec![16, 3]),
            ("blk.0.ffn_up.weight".into(), 8, vec![64, 2]),
            ("blk.0.ffn_down_exps.weight".into(), 12, vec![256, 2, 3]),
            ("blk.0.odd.weight".into(), 16, vec![256, 1]), // IQ2_XXS: sized, not decodable
        ],
    }
}

fn err(bytes: &[u8]) -> FormatError {
    match parse(bytes) {
        Ok(_) => panic!("accepted a bad file"),
        Err(e) => e,
    }
}

/// The error names the file and contains every fragment.
fn assert_err(bytes: &[u8], fragments: &[&str]) -> FormatError {
    let e = err(bytes);
    let msg = e.to_string();
    assert!(msg.contains(PATH), "does not name the file: {msg}");
    for f in fragments {
        assert!(msg.contains(f), "`{msg}` lacks `{f}`");
    }
    e
}

#[test]
fn reads_every_value_type_in_order() {
    let spec = spec_with_tensors();
    let f = parse(&build(&spec)).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.metadata(), spec.kvs.as_slice());
    assert_eq!(f.architecture().unwrap(), "qwen35");
    assert_eq!(f.get_u8("t.u8").unwrap(), 200);
    assert_eq!(f.get_i8("t.i8").unwrap(), -100);
    assert_eq!(f.get_u16("t.u16").unwrap(), 60000);
    assert_eq!(f.get_i16("t.i16").unwrap(), -30000);
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i32("t.i32").unwrap(), -2_000_000_000);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1.5);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("t.str").unwrap(), "héllo");
    assert_eq!(f.get_u64("t.u64").unwrap(), 1 << 60);
    assert_eq!(f.get_i64("t.i64").unwrap(), -(1 << 60));
    assert_eq!(f.get_f64("t.f64").unwrap(), 2.25);
    assert_eq!(f.get_i32_array("t.arr_i32").unwrap(), &[11, 11, 10, 0]);
    assert_eq!(f.get_u32_array("t.arr_u32").unwrap(), &[7, 7, 7]);
    assert_eq!(f.get_f32_array("t.arr_f32").unwrap(), &[0.5, -1.0]);
    assert_eq!(f.get_bool_array("t.arr_bool").unwrap(), &[true, false, true]);
    assert_eq!(f.get_str_array("t.arr_str").unwrap(), &["a", "Ġb", ""]);
    assert_eq!(f.get_as::<&[u64]>("t.arr_u64").unwrap(), &[u64::MAX]);
    assert_eq!(f.get_array("t.arr_empty").unwrap(), &GgufArray::F64(vec![]));
    assert_eq!(f.get_array("t.nested").unwrap().depth(), 2);
    // Lenient integer / float getters.
    assert_eq!(f.get_uint("t.u8").unwrap(), 200);
    assert_eq!(f.get_uint("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_float("t.f32").unwrap(), 1.5);
    assert!(f.get_uint("t.i8").is_err());
    assert_eq!(f.get_opt::<u32>("absent").unwrap(), None);
    assert_eq!(f.get_opt::<u32>("t.u32").unwrap(), Some(4_000_000_000));
}

#[test]
fn getters_name_key_and_types_on_mismatch() {
    let f = parse(&build(&spec_with_tensors())).unwrap();
    let e = f.get_u32("t.i32").unwrap_err();
    assert!(matches!(&e, FormatError::GgufKeyType { key, expected: "u32", .. } if key == "t.i32"), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(PATH)
            && msg.contains("`t.i32`")
            && msg.contains("expected u32")
            && msg.contains("i32 -2000000000"),
        "{msg}"
    );
    let msg = f.get_str_array("t.arr_i32").unwrap_err().to_string();
    assert!(msg.contains("expected array of string") && msg.contains("array of 4 i32"), "{msg}");
    let msg = f.get_opt::<&str>("t.u8").unwrap_err().to_string();
    assert!(msg.contains("expected string"), "{msg}");
    let e = f.get_u32("llama.block_count").unwrap_err();
    assert!(matches!(&e, FormatError::GgufMissingKey { key, .. } if key == "llama.block_count"));
    assert!(e.to_string().contains(PATH));
}

#[test]
fn tensors_are_views_into_the_mapping() {
    let spec = spec_with_tensors();
    let bytes = build(&spec);
    let f = parse(&bytes).unwrap();
    assert_eq!(f.tensors().len(), 5);
    assert_eq!(f.data_start() % 32, 0);
    let mut prev_end = 0;
    for (t, (name, ty, ne)) in f.tensors().iter().zip(&spec.tensors) {
        assert_eq!(&t.name, name);
        assert_eq!(t.type_id, *ty);
        assert_eq!(&t.ne, ne);
        assert_eq!(t.offset % 32, 0);
        assert!(t.offset >= prev_end);
        assert_eq!(t.byte_len() as u64, gguf_common::byte_len(*ty, ne));
        prev_end = t.offset + t.byte_len() as u64;
        assert!(std::ptr::eq(f.tensor(name).unwrap(), t));
        if let Ok(data) = t.data() {
            assert_eq!(data.start() as u64, f.data_start() + t.offset);
            assert_eq!(data.bytes(), &bytes[data.start()..data.start() + t.byte_len()]);
            assert!(data.same_mapping(f.tensors()[0].data().unwrap()));
        }
    }
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.shape(), vec![3, 16]);
    assert_eq!(q.numel(), 48);
    assert_eq!(q.ggml_type().unwrap(), GgmlType::F16);
    let exps = f.tensor("blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!(exps.shape(), vec![3, 2, 256]);
    assert_eq!(exps.ggml_type().unwrap(), GgmlType::Q4K);
    assert_eq!(exps.byte_len(), 6 * 144);
    assert!(f.tensor("nope").is_none());
    let msg = f.require_tensor("nope").unwrap_err().to_string();
    assert!(msg.contains(PATH) && msg.contains("`nope`"), "{msg}");
    assert_eq!(f.total_tensor_bytes(), f.tensors().iter().map(|t| t.byte_len() as u64).sum::<u64>());
}

#[test]
fn undecodable_types_are_listed_but_not_usable() {
    let f = parse(&build(&spec_with_tensors())).unwrap();
    let t = f.tensor("blk.0.odd.weight").unwrap();
    assert_eq!(t.type_name(), "IQ2_XXS");
    assert_eq!(t.byte_len(), 66);
    let e = t.data().unwrap_err();
    assert!(matches!(&e, FormatError::GgufUnsupportedType { type_id: 16, tensor, .. } if tensor == "blk.0.odd.weight"));
    let msg = e.to_string();
    assert!(msg.contains(PATH) && msg.contains("IQ2_XXS") && msg.contains("id 16"), "{msg}");
    assert!(t.bytes().is_err() && t.ggml_type().is_err() && t.to_f32_vec().is_err());

    // An id ggml does not know (yet): sized up to the next tensor.
    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("future.weight", &[10], 99, 0).tensor_info("after.weight", &[8], 0, 64).pad(32);
    r.bytes(&[1; 64]).bytes(&[2; 32]);
    let f = parse(&r.buf).unwrap();
    let t = f.tensor("future.weight").unwrap();
    assert_eq!(t.type_name(), "unknown ggml type 99");
    assert_eq!(t.byte_len(), 64);
    assert!(t.type_info().is_none());
    let msg = t.data().unwrap_err().to_string();
    assert!(msg.contains("`future.weight`") && msg.contains("id 99"), "{msg}");
    assert_eq!(f.tensor("after.weight").unwrap().bytes().unwrap(), &[2; 32]);
}

#[test]
fn float_tensors_widen_quantized_do_not() {
    let f = parse(&build(&spec_with_tensors())).unwrap();
    let norm = f.tensor("output_norm.weight").unwrap();
    let raw = norm.bytes().unwrap();
    let want: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(norm.to_f32_vec().unwrap().len(), 8);
    assert_eq!(
        norm.to_f32_vec().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().to_f32_vec().unwrap().len(), 48);
    let msg = f.tensor("blk.0.ffn_up.weight").unwrap().to_f32_vec().unwrap_err().to_string();
    assert!(msg.contains("Q8_0") && msg.contains("`blk.0.ffn_up.weight`"), "{msg}");
}

#[test]
fn version_2_reads_like_3() {
    let mut spec = spec_with_tensors();
    spec.version = 2;
    let f = parse(&build(&spec)).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.metadata(), spec.kvs.as_slice());
    assert_eq!(f.tensors().len(), 5);
}

#[test]
fn alignment_key_is_honoured_and_checked() {
    let mut spec = spec_with_tensors();
    spec.alignment = Some(64);
    let f = parse(&build(&spec)).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_start() % 64, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));

    spec.alignment = Some(48);
    assert_err(&build(&spec), &["general.alignment", "48", "power of two"]);
    spec.alignment = Some(0);
    assert_err(&build(&spec), &["general.alignment", "power of two"]);

    let mut r = Raw::header(3, 0, 1);
    r.kv("general.alignment", &GgufValue::U64(32));
    assert_err(&r.buf, &["general.alignment", "u64 32", "expected a u32"]);
}

#[test]
fn empty_file_header_only_is_valid() {
    let f = parse(&Raw::header(3, 0, 0).buf).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());
}

// ---- the reference writer ----------------------------------------------------

/// Written by gguf-py 0.19 (`GGUFWriter`, arch `qwen35`): one key of every
/// scalar type, i32/string/bool arrays, a nested i32 array, and three tensors:
/// `output_norm.weight` F32 {4} = [1, 2, 3, 4], `blk.0.attn_q.weight` F16
/// {8, 2} = 0..16, `blk.0.ffn_up.weight` Q8_0 {32, 2} with bytes 0..68.
const REFERENCE_GGUF_HEX: &str = concat!(
    "474755460300000003000000000000001100000000000000140000000000000067656e6572616c2e6172636869746563",
    "747572650800000006000000000000007177656e33350400000000000000742e753800000000c8040000000000000074",
    "2e6938010000009c0500000000000000742e7531360200000060ea0500000000000000742e69313603000000d08a0500",
    "000000000000742e7533320400000000286bee0500000000000000742e69333205000000006cca880500000000000000",
    "742e663332060000000000c03f0600000000000000742e626f6f6c07000000010500000000000000742e737472080000",
    "00060000000000000068c3a96c6c6f0500000000000000742e7536340a00000000000000000000100500000000000000",
    "742e6936340b00000000000000000000f00500000000000000742e6636340c0000000000000000000240090000000000",
    "0000742e6172725f693332090000000500000004000000000000000b0000000b0000000a000000000000000900000000",
    "000000742e6172725f737472090000000800000003000000000000000100000000000000610300000000000000c4a062",
    "00000000000000000a00000000000000742e6172725f626f6f6c09000000070000000300000000000000010001080000",
    "0000000000742e6e65737465640900000009000000020000000000000005000000020000000000000001000000020000",
    "000500000001000000000000000300000012000000000000006f75747075745f6e6f726d2e7765696768740100000004",
    "000000000000000000000000000000000000001300000000000000626c6b2e302e6174746e5f712e7765696768740200",
    "0000080000000000000002000000000000000100000020000000000000001300000000000000626c6b2e302e66666e5f",
    "75702e776569676874020000002000000000000000020000000000000008000000400000000000000000000000000000",
    "000000000000000000000000000000000000803f00000040000040400000804000000000000000000000000000000000",
    "0000003c0040004200440045004600470048804800498049004a804a004b804b000102030405060708090a0b0c0d0e0f",
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
    "4041424300000000000000000000000000000000000000000000000000000000",
);

#[test]
fn reads_a_file_written_by_gguf_py() {
    let hex = REFERENCE_GGUF_HEX.as_bytes();
    let bytes: Vec<u8> =
        hex.chunks(2).map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap()).collect();
    assert_eq!(bytes.len(), 896);
    let f = parse(&bytes).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "qwen35");
    assert_eq!(f.get_u8("t.u8").unwrap(), 200);
    assert_eq!(f.get_i8("t.i8").unwrap(), -100);
    assert_eq!(f.get_u16("t.u16").unwrap(), 60000);
    assert_eq!(f.get_i16("t.i16").unwrap(), -30000);
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i32("t.i32").unwrap(), -2_000_000_000);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1.5);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("t.str").unwrap(), "héllo");
    assert_eq!(f.get_u64("t.u64").unwrap(), 1 << 60);
    assert_eq!(f.get_i64("t.i64").unwrap(), -(1 << 60));
    assert_eq!(f.get_f64("t.f64").unwrap(), 2.25);
    assert_eq!(f.get_i32_array("t.arr_i32").unwrap(), &[11, 11, 10, 0]);
    assert_eq!(f.get_str_array("t.arr_str").unwrap(), &["a", "Ġb", ""]);
    assert_eq!(f.get_bool_array("t.arr_bool").unwrap(), &[true, false, true]);
    assert_eq!(
        f.get_array("t.nested").unwrap(),
        &GgufArray::Array(vec![GgufArray::I32(vec![1, 2]), GgufArray::I32(vec![3])])
    );
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["output_norm.weight", "blk.0.attn_q.weight", "blk.0.ffn_up.weight"]);
    let norm = f.tensor("output_norm.weight").unwrap();
    assert_eq!(norm.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ggml_type().unwrap(), q.ne.clone(), q.shape()), (GgmlType::F16, vec![8, 2], vec![2, 8]));
    assert_eq!(q.to_f32_vec().unwrap(), (0..16).map(|i| i as f32).collect::<Vec<_>>());
    let up = f.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!((up.ggml_type().unwrap(), up.ne.clone()), (GgmlType::Q8_0, vec![32, 2]));
    assert_eq!(up.bytes().unwrap(), (0..68).map(|i| i as u8).collect::<Vec<_>>().as_slice());
    // gguf-py reported these absolute data offsets.
    assert_eq!([norm.data().unwrap().start(), q.data().unwrap().start(), up.data().unwrap().start()], [736, 768, 800]);
}

// ---- hostile input -----------------------------------------------------------

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let bytes = build(&spec_with_tensors());
    for n in 0..bytes.len() {
        let e = err(&bytes[..n]);
        assert!(e.to_string().contains(PATH), "prefix {n}: {e}");
    }
    let msg = err(&bytes[..bytes.len() - 1]).to_string();
    assert!(msg.contains("`blk.0.odd.weight`") && msg.contains("past the end"), "{msg}");
    let msg = err(&bytes[..400]).to_string();
    assert!(msg.contains("file ends while reading") && msg.contains("metadata entry #"), "{msg}");
}

#[test]
fn open_reports_io_errors_and_empty_files() {
    let dir = TempDir::new("open");
    let missing = dir.join("missing.gguf");
    let msg = qmoe_formats::GgufFile::open(&missing).unwrap_err().to_string();
    assert!(msg.contains("missing.gguf"), "{msg}");
    let empty = dir.write("empty.gguf", &[]);
    let e = qmoe_formats::GgufFile::open(&empty).unwrap_err();
    assert!(matches!(e, FormatError::GgufTruncated { .. }), "{e:?}");
    let ok = dir.write("ok.gguf", &build(&spec_with_tensors()));
    let f = qmoe_formats::GgufFile::open(&ok).unwrap();
    assert_eq!(f.path(), ok.as_path());
    assert!(f.tensors()[0].file.ends_with("ok.gguf"));
}

#[test]
fn bad_magic_versions_and_byte_order() {
    let e = assert_err(b"GGML\x03\0\0\0", &["not a GGUF file"]);
    assert!(matches!(e, FormatError::GgufBadMagic { .. }));
    assert_err(b"PK\x03", &["not a GGUF file"]);

    let mut v1 = Raw::header(1, 0, 0).buf;
    let e = assert_err(&v1, &["version 1", "v1"]);
    assert!(matches!(e, FormatError::GgufVersion { version: 1, .. }));
    v1[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert_err(&v1, &["version 4 is not supported"]);

    // A big-endian v3 file: magic as bytes, then big-endian numbers.
    let mut be = b"GGUF".to_vec();
    be.extend_from_slice(&3u32.to_be_bytes());
    be.extend_from_slice(&0u64.to_be_bytes());
    be.extend_from_slice(&0u64.to_be_bytes());
    let e = assert_err(&be, &["big-endian"]);
    assert!(matches!(e, FormatError::GgufBigEndian { .. }));
    assert_err(b"FUGG\0\0\0\x03", &["big-endian"]);
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let e = assert_err(&Raw::header(3, u64::MAX, 0).buf, &["tensor infos", "18446744073709551615"]);
    assert!(matches!(e, FormatError::GgufCount { .. }));
    assert_err(&Raw::header(3, 0, 1 << 40).buf, &["metadata entries"]);
    // Counts that would just fit a real file are fine; one more is not.
    let mut r = Raw::header(3, 0, 1);
    r.kv("k", &GgufValue::U8(1));
    assert!(parse(&r.buf).is_ok());
    r.buf[16..24].copy_from_slice(&2u64.to_le_bytes());
    assert!(parse(&r.buf).is_err());
}

#[test]
fn lengths_beyond_the_file_are_refused() {
    // A key claiming 2^40 bytes.
    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 40).bytes(b"abc").bytes(&[0; 16]);
    let e = assert_err(&r.buf, &["key of metadata entry #0", "1099511627776 bytes needed"]);
    assert!(matches!(e, FormatError::GgufTruncated { .. }));

    // A string value claiming more than is left.
    let mut r = Raw::header(3, 0, 1);
    r.str("tokenizer.ggml.model").u32(8).u64(100).bytes(b"gpt2");
    assert_err(&r.buf, &["`tokenizer.ggml.model`", "100 bytes needed"]);

    // Arrays whose element count cannot fit in what is left.
    for (elem, len) in [(4u32, 1u64 << 61), (8, 1 << 40), (9, 1 << 40), (0, u64::MAX), (10, u64::MAX / 4)] {
        let mut r = Raw::header(3, 0, 1);
        r.str("tokenizer.ggml.tokens").u32(9).u32(elem).u64(len).bytes(&[0; 64]);
        let e = assert_err(&r.buf, &["`tokenizer.ggml.tokens`", "array of", "remain in the file"]);
        assert!(matches!(e, FormatError::GgufBadValue { .. }), "{e:?}");
    }
    // A string array whose count fits the bytes but whose strings do not.
    let mut r = Raw::header(3, 0, 1);
    r.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(3).str("a").u64(1 << 50);
    r.u64(0);
    assert_err(&r.buf, &["`tokenizer.ggml.tokens`", "string array element"]);
}

#[test]
fn value_level_problems_name_the_key() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k.type").u32(13).u32(0);
    assert_err(&r.buf, &["`k.type`", "value type id 13"]);

    let mut r = Raw::header(3, 0, 1);
    r.str("k.elem").u32(9).u32(77).u64(0);
    assert_err(&r.buf, &["`k.elem`", "array element type id 77"]);

    let mut r = Raw::header(3, 0, 1);
    r.str("k.bool").u32(7).u8(2);
    assert_err(&r.buf, &["`k.bool`", "byte 2"]);

    let mut r = Raw::header(3, 0, 1);
    r.str("k.bools").u32(9).u32(7).u64(3).bytes(&[1, 0, 9]);
    assert_err(&r.buf, &["`k.bools`", "element 2", "byte 9"]);

    let mut r = Raw::header(3, 0, 1);
    r.str("k.utf8").u32(8).u64(2).bytes(&[0xc3, 0x28]);
    let e = assert_err(&r.buf, &["`k.utf8`", "not valid UTF-8"]);
    assert!(matches!(e, FormatError::GgufNotUtf8 { .. }));

    let mut r = Raw::header(3, 0, 1);
    r.u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1);
    assert_err(&r.buf, &["key of metadata entry #0", "not valid UTF-8"]);

    let mut r = Raw::header(3, 0, 2);
    r.kv("k.same", &GgufValue::U8(1)).kv("k.same", &GgufValue::U8(2));
    let e = assert_err(&r.buf, &["`k.same`", "twice"]);
    assert!(matches!(e, FormatError::GgufDuplicateKey { .. }));
}

/// `depth` arrays nested inside each other, the innermost holding one u8.
fn nested(depth: usize) -> GgufArray {
    let mut a = GgufArray::U8(vec![1]);
    for _ in 1..depth {
        a = GgufArray::Array(vec![a]);
    }
    a
}

#[test]
fn nesting_depth_is_limited() {
    let mut r = Raw::header(3, 0, 1);
    r.kv("k.deep", &GgufValue::Array(nested(qmoe_formats::gguf::GGUF_MAX_ARRAY_DEPTH)));
    assert_eq!(parse(&r.buf).unwrap().get_array("k.deep").unwrap().depth(), 8);
    let mut r = Raw::header(3, 0, 1);
    r.kv("k.deeper", &GgufValue::Array(nested(qmoe_formats::gguf::GGUF_MAX_ARRAY_DEPTH + 1)));
    assert_err(&r.buf, &["`k.deeper`", "nested more than 8"]);
    // A very deep claim fails on depth, not on the stack.
    let mut r = Raw::header(3, 0, 1);
    r.str("k.bomb").u32(9);
    for _ in 0..100_000 {
        r.u32(9).u64(1);
    }
    assert_err(&r.buf, &["`k.bomb`", "nested"]);
}

fn one_tensor(name: &str, ne: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut r = Raw::header(3, 1, 0);
    r.tensor_info(name, ne, ty, offset).pad(32).bytes(&vec![0u8; data]);
    r.buf
}

#[test]
fn tensor_dims_are_checked() {
    assert!(parse(&one_tensor("w", &[4, 2], 0, 0, 32)).is_ok());
    let e = assert_err(&one_tensor("w.five", &[1, 1, 1, 1, 1], 0, 0, 4), &["`w.five`", "5 dimensions"]);
    assert!(matches!(e, FormatError::GgufBadTensor { .. }));
    assert_err(&one_tensor("w.zero", &[4, 0], 0, 0, 32), &["`w.zero`", "ne[1] is 0"]);
    assert_err(&one_tensor("w.huge", &[1 << 40, 1 << 40], 0, 0, 32), &["`w.huge`", "overflows the element count"]);
    assert_err(&one_tensor("w.neg", &[u64::MAX], 0, 0, 32), &["`w.neg`", "int64"]);
    assert_err(&one_tensor("w.bytes", &[1 << 61, 4], 0, 0, 32), &["`w.bytes`", "overflows"]);
    assert_err(&one_tensor("w.block", &[100, 2], 12, 0, 1000), &["`w.block`", "ne[0] = 100", "Q4_K block size 256"]);
    // n_dims = 0 is a scalar of one element.
    let f = parse(&one_tensor("w.scalar", &[], 0, 0, 4)).unwrap();
    assert_eq!((f.tensors()[0].numel(), f.tensors()[0].byte_len()), (1, 4));
}

#[test]
fn tensor_placement_is_checked() {
    assert_err(&one_tensor("w.short", &[4, 2], 0, 0, 31), &["`w.short`", "32 data bytes", "past the end"]);
    assert_err(&one_tensor("w.far", &[4], 0, 1 << 62, 64), &["`w.far`", "past the end"]);
    assert_err(&one_tensor("w.wrap", &[4], 0, u64::MAX - 31, 64), &["`w.wrap`"]);
    assert_err(&one_tensor("w.unaligned", &[4], 0, 8, 64), &["`w.unaligned`", "offset 8", "alignment 32"]);

    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("a", &[16], 0, 0).tensor_info("b", &[8], 0, 32).pad(32).bytes(&[0; 96]);
    let e = assert_err(&r.buf, &["`b`", "overlaps tensor `a`", "ends at 64"]);
    assert!(matches!(e, FormatError::GgufTensorOverlap { .. }));

    // Overlap is found whatever the order of the infos.
    let mut r = Raw::header(3, 3, 0);
    r.tensor_info("c", &[8], 0, 64)
        .tensor_info("a", &[64], 0, 0)
        .tensor_info("b", &[8], 0, 128)
        .pad(32)
        .bytes(&[0; 256]);
    assert_err(&r.buf, &["overlaps tensor `a`"]);

    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("dup", &[8], 0, 0).tensor_info("dup", &[8], 0, 32).pad(32).bytes(&[0; 64]);
    let e = assert_err(&r.buf, &["`dup`", "twice"]);
    assert!(matches!(e, FormatError::GgufDuplicateTensor { .. }));

    // An unknown type cannot be sized; with no room before the next tensor it is refused.
    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("x", &[8], 99, 0).tensor_info("y", &[8], 0, 0).pad(32).bytes(&[0; 64]);
    assert!(parse(&r.buf).is_err());
    let mut r = Raw::header(3, 1, 0);
    r.tensor_info("x", &[8], 99, 0).pad(32);
    assert_err(&r.buf, &["`x`", "unknown ggml type 99", "cannot be sized"]);
}

//! GGUF writer: round trips of metadata of every type and tensors of several
//! types, a tokenizer-sized vocabulary, the layout it produces, and each misuse
//! refused with an error naming the file (and tensor).

mod gguf_common;

use std::time::Instant;

use gguf_common::{TempDir, PATH};
use qmoe_core::GgmlType;
use qmoe_formats::gguf::{GGML_MAX_NAME, GGUF_MAX_ARRAY_DEPTH};
use qmoe_formats::{ggml_ne_to_shape, shape_to_ggml_ne, FormatError, GgufArray, GgufFile, GgufValue, GgufWriter};

fn every_value() -> Vec<(String, GgufValue)> {
    let kvs: Vec<(&str, GgufValue)> = vec![
        ("general.architecture", "qwen35moe".into()),
        ("t.u8", 1u8.into()),
        ("t.i8", (-1i8).into()),
        ("t.u16", 2u16.into()),
        ("t.i16", (-2i16).into()),
        ("t.u32", 3u32.into()),
        ("t.i32", (-3i32).into()),
        ("t.f32", 0.25f32.into()),
        ("t.bool", false.into()),
        ("t.str", "日本語 text".into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f64", (-0.125f64).into()),
        ("t.a_u8", vec![0u8, 255].into()),
        ("t.a_i8", vec![i8::MIN, i8::MAX].into()),
        ("t.a_u16", vec![u16::MAX].into()),
        ("t.a_i16", vec![i16::MIN].into()),
        ("t.a_u32", vec![u32::MAX, 0].into()),
        ("t.a_i32", vec![11i32, 11, 10, 0].into()),
        ("t.a_f32", vec![f32::MIN_POSITIVE, -0.0].into()),
        ("t.a_bool", vec![true, false].into()),
        ("t.a_str", vec!["".to_string(), "Ġthe".into(), "<|im_start|>".into()].into()),
        ("t.a_u64", vec![1u64 << 63].into()),
        ("t.a_i64", vec![-7i64].into()),
        ("t.a_f64", vec![f64::MAX].into()),
        ("t.a_empty_str", Vec::<String>::new().into()),
        (
            "t.a_nested",
            vec![
                GgufArray::Array(vec![GgufArray::F32(vec![1.0])]),
                GgufArray::Bool(vec![true]),
                GgufArray::I64(vec![]),
            ]
            .into(),
        ),
    ];
    kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Deterministic filler bytes.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn tensors() -> Vec<(&'static str, GgmlType, Vec<u64>)> {
    vec![
        ("token_embd.weight", GgmlType::Q4K, vec![512, 6]),
        ("output_norm.weight", GgmlType::F32, vec![7]),
        ("blk.0.attn_qkv.weight", GgmlType::BF16, vec![16, 3]),
        ("blk.0.attn_gate.weight", GgmlType::F16, vec![5, 2]),
        ("blk.0.ffn_gate_exps.weight", GgmlType::Q8_0, vec![64, 3, 4]),
        ("blk.0.ffn_down_exps.weight", GgmlType::Q6K, vec![256, 2, 2, 1]),
        ("blk.0.ssm_out.weight", GgmlType::IQ4XS, vec![256, 1]),
    ]
}

fn write(path: &std::path::Path, alignment: u32) -> Vec<Vec<u8>> {
    let mut w = GgufWriter::new(path, alignment).unwrap();
    for (k, v) in every_value() {
        w.add_metadata(k, v).unwrap();
    }
    let mut datas = Vec::new();
    for (i, (name, ty, ne)) in tensors().into_iter().enumerate() {
        let n = w.add_tensor(name, ty, &ne).unwrap();
        datas.push(pattern(n as usize, i as u8));
    }
    for ((name, _, _), data) in tensors().iter().zip(&datas) {
        w.write_tensor_data(name, data).unwrap();
    }
    w.finish().unwrap();
    datas
}

#[test]
fn round_trip_every_value_type_and_tensor_type() {
    for alignment in [32, 64, 8] {
        let dir = TempDir::new("rt");
        let path = dir.join("m.gguf");
        let datas = write(&path, alignment);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), alignment);
        let mut want = every_value();
        if alignment != 32 {
            want.insert(0, ("general.alignment".into(), GgufValue::U32(alignment)));
        }
        assert_eq!(f.metadata(), want.as_slice());
        // -0.0 and the smallest normal survive bit for bit.
        let a = f.get_f32_array("t.a_f32").unwrap();
        assert_eq!((a[0].to_bits(), a[1].to_bits()), (f32::MIN_POSITIVE.to_bits(), (-0.0f32).to_bits()));
        assert_eq!(f.tensors().len(), tensors().len());
        for (t, ((name, ty, ne), data)) in f.tensors().iter().zip(tensors().iter().zip(&datas)) {
            assert_eq!(t.name, *name);
            assert_eq!(t.ggml_type().unwrap(), *ty);
            assert_eq!(&t.ne, ne);
            assert_eq!(t.offset % alignment as u64, 0);
            assert_eq!(t.bytes().unwrap(), data.as_slice(), "{name}");
        }
        // Padded after every tensor, the last included, like llama.cpp's writer.
        let last = f.tensors().last().unwrap();
        let end = f.data_start() + last.offset + last.byte_len() as u64;
        assert_eq!(f.file_len(), end.div_ceil(alignment as u64) * alignment as u64);
    }
}

#[test]
fn header_only_and_metadata_only_files() {
    let dir = TempDir::new("empty");
    let p = dir.join("e.gguf");
    GgufWriter::new(&p, 32).unwrap().finish().unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());

    let mut w = GgufWriter::new(&p, 32).unwrap();
    w.add_metadata("general.architecture", "qwen3next").unwrap();
    w.write_header().unwrap();
    w.finish().unwrap();
    assert_eq!(GgufFile::open(&p).unwrap().architecture().unwrap(), "qwen3next");
}

/// A Qwen3.5-sized tokenizer: 248320 token strings, ~247k merges, i32 token types.
#[test]
fn tokenizer_sized_string_arrays_round_trip() {
    let dir = TempDir::new("tok");
    let path = dir.join("tok.gguf");
    let tokens: Vec<String> = (0..248_320).map(|i| format!("tok{i}Ġ")).collect();
    let merges: Vec<String> = (0..247_587).map(|i| format!("a{} b{}", i % 977, i / 977)).collect();
    let types: Vec<i32> = (0..248_320).map(|i| if i >= 248_044 { 3 } else { 1 }).collect();
    let t0 = Instant::now();
    let mut w = GgufWriter::new(&path, 32).unwrap();
    w.add_metadata("tokenizer.ggml.model", "gpt2").unwrap();
    w.add_metadata("tokenizer.ggml.pre", "qwen35").unwrap();
    w.add_metadata("tokenizer.ggml.tokens", tokens.clone()).unwrap();
    w.add_metadata("tokenizer.ggml.merges", merges.clone()).unwrap();
    w.add_metadata("tokenizer.ggml.token_type", types.clone()).unwrap();
    w.add_metadata("tokenizer.ggml.eos_token_id", 248_046u32).unwrap();
    w.finish().unwrap();
    let write_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let read_s = t1.elapsed().as_secs_f64();
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap(), tokens.as_slice());
    assert_eq!(f.get_str_array("tokenizer.ggml.merges").unwrap(), merges.as_slice());
    assert_eq!(f.get_i32_array("tokenizer.ggml.token_type").unwrap(), types.as_slice());
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 248_046);
    eprintln!("tokenizer metadata: wrote in {write_s:.3} s, read in {read_s:.3} s ({} bytes)", f.file_len());
}

/// The identity `ggml_ne_to_shape` documents: a 2-D weight with ne `{in, out}`
/// is byte-identical to the row-major `[out, in]` matrix.
#[test]
fn ne_in_out_is_row_major_out_in() {
    let (out_dim, in_dim) = (3usize, 5usize);
    // HF weight [out, in], row-major: w[o][i] = 10 * o + i.
    let hf: Vec<f32> = (0..out_dim).flat_map(|o| (0..in_dim).map(move |i| (10 * o + i) as f32)).collect();
    let bytes: Vec<u8> = hf.iter().flat_map(|x| x.to_le_bytes()).collect();
    let ne = shape_to_ggml_ne(&[out_dim, in_dim]);
    assert_eq!(ne, vec![in_dim as u64, out_dim as u64]);

    let dir = TempDir::new("ne");
    let p = dir.join("w.gguf");
    let mut w = GgufWriter::new(&p, 32).unwrap();
    w.add_tensor("blk.0.attn_q.weight", GgmlType::F32, &ne).unwrap();
    w.write_tensor_data("blk.0.attn_q.weight", &bytes).unwrap();
    w.finish().unwrap();

    let f = GgufFile::open(&p).unwrap();
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.ne, vec![5, 3]);
    assert_eq!(ggml_ne_to_shape(&t.ne), vec![out_dim, in_dim]);
    let back = t.to_f32_vec().unwrap();
    assert_eq!(back, hf);
    // Element (o, i) sits at o * in + i: ne[0] = in is the fastest axis.
    assert_eq!(back[2 * in_dim + 4], 24.0);
}

fn writer(dir: &TempDir) -> GgufWriter {
    GgufWriter::new(&dir.join(PATH), 32).unwrap()
}

fn assert_msg<T: std::fmt::Debug>(r: Result<T, FormatError>, fragments: &[&str]) {
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains(PATH), "does not name the file: {msg}");
    for f in fragments {
        assert!(msg.contains(f), "`{msg}` lacks `{f}`");
    }
}

#[test]
fn misuse_is_refused_with_names() {
    let dir = TempDir::new("misuse");
    assert_msg(GgufWriter::new(&dir.join(PATH), 48), &["alignment 48"]);
    assert_msg(GgufWriter::new(&dir.join(PATH), 0), &["alignment 0"]);

    let mut w = writer(&dir);
    w.add_metadata("k", 1u8).unwrap();
    assert_msg(w.add_metadata("k", 2u8), &["`k` added twice"]);
    assert_msg(w.add_metadata("general.alignment", 64u32), &["general.alignment", "aligns to 32"]);
    assert_msg(w.add_metadata("general.alignment", 32u64), &["general.alignment"]);
    w.add_metadata("general.alignment", 32u32).unwrap();
    let mut deep = GgufArray::U8(vec![]);
    for _ in 0..GGUF_MAX_ARRAY_DEPTH {
        deep = GgufArray::Array(vec![deep]);
    }
    assert_msg(w.add_metadata("k.deep", deep), &["`k.deep`", "nested 9 deep"]);

    let long = "x".repeat(GGML_MAX_NAME);
    assert_msg(w.add_tensor(long.as_str(), GgmlType::F32, &[1]), &["64 bytes"]);
    assert_msg(w.add_tensor("w.block", GgmlType::Q4K, &[128, 2]), &["`w.block`", "ne[0] = 128", "Q4_K block size 256"]);
    assert_msg(w.add_tensor("w.zero", GgmlType::F32, &[4, 0]), &["`w.zero`", "zero dim"]);
    assert_msg(w.add_tensor("w.big", GgmlType::F32, &[1 << 40, 1 << 40]), &["`w.big`"]);
    assert_msg(w.add_tensor("w.dims", GgmlType::F32, &[1, 1, 1, 1, 1]), &["`w.dims`", "1 to 4 dims"]);
    assert_msg(w.add_tensor("w.none", GgmlType::F32, &[]), &["`w.none`"]);
    assert_eq!(w.add_tensor("a", GgmlType::F32, &[4]).unwrap(), 16);
    assert_eq!(w.add_tensor("b", GgmlType::Q8_0, &[32, 2]).unwrap(), 68);
    assert_msg(w.add_tensor("a", GgmlType::F32, &[4]), &["`a`", "declared twice"]);

    assert_msg(w.write_tensor_data("b", &[0; 68]), &["`b`", "out of order", "`a`"]);
    assert_msg(w.write_tensor_data("zzz", &[0; 16]), &["`zzz`", "not declared"]);
    assert_msg(w.write_tensor_data("a", &[0; 15]), &["`a`", "15 bytes given", "takes 16"]);
    w.write_tensor_data("a", &[0; 16]).unwrap();
    assert_msg(w.write_tensor_data("a", &[0; 16]), &["`a`", "written twice"]);
    assert_msg(w.add_metadata("late", 1u8), &["`late`", "after the header"]);
    assert_msg(w.add_tensor("late", GgmlType::F32, &[4]), &["`late`", "after the header"]);
    assert_msg(w.write_header(), &["header"]);
    // Finishing early names the first missing tensor, and the file is unreadable.
    assert_msg(w.finish(), &["1 of 2 tensors", "`b`"]);
    assert!(GgufFile::open(&dir.join(PATH)).is_err());

    let mut w = writer(&dir);
    w.add_tensor("only", GgmlType::F32, &[1]).unwrap();
    w.write_tensor_data("only", &[0; 4]).unwrap();
    assert_msg(w.write_tensor_data("only", &[0; 4]), &["`only`", "written twice"]);
    assert_msg(w.write_tensor_data("other", &[0; 4]), &["`other`", "not declared"]);
    w.finish().unwrap();

    assert_msg(GgufWriter::new(&dir.join("no-such-dir").join(PATH), 32), &["No such file"]);
}

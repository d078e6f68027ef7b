//! The tensor gate: everything wrong with a checkpoint, reported at once
//! before any weight is used.
//!
//! The loader records a [`Problem`] instead of stopping at the first one, so
//! a user learns in one run that (say) 61,690 tensors are unexpected and 12
//! are missing, with the first names of each kind.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// How many names of each kind the report lists.
const SHOWN: usize = 20;

#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    Missing {
        name: String,
        what: String,
    },
    Shape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Wrong dtype, contradictory quantization, expert index gaps, ...
    Invalid {
        name: String,
        reason: String,
    },
}

/// The gate's verdict on a checkpoint that does not match its config.
#[derive(Clone, Debug)]
pub struct GateReport {
    pub dir: PathBuf,
    pub problems: Vec<Problem>,
    pub unexpected: Vec<String>,
    /// Recognised tensors that are deliberately not used, by group.
    pub ignored: BTreeMap<String, usize>,
}

impl GateReport {
    pub fn missing(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| matches!(p, Problem::Missing { .. }))
    }
    pub fn misshaped(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| matches!(p, Problem::Shape { .. }))
    }
    pub fn invalid(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| matches!(p, Problem::Invalid { .. }))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { name, what } => write!(f, "`{name}` (needed for {what})"),
            Problem::Shape { name, file, expected, found } => {
                write!(f, "`{name}` in {} has shape {found:?}, expected {expected:?}", file.display())
            }
            Problem::Invalid { name, reason } => write!(f, "`{name}`: {reason}"),
        }
    }
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, s, i) = (self.missing().count(), self.misshaped().count(), self.invalid().count());
        write!(
            f,
            "{}: the tensors do not match the config: {m} missing, {s} mis-shaped, {} unexpected, {i} invalid",
            self.dir.display(),
            self.unexpected.len()
        )?;
        let mut section = |label: &str, items: Vec<String>| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            write!(f, "\n  {label}:")?;
            for it in items.iter().take(SHOWN) {
                write!(f, "\n    {it}")?;
            }
            if items.len() > SHOWN {
                write!(f, "\n    ... and {} more", items.len() - SHOWN)?;
            }
            Ok(())
        };
        section("missing", self.missing().map(|p| p.to_string()).collect())?;
        section("mis-shaped", self.misshaped().map(|p| p.to_string()).collect())?;
        section("invalid", self.invalid().map(|p| p.to_string()).collect())?;
        section("unexpected", self.unexpected.iter().map(|n| format!("`{n}`")).collect())
    }
}

//! The checkpoint's quantization scheme, read from its config (spec 4.4, 4.6).
//!
//! The config says what a tensor *should* be; the loader checks that the
//! tensor's own shapes agree and reports a contradiction instead of guessing
//! (the "8-bit router read as 4-bit" bug is exactly a silent guess).

use serde_json::Value;

/// MLX affine parameters of one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffineParams {
    pub bits: u32,
    pub group: usize,
}

/// What the config says about one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleQuant {
    /// No statement (no quantization config, or MLX with no global setting):
    /// parameters are inferred from shapes.
    Unspecified,
    /// Explicitly left in float (`false` per-path entry, FP8 `modules_to_not_convert`).
    Float,
    Affine(AffineParams),
}

#[derive(Clone, Debug, Default)]
pub enum QuantScheme {
    #[default]
    None,
    /// HF FP8 releases: E4M3 weights with `weight_scale_inv` block scales.
    Fp8 { block: [usize; 2], not_converted: Vec<String> },
    /// MLX `quantization` section: a global setting plus per-path overrides.
    Mlx { global: Option<AffineParams>, overrides: Vec<(String, ModuleQuant)> },
}

impl QuantScheme {
    /// Parses the raw `quantization_config` / `quantization` value. Errors are
    /// messages naming the field; the caller adds the file.
    pub fn from_config(q: Option<&Value>) -> Result<QuantScheme, String> {
        let Some(q) = q else { return Ok(QuantScheme::None) };
        let obj = q.as_object().ok_or_else(|| format!("quantization config must be an object, found {q}"))?;
        match obj.get("quant_method").and_then(Value::as_str) {
            Some("fp8") => {
                let block = match obj.get("weight_block_size") {
                    Some(Value::Array(a)) if a.len() == 2 => {
                        let d = |v: &Value| v.as_u64().filter(|&x| x > 0).map(|x| x as usize);
                        match (d(&a[0]), d(&a[1])) {
                            (Some(r), Some(c)) => [r, c],
                            _ => {
                                return Err(format!(
                                    "quantization_config.weight_block_size must be two positive integers, found {}",
                                    obj["weight_block_size"]
                                ))
                            }
                        }
                    }
                    Some(other) => {
                        return Err(format!(
                            "quantization_config.weight_block_size must be [rows, cols], found {other}"
                        ))
                    }
                    None => return Err(
                        "quantization_config.weight_block_size is missing (per-tensor FP8 scales are not supported)"
                            .into(),
                    ),
                };
                if let Some(f) = obj.get("fmt").and_then(Value::as_str) {
                    if f != "e4m3" {
                        return Err(format!("quantization_config.fmt = {f} is not supported (only e4m3)"));
                    }
                }
                let not_converted = obj
                    .get("modules_to_not_convert")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                Ok(QuantScheme::Fp8 { block, not_converted })
            }
            Some(other) => Err(format!("quantization method `{other}` is not supported (supported: fp8, MLX affine)")),
            None => {
                if let Some(mode) = obj.get("mode").and_then(Value::as_str) {
                    if mode != "affine" {
                        return Err(format!("MLX quantization mode `{mode}` is not supported (only affine)"));
                    }
                }
                let global = affine_params(obj.get("bits"), obj.get("group_size"), "quantization")?;
                let mut overrides = Vec::new();
                for (k, v) in obj {
                    let entry = match v {
                        Value::Bool(false) => ModuleQuant::Float,
                        Value::Object(o) => {
                            if let Some(mode) = o.get("mode").and_then(Value::as_str) {
                                if mode != "affine" {
                                    return Err(format!(
                                        "quantization.{k}.mode `{mode}` is not supported (only affine)"
                                    ));
                                }
                            }
                            match affine_params(o.get("bits"), o.get("group_size"), &format!("quantization.{k}"))? {
                                Some(p) => ModuleQuant::Affine(p),
                                None => return Err(format!("quantization.{k} needs bits and group_size")),
                            }
                        }
                        _ => continue,
                    };
                    overrides.push((k.clone(), entry));
                }
                Ok(QuantScheme::Mlx { global, overrides })
            }
        }
    }

    /// What the config says about the module at `path` (tensor name without
    /// `.weight`, in the checkpoint's own namespace).
    pub fn module(&self, path: &str) -> ModuleQuant {
        match self {
            QuantScheme::None => ModuleQuant::Unspecified,
            QuantScheme::Fp8 { not_converted, .. } => {
                if not_converted.iter().any(|m| path == m || path.starts_with(&format!("{m}."))) {
                    ModuleQuant::Float
                } else {
                    ModuleQuant::Unspecified
                }
            }
            QuantScheme::Mlx { global, overrides } => match overrides.iter().find(|(k, _)| k == path) {
                Some((_, q)) => *q,
                None => global.map(ModuleQuant::Affine).unwrap_or(ModuleQuant::Unspecified),
            },
        }
    }
}

fn affine_params(bits: Option<&Value>, group: Option<&Value>, field: &str) -> Result<Option<AffineParams>, String> {
    match (bits, group) {
        (None, None) => Ok(None),
        (Some(b), Some(g)) => {
            let bits = b.as_u64().filter(|b| matches!(b, 2 | 3 | 4 | 5 | 6 | 8));
            let group = g.as_u64().filter(|g| *g > 0);
            match (bits, group) {
                (Some(b), Some(g)) => Ok(Some(AffineParams { bits: b as u32, group: g as usize })),
                _ => Err(format!(
                    "{field}: bits must be 2, 3, 4, 5, 6 or 8 and group_size positive, found bits {b}, group_size {g}"
                )),
            }
        }
        _ => Err(format!("{field}: bits and group_size go together")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mlx_overrides_and_global() {
        let q = json!({"group_size": 32, "bits": 4, "mode": "affine",
            "language_model.model.layers.0.mlp.gate": {"group_size": 64, "bits": 8},
            "language_model.model.layers.0.mlp.shared_expert_gate": false});
        let s = QuantScheme::from_config(Some(&q)).unwrap();
        assert_eq!(
            s.module("language_model.model.layers.0.mlp.gate"),
            ModuleQuant::Affine(AffineParams { bits: 8, group: 64 })
        );
        assert_eq!(s.module("language_model.model.layers.0.mlp.shared_expert_gate"), ModuleQuant::Float);
        assert_eq!(
            s.module("language_model.model.layers.0.mlp.switch_mlp.up_proj"),
            ModuleQuant::Affine(AffineParams { bits: 4, group: 32 })
        );
    }

    #[test]
    fn fp8_block_and_exclusions() {
        let q = json!({"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [24, 48], "modules_to_not_convert": ["lm_head", "model.layers.1.linear_attn.out_proj"]});
        let s = QuantScheme::from_config(Some(&q)).unwrap();
        assert!(matches!(s, QuantScheme::Fp8 { block: [24, 48], .. }));
        assert_eq!(s.module("model.layers.1.linear_attn.out_proj"), ModuleQuant::Float);
        assert_eq!(s.module("model.layers.11.linear_attn.out_proj"), ModuleQuant::Unspecified);
    }

    #[test]
    fn refusals_name_the_field() {
        for (q, needle) in [
            (json!({"quant_method": "awq"}), "awq"),
            (json!({"quant_method": "fp8"}), "weight_block_size"),
            (json!({"bits": 7, "group_size": 64}), "bits"),
            (json!({"bits": 4}), "together"),
            (json!({"mode": "mxfp4", "bits": 4, "group_size": 32}), "mxfp4"),
        ] {
            let e = QuantScheme::from_config(Some(&q)).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}

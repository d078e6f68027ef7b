//! Chat templates: turn a conversation (OpenAI-style message objects) into the prompt text the
//! model was trained on, byte for byte as transformers' `apply_chat_template` renders it.
//!
//! Why MiniJinja needs configuring: transformers renders with jinja2 in a particular setup, and
//! any byte of difference changes the prompt ids. We reproduce that setup:
//! * `trim_blocks` + `lstrip_blocks`, no trailing-newline keeping, no auto-escaping;
//! * `tojson` = Python `json.dumps(ensure_ascii=False)` (private module `pyjson`) instead of
//!   MiniJinja's HTML-safe one — tool schemas containing `<`, `>`, `&` or `'` depend on it;
//! * Python string/dict methods (`.startswith`, `.split`, `.rstrip('\n')`, `.items()` …) via
//!   `minijinja-contrib`'s pycompat callback;
//! * `raise_exception(msg)`, surfaced as [`RuntimeError::TemplateRaised`] with the message;
//! * the special tokens of `tokenizer_config.json` (`bos_token`, `eos_token`, …) as variables,
//!   overridable by caller kwargs, as transformers does;
//! * `tools` is `none` when not given (transformers passes `tools=None`, so `tools is defined`).
//!
//! Not provided: transformers' `strftime_now` and the `{% generation %}` tag (no Qwen template
//! uses them); a template that does fails with a render/syntax error, not silently.
//!
//! Message and tool objects keep their key order (serde_json `preserve_order` → MiniJinja
//! `preserve_order`), which matters for `tool | tojson` and `arguments|items`.

use std::path::Path;

use minijinja::value::Kwargs;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde_json::{Map, Value as Json};

use crate::error::{Result, RuntimeError};
use crate::model_dir::{read_json_if_exists, read_text};
use crate::pyjson::{self, DumpOptions};

/// Name under which the single template is stored in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Special-token fields of tokenizer_config.json that transformers exposes to templates.
const SPECIAL_TOKEN_FIELDS: [&str; 8] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
];

/// Variables the renderer sets itself; `extra` may not override them.
const RESERVED_KWARGS: [&str; 3] = ["messages", "tools", "add_generation_prompt"];

/// A compiled chat template plus the special-token variables it may use.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// Where the template came from (a path, or a caller-given label), for error messages.
    origin: String,
    /// `bos_token`, `eos_token`, … in tokenizer_config.json order; strings, or lists of strings.
    special_tokens: Vec<(String, Value)>,
}

/// Marks an error as coming from the template's own `raise_exception` call.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Loads the template of a model folder: `chat_template.jinja` if present, else the
    /// `chat_template` field of `tokenizer_config.json` (a string, or a list of
    /// `{name, template}` from which "default" is taken), else `chat_template.json`
    /// (`{"chat_template": "..."}`, as multimodal processors ship it). Special tokens come from
    /// `tokenizer_config.json` when it exists.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<ChatTemplate> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_exists(&config_path)?;
        let special_tokens = match &config {
            Some(config) => special_tokens_of(config),
            None => Vec::new(),
        };

        let jinja_path = dir.join("chat_template.jinja");
        let (source, origin) = if jinja_path.exists() {
            (read_text(&jinja_path)?, jinja_path)
        } else if let Some(source) =
            config.as_ref().map(|c| template_from_config(c, &config_path)).transpose()?.flatten()
        {
            (source, config_path)
        } else {
            let json_path = dir.join("chat_template.json");
            match read_json_if_exists(&json_path)? {
                Some(json) => match template_from_config(&json, &json_path)? {
                    Some(source) => (source, json_path),
                    None => return Err(RuntimeError::MissingChatTemplate { dir: dir.to_path_buf() }),
                },
                None => return Err(RuntimeError::MissingChatTemplate { dir: dir.to_path_buf() }),
            }
        };
        let mut template = ChatTemplate::from_source(source, origin.display().to_string())?;
        template.special_tokens = special_tokens;
        Ok(template)
    }

    /// Loads a template file on its own (no special-token variables).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ChatTemplate> {
        let path = path.as_ref();
        ChatTemplate::from_source(read_text(path)?, path.display().to_string())
    }

    /// Compiles template text; `origin` labels it in errors (a path or any description).
    pub fn from_source(source: impl Into<String>, origin: impl Into<String>) -> Result<ChatTemplate> {
        let source = source.into();
        let origin = origin.into();
        let mut env = Environment::new();
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        // Only fails for custom delimiters, which we do not set; map it anyway.
        let syntax =
            syntax.build().map_err(|source| RuntimeError::TemplateSyntax { origin: origin.clone(), source })?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|source| RuntimeError::TemplateSyntax { origin: origin.clone(), source })?;
        Ok(ChatTemplate { env, source, origin, special_tokens: Vec::new() })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Sets (or replaces) a special-token variable such as `bos_token`.
    pub fn set_special_token(&mut self, name: &str, value: &str) {
        let value = Value::from(value);
        match self.special_tokens.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.special_tokens.push((name.to_string(), value)),
        }
    }

    /// Renders a conversation.
    ///
    /// `messages`: message objects (`role`, `content` string or parts list, `reasoning_content`,
    /// `tool_calls`, …) passed to the template unchanged. `tools`: JSON tool schemas, `None` for
    /// none. `extra`: template kwargs such as `enable_thinking` or `preserve_thinking`; they
    /// override special-token variables but not `messages`/`tools`/`add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String> {
        if let Some(name) = RESERVED_KWARGS.iter().find(|name| extra.contains_key(**name)) {
            return Err(RuntimeError::ReservedTemplateKwarg { name: name.to_string() });
        }
        let mut context: Vec<(String, Value)> = self.special_tokens.clone();
        for (name, value) in extra {
            match context.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = json_to_value(value),
                None => context.push((name.clone(), json_to_value(value))),
            }
        }
        context.push(("messages".into(), Value::from(messages.iter().map(json_to_value).collect::<Vec<_>>())));
        let tools = match tools {
            Some(tools) => Value::from(tools.iter().map(json_to_value).collect::<Vec<_>>()),
            None => Value::from(()),
        };
        context.push(("tools".into(), tools));
        context.push(("add_generation_prompt".into(), Value::from(add_generation_prompt)));

        let template = self.env.get_template(TEMPLATE_NAME).map_err(|source| self.render_error(source))?;
        template.render(Value::from_pairs(context)).map_err(|source| self.render_error(source))
    }

    fn render_error(&self, err: Error) -> RuntimeError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = cause {
            if let Some(raised) = e.downcast_ref::<Raised>() {
                return RuntimeError::TemplateRaised { origin: self.origin.clone(), message: raised.0.clone() };
            }
            cause = e.source();
        }
        RuntimeError::TemplateRender { origin: self.origin.clone(), source: err }
    }
}

/// `raise_exception(message)`: jinja2 templates' way to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `value | tojson(indent=None, ensure_ascii=False, separators=None, sort_keys=False)` with
/// Python's output (transformers' filter signature, keyword arguments only).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let mut opts = DumpOptions::default();
    if let Some(ensure_ascii) = kwargs.get::<Option<bool>>("ensure_ascii")? {
        opts.ensure_ascii = ensure_ascii;
    }
    if let Some(indent) = kwargs.get::<Option<Value>>("indent")? {
        if let Some(n) = indent.as_usize() {
            opts.indent = Some(" ".repeat(n));
        } else if let Some(s) = indent.as_str() {
            opts.indent = Some(s.to_string());
        } else if !indent.is_none() {
            return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an int or a string"));
        }
        if opts.indent.is_some() {
            // Python's default separators once indent is set.
            opts.item_separator = ",".to_string();
        }
    }
    if let Some(separators) = kwargs.get::<Option<Value>>("separators")? {
        if !separators.is_none() {
            let parts: Vec<Value> = separators.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] if item.as_str().is_some() && key.as_str().is_some() => {
                    opts.item_separator = item.as_str().unwrap_or_default().to_string();
                    opts.key_separator = key.as_str().unwrap_or_default().to_string();
                }
                _ => {
                    return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair of strings"))
                }
            }
        }
    }
    if let Some(sort_keys) = kwargs.get::<Option<bool>>("sort_keys")? {
        opts.sort_keys = sort_keys;
    }
    kwargs.assert_all_used()?;
    Ok(Value::from_safe_string(pyjson::dumps(value, &opts)?))
}

/// serde_json value → template value, keeping object key order and int/float distinction.
fn json_to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(json_to_value).collect::<Vec<_>>()),
        Json::Object(map) => Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v)))),
    }
}

/// Special-token variables from tokenizer_config.json. Tokens are plain strings or AddedToken
/// objects (`{"content": …}`); null and other shapes are left out (the template sees them as
/// undefined).
fn special_tokens_of(config: &Json) -> Vec<(String, Value)> {
    fn token_text(v: &Json) -> Option<String> {
        match v {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        }
    }
    let mut out = Vec::new();
    for field in SPECIAL_TOKEN_FIELDS {
        let Some(v) = config.get(field) else { continue };
        let value = match v {
            Json::Array(items) => {
                Some(Value::from(items.iter().filter_map(token_text).map(Value::from).collect::<Vec<_>>()))
            }
            v => token_text(v).map(Value::from),
        };
        if let Some(value) = value {
            out.push((field.to_string(), value));
        }
    }
    out
}

/// The `chat_template` field: a string, or a list of `{name, template}` (take "default").
/// `Ok(None)` when the field is absent or null.
fn template_from_config(config: &Json, path: &Path) -> Result<Option<String>> {
    let problem = |problem: &str| RuntimeError::ConfigField {
        path: path.to_path_buf(),
        field: "chat_template".into(),
        problem: problem.into(),
    };
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(named)) => {
            for entry in named {
                if entry.get("name").and_then(Json::as_str) == Some("default") {
                    return match entry.get("template") {
                        Some(Json::String(s)) => Ok(Some(s.clone())),
                        _ => Err(problem("entry \"default\" has no string `template`")),
                    };
                }
            }
            Err(problem("is a list of named templates without one named \"default\""))
        }
        Some(_) => Err(problem("must be a string or a list of {name, template} objects")),
    }
}

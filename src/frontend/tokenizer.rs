//! The model's tokenizer: text ↔ token ids, special tokens, EOS ids and the chat template.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// Everything that can go wrong while loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required file is absent.
    #[error("{path}: file not found")]
    MissingFile { path: PathBuf },
    /// A file exists but could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A field holds the wrong type or an impossible value. `origin` names the file (or
    /// "GGUF metadata") so the message points at what to fix.
    #[error("{origin}: field `{field}`: {message}")]
    Field {
        origin: String,
        field: String,
        message: String,
    },
    /// The `tokenizers` crate rejected a tokenizer definition.
    #[error("{origin}: cannot build tokenizer: {message}")]
    Build { origin: String, message: String },
    /// Encoding text failed.
    #[error("encode failed: {0}")]
    Encode(String),
    /// Decoding ids failed.
    #[error("decode failed: {0}")]
    Decode(String),
}

impl TokenizerError {
    pub(crate) fn field(
        origin: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        TokenizerError::Field {
            origin: origin.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A loaded tokenizer plus the facts about special tokens that generation and chat
/// templating need.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Every id that ends generation (tokenizer EOS, generation_config and config).
    pub eos_token_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Whether `encode(text, true)` starts with BOS, i.e. a raw prompt gets one.
    pub add_bos: bool,
    chat_template: Option<String>,
}

/// The parts of a tokenizer that its source (HF directory or GGUF) decides.
pub(crate) struct TokenizerParts {
    pub inner: tokenizers::Tokenizer,
    pub eos_token_ids: Vec<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
}

impl Tokenizer {
    pub(crate) fn from_parts(parts: TokenizerParts) -> Tokenizer {
        let bos_id = parts
            .bos_token
            .as_deref()
            .and_then(|t| parts.inner.token_to_id(t));
        // Probe instead of reading `add_bos_token`: the post-processor in tokenizer.json
        // is what actually adds BOS, whatever tokenizer_config.json claims.
        let add_bos = match (bos_id, parts.inner.encode_fast("", true)) {
            (Some(bos), Ok(enc)) => enc.get_ids().first() == Some(&bos),
            _ => false,
        };
        Tokenizer {
            inner: parts.inner,
            eos_token_ids: parts.eos_token_ids,
            bos_token: parts.bos_token,
            eos_token: parts.eos_token,
            add_bos,
            chat_template: parts.chat_template,
        }
    }

    /// Loads a Hugging Face layout directory: `tokenizer.json` (required),
    /// `tokenizer_config.json`, `generation_config.json`, `config.json` (optional), and the
    /// chat template from tokenizer_config.json, `chat_template.jinja` or
    /// `chat_template.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(TokenizerError::MissingFile {
                path: tokenizer_path,
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            TokenizerError::Build {
                origin: tokenizer_path.display().to_string(),
                message: e.to_string(),
            }
        })?;

        let config = read_optional_json(&dir.join("tokenizer_config.json"))?;
        const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
        let (bos_token, eos_token, mut chat_template) = match &config {
            Some(config) => (
                special_token(config, TOKENIZER_CONFIG, "bos_token")?,
                special_token(config, TOKENIZER_CONFIG, "eos_token")?,
                chat_template_field(config, TOKENIZER_CONFIG)?,
            ),
            None => (None, None, None),
        };
        if chat_template.is_none() {
            chat_template = read_separate_chat_template(dir)?;
        }

        let mut eos_token_ids = Vec::new();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_token_ids.push(id);
        }
        for file in ["generation_config.json", "config.json"] {
            if let Some(json) = read_optional_json(&dir.join(file))? {
                for id in eos_ids_field(&json, file)? {
                    if !eos_token_ids.contains(&id) {
                        eos_token_ids.push(id);
                    }
                }
            }
        }

        Ok(Tokenizer::from_parts(TokenizerParts {
            inner,
            eos_token_ids,
            bos_token,
            eos_token,
            chat_template,
        }))
    }

    /// The Jinja chat template shipped with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Text of `ids`; unknown ids are dropped rather than failing.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped `tokenizers` tokenizer, for callers that need offsets or batching.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Json>, TokenizerError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// `bos_token` / `eos_token`: a string, `{"content": "..."}` (AddedToken form), or null.
fn special_token(config: &Json, file: &str, field: &str) -> Result<Option<String>, TokenizerError> {
    let bad = |found: &Json| {
        TokenizerError::field(
            file,
            field,
            format!(
                "expected string or object with content, found {}",
                json_kind(found)
            ),
        )
    };
    match config.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(obj)) => match obj.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(other)),
            None => Err(TokenizerError::field(
                file,
                field,
                "expected string or object with content, found object without `content`",
            )),
        },
        Some(other) => Err(bad(other)),
    }
}

/// `chat_template`: a string, or a list of `{name, template}` of which "default" is used.
fn chat_template_field(config: &Json, file: &str) -> Result<Option<String>, TokenizerError> {
    const FIELD: &str = "chat_template";
    match config.get(FIELD) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(entries)) => {
            let mut default = None;
            for (i, entry) in entries.iter().enumerate() {
                let name = entry.get("name").and_then(Json::as_str);
                let template = entry.get("template").and_then(Json::as_str);
                match (name, template) {
                    (Some(name), Some(template)) => {
                        if name == "default" {
                            default = Some(template.to_string());
                        }
                    }
                    _ => {
                        return Err(TokenizerError::field(
                            file,
                            format!("{FIELD}[{i}]"),
                            format!(
                                "expected object with string `name` and `template`, found {}",
                                json_kind(entry)
                            ),
                        ))
                    }
                }
            }
            if default.is_none() {
                tracing::warn!(
                    "{file}: `{FIELD}` lists named templates but none is called \"default\"; \
                     chat requests will be refused"
                );
            }
            Ok(default)
        }
        Some(other) => Err(TokenizerError::field(
            file,
            FIELD,
            format!(
                "expected string or list of {{name, template}}, found {}",
                json_kind(other)
            ),
        )),
    }
}

/// Newer checkpoints keep the template beside tokenizer_config.json.
fn read_separate_chat_template(dir: &Path) -> Result<Option<String>, TokenizerError> {
    let jinja = dir.join("chat_template.jinja");
    match fs::read_to_string(&jinja) {
        Ok(text) => return Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TokenizerError::Io {
                path: jinja,
                source,
            })
        }
    }
    const FILE: &str = "chat_template.json";
    match read_optional_json(&dir.join(FILE))? {
        Some(json) => chat_template_field(&json, FILE),
        None => Ok(None),
    }
}

/// `eos_token_id`: absent, null, an id or a list of ids.
fn eos_ids_field(json: &Json, file: &str) -> Result<Vec<u32>, TokenizerError> {
    const FIELD: &str = "eos_token_id";
    let as_id = |v: &Json| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match json.get(FIELD) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                as_id(item).ok_or_else(|| {
                    TokenizerError::field(
                        file,
                        format!("{FIELD}[{i}]"),
                        format!("expected token id, found {}", json_kind(item)),
                    )
                })
            })
            .collect(),
        Some(other) => as_id(other).map(|id| vec![id]).ok_or_else(|| {
            TokenizerError::field(
                file,
                FIELD,
                format!(
                    "expected token id or list of ids, found {}",
                    json_kind(other)
                ),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tiny word-level tokenizer.json, enough to exercise the file handling.
    fn tiny_tokenizer_json() -> Json {
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "</s>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
            },
            "decoder": null,
            "model": {
                "type": "WordLevel",
                "vocab": {"<s>": 0, "</s>": 1, "hello": 2, "world": 3, "<unk>": 4, "<eot>": 5},
                "unk_token": "<unk>"
            }
        })
    }

    fn write_dir(files: &[(&str, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn tokenizer_json() -> (&'static str, String) {
        ("tokenizer.json", tiny_tokenizer_json().to_string())
    }

    #[test]
    fn loads_dir_with_object_tokens_and_eos_union() {
        let dir = write_dir(&[
            tokenizer_json(),
            (
                "tokenizer_config.json",
                json!({
                    "bos_token": {"content": "<s>", "lstrip": false},
                    "eos_token": "</s>",
                    "chat_template": [
                        {"name": "tool_use", "template": "T"},
                        {"name": "default", "template": "D"}
                    ]
                })
                .to_string(),
            ),
            (
                "generation_config.json",
                json!({"eos_token_id": [1, 5]}).to_string(),
            ),
            ("config.json", json!({"eos_token_id": 3}).to_string()),
        ]);
        let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(tok.bos_token.as_deref(), Some("<s>"));
        assert_eq!(tok.eos_token.as_deref(), Some("</s>"));
        assert_eq!(tok.chat_template(), Some("D"));
        assert_eq!(tok.eos_token_ids, vec![1, 5, 3]);
        assert!(tok.add_bos);
        assert_eq!(tok.encode("hello world", true).unwrap(), vec![0, 2, 3]);
        assert_eq!(tok.encode("hello world", false).unwrap(), vec![2, 3]);
        assert_eq!(tok.decode(&[0, 2, 3], true).unwrap(), "hello world");
        assert_eq!(tok.vocab_size(), 6);
        assert_eq!(tok.token_to_id("world"), Some(3));
        assert_eq!(tok.id_to_token(2).as_deref(), Some("hello"));
        assert_eq!(tok.id_to_token(99), None);
    }

    #[test]
    fn string_template_and_missing_optional_files() {
        let dir = write_dir(&[
            tokenizer_json(),
            (
                "tokenizer_config.json",
                json!({"chat_template": "{{ x }}", "bos_token": null}).to_string(),
            ),
        ]);
        let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(tok.chat_template(), Some("{{ x }}"));
        assert_eq!(tok.bos_token, None);
        assert!(!tok.add_bos);
        assert!(tok.eos_token_ids.is_empty());
    }

    #[test]
    fn separate_chat_template_file_is_used() {
        let dir = write_dir(&[tokenizer_json(), ("chat_template.jinja", "J".into())]);
        let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(tok.chat_template(), Some("J"));
    }

    #[test]
    fn missing_tokenizer_json_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn wrong_eos_token_type_names_file_and_field() {
        let dir = write_dir(&[
            tokenizer_json(),
            ("tokenizer_config.json", json!({"eos_token": 7}).to_string()),
        ]);
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            "tokenizer_config.json: field `eos_token`: expected string or object with content, \
             found number"
        );
    }

    #[test]
    fn bad_eos_id_and_bad_json_are_errors() {
        let dir = write_dir(&[
            tokenizer_json(),
            (
                "generation_config.json",
                json!({"eos_token_id": [1, "x"]}).to_string(),
            ),
        ]);
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("generation_config.json: field `eos_token_id[1]`"),
            "{err}"
        );

        let dir = write_dir(&[tokenizer_json(), ("config.json", "{not json".into())]);
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json: invalid JSON"), "{err}");

        let dir = write_dir(&[
            tokenizer_json(),
            (
                "tokenizer_config.json",
                json!({"chat_template": 3}).to_string(),
            ),
        ]);
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("field `chat_template`"), "{err}");
    }

    #[test]
    fn broken_tokenizer_json_is_an_error() {
        let dir = write_dir(&[("tokenizer.json", "{}".into())]);
        let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json: cannot build tokenizer"),
            "{err}"
        );
    }
}

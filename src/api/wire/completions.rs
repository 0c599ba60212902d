//! `/v1/completions` wire types: the request (prompt as text, texts, token ids or lists
//! of them), the response and the streamed chunks.
//!
//! Request fields are all `Option` (`null` = absent); `frontend::validate` applies the
//! defaults.

use serde::de::{Error as _, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

use super::common::{ExtraFields, Stop, StreamOptions, Usage};

/// `object` of completion responses and of their streamed chunks (as OpenAI streams).
pub const TEXT_COMPLETION_OBJECT: &str = "text_completion";
/// Prefix of completion response ids.
pub const COMPLETION_ID_PREFIX: &str = "cmpl";

/// The body of `POST /v1/completions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// vLLM extra; -1 and 0 turn it off.
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub n: Option<i64>,
    /// Accepted only when equal to `n` (surge has no best-of selection).
    pub best_of: Option<i64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub seed: Option<Number>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    /// Number of top alternatives per token, 0..=20.
    pub logprobs: Option<i64>,
    /// Return the prompt before the completion.
    pub echo: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    /// vLLM extra, default true: text prompts get BOS.
    pub add_special_tokens: Option<bool>,
    /// For the caller's logs only (OpenAI); accepted and ignored.
    pub user: Option<String>,
    /// Insertion is not supported: only absent or `null`.
    pub suffix: Option<Value>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// `prompt`: a string, a list of strings, token ids, or lists of token ids. Ids are
/// `i64` so that a negative one reaches validation and gets a clear 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

impl<'de> Deserialize<'de> for Prompt {
    // By hand rather than `untagged`, so that the error says what is expected. An empty
    // list reads as `Texts(vec![])`, which validation refuses.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a string, a list of strings, a list of token ids \
                                or a list of lists of token ids";
        fn ids(items: &[Value]) -> Option<Vec<i64>> {
            items.iter().map(Value::as_i64).collect()
        }
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(Prompt::Text(s)),
            Value::Array(items) => match items.first() {
                None => Ok(Prompt::Texts(Vec::new())),
                Some(Value::String(_)) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect::<Option<_>>()
                    .map(Prompt::Texts)
                    .ok_or_else(|| D::Error::custom(EXPECTED)),
                Some(Value::Number(_)) => ids(&items)
                    .map(Prompt::Tokens)
                    .ok_or_else(|| D::Error::custom(EXPECTED)),
                Some(Value::Array(_)) => items
                    .iter()
                    .map(|v| v.as_array().and_then(|list| ids(list)))
                    .collect::<Option<_>>()
                    .map(Prompt::TokenLists)
                    .ok_or_else(|| D::Error::custom(EXPECTED)),
                Some(_) => Err(D::Error::custom(EXPECTED)),
            },
            _ => Err(D::Error::custom(EXPECTED)),
        }
    }
}

/// A non-streaming completion response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    /// Always [`TEXT_COMPLETION_OBJECT`].
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

impl CompletionResponse {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<CompletionChoice>,
        usage: Usage,
    ) -> Self {
        Self {
            id,
            object: TEXT_COMPLETION_OBJECT.to_string(),
            created,
            model,
            choices,
            usage,
        }
    }
}

/// One choice of a completion response or chunk. With several prompts, choice
/// `index` = prompt index × n + choice index within the prompt (as vLLM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    /// `null` unless the request set `logprobs`.
    pub logprobs: Option<CompletionLogprobs>,
    /// `null` until the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// The legacy logprobs object: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for a token without one (the first prompt token under echo).
    pub token_logprobs: Vec<Option<f32>>,
    /// `{token: logprob}` per token, most likely first.
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// `{token: logprob, …}` in the order given (most likely first); a JSON object, so a
/// repeated token string keeps only its first entry, as in a Python dict built the same
/// way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<_> = self
            .0
            .iter()
            .filter(|(token, _)| seen.insert(token.as_str()))
            .collect();
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (token, logprob) in entries {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TopLogprobMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = TopLogprobMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of token to logprob")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = access.next_entry::<String, f32>()? {
                    entries.push(entry);
                }
                Ok(TopLogprobMap(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// One streamed completion chunk; `usage` only on the extra last chunk sent when
/// `stream_options.include_usage` is true (with `choices: []`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChunk {
    pub id: String,
    /// Always [`TEXT_COMPLETION_OBJECT`].
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl CompletionChunk {
    pub fn new(id: String, created: u64, model: String, choices: Vec<CompletionChoice>) -> Self {
        Self {
            id,
            object: TEXT_COMPLETION_OBJECT.to_string(),
            created,
            model,
            choices,
            usage: None,
        }
    }

    /// The final usage chunk: no choices.
    pub fn usage_only(id: String, created: u64, model: String, usage: Usage) -> Self {
        Self {
            usage: Some(usage),
            ..Self::new(id, created, model, Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_matches_openai_json() {
        let expected = json!({
            "id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m",
            "choices": [{
                "index": 0, "text": " world",
                "logprobs": {
                    "tokens": [" world"],
                    "token_logprobs": [-0.5],
                    "top_logprobs": [{" world": -0.5, " there": -2.0}],
                    "text_offset": [5]
                },
                "finish_reason": "length"
            }, {
                "index": 1, "text": "!", "logprobs": null, "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        });
        let response = CompletionResponse::new(
            "cmpl-1".into(),
            7,
            "m".into(),
            vec![
                CompletionChoice {
                    index: 0,
                    text: " world".into(),
                    logprobs: Some(CompletionLogprobs {
                        tokens: vec![" world".into()],
                        token_logprobs: vec![Some(-0.5)],
                        top_logprobs: vec![Some(TopLogprobMap(vec![
                            (" world".into(), -0.5),
                            (" there".into(), -2.0),
                        ]))],
                        text_offset: vec![5],
                    }),
                    finish_reason: Some("length".into()),
                },
                CompletionChoice {
                    index: 1,
                    text: "!".into(),
                    logprobs: None,
                    finish_reason: Some("stop".into()),
                },
            ],
            Usage::new(2, 2),
        );
        let value = serde_json::to_value(&response).unwrap();
        assert_eq!(value, expected);
        // Order of the top-logprob object is kept on the wire.
        let text = serde_json::to_string(&response).unwrap();
        assert!(text.contains(r#"{" world":-0.5," there":-2.0}"#), "{text}");
        // From text, not from `expected`: a `Value` object does not keep key order.
        let back: CompletionResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn chunks_match_openai_json() {
        let chunk = CompletionChunk::new(
            "cmpl-1".into(),
            7,
            "m".into(),
            vec![CompletionChoice {
                index: 0,
                text: "Hi".into(),
                logprobs: None,
                finish_reason: None,
            }],
        );
        let expected = json!({
            "id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "text": "Hi", "logprobs": null, "finish_reason": null}]
        });
        assert_eq!(serde_json::to_value(&chunk).unwrap(), expected);
        assert_eq!(
            serde_json::from_value::<CompletionChunk>(expected).unwrap(),
            chunk
        );
        let usage = CompletionChunk::usage_only("cmpl-1".into(), 7, "m".into(), Usage::new(1, 2));
        assert_eq!(
            serde_json::to_value(&usage).unwrap(),
            json!({"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m",
                   "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
        );
    }

    #[test]
    fn duplicate_top_logprob_tokens_keep_the_first() {
        let map = TopLogprobMap(vec![("a".into(), -1.0), ("a".into(), -2.0)]);
        assert_eq!(serde_json::to_value(&map).unwrap(), json!({"a": -1.0}));
    }

    #[test]
    fn prompt_forms() {
        let parse = |v: Value| serde_json::from_value::<Prompt>(v);
        assert_eq!(parse(json!("a")).unwrap(), Prompt::Text("a".into()));
        assert_eq!(
            parse(json!(["a", "b"])).unwrap(),
            Prompt::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse(json!([1, -2])).unwrap(), Prompt::Tokens(vec![1, -2]));
        assert_eq!(
            parse(json!([[1], [2, 3]])).unwrap(),
            Prompt::TokenLists(vec![vec![1], vec![2, 3]])
        );
        assert_eq!(parse(json!([])).unwrap(), Prompt::Texts(vec![]));
        for bad in [
            json!(1),
            json!(["a", 1]),
            json!([1, "a"]),
            json!([1.5]),
            json!([[1], "a"]),
            json!({}),
            json!([null]),
        ] {
            let err = parse(bad.clone()).unwrap_err().to_string();
            assert!(err.contains("list of token ids"), "{bad}: {err}");
        }
    }
}

//! `/v1/chat/completions` wire types: the request as OpenAI and vLLM define it, the
//! response, and the streamed chunks.
//!
//! Every request field is an `Option` so that `null` reads as absent and a request can
//! be parsed one key at a time (validation uses that to name the field a type error is
//! in); defaults are applied by `frontend::validate`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Number, Value};

use super::common::{ExtraFields, Stop, StreamOptions, Usage};

/// `object` of a chat response.
pub const CHAT_COMPLETION_OBJECT: &str = "chat.completion";
/// `object` of a streamed chat chunk.
pub const CHAT_COMPLETION_CHUNK_OBJECT: &str = "chat.completion.chunk";
/// Prefix of chat response ids.
pub const CHAT_COMPLETION_ID_PREFIX: &str = "chatcmpl";

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; both are accepted.
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// vLLM extra; -1 and 0 turn it off.
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<i64>>,
    /// Any integer on the wire so that a negative one gets a clear 400.
    pub seed: Option<Number>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    /// For the caller's logs only (OpenAI); accepted and ignored.
    pub user: Option<String>,
    /// vLLM extra, default true: end the prompt with the assistant header.
    pub add_generation_prompt: Option<bool>,
    /// vLLM extra, default false: the template already adds BOS.
    pub add_special_tokens: Option<bool>,
    /// Only `{"type": "text"}` is supported.
    pub response_format: Option<ResponseFormat>,
    /// Every other key; refused by validation unless it is a known no-op.
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// `response_format`: kept open so that validation can name what it refuses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// One message of a chat request, as sent (validation turns it into a `ChatMessage`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChatMessageIn {
    pub role: Option<String>,
    /// `null` is allowed for assistant messages (OpenAI), read as empty.
    pub content: Option<ChatContent>,
    pub name: Option<String>,
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// A message's content: a string or a list of parts.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatContent {
    Text(String),
    Parts(Vec<ChatContentPart>),
}

impl<'de> Deserialize<'de> for ChatContent {
    // By hand rather than `untagged`, so that the error says what is expected.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(ChatContent::Text(s)),
            Value::Array(parts) => parts
                .into_iter()
                .map(|part| ChatContentPart::deserialize(part).map_err(D::Error::custom))
                .collect::<Result<_, _>>()
                .map(ChatContent::Parts),
            _ => Err(D::Error::custom(
                "expected a string or a list of content parts",
            )),
        }
    }
}

/// One content part; any `type` parses, validation accepts only `text`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChatContentPart {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// A non-streaming chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// Always [`CHAT_COMPLETION_OBJECT`].
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

impl ChatCompletionResponse {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        choices: Vec<ChatChoice>,
        usage: Usage,
    ) -> Self {
        Self {
            id,
            object: CHAT_COMPLETION_OBJECT.to_string(),
            created,
            model,
            choices,
            usage,
        }
    }
}

/// One choice of a chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatResponseMessage,
    /// `null` unless the request set `logprobs: true`.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length` or `abort`.
    pub finish_reason: Option<String>,
}

/// The generated message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponseMessage {
    /// Always `assistant`.
    pub role: String,
    pub content: Option<String>,
}

impl ChatResponseMessage {
    pub fn assistant(content: String) -> Self {
        Self {
            role: "assistant".to_string(),
            content: Some(content),
        }
    }
}

/// `logprobs` of a chat choice or chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatLogprobToken>,
}

/// One generated token with its logprob and the `top_logprobs` most likely ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobToken {
    pub token: String,
    /// Pass through `common::wire_logprob` (JSON has no -inf).
    pub logprob: f32,
    /// UTF-8 bytes of the token (OpenAI: `null` when it has no byte form).
    pub bytes: Option<Vec<u8>>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// One alternative in `top_logprobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// One streamed chat chunk (`data: {…}`).
///
/// `usage` is left out of every chunk except the extra last one sent when
/// `stream_options.include_usage` is true (that one has `choices: []`), and, with
/// `continuous_usage_stats` too, every chunk carries the usage so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always [`CHAT_COMPLETION_CHUNK_OBJECT`].
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatCompletionChunk {
    /// A chunk with choices and no usage.
    pub fn new(id: String, created: u64, model: String, choices: Vec<ChatChunkChoice>) -> Self {
        Self {
            id,
            object: CHAT_COMPLETION_CHUNK_OBJECT.to_string(),
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

/// One choice's part of a chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    /// `null` until the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// What a chunk adds to the message: the first chunk of a choice carries the role
/// (and `content: ""`), later ones text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl ChatDelta {
    /// The first delta of a choice: `{"role":"assistant","content":""}`.
    pub fn role() -> Self {
        Self {
            role: Some("assistant".to_string()),
            content: Some(String::new()),
        }
    }

    pub fn text(content: String) -> Self {
        Self {
            role: None,
            content: Some(content),
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
            "id": "chatcmpl-abc",
            "object": "chat.completion",
            "created": 1700000000u64,
            "model": "llama",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "logprobs": null,
                "finish_reason": "stop"
            }, {
                "index": 1,
                "message": {"role": "assistant", "content": "Hi"},
                "logprobs": {"content": [{
                    "token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                    "top_logprobs": [
                        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                        {"token": "Hey", "logprob": -1.5, "bytes": null}
                    ]
                }]},
                "finish_reason": "length"
            }],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
        });
        let response = ChatCompletionResponse::new(
            "chatcmpl-abc".into(),
            1_700_000_000,
            "llama".into(),
            vec![
                ChatChoice {
                    index: 0,
                    message: ChatResponseMessage::assistant("Hello!".into()),
                    logprobs: None,
                    finish_reason: Some("stop".into()),
                },
                ChatChoice {
                    index: 1,
                    message: ChatResponseMessage::assistant("Hi".into()),
                    logprobs: Some(ChatLogprobs {
                        content: vec![ChatLogprobToken {
                            token: "Hi".into(),
                            logprob: -0.25,
                            bytes: Some(b"Hi".to_vec()),
                            top_logprobs: vec![
                                ChatTopLogprob {
                                    token: "Hi".into(),
                                    logprob: -0.25,
                                    bytes: Some(b"Hi".to_vec()),
                                },
                                ChatTopLogprob {
                                    token: "Hey".into(),
                                    logprob: -1.5,
                                    bytes: None,
                                },
                            ],
                        }],
                    }),
                    finish_reason: Some("length".into()),
                },
            ],
            Usage::new(9, 2),
        );
        assert_eq!(serde_json::to_value(&response).unwrap(), expected);
        let back: ChatCompletionResponse = serde_json::from_value(expected).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn chunks_match_openai_json() {
        let first = ChatCompletionChunk::new(
            "chatcmpl-1".into(),
            5,
            "m".into(),
            vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta::role(),
                logprobs: None,
                finish_reason: None,
            }],
        );
        let expected_first = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                         "logprobs": null, "finish_reason": null}]
        });
        assert_eq!(serde_json::to_value(&first).unwrap(), expected_first);

        let last = ChatCompletionChunk::new(
            "chatcmpl-1".into(),
            5,
            "m".into(),
            vec![ChatChunkChoice {
                index: 0,
                delta: ChatDelta::text("!".into()),
                logprobs: None,
                finish_reason: Some("stop".into()),
            }],
        );
        assert_eq!(
            serde_json::to_value(&last).unwrap()["choices"][0],
            json!({"index": 0, "delta": {"content": "!"}, "logprobs": null, "finish_reason": "stop"})
        );
        let empty_delta = serde_json::to_value(ChatDelta::default()).unwrap();
        assert_eq!(empty_delta, json!({}));

        let usage =
            ChatCompletionChunk::usage_only("chatcmpl-1".into(), 5, "m".into(), Usage::new(3, 1));
        let expected_usage = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        });
        assert_eq!(serde_json::to_value(&usage).unwrap(), expected_usage);
        let back: ChatCompletionChunk = serde_json::from_value(expected_usage).unwrap();
        assert_eq!(back, usage);
        let back_first: ChatCompletionChunk = serde_json::from_value(expected_first).unwrap();
        assert_eq!(back_first, first);
    }

    #[test]
    fn request_reads_nulls_as_absent_and_keeps_unknown_keys() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": null, "messages": [{"role": "user", "content": "hi", "x": 1}],
            "temperature": null, "stop": null, "stream_options": null, "seed": 18446744073709551615u64,
            "tools": [], "foo": "bar"
        }))
        .unwrap();
        assert_eq!(req.model, None);
        assert_eq!(req.temperature, None);
        assert_eq!(req.seed.as_ref().and_then(Number::as_u64), Some(u64::MAX));
        assert_eq!(req.extra.len(), 2);
        assert!(req.extra.contains_key("tools") && req.extra.contains_key("foo"));
        let messages = req.messages.unwrap();
        assert_eq!(messages[0].content, Some(ChatContent::Text("hi".into())));
        assert!(messages[0].extra.contains_key("x"));

        let parts: ChatContent = serde_json::from_value(json!([
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "http://x"}}
        ]))
        .unwrap();
        let ChatContent::Parts(parts) = parts else {
            panic!("parts expected")
        };
        assert_eq!(parts[1].kind.as_deref(), Some("image_url"));
        assert!(serde_json::from_value::<ChatContent>(json!(3)).is_err());
    }
}

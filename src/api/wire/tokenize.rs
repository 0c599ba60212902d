//! vLLM's `/tokenize` and `/detokenize` wire types.

use serde::{Deserialize, Serialize};

use super::chat::ChatMessageIn;
use super::common::ExtraFields;

/// The body of `POST /tokenize`: exactly one of `prompt` (raw text) or `messages`
/// (rendered with the chat template first).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    /// Default true for `prompt`, false for `messages` (the template adds BOS), as vLLM.
    pub add_special_tokens: Option<bool>,
    /// `messages` only; default true.
    pub add_generation_prompt: Option<bool>,
    /// vLLM extra: also return each token's string.
    pub return_token_strs: Option<bool>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// The answer of `/tokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    /// Only when `return_token_strs` was true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

/// The body of `POST /detokenize`. Ids are `i64` so that a negative one gets a 400
/// naming `tokens`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Option<Vec<i64>>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// The answer of `/detokenize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_match_vllm_json() {
        let tokenized = TokenizeResponse {
            count: 2,
            max_model_len: 8192,
            tokens: vec![128000, 9906],
            token_strs: None,
        };
        assert_eq!(
            serde_json::to_value(&tokenized).unwrap(),
            json!({"count": 2, "max_model_len": 8192, "tokens": [128000, 9906]})
        );
        let with_strs = TokenizeResponse {
            token_strs: Some(vec!["<|begin_of_text|>".into(), "Hello".into()]),
            ..tokenized
        };
        let value = serde_json::to_value(&with_strs).unwrap();
        assert_eq!(value["token_strs"], json!(["<|begin_of_text|>", "Hello"]));
        assert_eq!(
            serde_json::from_value::<TokenizeResponse>(value).unwrap(),
            with_strs
        );
        assert_eq!(
            serde_json::to_value(DetokenizeResponse {
                prompt: "Hello".into()
            })
            .unwrap(),
            json!({"prompt": "Hello"})
        );
    }

    #[test]
    fn requests_parse_either_form() {
        let prompt: TokenizeRequest = serde_json::from_value(
            json!({"model": "m", "prompt": "hi", "add_special_tokens": false}),
        )
        .unwrap();
        assert_eq!(prompt.prompt.as_deref(), Some("hi"));
        assert_eq!(prompt.add_special_tokens, Some(false));
        let chat: TokenizeRequest = serde_json::from_value(
            json!({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": true}),
        )
        .unwrap();
        assert_eq!(chat.messages.map(|m| m.len()), Some(1));
        let detok: DetokenizeRequest = serde_json::from_value(json!({"tokens": [1, 2]})).unwrap();
        assert_eq!(detok.tokens, Some(vec![1, 2]));
    }
}

//! Wire pieces every API shares: usage, vLLM's error body, `stop`, stream options, ids.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::frontend::validate::ValidationError;

/// Keys of a request object that its struct does not name; validation refuses them.
pub type ExtraFields = Map<String, Value>;

/// The logprob sent for a token whose logprob is `-inf` or NaN: JSON has no infinity,
/// and vLLM clamps to the same floor.
pub const MIN_WIRE_LOGPROB: f32 = -9999.0;

/// A logprob as it goes on the wire (finite, at least [`MIN_WIRE_LOGPROB`]).
pub fn wire_logprob(logprob: f32) -> f32 {
    if logprob.is_nan() {
        MIN_WIRE_LOGPROB
    } else {
        logprob.max(MIN_WIRE_LOGPROB)
    }
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh response id: `chatcmpl-…` for chat, `cmpl-…` for completions.
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Token counts of one response (`usage`), present in every non-streaming response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// vLLM's error body: `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorInfo,
}

/// The inside of [`ErrorResponse`]; `code` is the HTTP status, as vLLM sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: u16,
}

impl ErrorResponse {
    /// An error whose `type` follows from `status` (see [`error_kind`]).
    pub fn new(status: u16, message: impl Into<String>, param: Option<String>) -> Self {
        Self {
            error: ErrorInfo {
                message: message.into(),
                kind: error_kind(status).to_string(),
                param,
                code: status,
            },
        }
    }
}

impl From<&ValidationError> for ErrorResponse {
    fn from(err: &ValidationError) -> Self {
        Self {
            error: ErrorInfo {
                message: err.message.clone(),
                kind: err.kind.to_string(),
                param: err.param.clone(),
                code: err.status,
            },
        }
    }
}

/// The error `type` for an HTTP status: the OpenAI SDK's exception names, which vLLM
/// also uses.
pub fn error_kind(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        409 => "ConflictError",
        413 => "RequestTooLargeError",
        422 => "UnprocessableEntityError",
        429 => "RateLimitError",
        503 => "ServiceUnavailableError",
        500..=599 => "InternalServerError",
        _ => "BadRequestError",
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

impl Serialize for Stop {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Stop::One(s) => s.serialize(serializer),
            Stop::Many(v) => v.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Stop {
    // By hand rather than `untagged`, whose error ("did not match any variant") does
    // not tell the client what is expected.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected a string or a list of strings";
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(Stop::One(s)),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(D::Error::custom(EXPECTED)),
                })
                .collect::<Result<_, _>>()
                .map(Stop::Many),
            _ => Err(D::Error::custom(EXPECTED)),
        }
    }
}

/// `stream_options`; only allowed together with `stream: true`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]` with `usage` and no choices.
    pub include_usage: Option<bool>,
    /// vLLM's per-chunk usage; surge accepts only false.
    pub continuous_usage_stats: Option<bool>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_body_has_vllm_shape() {
        let err = ErrorResponse::new(404, "The model `x` does not exist.", Some("model".into()));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
                             "param": "model", "code": 404}})
        );
        let no_param = ErrorResponse::new(400, "bad", None);
        assert_eq!(
            serde_json::to_value(&no_param).unwrap()["error"]["param"],
            Value::Null
        );
        let back: ErrorResponse =
            serde_json::from_value(serde_json::to_value(&err).unwrap()).unwrap();
        assert_eq!(back, err);
    }

    #[test]
    fn stop_is_a_string_or_a_list() {
        let one: Stop = serde_json::from_value(json!("x")).unwrap();
        assert_eq!(one.clone().into_vec(), vec!["x"]);
        let many: Stop = serde_json::from_value(json!(["a", "b"])).unwrap();
        assert_eq!(many.clone().into_vec(), vec!["a", "b"]);
        assert_eq!(serde_json::to_value(&one).unwrap(), json!("x"));
        assert_eq!(serde_json::to_value(&many).unwrap(), json!(["a", "b"]));
        for bad in [json!(1), json!(["a", 1]), json!({"a": 1}), json!(true)] {
            let err = serde_json::from_value::<Stop>(bad).unwrap_err();
            assert!(err.to_string().contains("list of strings"), "{err}");
        }
    }

    #[test]
    fn usage_totals_and_logprob_floor() {
        assert_eq!(
            serde_json::to_value(Usage::new(3, 4)).unwrap(),
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        );
        assert_eq!(wire_logprob(f32::NEG_INFINITY), MIN_WIRE_LOGPROB);
        assert_eq!(wire_logprob(f32::NAN), MIN_WIRE_LOGPROB);
        assert_eq!(wire_logprob(-0.5), -0.5);
        assert!(response_id("chatcmpl").starts_with("chatcmpl-"));
        assert_ne!(response_id("cmpl"), response_id("cmpl"));
    }
}

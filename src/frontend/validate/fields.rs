//! Field-level checks shared by chat and completions: unknown and unsupported keys,
//! wire numbers into `SamplingParams`, chat messages into template messages.

use serde_json::{Number, Value};

use super::{ValidationError, MAX_N, MAX_STOP_BYTES, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS};
use crate::api::wire::chat::{ChatContent, ChatMessageIn};
use crate::api::wire::common::{ExtraFields, Stop};
use crate::engine::sampling_params::{SamplingParams, SamplingParamsError};
use crate::frontend::chat_template::{ChatMessage, MessageContent};

/// A field surge knows but does not implement: accepted only with a value that changes
/// nothing (`accepts`), refused otherwise with a message that names the feature.
pub(super) struct Unsupported {
    name: &'static str,
    accepts: fn(&Value) -> bool,
    feature: &'static str,
}

const fn field(
    name: &'static str,
    accepts: fn(&Value) -> bool,
    feature: &'static str,
) -> Unsupported {
    Unsupported {
        name,
        accepts,
        feature,
    }
}

fn null(v: &Value) -> bool {
    v.is_null()
}
fn null_or_false(v: &Value) -> bool {
    v.is_null() || *v == Value::Bool(false)
}
fn null_or_true(v: &Value) -> bool {
    v.is_null() || *v == Value::Bool(true)
}
fn null_or_bool(v: &Value) -> bool {
    v.is_null() || v.is_boolean()
}
fn null_or_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}
fn null_or_zero(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(0.0)
}
fn null_or_object(v: &Value) -> bool {
    v.is_null() || v.is_object()
}
fn no_tool_choice(v: &Value) -> bool {
    v.is_null() || *v == "none" || *v == "auto"
}
fn text_modality(v: &Value) -> bool {
    v.is_null() || *v == serde_json::json!(["text"])
}
fn default_service_tier(v: &Value) -> bool {
    v.is_null() || *v == "auto" || *v == "default"
}

/// Known chat fields beyond the ones `ChatCompletionRequest` names.
pub(super) const CHAT_FIELDS: &[Unsupported] = &[
    field("tools", null_or_empty, "tool calling"),
    field("tool_choice", no_tool_choice, "tool calling"),
    field("parallel_tool_calls", null_or_bool, "tool calling"),
    field("functions", null_or_empty, "function calling"),
    field("function_call", no_tool_choice, "function calling"),
    field("logit_bias", null_or_empty, "logit_bias"),
    field(
        "modalities",
        text_modality,
        "output modalities other than text",
    ),
    field("audio", null, "audio output"),
    field("prediction", null, "predicted outputs"),
    field("store", null_or_false, "stored completions"),
    field("metadata", null_or_object, "metadata"),
    field("service_tier", default_service_tier, "service tiers"),
    field("reasoning_effort", null, "reasoning_effort"),
    field("web_search_options", null, "web search"),
    field("echo", null_or_false, "echo in chat"),
    field(
        "continue_final_message",
        null_or_false,
        "continue_final_message",
    ),
    field("chat_template", null, "a per-request chat template"),
    field(
        "chat_template_kwargs",
        null_or_empty,
        "chat_template_kwargs",
    ),
    field("documents", null_or_empty, "documents"),
    field("min_tokens", null_or_zero, "min_tokens"),
    field(
        "include_stop_str_in_output",
        null_or_false,
        "include_stop_str_in_output",
    ),
    field("use_beam_search", null_or_false, "beam search"),
    field(
        "spaces_between_special_tokens",
        null_or_true,
        "spaces_between_special_tokens=false",
    ),
    field("priority", null_or_zero, "request priorities"),
    field("guided_json", null, "guided decoding"),
    field("guided_regex", null, "guided decoding"),
    field("guided_choice", null, "guided decoding"),
    field("guided_grammar", null, "guided decoding"),
    field("structured_outputs", null, "structured outputs"),
];

/// Known completion fields beyond the ones `CompletionRequest` names.
pub(super) const COMPLETION_FIELDS: &[Unsupported] = &[
    field("logit_bias", null_or_empty, "logit_bias"),
    field("min_tokens", null_or_zero, "min_tokens"),
    field(
        "include_stop_str_in_output",
        null_or_false,
        "include_stop_str_in_output",
    ),
    field("use_beam_search", null_or_false, "beam search"),
    field(
        "spaces_between_special_tokens",
        null_or_true,
        "spaces_between_special_tokens=false",
    ),
    field("priority", null_or_zero, "request priorities"),
    field(
        "response_format",
        text_format,
        "response formats other than text",
    ),
    field("guided_json", null, "guided decoding"),
    field("guided_regex", null, "guided decoding"),
    field("guided_choice", null, "guided decoding"),
    field("guided_grammar", null, "guided decoding"),
    field("structured_outputs", null, "structured outputs"),
];

fn text_format(v: &Value) -> bool {
    v.is_null() || *v == serde_json::json!({"type": "text"})
}

/// Known message fields beyond role, content, name and tool_call_id.
pub(super) const MESSAGE_FIELDS: &[Unsupported] = &[
    field("tool_calls", null_or_empty, "tool calling"),
    field("function_call", null, "function calling"),
    field("refusal", null, "refusal messages"),
    field("audio", null, "audio messages"),
];

/// Refuses every key of `extra` that is unknown, or known with a value that would
/// change the result. `prefix` makes nested names (`messages[0].`).
pub(super) fn check_extra(
    extra: &ExtraFields,
    known: &[Unsupported],
    prefix: &str,
) -> Result<(), ValidationError> {
    for (name, value) in extra {
        let param = format!("{prefix}{name}");
        match known.iter().find(|f| f.name == name) {
            Some(f) if (f.accepts)(value) => {}
            Some(f) => {
                return Err(ValidationError::bad_request(
                    param,
                    format!(
                        "surge does not support {}: remove `{name}` from the request.",
                        f.feature
                    ),
                ))
            }
            None => {
                return Err(ValidationError::bad_request(
                    param.clone(),
                    format!("Unrecognized request argument supplied: {param}"),
                ))
            }
        }
    }
    Ok(())
}

/// The sampling fields of a chat or completion request, as sent.
#[derive(Debug, Default)]
pub(super) struct SamplingInput {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub seed: Option<Number>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    /// The value and the field it came from (chat has two names for it).
    pub max_tokens: Option<(i64, &'static str)>,
    /// Top-N alternatives and the field it came from (`logprobs` / `top_logprobs`).
    pub logprobs: Option<(i64, &'static str)>,
}

/// Checked `SamplingParams` and the requested `max_tokens` (None: fill the context).
/// `params.max_tokens` is a placeholder until the prompt length is known.
pub(super) fn sampling_params(
    input: SamplingInput,
    vocab_size: usize,
) -> Result<(SamplingParams, Option<usize>), ValidationError> {
    let mut params = SamplingParams::default();
    for (name, value, slot) in [
        ("temperature", input.temperature, &mut params.temperature),
        ("top_p", input.top_p, &mut params.top_p),
        ("min_p", input.min_p, &mut params.min_p),
        (
            "presence_penalty",
            input.presence_penalty,
            &mut params.presence_penalty,
        ),
        (
            "frequency_penalty",
            input.frequency_penalty,
            &mut params.frequency_penalty,
        ),
        (
            "repetition_penalty",
            input.repetition_penalty,
            &mut params.repetition_penalty,
        ),
    ] {
        if let Some(value) = value {
            *slot = finite_f32(name, value)?;
        }
    }
    params.top_k = match input.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(ValidationError::bad_request(
                "top_k",
                format!("top_k must be -1 or 0 (disable), or at least 1, got {k}."),
            ))
        }
    };
    if let Some(n) = input.n {
        if !(1..=MAX_N as i64).contains(&n) {
            let bound = if n < 1 {
                "at least 1".to_string()
            } else {
                format!("at most {MAX_N}")
            };
            return Err(ValidationError::bad_request(
                "n",
                format!("n must be {bound}, got {n}."),
            ));
        }
        params.n = n as usize;
    }
    let max_tokens = match input.max_tokens {
        None => None,
        Some((value, name)) if value < 1 => {
            return Err(ValidationError::bad_request(
                name,
                format!("{name} must be at least 1, got {value}."),
            ))
        }
        Some((value, _)) => Some(usize::try_from(value).unwrap_or(usize::MAX)),
    };
    params.max_tokens = max_tokens.unwrap_or(1);
    if let Some((value, name)) = input.logprobs {
        if value < 0 {
            return Err(ValidationError::bad_request(
                name,
                format!("{name} must be non-negative, got {value}."),
            ));
        }
        params.logprobs = Some(usize::try_from(value).unwrap_or(usize::MAX));
    }
    params.stop = stop_strings(input.stop)?;
    params.stop_token_ids = stop_token_ids(input.stop_token_ids, vocab_size)?;
    params.seed = match input.seed {
        None => None,
        Some(seed) => Some(seed.as_u64().ok_or_else(|| {
            ValidationError::bad_request(
                "seed",
                format!("seed must be a non-negative integer below 2^64, got {seed}."),
            )
        })?),
    };
    params.ignore_eos = input.ignore_eos.unwrap_or(false);
    params.skip_special_tokens = input.skip_special_tokens.unwrap_or(true);

    let logprobs_name = input.logprobs.map_or("logprobs", |(_, name)| name);
    let max_tokens_name = input.max_tokens.map_or("max_tokens", |(_, name)| name);
    params.validate(vocab_size).map_err(|err| {
        use SamplingParamsError as E;
        let param = match &err {
            E::Temperature(_) => "temperature",
            E::TopP(_) => "top_p",
            E::TopK(_) => "top_k",
            E::MinP(_) => "min_p",
            E::RepetitionPenalty(_) => "repetition_penalty",
            E::PresencePenalty(_) => "presence_penalty",
            E::FrequencyPenalty(_) => "frequency_penalty",
            E::N(_) => "n",
            E::MaxTokens(_) => max_tokens_name,
            E::Logprobs(_) => logprobs_name,
            E::EmptyStop => "stop",
            E::StopTokenId { .. } => "stop_token_ids",
        };
        ValidationError::bad_request(param, err.to_string())
    })?;
    Ok((params, max_tokens))
}

fn finite_f32(name: &str, value: f64) -> Result<f32, ValidationError> {
    let narrowed = value as f32;
    if narrowed.is_finite() {
        Ok(narrowed)
    } else {
        Err(ValidationError::bad_request(
            name,
            format!("{name} must be a finite number, got {value}."),
        ))
    }
}

fn stop_strings(stop: Option<Stop>) -> Result<Vec<String>, ValidationError> {
    let stop = stop.map(Stop::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ValidationError::bad_request(
            "stop",
            format!(
                "stop may hold at most {MAX_STOP_STRINGS} strings, got {}.",
                stop.len()
            ),
        ));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ValidationError::bad_request(
            "stop",
            format!(
                "stop strings may be at most {MAX_STOP_BYTES} bytes long, got one of {}.",
                long.len()
            ),
        ));
    }
    Ok(stop)
}

fn stop_token_ids(ids: Option<Vec<i64>>, vocab_size: usize) -> Result<Vec<u32>, ValidationError> {
    let ids = ids.unwrap_or_default();
    if ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ValidationError::bad_request(
            "stop_token_ids",
            format!(
                "stop_token_ids may hold at most {MAX_STOP_TOKEN_IDS} ids, got {}.",
                ids.len()
            ),
        ));
    }
    ids.into_iter()
        .map(|id| {
            token_id(id, vocab_size).ok_or_else(|| {
                ValidationError::bad_request(
                    "stop_token_ids",
                    format!(
                        "stop_token_ids contains token id {id}, which is out of vocabulary \
                         (vocab size {vocab_size})."
                    ),
                )
            })
        })
        .collect()
}

/// `id` as a token id when it is in `0..vocab_size`.
pub(super) fn token_id(id: i64, vocab_size: usize) -> Option<u32> {
    u32::try_from(id)
        .ok()
        .filter(|&id| usize::try_from(id).is_ok_and(|id| id < vocab_size))
}

/// Roles a request may use; `developer` is OpenAI's newer name for `system`.
const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "developer"];

/// The request's messages as the chat template takes them. Text parts are joined with
/// newlines into one string (vLLM's "string" content format), which every template
/// can render.
pub(super) fn chat_messages(
    messages: Option<Vec<ChatMessageIn>>,
) -> Result<Vec<ChatMessage>, ValidationError> {
    let messages = messages
        .ok_or_else(|| ValidationError::bad_request("messages", "messages is required."))?;
    if messages.is_empty() {
        return Err(ValidationError::bad_request(
            "messages",
            "messages must contain at least one message.",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| chat_message(i, message))
        .collect()
}

fn chat_message(i: usize, message: ChatMessageIn) -> Result<ChatMessage, ValidationError> {
    check_extra(&message.extra, MESSAGE_FIELDS, &format!("messages[{i}]."))?;
    let role = match message.role.as_deref() {
        None => {
            return Err(ValidationError::bad_request(
                format!("messages[{i}].role"),
                format!("messages[{i}].role is required."),
            ))
        }
        Some("developer") => "system",
        Some(role) if ROLES.contains(&role) => role,
        Some(role) => {
            return Err(ValidationError::bad_request(
                format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role `{role}` is not supported (expected system, developer, \
                     user, assistant or tool)."
                ),
            ))
        }
    };
    let text = match message.content {
        None if role == "assistant" => String::new(),
        None => {
            return Err(ValidationError::bad_request(
                format!("messages[{i}].content"),
                format!("messages[{i}].content is required for role `{role}`."),
            ))
        }
        Some(ChatContent::Text(text)) => text,
        Some(ChatContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                let at = format!("messages[{i}].content[{j}]");
                match (part.kind.as_deref(), part.text) {
                    (Some("text"), Some(text)) => {
                        check_extra(&part.extra, &[], &format!("{at}."))?;
                        texts.push(text);
                    }
                    (Some("text"), None) => {
                        return Err(ValidationError::bad_request(
                            format!("{at}.text"),
                            format!("{at}.text is required for a text part."),
                        ))
                    }
                    (None, _) => {
                        return Err(ValidationError::bad_request(
                            format!("{at}.type"),
                            format!("{at}.type is required."),
                        ))
                    }
                    (Some(kind), _) => {
                        return Err(ValidationError::bad_request(
                            format!("{at}.type"),
                            format!(
                                "surge does not support `{kind}` content parts; only `text` \
                                 parts are supported."
                            ),
                        ))
                    }
                }
            }
            texts.join("\n")
        }
    };
    Ok(ChatMessage {
        role: role.to_string(),
        content: MessageContent::Text(text),
        name: message.name,
        tool_call_id: message.tool_call_id,
    })
}

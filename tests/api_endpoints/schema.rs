//! OpenAI's response and stream-chunk schemas, checked field by field, folded into `Out`.

use serde_json::{json, Value};

/// One choice of a response, streamed or not.
#[derive(Debug, Clone)]
pub struct Choice {
    pub text: String,
    pub finish: String,
    /// Chat: the `logprobs.content` entries. Completions: the `logprobs` object when not
    /// streamed, the streamed `logprobs.tokens` when streamed. Null when not asked for.
    pub logprobs: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

#[derive(Debug)]
pub struct Out {
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
}

impl Out {
    pub fn text(&self) -> &str {
        &self.choices[0].text
    }
    pub fn finish(&self) -> &str {
        &self.choices[0].finish
    }
    pub fn usage(&self) -> Usage {
        self.usage.expect("the answer has no usage")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Api {
    Chat,
    Completions,
}

pub fn as_u64(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} must be a non-negative integer, got {v}"))
}

pub fn check_usage(v: &Value) -> Usage {
    let prompt = as_u64(&v["prompt_tokens"], "usage.prompt_tokens");
    let completion = as_u64(&v["completion_tokens"], "usage.completion_tokens");
    assert!(prompt > 0, "usage.prompt_tokens is 0: {v}");
    assert_eq!(
        as_u64(&v["total_tokens"], "usage.total_tokens"),
        prompt + completion,
        "total_tokens != prompt_tokens + completion_tokens: {v}"
    );
    Usage { prompt, completion }
}

fn check_finish(v: &Value) -> String {
    let reason = v
        .as_str()
        .unwrap_or_else(|| panic!("finish_reason must be a string: {v}"));
    assert!(
        matches!(reason, "stop" | "length"),
        "finish_reason {reason:?}"
    );
    reason.to_string()
}

fn check_envelope(v: &Value, id_prefix: &str, object: &str, model: &str) {
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id must be a string: {v}"));
    assert!(
        id.starts_with(id_prefix) && id.len() > id_prefix.len(),
        "id {id:?} must start with {id_prefix:?}"
    );
    assert_eq!(v["object"], object, "{v}");
    assert!(
        v["created"].as_u64().is_some_and(|c| c > 1_600_000_000),
        "created must be unix seconds: {v}"
    );
    assert_eq!(v["model"], model, "{v}");
}

/// How many choices a request asks for: n per prompt.
pub fn num_choices(body: &Value) -> usize {
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let prompts = match &body["prompt"] {
        Value::Array(items) if items.first().is_some_and(|i| !i.is_number()) => items.len(),
        _ => 1,
    };
    n * prompts
}

fn choices_of<'a>(v: &'a Value, body: &Value) -> &'a Vec<Value> {
    let choices = v["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("choices must be an array: {v}"));
    assert_eq!(choices.len(), num_choices(body), "number of choices: {v}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(
            c["index"].as_u64(),
            Some(i as u64),
            "choices in index order: {v}"
        );
    }
    choices
}

pub fn check_chat_response(v: &Value, body: &Value, model: &str) -> Out {
    check_envelope(v, "chatcmpl-", "chat.completion", model);
    let want_logprobs = body["logprobs"] == true;
    let choices = choices_of(v, body)
        .iter()
        .map(|c| {
            assert_eq!(c["message"]["role"], "assistant", "{v}");
            let text = c["message"]["content"]
                .as_str()
                .unwrap_or_else(|| panic!("message.content must be a string: {v}"));
            let logprobs = if want_logprobs {
                let content = &c["logprobs"]["content"];
                assert!(content.is_array(), "logprobs.content must be an array: {v}");
                content.clone()
            } else {
                assert!(c["logprobs"].is_null(), "logprobs were not asked for: {v}");
                Value::Null
            };
            Choice {
                text: text.to_string(),
                finish: check_finish(&c["finish_reason"]),
                logprobs,
            }
        })
        .collect();
    Out {
        choices,
        usage: Some(check_usage(&v["usage"])),
    }
}

pub fn check_completion_response(v: &Value, body: &Value, model: &str) -> Out {
    check_envelope(v, "cmpl-", "text_completion", model);
    let want_logprobs = !body["logprobs"].is_null();
    let choices = choices_of(v, body)
        .iter()
        .map(|c| {
            let text = c["text"]
                .as_str()
                .unwrap_or_else(|| panic!("text must be a string: {v}"));
            if want_logprobs {
                assert!(c["logprobs"].is_object(), "logprobs must be an object: {v}");
            } else {
                assert!(c["logprobs"].is_null(), "logprobs were not asked for: {v}");
            }
            Choice {
                text: text.to_string(),
                finish: check_finish(&c["finish_reason"]),
                logprobs: c["logprobs"].clone(),
            }
        })
        .collect();
    Out {
        choices,
        usage: Some(check_usage(&v["usage"])),
    }
}

/// Checks a whole stream chunk by chunk against OpenAI's chunk schema (one id and
/// `created` throughout, the role first, one finish_reason per choice and nothing after
/// it, usage only in a last chunk with `choices: []` and only when asked for).
pub fn check_stream(chunks: &[Value], body: &Value, model: &str, api: Api) -> Out {
    let (prefix, object) = match api {
        Api::Chat => ("chatcmpl-", "chat.completion.chunk"),
        Api::Completions => ("cmpl-", "text_completion"),
    };
    let n = num_choices(body);
    let include_usage = body["stream_options"]["include_usage"] == true;
    // vLLM: the usage so far in every chunk, only together with include_usage.
    let continuous = include_usage && body["stream_options"]["continuous_usage_stats"] == true;
    let mut completion_so_far = 0;
    let want_logprobs = match api {
        Api::Chat => body["logprobs"] == true,
        Api::Completions => !body["logprobs"].is_null(),
    };
    assert!(!chunks.is_empty(), "the stream has no chunks");
    let first = &chunks[0];
    let mut texts = vec![String::new(); n];
    let mut finishes: Vec<Option<String>> = vec![None; n];
    let mut seen = vec![false; n];
    let mut logprobs: Vec<Vec<Value>> = vec![Vec::new(); n];
    let mut usage = None;
    for (k, chunk) in chunks.iter().enumerate() {
        check_envelope(chunk, prefix, object, model);
        assert_eq!(
            chunk["id"], first["id"],
            "the id changes within a stream: {chunk}"
        );
        assert_eq!(
            chunk["created"], first["created"],
            "created changes: {chunk}"
        );
        let choices = chunk["choices"]
            .as_array()
            .unwrap_or_else(|| panic!("choices must be an array: {chunk}"));
        if choices.is_empty() {
            assert!(
                include_usage,
                "a chunk without choices, usage not asked for: {chunk}"
            );
            assert_eq!(
                k,
                chunks.len() - 1,
                "the usage chunk must be the last: {chunk}"
            );
            usage = Some(check_usage(&chunk["usage"]));
            continue;
        }
        if continuous {
            let so_far = check_usage(&chunk["usage"]);
            assert!(
                so_far.completion >= completion_so_far,
                "completion_tokens went down: {chunk}"
            );
            completion_so_far = so_far.completion;
        } else {
            assert!(
                chunk.get("usage").is_none_or(Value::is_null),
                "usage in a chunk with choices: {chunk}"
            );
        }
        for c in choices {
            let i = c["index"]
                .as_u64()
                .unwrap_or_else(|| panic!("choice index must be an integer: {chunk}"))
                as usize;
            assert!(i < n, "choice index {i}, but {n} choices: {chunk}");
            assert!(
                finishes[i].is_none(),
                "choice {i} continues after its finish_reason: {chunk}"
            );
            let piece = match api {
                Api::Chat => chat_delta(c, chunk, !seen[i]),
                Api::Completions => c["text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("text must be a string: {chunk}"))
                    .to_string(),
            };
            texts[i].push_str(&piece);
            let entries = match api {
                Api::Chat => &c["logprobs"]["content"],
                Api::Completions => &c["logprobs"]["tokens"],
            };
            if !want_logprobs {
                assert!(
                    c["logprobs"].is_null(),
                    "logprobs were not asked for: {chunk}"
                );
            } else if let Some(entries) = entries.as_array() {
                logprobs[i].extend(entries.iter().cloned());
            }
            seen[i] = true;
            if !c["finish_reason"].is_null() {
                finishes[i] = Some(check_finish(&c["finish_reason"]));
            }
        }
    }
    assert_eq!(
        include_usage,
        usage.is_some(),
        "a usage chunk must come exactly when stream_options.include_usage is true"
    );
    let choices = (0..n)
        .map(|i| Choice {
            text: std::mem::take(&mut texts[i]),
            finish: finishes[i]
                .clone()
                .unwrap_or_else(|| panic!("choice {i} never got a finish_reason")),
            logprobs: if want_logprobs {
                Value::Array(std::mem::take(&mut logprobs[i]))
            } else {
                Value::Null
            },
        })
        .collect();
    Out { choices, usage }
}

/// The content of one chat chunk's choice; the first chunk of each choice carries the role.
fn chat_delta(c: &Value, chunk: &Value, first_of_choice: bool) -> String {
    let delta = c["delta"]
        .as_object()
        .unwrap_or_else(|| panic!("delta must be an object: {chunk}"));
    if first_of_choice {
        assert_eq!(
            delta.get("role"),
            Some(&json!("assistant")),
            "the first chunk of a choice must carry delta.role: {chunk}"
        );
    } else if let Some(role) = delta.get("role") {
        assert!(
            role.is_null() || role == "assistant",
            "delta.role {role}: {chunk}"
        );
    }
    match delta.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => panic!("delta.content must be a string, got {other}: {chunk}"),
    }
}

/// One entry of chat `logprobs.content`, with `k` alternatives; under greedy decoding the
/// chosen token is the most likely one.
pub fn check_chat_logprob(e: &Value, k: usize) {
    let token = e["token"]
        .as_str()
        .unwrap_or_else(|| panic!("logprobs entry token: {e}"));
    let logprob = e["logprob"]
        .as_f64()
        .unwrap_or_else(|| panic!("logprobs entry logprob: {e}"));
    assert!(logprob <= 1e-6, "a logprob above 0: {e}");
    if let Some(bytes) = e.get("bytes").filter(|b| !b.is_null()) {
        let bytes: Vec<u8> = bytes
            .as_array()
            .unwrap_or_else(|| panic!("bytes must be an array: {e}"))
            .iter()
            .map(|b| u8::try_from(as_u64(b, "a byte")).expect("bytes are 0..=255"))
            .collect();
        if !token.starts_with("bytes:") {
            assert_eq!(
                bytes,
                token.as_bytes(),
                "bytes must be the token's UTF-8: {e}"
            );
        }
    }
    let top = e["top_logprobs"].as_array().map_or(&[][..], Vec::as_slice);
    assert_eq!(top.len(), k, "top_logprobs must have {k} entries: {e}");
    let values: Vec<f64> = top
        .iter()
        .map(|t| {
            assert!(t["token"].is_string(), "top_logprobs token: {e}");
            t["logprob"]
                .as_f64()
                .unwrap_or_else(|| panic!("top logprob: {e}"))
        })
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] >= w[1]),
        "top_logprobs must be sorted, most likely first: {e}"
    );
    if let Some(best) = values.first() {
        assert!(
            (best - logprob).abs() < 1e-3,
            "greedy must pick the most likely token: {e}"
        );
    }
}

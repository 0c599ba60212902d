//! Malformed requests, table-driven: each gets the right status and an OpenAI-shaped error
//! naming the bad field, and the server keeps serving after every batch.

mod support;

use serde_json::{json, Value};
use support::server::{assert_openai_error, with, without, Server};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
/// The server's --max-model-len: small, so that long prompts are cheap.
const MAX_MODEL_LEN: usize = 64;

enum Body {
    Json(Value),
    /// Raw bytes sent as `application/json`.
    Raw(Vec<u8>),
}

struct Case {
    name: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    /// error.param must contain one of these; empty: param is not checked.
    param: &'static [&'static str],
    /// error.message must contain this.
    message: Option<&'static str>,
}

fn chat(extra: Value) -> Value {
    with(
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        extra,
    )
}

fn completion(extra: Value) -> Value {
    with(
        &json!({"model": "tiny", "prompt": "Hi", "max_tokens": 4}),
        extra,
    )
}

fn case(
    name: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    param: &'static [&'static str],
) -> Case {
    Case {
        name,
        path,
        body,
        status,
        param,
        message: None,
    }
}

fn with_message(c: Case, message: &'static str) -> Case {
    Case {
        message: Some(message),
        ..c
    }
}

fn user(content: Value) -> Value {
    chat(json!({"messages": [{"role": "user", "content": content}]}))
}

/// The table: one malformed request per line.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Body::{Json, Raw};
    let chat_raw = |tail: &str| -> Vec<u8> {
        format!(r#"{{"model": "tiny", "messages": [{{"role": "user", "content": "Hi"}}]{tail}}}"#).into_bytes()
    };
    let mut invalid_utf8 = br#"{"model": "tiny", "messages": [{"role": "user", "content": "caf"#.to_vec();
    invalid_utf8.extend([0xff, 0xfe, 0xc3]);
    invalid_utf8.extend(br#""}]}"#);
    let mut nested = br#"{"model": "tiny", "messages": "#.to_vec();
    nested.extend(std::iter::repeat_n(b'[', 100_000));
    let long_content = " hello".repeat(MAX_MODEL_LEN * 2);
    let ten_mb = serde_json::to_vec(&user(json!("a".repeat(10 << 20)))).unwrap();
    let image = json!([{"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]);
    let audio = json!([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {}}}}]);
    vec![
        // Not JSON, or not the JSON we take.
        case("truncated JSON", CHAT, Raw(br#"{"model": "tiny", "messages": ["#.to_vec()), 400, &[]),
        case("empty body", CHAT, Raw(Vec::new()), 400, &[]),
        case("JSON array body", CHAT, Json(json!([1, 2, 3])), 400, &[]),
        case("JSON string body", COMPLETIONS, Json(json!("prompt")), 400, &[]),
        case("NaN literal", CHAT, Raw(chat_raw(r#", "temperature": NaN"#)), 400, &[]),
        case("number overflowing f64", CHAT, Raw(chat_raw(r#", "temperature": 1e400"#)), 400, &[]),
        case("invalid UTF-8 bytes", CHAT, Raw(invalid_utf8), 400, &[]),
        case("lone surrogate escape", CHAT, Raw(chat_raw(r#", "user": "\ud800""#)), 400, &[]),
        case("100k nested arrays", CHAT, Raw(nested), 400, &[]),
        // messages
        case("messages missing", CHAT, Json(without(&chat(json!({})), "messages")), 400, &["messages"]),
        case("messages empty", CHAT, Json(chat(json!({"messages": []}))), 400, &["messages"]),
        case("messages a string", CHAT, Json(chat(json!({"messages": "Hi"}))), 400, &["messages"]),
        case("message a string", CHAT, Json(chat(json!({"messages": ["Hi"]}))), 400, &["messages"]),
        case("unknown role", CHAT, Json(chat(json!({"messages": [{"role": "wizard", "content": "Hi"}]}))), 400, &["messages", "role"]),
        case("role missing", CHAT, Json(chat(json!({"messages": [{"content": "Hi"}]}))), 400, &["messages", "role"]),
        case("content a number", CHAT, Json(user(json!(42))), 400, &["messages", "content"]),
        case("image part", CHAT, Json(user(image)), 400, &["messages", "content", "image"]),
        case("audio part", CHAT, Json(user(audio)), 400, &["messages", "content", "audio"]),
        with_message(case("prompt beyond max-model-len", CHAT, Json(without(&user(json!(long_content)), "max_tokens")), 400, &[]), "maximum context length"),
        // model
        case("model a number", CHAT, Json(chat(json!({"model": 123}))), 400, &["model"]),
        with_message(case("unknown model", CHAT, Json(chat(json!({"model": "gpt-4"}))), 404, &[]), "The model `gpt-4` does not exist."),
        // max_tokens and friends
        case("max_tokens negative", CHAT, Json(chat(json!({"max_tokens": -1}))), 400, &["max_tokens"]),
        case("max_tokens zero", CHAT, Json(chat(json!({"max_tokens": 0}))), 400, &["max_tokens"]),
        case("max_tokens a string", CHAT, Json(chat(json!({"max_tokens": "ten"}))), 400, &["max_tokens"]),
        case("max_tokens fractional", CHAT, Json(chat(json!({"max_tokens": 1.5}))), 400, &["max_tokens"]),
        case("max_tokens beyond u64", CHAT, Raw(chat_raw(r#", "max_tokens": 100000000000000000000000000000"#)), 400, &[]),
        case("max_completion_tokens negative", CHAT, Json(chat(json!({"max_completion_tokens": -5}))), 400, &["max_completion_tokens"]),
        // sampling
        case("temperature negative", CHAT, Json(chat(json!({"temperature": -0.5}))), 400, &["temperature"]),
        case("temperature \"NaN\"", CHAT, Json(chat(json!({"temperature": "NaN"}))), 400, &["temperature"]),
        case("top_p 2", CHAT, Json(chat(json!({"top_p": 2}))), 400, &["top_p"]),
        case("top_p 0", CHAT, Json(chat(json!({"top_p": 0}))), 400, &["top_p"]),
        case("top_k -5", CHAT, Json(chat(json!({"top_k": -5}))), 400, &["top_k"]),
        case("min_p 1.5", CHAT, Json(chat(json!({"min_p": 1.5}))), 400, &["min_p"]),
        case("n 0", CHAT, Json(chat(json!({"n": 0}))), 400, &["n"]),
        case("n negative", CHAT, Json(chat(json!({"n": -2}))), 400, &["n"]),
        case("presence_penalty 5", CHAT, Json(chat(json!({"presence_penalty": 5}))), 400, &["presence_penalty"]),
        case("frequency_penalty -3", CHAT, Json(chat(json!({"frequency_penalty": -3}))), 400, &["frequency_penalty"]),
        case("repetition_penalty 0", CHAT, Json(chat(json!({"repetition_penalty": 0}))), 400, &["repetition_penalty"]),
        case("seed a string", CHAT, Json(chat(json!({"seed": "abc"}))), 400, &["seed"]),
        // logprobs
        case("logprobs a string", CHAT, Json(chat(json!({"logprobs": "yes"}))), 400, &["logprobs"]),
        case("top_logprobs 50", CHAT, Json(chat(json!({"logprobs": true, "top_logprobs": 50}))), 400, &["top_logprobs"]),
        case("top_logprobs negative", CHAT, Json(chat(json!({"logprobs": true, "top_logprobs": -1}))), 400, &["top_logprobs"]),
        case("top_logprobs without logprobs", CHAT, Json(chat(json!({"top_logprobs": 2}))), 400, &["top_logprobs", "logprobs"]),
        // stop
        case("stop a number", CHAT, Json(chat(json!({"stop": 5}))), 400, &["stop"]),
        case("stop numbers", CHAT, Json(chat(json!({"stop": [1, 2]}))), 400, &["stop"]),
        case("stop_token_ids strings", CHAT, Json(chat(json!({"stop_token_ids": ["a"]}))), 400, &["stop_token_ids"]),
        // streaming
        case("stream a string", CHAT, Json(chat(json!({"stream": "yes"}))), 400, &["stream"]),
        case("stream_options without stream", CHAT, Json(chat(json!({"stream_options": {"include_usage": true}}))), 400, &["stream_options"]),
        case("include_usage a string", CHAT, Json(chat(json!({"stream": true, "stream_options": {"include_usage": "yes"}}))), 400, &["stream_options", "include_usage"]),
        // unsupported features are refused by name, never ignored
        case("tools", CHAT, Json(chat(json!({"tools": tools}))), 400, &["tools"]),
        case("functions", CHAT, Json(chat(json!({"functions": [{"name": "f", "parameters": {}}]}))), 400, &["functions"]),
        case("logit_bias", CHAT, Json(chat(json!({"logit_bias": {"1234": -100}}))), 400, &["logit_bias"]),
        case("response_format json_object", CHAT, Json(chat(json!({"response_format": {"type": "json_object"}}))), 400, &["response_format"]),
        case("response_format json_schema", CHAT, Json(chat(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}))), 400, &["response_format"]),
        case("unknown field", CHAT, Json(chat(json!({"frobnicate": 1}))), 400, &["frobnicate"]),
        // size
        case("10 MB body", CHAT, Raw(ten_mb), 413, &[]),
        // completions
        case("prompt missing", COMPLETIONS, Json(without(&completion(json!({})), "prompt")), 400, &["prompt"]),
        case("prompt a number", COMPLETIONS, Json(completion(json!({"prompt": 42}))), 400, &["prompt"]),
        case("prompt empty list", COMPLETIONS, Json(completion(json!({"prompt": []}))), 400, &["prompt"]),
        case("prompt empty token list", COMPLETIONS, Json(completion(json!({"prompt": [[]]}))), 400, &["prompt"]),
        case("prompt token out of vocab", COMPLETIONS, Json(completion(json!({"prompt": [999_999_999]}))), 400, &["prompt"]),
        case("prompt token negative", COMPLETIONS, Json(completion(json!({"prompt": [1, -1]}))), 400, &["prompt"]),
        case("prompt mixed list", COMPLETIONS, Json(completion(json!({"prompt": ["a", 1]}))), 400, &["prompt"]),
        case("completions logprobs 50", COMPLETIONS, Json(completion(json!({"logprobs": 50}))), 400, &["logprobs"]),
        case("completions logprobs negative", COMPLETIONS, Json(completion(json!({"logprobs": -1}))), 400, &["logprobs"]),
        case("echo a string", COMPLETIONS, Json(completion(json!({"echo": "x"}))), 400, &["echo"]),
        case("suffix", COMPLETIONS, Json(completion(json!({"suffix": "end"}))), 400, &["suffix"]),
        case("completions unknown model", COMPLETIONS, Json(completion(json!({"model": "gpt-4"}))), 404, &[]),
        // tokenize / detokenize
        case("tokenize without prompt", "/tokenize", Json(json!({"add_special_tokens": true})), 400, &[]),
        case("detokenize token out of vocab", "/detokenize", Json(json!({"tokens": [999_999_999]})), 400, &["tokens"]),
        case("detokenize tokens a string", "/detokenize", Json(json!({"tokens": "abc"})), 400, &["tokens"]),
    ]
}

/// Sends one case; returns a description of what was wrong, if anything.
fn run_case(server: &Server, c: &Case) -> Option<String> {
    let reply = match &c.body {
        Body::Json(v) => server.post_raw(
            c.path,
            serde_json::to_vec(v).unwrap(),
            Some("application/json"),
        ),
        Body::Raw(bytes) => server.post_raw(c.path, bytes.clone(), Some("application/json")),
    };
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let error = assert_openai_error(&reply, c.status);
        if !c.param.is_empty() {
            let param = error["param"].as_str().unwrap_or("");
            assert!(
                c.param.iter().any(|p| param.contains(p)),
                "error.param {:?} names none of {:?}: {}",
                error["param"],
                c.param,
                error
            );
        }
        if let Some(m) = c.message {
            let message = error["message"].as_str().unwrap_or("");
            assert!(message.contains(m), "message {message:?} lacks {m:?}");
        }
    }));
    checked.err().map(|e| {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{} ({} {}): {why}", c.name, c.path, c.status)
    })
}

/// A good request still succeeds, and the process still runs.
fn assert_still_serving(server: &mut Server, after: &str) {
    server.assert_alive(&format!("after {after}"));
    let v = server
        .post_json(CHAT, &chat(json!({"temperature": 0.0})))
        .expect_ok(&format!("a good request after {after}"));
    assert!(!v["choices"][0]["message"]["content"].is_null(), "{v}");
    let reply = server.get("/health");
    assert_eq!(reply.status, 200, "/health after {after}");
}

#[test]
fn malformed_requests_get_openai_errors_and_the_server_keeps_serving() {
    let tiny = support::tiny_llama();
    let len = MAX_MODEL_LEN.to_string();
    let mut server = Server::start(&[
        "--model",
        tiny.to_str().unwrap(),
        "--served-model-name",
        "tiny",
        "--max-model-len",
        &len,
        "--kv-cache-memory",
        "16MiB",
    ]);
    let cases = cases();
    assert!(cases.len() >= 30, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for batch in cases.chunks(8) {
        for c in batch {
            failures.extend(run_case(&server, c));
        }
        let names: Vec<&str> = batch.iter().map(|c| c.name).collect();
        assert_still_serving(&mut server, &format!("{names:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn max_request_body_bytes_flag_sets_the_limit() {
    let tiny = support::tiny_llama();
    let mut server = Server::start(&[
        "--model",
        tiny.to_str().unwrap(),
        "--served-model-name",
        "tiny",
        "--kv-cache-memory",
        "16MiB",
        "--max-request-body-bytes",
        "4096",
    ]);
    let small = serde_json::to_vec(&user(json!("a".repeat(1000)))).unwrap();
    let large = serde_json::to_vec(&user(json!("a".repeat(5000)))).unwrap();
    let reply = server.post_raw(CHAT, small, Some("application/json"));
    assert_eq!(reply.status, 200, "a body under the limit: {}", reply.body);
    let reply = server.post_raw(CHAT, large, Some("application/json"));
    assert_openai_error(&reply, 413);
    assert_still_serving(&mut server, "a 413");
}

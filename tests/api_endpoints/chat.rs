//! The chat, model and sampling checks of api_endpoints, each on one served model.

use serde_json::{json, Value};

use crate::schema::{check_chat_logprob, Out};
use crate::support::server::{assert_openai_error, with, without};
use crate::{Ctx, QUESTION};

pub fn models_endpoint(c: &Ctx) {
    let v = c.server.get("/v1/models").expect_ok("GET /v1/models");
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().unwrap_or_else(|| panic!("data: {v}"));
    assert_eq!(data.len(), 1, "one served model: {v}");
    let m = &data[0];
    assert_eq!(m["id"], c.model.as_str(), "{v}");
    assert_eq!(m["object"], "model", "{v}");
    assert!(
        m["created"].as_u64().is_some_and(|t| t > 1_600_000_000),
        "created: {v}"
    );
    assert!(
        m["owned_by"].as_str().is_some_and(|o| !o.is_empty()),
        "owned_by: {v}"
    );
    assert_eq!(m["max_model_len"].as_u64(), Some(c.max_model_len), "{v}");
}

pub fn health_ping_version(c: &Ctx) {
    for path in ["/health", "/ping"] {
        let reply = c.server.get(path);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    }
    let reply = c.server.post_raw("/ping", Vec::new(), None);
    assert_eq!(reply.status, 200, "POST /ping: {}", reply.body);
    let v = c.server.get("/version").expect_ok("GET /version");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
}

/// finish_reason agrees with the token count: "length" exactly at the limit.
fn assert_finish_consistent(out: &Out, max_tokens: u64) {
    let u = out.usage();
    assert!(u.completion >= 1 && u.completion <= max_tokens, "{out:?}");
    if out.finish() == "length" {
        assert_eq!(
            u.completion, max_tokens,
            "finish length below max_tokens: {out:?}"
        );
    }
}

pub fn chat_non_stream(c: &Ctx) {
    let out = c.chat(json!({}));
    assert_finish_consistent(&out, 12);
    // Greedy decoding is repeatable and ignores the seed.
    let again = c.chat(json!({"seed": 5}));
    assert_eq!(again.text(), out.text());
    assert_eq!(again.usage(), out.usage());
}

pub fn chat_stream_matches_non_stream(c: &Ctx) {
    let plain = c.chat(json!({}));
    let streamed = c.chat_stream(json!({"stream_options": {"include_usage": true}}));
    assert_eq!(streamed.text(), plain.text());
    assert_eq!(streamed.finish(), plain.finish());
    assert_eq!(streamed.usage(), plain.usage());
    for extra in [
        json!({}),
        json!({"stream_options": {"include_usage": false}}),
        json!({"stream_options": {"continuous_usage_stats": true}}),
    ] {
        let streamed = c.chat_stream(extra);
        assert_eq!(streamed.text(), plain.text());
        assert!(streamed.usage.is_none());
    }
    let continuous = c.chat_stream(json!({"stream_options":
        {"include_usage": true, "continuous_usage_stats": true}}));
    assert_eq!(continuous.text(), plain.text());
    assert_eq!(continuous.usage(), plain.usage());
}

pub fn chat_n2(c: &Ctx) {
    let extra = json!({"n": 2, "temperature": 1.0, "seed": 11, "max_tokens": 8, "logprobs": true});
    let out = c.chat(extra.clone());
    let tokens: u64 = out
        .choices
        .iter()
        .map(|ch| ch.logprobs.as_array().map_or(0, Vec::len) as u64)
        .sum();
    assert_eq!(
        tokens,
        out.usage().completion,
        "completion_tokens counts every choice"
    );
    if c.tiny {
        assert_ne!(
            out.choices[0].text, out.choices[1].text,
            "two samples at temperature 1"
        );
    }
    let streamed = c.chat_stream(with(
        &extra,
        json!({"stream_options": {"include_usage": true}}),
    ));
    for i in 0..2 {
        assert_eq!(
            streamed.choices[i].text, out.choices[i].text,
            "seeded choice {i}"
        );
        assert_eq!(streamed.choices[i].finish, out.choices[i].finish);
    }
    assert_eq!(streamed.usage(), out.usage());
}

pub fn max_tokens_fields(c: &Ctx) {
    let out = c.chat(json!({"max_tokens": 3, "ignore_eos": true}));
    assert_eq!((out.usage().completion, out.finish()), (3, "length"));
    let body = without(
        &c.chat_body(json!({"max_completion_tokens": 5, "ignore_eos": true})),
        "max_tokens",
    );
    let out = c.post_chat(&body);
    assert_eq!((out.usage().completion, out.finish()), (5, "length"));
    // max_completion_tokens wins over the deprecated max_tokens.
    let out = c.chat(json!({"max_tokens": 9, "max_completion_tokens": 4, "ignore_eos": true}));
    assert_eq!((out.usage().completion, out.finish()), (4, "length"));
    let out = c.completion(json!({"max_tokens": 6, "ignore_eos": true}));
    assert_eq!((out.usage().completion, out.finish()), (6, "length"));
}

/// A stop string taken from `text`: an ASCII word that does not start the text.
fn pick_stop(text: &str) -> String {
    let mut words = Vec::new();
    let mut start = None;
    for (i, ch) in text.char_indices().chain([(text.len(), ' ')]) {
        match (ch.is_ascii_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s >= 3 && s > 0 {
                    words.push(&text[s..i]);
                }
                start = None;
            }
            _ => {}
        }
    }
    let word = words
        .iter()
        .find(|w| text.find(**w).is_some_and(|p| p >= text.len() / 3))
        .or(words.first())
        .unwrap_or_else(|| panic!("no word to use as a stop string in {text:?}"));
    word.chars().take(6).collect()
}

pub fn stop_strings(c: &Ctx) {
    let full = c.chat(json!({"max_tokens": 16}));
    let text = full.text().to_string();
    let stop = pick_stop(&text);
    let cut = &text[..text.find(&stop).unwrap()];
    for field in [json!(stop), json!(["\u{2603}\u{2603}\u{2603}", stop])] {
        let extra = json!({"max_tokens": 16, "stop": field});
        let out = c.chat(extra.clone());
        assert_eq!(out.text(), cut, "chat {extra} on {text:?}");
        assert_eq!(out.finish(), "stop", "chat {extra}");
        let streamed = c.chat_stream(extra.clone());
        assert_eq!(streamed.text(), cut, "streamed chat {extra} on {text:?}");
        assert_eq!(streamed.finish(), "stop");
    }
    let full = c.completion(json!({"max_tokens": 16}));
    let text = full.text().to_string();
    let stop = pick_stop(&text);
    let cut = &text[..text.find(&stop).unwrap()];
    let extra = json!({"max_tokens": 16, "stop": [stop]});
    let out = c.completion(extra.clone());
    assert_eq!(
        (out.text(), out.finish()),
        (cut, "stop"),
        "completion {extra} on {text:?}"
    );
    let streamed = c.completion_stream(extra.clone());
    assert_eq!(
        (streamed.text(), streamed.finish()),
        (cut, "stop"),
        "streamed {extra}"
    );
}

pub fn has_byte_tokens(entries: &[Value], key: &str) -> bool {
    entries.iter().any(|e| {
        e[key]
            .as_str()
            .is_none_or(|t| t.starts_with("bytes:") || t.contains('\u{FFFD}'))
    })
}

pub fn chat_logprobs(c: &Ctx) {
    let out = c.chat(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 8}));
    let entries = out.choices[0].logprobs.as_array().unwrap();
    assert_eq!(
        entries.len() as u64,
        out.usage().completion,
        "one entry per token"
    );
    for e in entries {
        check_chat_logprob(e, 3);
    }
    if !has_byte_tokens(entries, "token") {
        let joined: String = entries
            .iter()
            .map(|e| e["token"].as_str().unwrap())
            .collect();
        // A final EOS token is counted and has an entry, but no text.
        assert!(
            joined.starts_with(out.text()),
            "{joined:?} vs {:?}",
            out.text()
        );
        if out.finish() == "length" {
            assert_eq!(joined, out.text());
        }
    }
    for extra in [
        json!({"logprobs": true}),
        json!({"logprobs": true, "top_logprobs": 0}),
    ] {
        let out = c.chat(with(&extra, json!({"max_tokens": 4})));
        for e in out.choices[0].logprobs.as_array().unwrap() {
            check_chat_logprob(e, 0);
        }
    }
    let extra = json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 8,
        "stream_options": {"include_usage": true}});
    let streamed = c.chat_stream(extra);
    let entries = streamed.choices[0].logprobs.as_array().unwrap();
    assert_eq!(
        entries.len() as u64,
        streamed.usage().completion,
        "streamed entries"
    );
    for e in entries {
        check_chat_logprob(e, 2);
    }
}

pub fn chat_content_parts_and_history(c: &Ctx) {
    let plain = c.chat(json!({}));
    let parts = c.chat(json!({"messages": [
        {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]}));
    assert_eq!(
        parts.usage(),
        plain.usage(),
        "one text part == the string content"
    );
    assert_eq!(parts.text(), plain.text());
    let two = c.chat(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]}]}));
    assert!(two.usage().prompt >= plain.usage().prompt);
    let history = c.chat(json!({"messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "Hi! How can I help you today?"},
        {"role": "user", "content": QUESTION}]}));
    assert!(
        history.usage().prompt > plain.usage().prompt + 10,
        "the history must be in the prompt: {history:?} vs {plain:?}"
    );
}

pub fn sampling_filters_reduce_to_greedy(c: &Ctx) {
    let greedy = c.chat(json!({}));
    for extra in [
        json!({"temperature": 1.0, "top_k": 1, "seed": 3}),
        json!({"temperature": 1.0, "top_p": 1e-9, "seed": 3}),
        json!({"temperature": 1.0, "min_p": 1.0, "seed": 3}),
    ] {
        let out = c.chat(extra.clone());
        assert_eq!(
            out.text(),
            greedy.text(),
            "{extra} keeps only the most likely token"
        );
    }
}

pub fn seed_reproducibility(c: &Ctx) {
    let temperature = if c.tiny { 1.0 } else { 0.8 };
    let creative = json!({
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
        "temperature": temperature, "max_tokens": 16, "ignore_eos": true});
    let a = c.chat(with(&creative, json!({"seed": 1234})));
    let b = c.chat(with(&creative, json!({"seed": 1234})));
    assert_eq!(a.text(), b.text(), "same seed, same sample");
    let s = c.chat_stream(with(&creative, json!({"seed": 1234})));
    assert_eq!(
        s.text(),
        a.text(),
        "streaming does not change a seeded sample"
    );
    let sampled =
        json!({"temperature": temperature, "max_tokens": 16, "ignore_eos": true, "seed": 99});
    let ca = c.completion(sampled.clone());
    let cb = c.completion(sampled);
    assert_eq!(ca.text(), cb.text(), "same seed, same completion");
    if c.tiny {
        let other = c.chat(with(&creative, json!({"seed": 1235})));
        assert_ne!(other.text(), a.text(), "another seed, another sample");
        let u1 = c.chat(creative.clone());
        let u2 = c.chat(creative);
        assert_ne!(
            u1.text(),
            u2.text(),
            "unseeded requests sample independently"
        );
    }
}

/// Penalties change greedy output that repeats itself (SmolLM2), and leave alone greedy
/// output that never repeats a token (the tiny model): presence and frequency penalties
/// only lower tokens already generated, so the greedy choice cannot move.
pub fn penalties(c: &Ctx) {
    let base = json!({
        "messages": [{"role": "user", "content": "Repeat after me: hello hello hello hello hello hello"}],
        "max_tokens": 24, "ignore_eos": true, "logprobs": true});
    let plain = c.chat(base.clone());
    let tokens: Vec<&str> = plain.choices[0]
        .logprobs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    let distinct: std::collections::HashSet<&str> = tokens.iter().copied().collect();
    let repeats = distinct.len() < tokens.len();
    if c.tiny {
        assert!(
            !repeats,
            "the tiny model's greedy output was expected not to repeat: {tokens:?}"
        );
        for extra in [
            json!({"presence_penalty": 2.0}),
            json!({"frequency_penalty": 2.0}),
        ] {
            let out = c.chat(with(&base, extra.clone()));
            assert_eq!(
                out.text(),
                plain.text(),
                "{extra} on output without repeats"
            );
        }
        let out = c.chat(with(&base, json!({"repetition_penalty": 1.5})));
        assert_eq!(out.usage(), plain.usage(), "repetition_penalty is accepted");
    } else {
        assert!(
            repeats,
            "the unpenalized output must repeat a token: {tokens:?}"
        );
        for extra in [
            json!({"presence_penalty": 2.0}),
            json!({"frequency_penalty": 2.0}),
            json!({"repetition_penalty": 3.0}),
        ] {
            let out = c.chat(with(&base, extra.clone()));
            assert_ne!(
                out.text(),
                plain.text(),
                "{extra} must change {:?}",
                plain.text()
            );
        }
    }
    let neutral = c.chat(with(
        &base,
        json!({"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}),
    ));
    assert_eq!(
        neutral.text(),
        plain.text(),
        "neutral penalties change nothing"
    );
}

/// Every supported field at its default value changes nothing.
pub fn defaults_spelled_out(c: &Ctx) {
    let plain = c.chat(json!({}));
    let spelled = c.chat(json!({
        "n": 1, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "repetition_penalty": 1.0, "stop": [], "stop_token_ids": [],
        "seed": null, "stream": false, "stream_options": null, "logprobs": false,
        "ignore_eos": false, "skip_special_tokens": true, "user": "user-1234",
        "response_format": {"type": "text"}}));
    assert_eq!(spelled.text(), plain.text());
    assert_eq!(spelled.usage(), plain.usage());
    let plain = c.completion(json!({}));
    let spelled = c.completion(
        json!({"n": 1, "echo": false, "logprobs": null, "stop": null,
        "user": "user-1234", "top_p": 1.0, "ignore_eos": false, "stream": false}),
    );
    assert_eq!(spelled.text(), plain.text());
}

pub fn unknown_model_404(c: &Ctx) {
    let name = json!({"model": "no-such-model"});
    for (path, body) in [
        ("/v1/chat/completions", c.chat_body(name.clone())),
        (
            "/v1/chat/completions",
            c.chat_body(with(&name, json!({"stream": true}))),
        ),
        ("/v1/completions", c.completion_body(name.clone())),
        (
            "/v1/completions",
            c.completion_body(with(&name, json!({"stream": true}))),
        ),
    ] {
        let reply = c.server.post_json(path, &body);
        let error = assert_openai_error(&reply, 404);
        assert_eq!(
            error["message"], "The model `no-such-model` does not exist.",
            "{path}"
        );
        assert_eq!(error["type"], "NotFoundError", "{path}");
    }
}

/// Like vLLM, a request without `model` goes to the served model.
pub fn model_field_optional(c: &Ctx) {
    let plain = c.chat(json!({}));
    let out = c.post_chat(&without(&c.chat_body(json!({})), "model"));
    assert_eq!(out.text(), plain.text());
    let plain = c.completion(json!({}));
    let out = c.post_completion(&without(&c.completion_body(json!({})), "model"));
    assert_eq!(out.text(), plain.text());
}

/// SmolLM2 knows its geography, streamed or not.
pub fn answers_paris(c: &Ctx) {
    let out = c.chat(json!({"max_tokens": 32}));
    assert!(out.text().contains("Paris"), "answer: {:?}", out.text());
    let streamed = c.chat_stream(json!({"max_tokens": 32}));
    assert_eq!(streamed.text(), out.text());
}

/// With ignore_eos the output runs past <|im_end|>, which shows only when special tokens
/// are not skipped.
pub fn ignore_eos_and_skip_special_tokens(c: &Ctx) {
    let natural = c.chat(json!({"max_tokens": 64}));
    let n = natural.usage().completion;
    assert_eq!(
        natural.finish(),
        "stop",
        "SmolLM2 ends its answer: {natural:?}"
    );
    assert!(n < 64);
    let extra = json!({"max_tokens": n + 8, "ignore_eos": true});
    let raw = c.chat(with(&extra, json!({"skip_special_tokens": false})));
    assert_eq!((raw.usage().completion, raw.finish()), (n + 8, "length"));
    assert!(
        raw.text().starts_with(natural.text()),
        "{raw:?} vs {natural:?}"
    );
    assert!(
        raw.text().contains("<|im_end|>"),
        "the EOS token's text: {:?}",
        raw.text()
    );
    let skipped = c.chat(extra);
    assert_eq!(skipped.usage().completion, n + 8);
    assert!(skipped.text().starts_with(natural.text()));
    assert!(
        !skipped.text().contains("<|im_end|>"),
        "{:?}",
        skipped.text()
    );
}

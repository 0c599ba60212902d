//! The completions, context-length and tokenizer checks of api_endpoints.

use serde_json::{json, Value};

use crate::chat::has_byte_tokens;
use crate::schema::as_u64;
use crate::support::server::{assert_openai_error, without};
use crate::{Ctx, COMPLETION_PROMPT, QUESTION};

fn assert_context_error(c: &Ctx, path: &str, body: &Value) {
    let reply = c.server.post_json(path, body);
    let error = assert_openai_error(&reply, 400);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("maximum context length")
            && message.contains(&c.max_model_len.to_string()),
        "{path}: vLLM's wording with the numbers: {message}"
    );
}

pub fn context_length_errors(c: &Ctx) {
    let len = c.max_model_len;
    assert_context_error(
        c,
        "/v1/chat/completions",
        &c.chat_body(json!({"max_tokens": len})),
    );
    assert_context_error(
        c,
        "/v1/chat/completions",
        &c.chat_body(json!({"max_completion_tokens": len, "stream": true})),
    );
    assert_context_error(
        c,
        "/v1/completions",
        &c.completion_body(json!({"max_tokens": len})),
    );
    let hello = c.tokenize(json!({"prompt": " hello", "add_special_tokens": false}));
    let long = vec![hello[0]; len as usize + 1];
    let body = without(&c.completion_body(json!({"prompt": long})), "max_tokens");
    assert_context_error(c, "/v1/completions", &body);
    let content = " hello".repeat(len as usize + 10);
    let body = without(
        &c.chat_body(json!({"messages": [{"role": "user", "content": content}]})),
        "max_tokens",
    );
    assert_context_error(c, "/v1/chat/completions", &body);
}

pub fn completions_prompt_forms(c: &Ctx) {
    let (s1, s2) = (COMPLETION_PROMPT, "Once upon a time");
    let r1 = c.completion(json!({"prompt": s1}));
    let r2 = c.completion(json!({"prompt": s2}));
    let ids1 = c.tokenize(json!({"model": c.model, "prompt": s1}));
    let ids2 = c.tokenize(json!({"model": c.model, "prompt": s2}));
    assert_eq!(
        r1.usage().prompt,
        ids1.len() as u64,
        "prompt_tokens == /tokenize count"
    );
    assert_eq!(
        r2.usage().prompt,
        ids2.len() as u64,
        "prompt_tokens == /tokenize count"
    );
    let from_ids = c.completion(json!({"prompt": ids1}));
    assert_eq!(
        (from_ids.text(), from_ids.usage()),
        (r1.text(), r1.usage()),
        "ids prompt"
    );
    for prompt in [json!([s1, s2]), json!([ids1, ids2])] {
        let both = c.completion(json!({"prompt": prompt}));
        assert_eq!(both.choices[0].text, r1.text(), "{prompt}");
        assert_eq!(both.choices[1].text, r2.text(), "{prompt}");
        let u = both.usage();
        assert_eq!(u.prompt, r1.usage().prompt + r2.usage().prompt, "{prompt}");
        assert_eq!(
            u.completion,
            r1.usage().completion + r2.usage().completion,
            "{prompt}"
        );
    }
    let single = c.completion(json!({"prompt": [s1]}));
    assert_eq!(single.text(), r1.text());
}

pub fn completions_stream(c: &Ctx) {
    let plain = c.completion(json!({}));
    let streamed = c.completion_stream(json!({"stream_options": {"include_usage": true}}));
    assert_eq!(streamed.text(), plain.text());
    assert_eq!(streamed.finish(), plain.finish());
    assert_eq!(streamed.usage(), plain.usage());
    let streamed = c.completion_stream(json!({}));
    assert_eq!(streamed.text(), plain.text());
    let continuous = c.completion_stream(json!({"stream_options":
        {"include_usage": true, "continuous_usage_stats": true}}));
    assert_eq!(continuous.text(), plain.text());
    assert_eq!(continuous.usage(), plain.usage());
}

/// Seeded sampling over two prompts × n=2, streamed and not: four choices, each with its
/// own index and finish_reason, equal either way.
pub fn completions_stream_n2_seeded(c: &Ctx) {
    // Two prompts × n=2: four choices, each with its own index and finish_reason.
    let extra = json!({"prompt": [COMPLETION_PROMPT, "Once upon a time"], "n": 2,
        "temperature": 1.0, "seed": 5, "stream_options": {"include_usage": true}});
    let streamed = c.completion_stream(extra.clone());
    let plain = c.completion(without(&extra, "stream_options"));
    assert_eq!(streamed.choices.len(), 4);
    for (s, p) in streamed.choices.iter().zip(&plain.choices) {
        assert_eq!(s.text, p.text, "seeded choices, streamed and not");
    }
    assert_eq!(streamed.usage(), plain.usage());
}

pub fn completions_echo(c: &Ctx) {
    let plain = c.completion(json!({}));
    let echo = c.completion(json!({"echo": true}));
    assert_eq!(echo.text(), format!("{COMPLETION_PROMPT}{}", plain.text()));
    assert_eq!(echo.usage(), plain.usage());
    let streamed = c.completion_stream(json!({"echo": true}));
    assert_eq!(streamed.text(), echo.text());
}

pub fn completions_logprobs(c: &Ctx) {
    let out = c.completion(json!({"logprobs": 2, "max_tokens": 8}));
    let lp = &out.choices[0].logprobs;
    let n = out.usage().completion as usize;
    let array = |key: &str| -> Vec<Value> {
        let a = lp[key]
            .as_array()
            .unwrap_or_else(|| panic!("logprobs.{key}: {lp}"));
        assert_eq!(a.len(), n, "logprobs.{key} has one entry per token: {lp}");
        a.clone()
    };
    let tokens: Vec<String> = array("tokens")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let token_logprobs = array("token_logprobs");
    let top = array("top_logprobs");
    let offsets: Vec<u64> = array("text_offset")
        .iter()
        .map(|o| as_u64(o, "text_offset"))
        .collect();
    for i in 0..n {
        let l = token_logprobs[i]
            .as_f64()
            .unwrap_or_else(|| panic!("token_logprobs[{i}]: {lp}"));
        assert!(l <= 1e-6, "{lp}");
        let alternatives = top[i]
            .as_object()
            .unwrap_or_else(|| panic!("top_logprobs[{i}]: {lp}"));
        assert!(
            (1..=3).contains(&alternatives.len()),
            "top_logprobs[{i}]: {lp}"
        );
        let best = alternatives
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::MIN, f64::max);
        assert!(
            alternatives.contains_key(&tokens[i]),
            "greedy token among the top: {lp}"
        );
        assert!(
            (best - l).abs() < 1e-3,
            "greedy picks the most likely token: {lp}"
        );
    }
    assert_eq!(offsets[0], 0, "{lp}");
    for i in 1..n {
        let len = tokens[i - 1].chars().count() as u64;
        assert_eq!(offsets[i], offsets[i - 1] + len, "text_offset[{i}]: {lp}");
    }
    let as_values: Vec<Value> = tokens.iter().map(|t| json!({"t": t})).collect();
    if !has_byte_tokens(&as_values, "t") {
        assert!(
            tokens.concat().starts_with(out.text()),
            "{tokens:?} vs {:?}",
            out.text()
        );
    }
    let streamed = c.completion_stream(json!({"logprobs": 1, "max_tokens": 8,
        "stream_options": {"include_usage": true}}));
    let n = streamed.choices[0].logprobs.as_array().unwrap().len() as u64;
    assert_eq!(
        n,
        streamed.usage().completion,
        "streamed logprobs.tokens, one per token"
    );
}

/// A token id in `stop_token_ids` ends the output before it, with finish_reason "stop".
pub fn stop_token_ids(c: &Ctx) {
    let full = c.completion(json!({"logprobs": 1, "max_tokens": 12, "ignore_eos": true}));
    let tokens: Vec<String> = full.choices[0].logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let (k, id) = (1..tokens.len())
        .filter(|&k| !tokens[..k].contains(&tokens[k]) && !tokens[k].starts_with("bytes:"))
        .find_map(|k| {
            let ids = c.tokenize(json!({"prompt": tokens[k], "add_special_tokens": false}));
            (ids.len() == 1).then(|| (k, ids[0]))
        })
        .unwrap_or_else(|| panic!("no generated token re-tokenizes to one id: {tokens:?}"));
    let text = full.text();
    for stream in [false, true] {
        let extra = json!({"max_tokens": 12, "ignore_eos": true, "stop_token_ids": [id],
            "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }});
        let out = if stream {
            c.completion_stream(extra)
        } else {
            c.completion(extra)
        };
        assert_eq!(
            out.finish(),
            "stop",
            "stop_token_ids [{id}] ({:?})",
            tokens[k]
        );
        assert_eq!(
            out.usage().completion,
            k as u64 + 1,
            "the stop token is counted"
        );
        assert!(
            text.starts_with(out.text()) && text[out.text().len()..].starts_with(&tokens[k]),
            "the text ends before the stop token {:?}: {:?} of {text:?}",
            tokens[k],
            out.text()
        );
    }
}

pub fn tokenize_detokenize(c: &Ctx) {
    for text in ["Hello world, surge!", "héllo wörld — 東京 🚀"] {
        let plain = c.tokenize(json!({"prompt": text, "add_special_tokens": false}));
        let special = c.tokenize(json!({"prompt": text, "add_special_tokens": true}));
        let default = c.tokenize(json!({"prompt": text}));
        assert_eq!(
            default, special,
            "add_special_tokens defaults to true for a prompt"
        );
        assert!(special.ends_with(&plain), "{special:?} vs {plain:?}");
        if c.tiny {
            assert_eq!(
                special[0], 128_000,
                "Llama 3 prompts start with <|begin_of_text|>"
            );
            assert_eq!(special.len(), plain.len() + 1);
        }
        let v = c.server.ok_json("/detokenize", &json!({"tokens": plain}));
        assert_eq!(v["prompt"], text, "detokenize(tokenize(x)) == x");
        let v = c
            .server
            .ok_json("/detokenize", &json!({"model": c.model, "tokens": plain}));
        assert_eq!(v["prompt"], text);
    }
    // The chat form counts what a chat request's prompt_tokens counts.
    let out = c.chat(json!({}));
    let messages = json!([{"role": "user", "content": QUESTION}]);
    let ids = c.tokenize(json!({"model": c.model, "messages": messages}));
    assert_eq!(
        ids.len() as u64,
        out.usage().prompt,
        "chat /tokenize count == prompt_tokens"
    );
}

/// Without max_tokens the output may fill what is left of the context (tiny model).
pub fn max_tokens_absent_fills_the_context(c: &Ctx) {
    let len = c.max_model_len;
    let body = without(
        &c.completion_body(json!({"ignore_eos": true})),
        "max_tokens",
    );
    let out = c.post_completion(&body);
    let prompt = out.usage().prompt;
    assert_eq!(
        (out.usage().completion, out.finish()),
        (len - prompt, "length")
    );
    let body = without(&c.chat_body(json!({"ignore_eos": true})), "max_tokens");
    let out = c.post_chat(&body);
    assert_eq!(out.usage().completion, len - out.usage().prompt);
    let out = c.completion(json!({"ignore_eos": true, "max_tokens": len - prompt}));
    assert_eq!(
        out.usage().completion,
        len - prompt,
        "exactly what is left is allowed"
    );
    let body = c.completion_body(json!({"max_tokens": len - prompt + 1}));
    assert_context_error(c, "/v1/completions", &body);
}

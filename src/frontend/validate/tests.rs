//! Validation tests on the real Llama 3 tokenizer: context-length edges, prompts,
//! defaults and no-op fields, templates, tokenize (the malformed-request table is in
//! `malformed`).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use super::*;

mod malformed;

/// Meta-Llama-3-8B-Instruct's template: no date in it, so prompt lengths are fixed.
const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}\
{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const MAX_MODEL_LEN: usize = 64;
const VOCAB: usize = 128_256;
const BOS: u32 = 128_000;

fn tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let cache = std::env::var_os("SURGE_MODEL_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models"));
            let dir = cache.join("llama3-tokenizer");
            let tokenizer = Tokenizer::from_hf_dir(&dir).unwrap_or_else(|err| {
                panic!(
                    "the Llama 3 tokenizer is needed in {} ({err}); run \
                     tests/support/fetch-models.sh or set SURGE_MODEL_CACHE",
                    dir.display()
                )
            });
            Arc::new(tokenizer)
        })
        .clone()
}

fn config() -> ValidatorConfig {
    ValidatorConfig {
        served_model_name: "llama".into(),
        max_model_len: MAX_MODEL_LEN,
        vocab_size: VOCAB,
    }
}

fn validator() -> Validator {
    let tokenizer = tokenizer();
    let template = ChatTemplate::new(
        LLAMA3_TEMPLATE,
        tokenizer.bos_token.clone(),
        tokenizer.eos_token.clone(),
    )
    .unwrap();
    Validator::new(tokenizer, Some(template), config())
}

#[derive(Clone, Copy, Debug)]
enum Api {
    Chat,
    Completion,
    Tokenize,
    Detokenize,
}

/// Parses and validates `body` as `api` does; `Ok` carries the number of prompts.
fn run(v: &Validator, api: Api, body: &[u8]) -> Result<usize, ValidationError> {
    match api {
        Api::Chat => v.chat(parse_request(body)?).map(|_| 1),
        Api::Completion => v.completion(parse_request(body)?).map(|r| r.len()),
        Api::Tokenize => v.tokenize(parse_request(body)?).map(|_| 1),
        Api::Detokenize => v.detokenize(parse_request(body)?).map(|_| 1),
    }
}

fn chat_ok(v: &Validator, body: Value) -> ValidRequest {
    let body = serde_json::to_vec(&body).unwrap();
    v.chat(parse_request(&body).unwrap()).unwrap()
}

fn completion(v: &Validator, body: Value) -> Result<Vec<ValidRequest>, ValidationError> {
    let body = serde_json::to_vec(&body).unwrap();
    v.completion(parse_request(&body)?)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[test]
fn completion_length_edges_use_vllm_wording() {
    let v = validator();
    let ids = |n: usize| vec![9906u32; n];
    // Prompt + max_tokens exactly at the limit is fine; one past is not.
    let ok = completion(&v, json!({"prompt": ids(60), "max_tokens": 4})).unwrap();
    assert_eq!(ok[0].params.max_tokens, 4);
    let err = completion(&v, json!({"prompt": ids(60), "max_tokens": 5})).unwrap_err();
    assert_eq!(
        err.message,
        "This model's maximum context length is 64 tokens. However, you requested 65 tokens \
         (60 in the prompt, 5 in the completion). Please reduce the length of the prompt or \
         completion."
    );
    // max_tokens absent: what is left of the context.
    let left = completion(&v, json!({"prompt": ids(60)})).unwrap();
    assert_eq!(left[0].params.max_tokens, 4);
    let one = completion(&v, json!({"prompt": ids(63)})).unwrap();
    assert_eq!(one[0].params.max_tokens, 1);
    let err = completion(&v, json!({"prompt": ids(64)})).unwrap_err();
    assert_eq!(
        err.message,
        "This model's maximum context length is 64 tokens. However, you requested 64 tokens in \
         the prompt. Please reduce the length of the prompt."
    );
    // A huge max_tokens does not overflow the arithmetic.
    let err = completion(&v, json!({"prompt": ids(1), "max_tokens": i64::MAX})).unwrap_err();
    assert!(err
        .message
        .contains(&format!("{} tokens (1 in the prompt", i64::MAX as u128 + 1)));
}

#[test]
fn chat_length_edges_count_the_rendered_prompt() {
    let v = validator();
    let tokenized = v
        .tokenize(
            parse_request(&serde_json::to_vec(&json!({"messages": user("Hello there")})).unwrap())
                .unwrap(),
        )
        .unwrap();
    let prompt_len = tokenized.count;
    let fits = MAX_MODEL_LEN - prompt_len;
    let ok = chat_ok(
        &v,
        json!({"messages": user("Hello there"), "max_tokens": fits}),
    );
    assert_eq!(ok.prompt_ids, tokenized.tokens);
    assert_eq!(ok.params.max_tokens, fits);
    let default = chat_ok(&v, json!({"messages": user("Hello there")}));
    assert_eq!(default.params.max_tokens, fits);
    let body =
        serde_json::to_vec(&json!({"messages": user("Hello there"), "max_tokens": fits + 1}))
            .unwrap();
    let err = v.chat(parse_request(&body).unwrap()).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages"));
    assert_eq!(
        err.message,
        format!(
            "This model's maximum context length is 64 tokens. However, you requested 65 tokens \
             ({prompt_len} in the messages, {} in the completion). Please reduce the length of \
             the messages or completion.",
            fits + 1
        )
    );
}

#[test]
fn chat_prompt_is_the_rendered_template_with_one_bos() {
    let v = validator();
    let req = chat_ok(
        &v,
        json!({"model": "llama", "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}
        ]}),
    );
    let text = req.prompt_text.clone().unwrap();
    assert_eq!(
        text,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi\nthere<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(req.prompt_ids[0], BOS);
    assert_ne!(req.prompt_ids[1], BOS);
    assert!(req.chat && !req.echo && !req.stream && !req.include_usage);
    assert_eq!(req.model, "llama");

    let no_header = chat_ok(
        &v,
        json!({"messages": user("Hi"), "add_generation_prompt": false}),
    );
    assert!(!no_header
        .prompt_text
        .unwrap()
        .ends_with("assistant<|end_header_id|>\n\n"));
}

#[test]
fn defaults_and_accepted_no_ops() {
    let v = validator();
    // Nulls read as absent; no-op values of unsupported fields are accepted.
    let req = chat_ok(
        &v,
        json!({
            "model": null, "messages": user("Hi"), "temperature": null, "top_p": null,
            "n": null, "stop": null, "seed": null, "stream": null, "stream_options": null,
            "max_tokens": null, "logprobs": null, "top_logprobs": null, "user": "alice",
            "tools": [], "tool_choice": "none", "logit_bias": {}, "parallel_tool_calls": true,
            "response_format": {"type": "text"}, "store": false, "metadata": {"a": "b"},
            "frequency_penalty": 0, "presence_penalty": 0
        }),
    );
    let defaults = SamplingParams {
        max_tokens: req.params.max_tokens,
        ..SamplingParams::default()
    };
    assert_eq!(req.params, defaults);
    assert_eq!(req.logprobs, None);

    let req = chat_ok(
        &v,
        json!({
            "messages": user("Hi"), "temperature": 0, "top_p": 0.9, "top_k": -1, "min_p": 0.1,
            "n": 3, "stop": "END", "stop_token_ids": [128009], "seed": u64::MAX,
            "repetition_penalty": 1.1, "logprobs": true, "top_logprobs": 5, "stream": true,
            "stream_options": {"include_usage": true}, "ignore_eos": true,
            "skip_special_tokens": false, "max_tokens": 7, "max_completion_tokens": 9
        }),
    );
    let p = &req.params;
    assert_eq!(
        (p.temperature, p.top_p, p.top_k, p.min_p),
        (0.0, 0.9, None, 0.1)
    );
    assert_eq!((p.n, p.seed, p.max_tokens), (3, Some(u64::MAX), 9));
    assert_eq!(p.stop, vec!["END".to_string()]);
    assert_eq!(p.stop_token_ids, vec![128009]);
    assert!(p.ignore_eos && !p.skip_special_tokens);
    assert_eq!((p.logprobs, req.logprobs), (Some(5), Some(5)));
    assert!(req.stream && req.include_usage && !req.continuous_usage);
    for (options, expected) in [
        (
            json!({"include_usage": true, "continuous_usage_stats": true}),
            (true, true),
        ),
        (json!({"continuous_usage_stats": true}), (false, false)),
        (
            json!({"include_usage": true, "continuous_usage_stats": false}),
            (true, false),
        ),
    ] {
        let body = json!({"messages": user("Hi"), "stream": true, "stream_options": options});
        let req = chat_ok(&v, body);
        assert_eq!(
            (req.include_usage, req.continuous_usage),
            expected,
            "{options}"
        );
    }

    let chosen_only = chat_ok(&v, json!({"messages": user("Hi"), "logprobs": true}));
    assert_eq!(chosen_only.logprobs, Some(0));
    let top_k = chat_ok(&v, json!({"messages": user("Hi"), "top_k": 40}));
    assert_eq!(top_k.params.top_k, Some(40));
}

#[test]
fn completion_prompts_in_every_form() {
    let v = validator();
    let text = completion(
        &v,
        json!({"prompt": "Hello", "echo": true, "max_tokens": 3}),
    )
    .unwrap();
    assert_eq!(text.len(), 1);
    assert_eq!(text[0].prompt_ids[0], BOS);
    assert_eq!(text[0].prompt_text.as_deref(), Some("Hello"));
    assert!(text[0].echo && !text[0].chat);
    let no_bos = completion(&v, json!({"prompt": "Hello", "add_special_tokens": false})).unwrap();
    assert_eq!(no_bos[0].prompt_ids, text[0].prompt_ids[1..]);

    let batch = completion(
        &v,
        json!({"prompt": ["Hello", "Hello there friend"], "n": 2}),
    )
    .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].params.n, 2);
    // Each prompt gets what is left of its own context.
    assert_eq!(
        batch[0].params.max_tokens,
        MAX_MODEL_LEN - batch[0].prompt_ids.len()
    );
    assert_eq!(
        batch[1].params.max_tokens,
        MAX_MODEL_LEN - batch[1].prompt_ids.len()
    );

    let tokens = completion(
        &v,
        json!({"prompt": [9906, 1917], "echo": true, "logprobs": null}),
    )
    .unwrap();
    assert_eq!(tokens[0].prompt_ids, vec![9906, 1917]);
    assert_eq!(tokens[0].prompt_text.as_deref(), Some("Hello world"));
    let lists = completion(&v, json!({"prompt": [[9906], [1917, 0]], "logprobs": 2})).unwrap();
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[1].prompt_ids, vec![1917, 0]);
    assert_eq!(lists[1].prompt_text, None);
    assert_eq!(lists[1].logprobs, Some(2));
    let best_of_n = completion(
        &v,
        json!({"prompt": "x", "n": 2, "best_of": 2, "suffix": null}),
    )
    .unwrap();
    assert_eq!(best_of_n[0].engine_request().params.n, 2);
}

#[test]
fn validator_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Validator>();
    shared::<ValidRequest>();
    shared::<ValidationError>();
}

#[test]
fn model_check_follows_vllm() {
    let v = validator();
    assert_eq!(v.check_model(None), Ok(()));
    assert_eq!(v.check_model(Some("")), Ok(()));
    assert_eq!(v.check_model(Some("llama")), Ok(()));
    let err = v.check_model(Some("Llama")).unwrap_err();
    assert_eq!(
        (err.status, err.kind, err.param.as_deref()),
        (404, "NotFoundError", Some("model"))
    );
}

#[test]
fn no_chat_template_is_a_400() {
    let v = Validator::new(tokenizer(), None, config());
    let err = run(
        &v,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":"x"}]}"#,
    )
    .unwrap_err();
    assert_eq!((err.status, err.param.as_deref()), (400, Some("messages")));
    assert!(err.message.contains("no chat template"));
    // The llama3-tokenizer directory ships no template either.
    let from_tokenizer = Validator::from_tokenizer(tokenizer(), config()).unwrap();
    assert!(run(
        &from_tokenizer,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":"x"}]}"#
    )
    .is_err());
    assert!(run(&from_tokenizer, Api::Completion, br#"{"prompt":"x"}"#).is_ok());
}

#[test]
fn template_exceptions_are_400s() {
    let tokenizer = tokenizer();
    let template =
        ChatTemplate::new("{{ raise_exception('roles must alternate') }}", None, None).unwrap();
    let v = Validator::new(tokenizer, Some(template), config());
    let err = run(
        &v,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":"x"}]}"#,
    )
    .unwrap_err();
    assert_eq!((err.status, err.param.as_deref()), (400, Some("messages")));
    assert!(
        err.message.contains("roles must alternate"),
        "{}",
        err.message
    );
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let v = validator();
    let out = v
        .tokenize(
            parse_request(br#"{"model":"llama","prompt":"Hello world","return_token_strs":true}"#)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(out.tokens, vec![BOS, 9906, 1917]);
    assert_eq!(out.count, 3);
    assert_eq!(out.max_model_len, MAX_MODEL_LEN);
    assert_eq!(
        out.token_strs,
        Some(vec![
            "<|begin_of_text|>".to_string(),
            "Hello".into(),
            "Ġworld".into()
        ])
    );
    let plain = v
        .tokenize(parse_request(br#"{"prompt":"Hello world","add_special_tokens":false}"#).unwrap())
        .unwrap();
    assert_eq!(plain.tokens, vec![9906, 1917]);
    assert_eq!(plain.token_strs, None);
    let text = v
        .detokenize(parse_request(br#"{"tokens":[128000,9906,1917]}"#).unwrap())
        .unwrap();
    assert_eq!(text.prompt, "<|begin_of_text|>Hello world");
    let empty = v
        .detokenize(parse_request(br#"{"tokens":[]}"#).unwrap())
        .unwrap();
    assert_eq!(empty.prompt, "");
}

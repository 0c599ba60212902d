//! Every endpoint and parameter of the OpenAI-compatible API over real HTTP, streaming and
//! not, on the tiny random model and on SmolLM2 (HF directory and GGUF), and `--api-key`.

#[path = "../support/mod.rs"]
mod support;

mod chat;
mod completions;
mod schema;

use serde_json::{json, Value};
use support::server::{assert_openai_error, run_checks, with, Check, Reply, Server};

use chat::*;
use completions::*;
use schema::{check_chat_response, check_completion_response, check_stream, Api, Out};

pub const QUESTION: &str = "What is the capital of France?";
pub const COMPLETION_PROMPT: &str = "The capital of France is";

/// One served model and what the checks know about it.
pub struct Ctx {
    pub server: Server,
    pub model: String,
    pub max_model_len: u64,
    /// The tiny random model: gibberish, but long and deterministic under greedy decoding.
    pub tiny: bool,
}

impl Ctx {
    /// A greedy chat request for QUESTION, 12 tokens at most, with `extra` fields set.
    pub fn chat_body(&self, extra: Value) -> Value {
        let base = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0.0,
            "max_tokens": 12,
        });
        with(&base, extra)
    }

    /// A greedy completion of COMPLETION_PROMPT, 8 tokens at most, with `extra` fields set.
    pub fn completion_body(&self, extra: Value) -> Value {
        let base = json!({
            "model": self.model,
            "prompt": COMPLETION_PROMPT,
            "temperature": 0.0,
            "max_tokens": 8,
        });
        with(&base, extra)
    }

    pub fn chat(&self, extra: Value) -> Out {
        self.post_chat(&self.chat_body(extra))
    }

    pub fn post_chat(&self, body: &Value) -> Out {
        let v = self.server.ok_json("/v1/chat/completions", body);
        check_chat_response(&v, body, &self.model)
    }

    pub fn chat_stream(&self, extra: Value) -> Out {
        let body = with(&self.chat_body(extra), json!({"stream": true}));
        let chunks = self.server.stream_chunks("/v1/chat/completions", &body);
        check_stream(&chunks, &body, &self.model, Api::Chat)
    }

    pub fn completion(&self, extra: Value) -> Out {
        self.post_completion(&self.completion_body(extra))
    }

    pub fn post_completion(&self, body: &Value) -> Out {
        let v = self.server.ok_json("/v1/completions", body);
        check_completion_response(&v, body, &self.model)
    }

    pub fn completion_stream(&self, extra: Value) -> Out {
        let body = with(&self.completion_body(extra), json!({"stream": true}));
        let chunks = self.server.stream_chunks("/v1/completions", &body);
        check_stream(&chunks, &body, &self.model, Api::Completions)
    }

    /// POST /tokenize; checks `count` and `max_model_len` and returns the ids.
    pub fn tokenize(&self, body: Value) -> Vec<u64> {
        let v = self.server.ok_json("/tokenize", &body);
        let tokens: Vec<u64> = v["tokens"]
            .as_array()
            .unwrap_or_else(|| panic!("/tokenize answer has no tokens: {v}"))
            .iter()
            .map(|t| t.as_u64().expect("token ids are integers"))
            .collect();
        assert_eq!(v["count"].as_u64(), Some(tokens.len() as u64), "{v}");
        assert_eq!(v["max_model_len"].as_u64(), Some(self.max_model_len), "{v}");
        tokens
    }
}

fn tiny_args() -> Vec<String> {
    let model = support::tiny_llama();
    [
        "--model",
        model.to_str().unwrap(),
        "--served-model-name",
        "tiny",
        "--max-model-len",
        "256",
        "--kv-cache-memory",
        "64MiB",
    ]
    .map(String::from)
    .to_vec()
}

fn start(args: &[String]) -> Server {
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The checks every model runs.
const COMMON: &[Check<Ctx>] = &[
    ("models_endpoint", models_endpoint),
    ("health_ping_version", health_ping_version),
    ("chat_non_stream", chat_non_stream),
    (
        "chat_stream_matches_non_stream",
        chat_stream_matches_non_stream,
    ),
    ("chat_n2", chat_n2),
    ("max_tokens_fields", max_tokens_fields),
    ("stop_strings", stop_strings),
    ("chat_logprobs", chat_logprobs),
    (
        "chat_content_parts_and_history",
        chat_content_parts_and_history,
    ),
    (
        "sampling_filters_reduce_to_greedy",
        sampling_filters_reduce_to_greedy,
    ),
    ("seed_reproducibility", seed_reproducibility),
    ("penalties", penalties),
    ("defaults_spelled_out", defaults_spelled_out),
    ("unknown_model_404", unknown_model_404),
    ("model_field_optional", model_field_optional),
    ("context_length_errors", context_length_errors),
    ("completions_prompt_forms", completions_prompt_forms),
    ("completions_stream", completions_stream),
    ("completions_stream_n2_seeded", completions_stream_n2_seeded),
    ("completions_echo", completions_echo),
    ("completions_logprobs", completions_logprobs),
    ("stop_token_ids", stop_token_ids),
    ("tokenize_detokenize", tokenize_detokenize),
];

#[test]
fn tiny_model_serves_every_endpoint() {
    let ctx = Ctx {
        server: start(&tiny_args()),
        model: "tiny".into(),
        max_model_len: 256,
        tiny: true,
    };
    let mut all = COMMON.to_vec();
    all.push((
        "max_tokens_absent_fills_the_context",
        max_tokens_absent_fills_the_context,
    ));
    run_checks(&ctx, &all);
}

#[test]
fn smollm2_hf_serves_every_endpoint() {
    let hf = support::smollm2_hf();
    let ctx = Ctx {
        server: Server::start(&[
            "--model",
            hf.to_str().unwrap(),
            "--max-model-len",
            "2048",
            "--kv-cache-memory",
            "256MiB",
        ]),
        // No --served-model-name: the name is the directory's.
        model: "smollm2-hf".into(),
        max_model_len: 2048,
        tiny: false,
    };
    let mut all = COMMON.to_vec();
    all.push(("answers_paris", answers_paris));
    all.push((
        "ignore_eos_and_skip_special_tokens",
        ignore_eos_and_skip_special_tokens,
    ));
    run_checks(&ctx, &all);
}

/// The GGUF runs quantized matmuls, whose greedy answers differ from the f32 HF copy's and
/// whose seeded samples depend on batch shape: only checks that hold regardless run here.
#[test]
fn smollm2_gguf_serves_chat_completions_and_tokenize() {
    let gguf = support::smollm2_gguf();
    let ctx = Ctx {
        server: Server::start(&[
            "--model",
            gguf.to_str().unwrap(),
            "--max-model-len",
            "1024",
            "--kv-cache-memory",
            "128MiB",
        ]),
        // No --served-model-name: the name is the file's.
        model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        max_model_len: 1024,
        tiny: false,
    };
    run_checks(
        &ctx,
        &[
            ("models_endpoint", models_endpoint),
            ("chat_non_stream", chat_non_stream),
            (
                "chat_stream_matches_non_stream",
                chat_stream_matches_non_stream,
            ),
            ("completions_stream", completions_stream),
            ("tokenize_detokenize", tokenize_detokenize),
        ],
    );
}

/// With a key, /v1/* needs `Authorization: Bearer KEY` (401 otherwise, streaming too);
/// health, ping, version and metrics stay open.
fn check_auth(server: &Server, key: &str) {
    let http = server.http();
    let chat =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let completion = json!({"model": "tiny", "prompt": "Hi", "max_tokens": 2});
    let stream = with(&chat, json!({"stream": true}));
    let send_all = |auth: Option<&str>| -> Vec<(&'static str, Reply)> {
        let requests = [
            ("GET /v1/models", http.get(server.url("/v1/models"))),
            (
                "POST /v1/chat/completions",
                http.post(server.url("/v1/chat/completions")).json(&chat),
            ),
            (
                "POST /v1/chat/completions (stream)",
                http.post(server.url("/v1/chat/completions")).json(&stream),
            ),
            (
                "POST /v1/completions",
                http.post(server.url("/v1/completions")).json(&completion),
            ),
        ];
        requests
            .into_iter()
            .map(|(what, r)| {
                let r = match auth {
                    Some(a) => r.header("authorization", a),
                    None => r,
                };
                (what, Reply::send(r))
            })
            .collect()
    };
    let wrong = [
        None,
        Some("Bearer wrong-key".to_string()),
        Some(format!("Bearer {key}x")),
        Some(format!("Bearer {}", &key[..key.len() - 1])),
        Some(key.to_string()),
        Some(format!("Basic {key}")),
    ];
    for auth in &wrong {
        for (what, reply) in send_all(auth.as_deref()) {
            assert_eq!(reply.status, 401, "{what} with {auth:?}: {}", reply.body);
            assert_openai_error(&reply, 401);
        }
    }
    for (what, reply) in send_all(Some(&format!("Bearer {key}"))) {
        assert_eq!(
            reply.status, 200,
            "{what} with the right key: {}",
            reply.body
        );
    }
    for path in ["/health", "/ping", "/version", "/metrics"] {
        let reply = server.get(path);
        assert_eq!(
            reply.status, 200,
            "GET {path} must stay open: {}",
            reply.body
        );
    }
    let reply = server.post_raw("/ping", Vec::new(), None);
    assert_eq!(
        reply.status, 200,
        "POST /ping must stay open: {}",
        reply.body
    );
}

#[test]
fn api_key_flag_guards_v1_only() {
    let mut args = tiny_args();
    args.extend(["--api-key", "sk-surge-test"].map(String::from));
    check_auth(&start(&args), "sk-surge-test");
}

#[test]
fn surge_api_key_env_guards_v1_only() {
    let args = tiny_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with_env(&args, &[("SURGE_API_KEY", "sk-from-env")]);
    check_auth(&server, "sk-from-env");
}

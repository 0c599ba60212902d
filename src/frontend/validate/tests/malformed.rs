//! The malformed-request table, exact error wording, and a no-panic property over
//! random bodies.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::api::wire::common::ErrorResponse;

#[test]
fn malformed_requests_get_the_right_status_and_param() {
    use Api::*;
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let chat = |extra: &str| format!(r#"{{{msgs},{extra}}}"#);
    let long_stop = format!(r#"["{}"]"#, "x".repeat(MAX_STOP_BYTES + 1));
    let many_stops = serde_json::to_string(&vec!["s"; MAX_STOP_STRINGS + 1]).unwrap();
    let ids = |n: usize| serde_json::to_string(&vec![9906u32; n]).unwrap();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<(Api, String, u16, Option<&str>)> = vec![
        // Not JSON / not an object.
        (Chat, r#"{"model":"#.into(), 400, None),
        (Chat, "[1,2]".into(), 400, None),
        (Chat, "".into(), 400, None),
        (Chat, deep, 400, None),
        (Chat, r#"{"messages": NaN}"#.into(), 400, None),
        // Wrong types.
        (Chat, chat(r#""temperature":"hot""#), 400, Some("temperature")),
        (Chat, chat(r#""temperature":"NaN""#), 400, Some("temperature")),
        (Chat, chat(r#""n":"2""#), 400, Some("n")),
        (Chat, chat(r#""max_tokens":1.5"#), 400, Some("max_tokens")),
        (Chat, chat(r#""stream":"yes""#), 400, Some("stream")),
        (Chat, chat(r#""stop":5"#), 400, Some("stop")),
        (Chat, chat(r#""seed":"abc""#), 400, Some("seed")),
        (Chat, chat(r#""logprobs":1"#), 400, Some("logprobs")),
        (Chat, chat(r#""stream":true,"stream_options":{"include_usage":"yes"}"#), 400, Some("stream_options.include_usage")),
        (Chat, r#"{"messages":"hi"}"#.into(), 400, Some("messages")),
        (Chat, r#"{"messages":[{"role":"user","content":5}]}"#.into(), 400, Some("messages[0].content")),
        (Chat, r#"{"messages":[{"role":7,"content":"x"}]}"#.into(), 400, Some("messages[0].role")),
        (Chat, r#"{"messages":[{"role":"user","content":[{"type":"text","text":1}]}]}"#.into(), 400, Some("messages[0].content[0].text")),
        // Ranges, NaN-like and huge values.
        (Chat, chat(r#""temperature":-1"#), 400, Some("temperature")),
        (Chat, chat(r#""temperature":1e300"#), 400, Some("temperature")),
        (Chat, chat(r#""top_p":2"#), 400, Some("top_p")),
        (Chat, chat(r#""top_p":0"#), 400, Some("top_p")),
        (Chat, chat(r#""top_k":-5"#), 400, Some("top_k")),
        (Chat, chat(r#""min_p":1.5"#), 400, Some("min_p")),
        (Chat, chat(r#""presence_penalty":3"#), 400, Some("presence_penalty")),
        (Chat, chat(r#""frequency_penalty":-2.5"#), 400, Some("frequency_penalty")),
        (Chat, chat(r#""repetition_penalty":0"#), 400, Some("repetition_penalty")),
        (Chat, chat(r#""n":0"#), 400, Some("n")),
        (Chat, chat(r#""n":129"#), 400, Some("n")),
        (Chat, chat(r#""max_tokens":-1"#), 400, Some("max_tokens")),
        (Chat, chat(r#""max_tokens":0"#), 400, Some("max_tokens")),
        (Chat, chat(r#""max_completion_tokens":0"#), 400, Some("max_completion_tokens")),
        (Chat, chat(r#""max_tokens":99999999999999"#), 400, Some("messages")),
        (Chat, chat(r#""seed":-1"#), 400, Some("seed")),
        (Chat, chat(r#""seed":1.5"#), 400, Some("seed")),
        (Chat, chat(r#""top_logprobs":21,"logprobs":true"#), 400, Some("top_logprobs")),
        (Chat, chat(r#""top_logprobs":-1,"logprobs":true"#), 400, Some("top_logprobs")),
        (Chat, chat(r#""top_logprobs":5"#), 400, Some("top_logprobs")),
        (Chat, chat(&format!(r#""stop":{many_stops}"#)), 400, Some("stop")),
        (Chat, chat(&format!(r#""stop":{long_stop}"#)), 400, Some("stop")),
        (Chat, chat(r#""stop":[""]"#), 400, Some("stop")),
        (Chat, chat(r#""stop_token_ids":[-1]"#), 400, Some("stop_token_ids")),
        (Chat, chat(r#""stop_token_ids":[128256]"#), 400, Some("stop_token_ids")),
        (Chat, chat(r#""stream_options":{"include_usage":true}"#), 400, Some("stream_options")),
        (Chat, chat(r#""stream":true,"stream_options":{"x":1}"#), 400, Some("stream_options.x")),
        // Messages.
        (Chat, r#"{"messages":[]}"#.into(), 400, Some("messages")),
        (Chat, r#"{"model":"llama"}"#.into(), 400, Some("messages")),
        (Chat, r#"{"messages":[{"role":"wizard","content":"x"}]}"#.into(), 400, Some("messages[0].role")),
        (Chat, r#"{"messages":[{"content":"x"}]}"#.into(), 400, Some("messages[0].role")),
        (Chat, r#"{"messages":[{"role":"user","content":null}]}"#.into(), 400, Some("messages[0].content")),
        (Chat, r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]}"#.into(), 400, Some("messages[0].content[1].type")),
        (Chat, r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#.into(), 400, Some("messages[0].content[0].type")),
        (Chat, r#"{"messages":[{"role":"user","content":[{"text":"a"}]}]}"#.into(), 400, Some("messages[0].content[0].type")),
        (Chat, r#"{"messages":[{"role":"user","content":[{"type":"text"}]}]}"#.into(), 400, Some("messages[0].content[0].text")),
        (Chat, r#"{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]}]}"#.into(), 400, Some("messages[0].tool_calls")),
        (Chat, r#"{"messages":[{"role":"user","content":"x","mood":"happy"}]}"#.into(), 400, Some("messages[0].mood")),
        // Unsupported and unknown fields.
        (Chat, chat(r#""tools":[{"type":"function","function":{"name":"f"}}]"#), 400, Some("tools")),
        (Chat, chat(r#""tool_choice":"required""#), 400, Some("tool_choice")),
        (Chat, chat(r#""functions":[{"name":"f"}]"#), 400, Some("functions")),
        (Chat, chat(r#""logit_bias":{"50256":-100}"#), 400, Some("logit_bias")),
        (Chat, chat(r#""response_format":{"type":"json_object"}"#), 400, Some("response_format")),
        (Chat, chat(r#""response_format":{"type":"json_schema","json_schema":{}}"#), 400, Some("response_format")),
        (Chat, chat(r#""response_format":"text""#), 400, Some("response_format")),
        (Chat, chat(r#""audio":{"voice":"alloy"}"#), 400, Some("audio")),
        (Chat, chat(r#""modalities":["text","audio"]"#), 400, Some("modalities")),
        (Chat, chat(r#""prediction":{"type":"content","content":"x"}"#), 400, Some("prediction")),
        (Chat, chat(r#""min_tokens":5"#), 400, Some("min_tokens")),
        (Chat, chat(r#""frobnicate":true"#), 400, Some("frobnicate")),
        // Model.
        (Chat, chat(r#""model":"gpt-4""#), 404, Some("model")),
        (Completion, r#"{"model":"gpt-4","prompt":"x"}"#.into(), 404, Some("model")),
        (Tokenize, r#"{"model":"gpt-4","prompt":"x"}"#.into(), 404, Some("model")),
        // Completions.
        (Completion, r#"{}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":""}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":[]}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":[[]]}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":["a",""]}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":[-1]}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":[128256]}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":[1,"a"]}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":{"text":"a"}}"#.into(), 400, Some("prompt")),
        (Completion, r#"{"prompt":"x","logprobs":21}"#.into(), 400, Some("logprobs")),
        (Completion, r#"{"prompt":"x","logprobs":-1}"#.into(), 400, Some("logprobs")),
        (Completion, r#"{"prompt":"x","logprobs":true}"#.into(), 400, Some("logprobs")),
        (Completion, r#"{"prompt":"x","suffix":"y"}"#.into(), 400, Some("suffix")),
        (Completion, r#"{"prompt":"x","best_of":3}"#.into(), 400, Some("best_of")),
        (Completion, r#"{"prompt":"x","echo":true,"logprobs":1}"#.into(), 400, Some("echo")),
        (Completion, r#"{"prompt":"x","logit_bias":{"1":5}}"#.into(), 400, Some("logit_bias")),
        (Completion, r#"{"prompt":"x","messages":[]}"#.into(), 400, Some("messages")),
        (Completion, format!(r#"{{"prompt":"{}"}}"#, "hello ".repeat(100)), 400, Some("prompt")),
        (Completion, format!(r#"{{"prompt":{}}}"#, ids(MAX_MODEL_LEN)), 400, Some("prompt")),
        (Completion, format!(r#"{{"prompt":{},"max_tokens":5}}"#, ids(MAX_MODEL_LEN - 4)), 400, Some("prompt")),
        (Completion, format!(r#"{{"prompt":{}}}"#, serde_json::to_string(&vec!["a"; MAX_PROMPTS + 1]).unwrap()), 400, Some("prompt")),
        // Tokenize / detokenize.
        (Tokenize, r#"{}"#.into(), 400, Some("prompt")),
        (Tokenize, r#"{"prompt":"a","messages":[{"role":"user","content":"b"}]}"#.into(), 400, Some("messages")),
        (Tokenize, r#"{"prompt":"a","extra":1}"#.into(), 400, Some("extra")),
        (Detokenize, r#"{"tokens":[-5]}"#.into(), 400, Some("tokens")),
        (Detokenize, r#"{"tokens":[999999]}"#.into(), 400, Some("tokens")),
        (Detokenize, r#"{"tokens":"abc"}"#.into(), 400, Some("tokens")),
        (Detokenize, r#"{}"#.into(), 400, Some("tokens")),
    ];
    assert!(cases.len() >= 30);
    let v = validator();
    for (api, body, status, param) in &cases {
        let err =
            run(&v, *api, body.as_bytes()).expect_err(&format!("{api:?} {body} should be refused"));
        assert_eq!(
            (err.status, err.param.as_deref()),
            (*status, *param),
            "{api:?} {body}: {err:?}"
        );
        assert!(!err.message.is_empty());
        let wire = serde_json::to_value(ErrorResponse::from(&err)).unwrap();
        assert_eq!(wire["error"]["code"], json!(status), "{wire}");
        assert!(wire["error"]["type"].is_string(), "{wire}");
    }
    // Invalid UTF-8 inside a string.
    let err = run(
        &v,
        Api::Chat,
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}",
    )
    .unwrap_err();
    assert_eq!((err.status, err.param), (400, None));
}

#[test]
fn error_messages_say_what_is_wrong() {
    let v = validator();
    let err = run(&v, Api::Chat, br#"{"model":"gpt-4","messages":[]}"#).unwrap_err();
    assert_eq!(err.message, "The model `gpt-4` does not exist.");
    assert_eq!(err.kind, "NotFoundError");
    let err = run(
        &v,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":"x"}],"tools":[{}]}"#,
    )
    .unwrap_err();
    assert!(err.message.contains("tool calling"), "{}", err.message);
    let err = run(
        &v,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":"x"}],"foo":1}"#,
    )
    .unwrap_err();
    assert_eq!(err.message, "Unrecognized request argument supplied: foo");
    let err = run(
        &v,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":"x"}],"top_p":2}"#,
    )
    .unwrap_err();
    assert_eq!(err.message, "top_p must be in (0, 1], got 2.");
    let err = run(
        &v,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
    )
    .unwrap_err();
    assert!(
        err.message
            .starts_with("Invalid value for `temperature`: invalid type"),
        "{}",
        err.message
    );
    let err = run(
        &v,
        Api::Chat,
        br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
    )
    .unwrap_err();
    assert!(err.message.contains("`image_url`"), "{}", err.message);
}

/// Values of every JSON type, including the awkward ones.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        prop_oneof![Just(1e300), Just(-1e300), Just(5e-324)].prop_map(Value::from),
        "[a-z \\u{1F600}]{0,8}".prop_map(Value::from),
        prop_oneof![
            Just("text"),
            Just("user"),
            Just("image_url"),
            Just("system")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("role"),
        Just("content"),
        Just("type"),
        Just("text"),
        Just("messages"),
        Just("prompt"),
        Just("max_tokens"),
        Just("max_completion_tokens"),
        Just("n"),
        Just("temperature"),
        Just("top_p"),
        Just("top_k"),
        Just("stop"),
        Just("stop_token_ids"),
        Just("seed"),
        Just("logprobs"),
        Just("top_logprobs"),
        Just("stream"),
        Just("stream_options"),
        Just("include_usage"),
        Just("echo"),
        Just("tools"),
        Just("best_of"),
        Just("tokens"),
        Just("model"),
        Just("response_format"),
        Just("suffix"),
        Just("zzz"),
    ]
    .prop_map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the body, every API answers Ok or a 4xx, and never panics.
    #[test]
    fn random_bodies_never_panic(fields in prop::collection::vec((field_name(), any_value()), 0..6)) {
        let v = validator();
        let body = serde_json::to_vec(&Value::Object(fields.into_iter().collect())).unwrap();
        for api in [Api::Chat, Api::Completion, Api::Tokenize, Api::Detokenize] {
            if let Err(err) = run(&v, api, &body) {
                prop_assert!((400..500).contains(&err.status), "{api:?}: {err:?}");
            }
        }
    }
}

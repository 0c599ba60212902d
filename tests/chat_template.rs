//! Checks surge's chat-template rendering byte for byte against Python jinja2 set up as
//! HF transformers does (tests/support/render_chat_template.py), on SmolLM2's real
//! template and a Llama 3.1-style fixture.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use surge::frontend::chat_template::{
    ChatMessage, ChatTemplate, ChatTemplateError, ContentPart, MessageContent,
};
use surge::frontend::tokenizer::Tokenizer;

mod support;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("SURGE_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = repo_root().join(".cache/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PythonResult {
    Ok(String),
    Error(String),
}

#[derive(Serialize)]
struct Job<'a> {
    template: &'a str,
    messages: &'a [ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&'a str>,
    eos_token: Option<&'a str>,
}

struct Case {
    label: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
}

/// Renders every case with the Python reference in one process.
fn python_render(
    template: &str,
    bos: Option<&str>,
    eos: Option<&str>,
    cases: &[Case],
) -> Vec<PythonResult> {
    // A struct, not json!(): serde_json's maps would sort the message keys, and key order
    // is visible to templates (`|tojson`, `.items()`).
    let jobs: Vec<Job> = cases
        .iter()
        .map(|case| Job {
            template,
            messages: &case.messages,
            add_generation_prompt: case.add_generation_prompt,
            bos_token: bos,
            eos_token: eos,
        })
        .collect();
    let script = repo_root().join("tests/support/render_chat_template.py");
    let python = python();
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (set SURGE_PYTHON to a Python with jinja2): {e}",
                python.display()
            )
        });
    let input = serde_json::to_vec(&jobs).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{} {} failed (does it have jinja2?): {}",
        python.display(),
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<PythonResult> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    results
}

fn msg(role: &str, text: &str) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: MessageContent::Text(text.into()),
        name: None,
        tool_call_id: None,
    }
}

fn parts(role: &str, texts: &[&str]) -> ChatMessage {
    ChatMessage {
        content: MessageContent::Parts(
            texts
                .iter()
                .map(|t| ContentPart::Text {
                    text: t.to_string(),
                })
                .collect(),
        ),
        ..msg(role, "")
    }
}

fn tool(text: &str, id: &str) -> ChatMessage {
    ChatMessage {
        tool_call_id: Some(id.into()),
        ..msg("tool", text)
    }
}

/// Every conversation, with and without the generation prompt.
fn cases(conversations: Vec<(&str, Vec<ChatMessage>)>) -> Vec<Case> {
    conversations
        .into_iter()
        .flat_map(|(label, messages)| {
            [false, true].map(|add_generation_prompt| Case {
                label: format!("{label} (add_generation_prompt={add_generation_prompt})"),
                messages: messages.clone(),
                add_generation_prompt,
            })
        })
        .collect()
}

fn text_conversations() -> Vec<(&'static str, Vec<ChatMessage>)> {
    vec![
        (
            "system + user",
            vec![msg("system", "You are terse."), msg("user", "What is 2+2?")],
        ),
        ("user only", vec![msg("user", "Hello!")]),
        (
            "multi-turn",
            vec![
                msg("system", "  Be helpful.\n"),
                msg("user", "Bonjour, ça va ?"),
                msg("assistant", "Très bien ! 😀"),
                msg("user", "  Écris \"du code\":\n\tfn main() {}\n"),
            ],
        ),
        (
            "tool result",
            vec![
                msg("user", "Weather in Paris?"),
                msg("assistant", "Let me check."),
                tool("{\"temperature\": 21, \"unit\": \"°C\"}", "call_1"),
                msg("user", "Thanks, and tomorrow?"),
            ],
        ),
        (
            "unicode and specials",
            vec![
                msg("user", "日本語 👩‍👩‍👧 <|im_start|> it's"),
                msg("assistant", ""),
            ],
        ),
    ]
}

/// Renders all cases with surge and Python and requires identical text.
fn assert_same_renders(
    template_source: &str,
    bos: Option<&str>,
    eos: Option<&str>,
    cases: &[Case],
) {
    let template = ChatTemplate::new(
        template_source,
        bos.map(String::from),
        eos.map(String::from),
    )
    .expect("template compiles");
    let expected = python_render(template_source, bos, eos, cases);
    for (case, expected) in cases.iter().zip(expected) {
        let ours = template.render(&case.messages, case.add_generation_prompt);
        match expected {
            PythonResult::Ok(text) => assert_eq!(
                ours.as_ref(),
                Ok(&text),
                "{}: surge and jinja2 differ",
                case.label
            ),
            PythonResult::Error(e) => panic!("{}: jinja2 failed: {e}", case.label),
        }
    }
}

fn llama3_template() -> String {
    let path = repo_root().join("tests/fixtures/templates/llama3.jinja");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const LLAMA3_BOS: Option<&str> = Some("<|begin_of_text|>");
const LLAMA3_EOS: Option<&str> = Some("<|eot_id|>");

#[test]
fn smollm2_template_matches_jinja2() {
    // Fails with "run tests/support/fetch-models.sh" when the cache is not there.
    support::fetched("smollm2-hf/tokenizer_config.json");
    let tokenizer = Tokenizer::from_hf_dir(&support::smollm2_hf()).unwrap();
    let source = tokenizer
        .chat_template()
        .expect("SmolLM2's tokenizer_config.json has a chat_template");
    assert!(
        source.contains("<|im_start|>"),
        "unexpected template: {source}"
    );
    assert_same_renders(
        source,
        tokenizer.bos_token.as_deref(),
        tokenizer.eos_token.as_deref(),
        &cases(text_conversations()),
    );
}

#[test]
fn llama3_template_matches_jinja2() {
    let mut conversations = text_conversations();
    conversations.push((
        "text parts",
        vec![
            parts("system", &["You are ", "a pirate."]),
            parts("user", &["Part one. ", "Part two."]),
            msg("assistant", "Arr."),
            ChatMessage {
                tool_call_id: Some("call_9".into()),
                ..parts("tool", &["{\"ok\": true}"])
            },
        ],
    ));
    conversations.push(("no messages after system", vec![msg("system", "Only me.")]));
    assert_same_renders(
        &llama3_template(),
        LLAMA3_BOS,
        LLAMA3_EOS,
        &cases(conversations),
    );
}

#[test]
fn python_semantics_match_jinja2() {
    let path = repo_root().join("tests/fixtures/templates/python_semantics.jinja");
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut conversations = text_conversations();
    conversations.push((
        "text parts and tool id",
        vec![
            parts("user", &["a", "b c"]),
            ChatMessage {
                name: Some("lookup".into()),
                ..tool("  result  ", "call_2")
            },
        ],
    ));
    assert_same_renders(&source, Some("<s>"), None, &cases(conversations));
}

#[test]
fn llama3_template_output_has_the_expected_shape() {
    // Guards the comparison itself: a template both sides render wrongly would pass it.
    let template = ChatTemplate::new(
        &llama3_template(),
        LLAMA3_BOS.map(String::from),
        LLAMA3_EOS.map(String::from),
    )
    .unwrap();
    let before = chrono::Local::now().format("%d %b %Y").to_string();
    let text = template
        .render(
            &[msg("system", "Sys."), msg("user", "Hi"), tool("42", "c")],
            true,
        )
        .unwrap();
    let after = chrono::Local::now().format("%d %b %Y").to_string();
    assert!(text.starts_with(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: "
    ));
    assert!(
        text.contains(&format!("Today Date: {before}\n\n"))
            || text.contains(&format!("Today Date: {after}\n\n")),
        "{text}"
    );
    assert!(
        text.ends_with(
            "Sys.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>ipython<|end_header_id|>\n\n\"42\"<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
        "{text}"
    );
}

#[test]
fn raise_exception_message_reaches_the_caller() {
    let source = llama3_template();
    let messages = vec![msg("user", "Hi"), msg("system", "Late system prompt")];
    let expected = "System message must be the first message of the conversation";

    let template = ChatTemplate::new(&source, None, None).unwrap();
    assert_eq!(
        template.render(&messages, true),
        Err(ChatTemplateError::Raised(expected.into()))
    );
    let case = Case {
        label: "late system".into(),
        messages,
        add_generation_prompt: true,
    };
    match &python_render(&source, None, None, &[case])[0] {
        PythonResult::Error(e) => assert!(e.contains(expected), "{e}"),
        PythonResult::Ok(text) => panic!("jinja2 rendered {text:?}"),
    }
}

#[test]
fn unknown_role_is_refused() {
    let template = ChatTemplate::new(&llama3_template(), None, None).unwrap();
    let err = template
        .render(&[msg("user", "Hi"), msg("narrator", "Meanwhile…")], false)
        .unwrap_err();
    assert_eq!(
        err,
        ChatTemplateError::UnknownRole {
            index: 1,
            role: "narrator".into()
        }
    );
    assert!(err.to_string().contains("narrator"), "{err}");
}

/// Renders on another thread so a template that never stops fails the test instead of
/// hanging it. The limit is a hang guard, far above the budget's real cost.
fn render_guarded(source: &str) -> Result<String, ChatTemplateError> {
    let (tx, rx) = mpsc::channel();
    let owned = source.to_string();
    std::thread::spawn(move || {
        let result = ChatTemplate::new(&owned, None, None)
            .and_then(|template| template.render(&[msg("user", "x")], false));
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|_| panic!("template did not stop: {source}"))
}

#[test]
fn hostile_templates_stop_with_an_error() {
    let huge_range = render_guarded("{% for i in range(1000000000) %}x{% endfor %}");
    assert!(
        matches!(&huge_range, Err(ChatTemplateError::Render(e)) if e.contains("range")),
        "{huge_range:?}"
    );

    let nested = render_guarded(
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    );
    assert_eq!(nested, Err(ChatTemplateError::OutOfFuel));

    let exponential = render_guarded(
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    );
    assert_eq!(exponential, Err(ChatTemplateError::OutOfFuel));

    let recursion = render_guarded("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}");
    assert!(
        matches!(&recursion, Err(ChatTemplateError::Render(e)) if e.contains("recursion")),
        "{recursion:?}"
    );
}

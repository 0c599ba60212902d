//! Renders chat messages into a prompt with the model's Jinja chat template, as HF
//! transformers' `apply_chat_template` does.

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, ObjectRepr, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, Value};
use serde::{Deserialize, Serialize};

use python::{py_str, tojson};

mod python;

const TEMPLATE_NAME: &str = "chat_template";

/// Instruction fuel for one render (needs minijinja's `fuel` feature). A 4,000-message
/// conversation through the Llama 3 template renders well within it; a hostile template
/// stops in about a second.
const FUEL: u64 = 20_000_000;
/// surge's own work budget for one render: loop items made by `range` plus one per
/// printed value and per 64 printed bytes. It bounds loops even without `fuel`.
const WORK_BUDGET: u64 = 5_000_000;
/// Python jinja2's sandbox refuses longer ranges (`MAX_RANGE`), and so does minijinja.
const MAX_RANGE: u64 = 100_000;

/// Roles a chat template is given; anything else is refused before rendering.
pub const ALLOWED_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// One OpenAI-style chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: MessageContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A message's content: a string or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part content; only text is supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`.
    #[error("chat template error: {0}")]
    Raised(String),
    #[error(
        "messages[{index}]: role `{role}` is not supported (expected system, user, assistant or tool)"
    )]
    UnknownRole { index: usize, role: String },
    #[error("chat template exceeded its evaluation budget (a loop or recursion too large)")]
    OutOfFuel,
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// A compiled chat template; compile once per model, render per request.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` with HF's Jinja settings (trim_blocks, lstrip_blocks, loop
    /// controls, `raise_exception`, `strftime_now`, Python-style `tojson` and methods).
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.set_fuel(Some(FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_function("range", budgeted_range);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages`; `add_generation_prompt` appends the assistant header.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        for (index, message) in messages.iter().enumerate() {
            if !ALLOWED_ROLES.contains(&message.role.as_str()) {
                return Err(ChatTemplateError::UnknownRole {
                    index,
                    role: message.role.clone(),
                });
            }
        }
        let messages: Vec<Value> = messages.iter().map(message_value).collect();
        // Same variables as transformers: tools/documents are None when not given.
        let mut context = vec![
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        if let Some(bos) = &self.bos_token {
            context.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            context.push(("eos_token", Value::from(eos.as_str())));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        template.render(ordered_map(context)).map_err(classify)
    }
}

/// A map that iterates in insertion order, like a Python dict (minijinja's own maps sort
/// their keys unless `preserve_order` is on).
#[derive(Debug)]
struct OrderedMap(Vec<(Value, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }
}

fn ordered_map<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::from_object(OrderedMap(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    ))
}

/// The dict HF hands the template: keys in the order a JSON request body has them.
fn message_value(message: &ChatMessage) -> Value {
    let content = match &message.content {
        MessageContent::Text(text) => Value::from(text.as_str()),
        MessageContent::Parts(parts) => parts
            .iter()
            .map(|ContentPart::Text { text }| {
                ordered_map([
                    ("type", Value::from("text")),
                    ("text", Value::from(text.as_str())),
                ])
            })
            .collect(),
    };
    let mut entries = vec![
        ("role", Value::from(message.role.as_str())),
        ("content", content),
    ];
    if let Some(name) = &message.name {
        entries.push(("name", Value::from(name.as_str())));
    }
    if let Some(id) = &message.tool_call_id {
        entries.push(("tool_call_id", Value::from(id.as_str())));
    }
    ordered_map(entries)
}

/// Marks errors raised by the template itself, so their message reaches the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Raised(String);

/// Marks an exhausted `WORK_BUDGET`.
#[derive(Debug, thiserror::Error)]
#[error("evaluation budget exhausted")]
struct OutOfBudget;

fn classify(error: Error) -> ChatTemplateError {
    // `ErrorKind::OutOfFuel` exists only with minijinja's `fuel` feature (see
    // `FuelFallback`), so it is recognised by name.
    if format!("{:?}", error.kind()) == "OutOfFuel" {
        return ChatTemplateError::OutOfFuel;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(Raised(message)) = e.downcast_ref::<Raised>() {
            return ChatTemplateError::Raised(message.clone());
        }
        if e.downcast_ref::<OutOfBudget>().is_some() {
            return ChatTemplateError::OutOfFuel;
        }
        source = e.source();
    }
    ChatTemplateError::Render(error.to_string())
}

fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = match message.as_str() {
        Some(s) => s.to_string(),
        None => message.to_string(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// transformers: `datetime.now().strftime(format)`.
fn strftime_now(format: &str) -> Result<String, Error> {
    let mut out = String::new();
    // write! rather than to_string(): chrono reports a bad format as fmt::Error, which
    // to_string() would turn into a panic.
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

fn charge(state: &mut State, units: u64) -> Result<(), Error> {
    let left = state.get_or_insert_extension_with(|| WorkLeft(WORK_BUDGET));
    match left.0.checked_sub(units) {
        Some(rest) => {
            left.0 = rest;
            Ok(())
        }
        None => {
            left.0 = 0;
            Err(
                Error::new(ErrorKind::InvalidOperation, "evaluation budget exhausted")
                    .with_source(OutOfBudget),
            )
        }
    }
}

/// What is left of `WORK_BUDGET` in the current render.
struct WorkLeft(u64);

/// `range` as in jinja2's sandbox, charged to the work budget.
fn budgeted_range(
    state: &mut State,
    lower: i64,
    upper: Option<i64>,
    step: Option<i64>,
) -> Result<Value, Error> {
    let (start, stop) = match upper {
        Some(upper) => (lower, upper),
        None => (0, lower),
    };
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "range() arg 3 must not be zero",
        ));
    }
    let span = if step > 0 {
        i128::from(stop) - i128::from(start)
    } else {
        i128::from(start) - i128::from(stop)
    };
    let len = if span <= 0 {
        0
    } else {
        (span - 1) / i128::from(step).abs() + 1
    };
    if len > i128::from(MAX_RANGE) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("range too big, maximum size is {MAX_RANGE}"),
        ));
    }
    // 0 ≤ len ≤ MAX_RANGE, so this conversion cannot fail.
    let len = i64::try_from(len).unwrap_or(0);
    charge(state, len.unsigned_abs())?;
    // Every item lies between start and stop, so wrapping arithmetic is exact even where
    // `i * step` alone would overflow.
    Ok(Value::from_iter(
        (0..len).map(|i| start.wrapping_add(i.wrapping_mul(step))),
    ))
}

/// Prints values as Python's `str()` does: `None`, `True`, lists as `['a', 1]`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::String => None,
        _ => Some(py_str(value)),
    };
    let text = text.as_deref().or(value.as_str()).unwrap_or_default();
    charge(state, 1 + text.len() as u64 / 64)?;
    out.write_str(text).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: MessageContent::Text(text.into()),
            name: None,
            tool_call_id: None,
        }
    }

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into()))?.render(messages, true)
    }

    #[test]
    fn hf_whitespace_and_context() {
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if loop.first %}\n[{{ m.role }}:{{ m['content'] }}]\n  {% endif %}\n{% endfor %}{% if add_generation_prompt %}>{% endif %}{{ tools }}|{{ eos_token }}";
        assert_eq!(
            render(src, &[user("hi"), user("x")]).unwrap(),
            "<s>[user:hi]\n>None|</s>"
        );
    }

    #[test]
    fn tojson_matches_python() {
        let src = r#"{{ {"a": "é\"<>\n", "b": [1, 2.5, none, true]} | tojson }}|{{ [1e16, 1e-5, 0.1, -0.0, 100.0] | tojson }}|{{ {"k": [1, {}]} | tojson(indent=2) }}|{{ "é" | tojson(ensure_ascii=true) }}|{{ {"b": 1, "a": 2} | tojson(sort_keys=true, separators=[",", ":"]) }}"#;
        assert_eq!(
            render(src, &[]).unwrap(),
            "{\"a\": \"é\\\"<>\\n\", \"b\": [1, 2.5, null, true]}|[1e+16, 1e-05, 0.1, -0.0, 100.0]|{\n  \"k\": [\n    1,\n    {}\n  ]\n}|\"\\u00e9\"|{\"a\":2,\"b\":1}"
        );
    }

    #[test]
    fn message_keys_keep_request_order_and_print_like_python() {
        let mut m = user("it's");
        m.tool_call_id = Some("call_1".into());
        m.role = "tool".into();
        let src =
            "{{ messages[0] | tojson }}|{{ messages[0].items() | list }}|{{ [none, false, 'a'] }}";
        assert_eq!(
            render(src, &[m]).unwrap(),
            "{\"role\": \"tool\", \"content\": \"it's\", \"tool_call_id\": \"call_1\"}|[('role', 'tool'), ('content', \"it's\"), ('tool_call_id', 'call_1')]|[None, False, 'a']"
        );
    }

    #[test]
    fn content_parts_are_dicts() {
        let m = ChatMessage {
            content: MessageContent::Parts(vec![
                ContentPart::Text { text: "a".into() },
                ContentPart::Text { text: "b".into() },
            ]),
            ..user("")
        };
        let src = "{% for p in messages[0].content %}{{ p.type }}={{ p['text'] }};{% endfor %}";
        assert_eq!(render(src, &[m]).unwrap(), "text=a;text=b;");
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(
            render("{{ raise_exception('no system') }}", &[]),
            Err(ChatTemplateError::Raised("no system".into()))
        );
        let err = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &[],
        );
        assert_eq!(err, Err(ChatTemplateError::OutOfFuel));
        assert!(matches!(
            render("{% if %}", &[]),
            Err(ChatTemplateError::Syntax(_))
        ));
        assert!(matches!(
            render("{{ strftime_now('%Q') }}", &[]),
            Err(ChatTemplateError::Render(_))
        ));
        let mut bad = user("x");
        bad.role = "robot".into();
        assert_eq!(
            render("", &[user("ok"), bad]),
            Err(ChatTemplateError::UnknownRole {
                index: 1,
                role: "robot".into()
            })
        );
    }

    #[test]
    fn python_range_and_methods() {
        let src = "{{ range(3) | list }}{{ range(5, 0, -2) | list }}{{ ' x '.strip() }}{{ 'ab'.startswith('a') }}";
        assert_eq!(render(src, &[]).unwrap(), "[0, 1, 2][5, 3, 1]xTrue");
        assert!(render("{{ range(1, 2, 0) }}", &[]).is_err());
        let extreme =
            "{{ range(-9223372036854775807, 9223372036854775807, 4611686018427387904) | list }}";
        assert_eq!(
            render(extreme, &[]).unwrap(),
            "[-9223372036854775807, -4611686018427387903, 1, 4611686018427387905]"
        );
    }

    #[test]
    fn messages_deserialize_from_openai_json() {
        let m: ChatMessage =
            serde_json::from_str(r#"{"role":"user","content":[{"type":"text","text":"hi"}]}"#)
                .unwrap();
        assert_eq!(
            m.content,
            MessageContent::Parts(vec![ContentPart::Text { text: "hi".into() }])
        );
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":[{"type":"text","text":"hi"}]}"#
        );
    }
}

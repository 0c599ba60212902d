//! Hostile chat templates and messages: compiling and rendering either succeeds or is an
//! error, within minijinja's fuel and surge's work budget (no unbounded loop or memory).
#![no_main]

use libfuzzer_sys::fuzz_target;
use surge::frontend::chat_template::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    // `template \0 messages-json`; without a NUL, the input is the messages for the
    // Llama 3 template.
    let (source, messages) = match data.iter().position(|&b| b == 0) {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => (surge_fuzz::LLAMA3_TEMPLATE.to_string(), data),
    };
    let Ok(messages) = serde_json::from_slice::<Vec<ChatMessage>>(messages) else {
        return;
    };
    let Ok(template) = ChatTemplate::new(&source, Some("<s>".into()), Some("</s>".into())) else {
        return;
    };
    let _ = template.render(&messages, true);
});

//! `--log-requests`: one line per received request with its prompt (cut to
//! [`MAX_LOGGED_PROMPT_CHARS`]) and sampling parameters. Without the flag no request
//! content (prompts, messages, stop strings, outputs) reaches the logs: the only other
//! per-request line, "request finished", holds ids, counts and timings.

use crate::frontend::validate::ValidRequest;

/// Longest prompt text logged, in characters.
pub const MAX_LOGGED_PROMPT_CHARS: usize = 512;

/// Logs `valid` as request `request_id` (the id of its "request finished" line) when
/// `enabled`.
pub fn received(enabled: bool, request_id: u64, valid: &ValidRequest) {
    if !enabled {
        return;
    }
    let prompt = valid.prompt_text.as_deref().map(truncate);
    tracing::info!(
        request_id,
        api = if valid.chat { "chat" } else { "completions" },
        prompt_tokens = valid.prompt_ids.len(),
        prompt = prompt.as_deref().unwrap_or("<token ids>"),
        params = ?valid.params,
        stream = valid.stream,
        "request received"
    );
}

/// The first [`MAX_LOGGED_PROMPT_CHARS`] characters, with `…` when cut.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_LOGGED_PROMPT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(MAX_LOGGED_PROMPT_CHARS + 10);
        let cut = truncate(&long);
        assert_eq!(cut.chars().count(), MAX_LOGGED_PROMPT_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}

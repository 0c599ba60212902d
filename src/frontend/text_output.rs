//! One choice's text as its tokens arrive: incremental detokenizing plus stop strings.

use std::sync::Arc;

use super::detokenizer::{DetokenizeError, IncrementalDetokenizer, StopMatcher};

/// Text to emit for one token, and whether a stop string ended the choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextDelta {
    pub text: String,
    pub stopped: bool,
}

/// Turns a choice's tokens into text deltas that never contain a stop string or
/// anything after it, nor a character split across tokens.
pub struct ChoiceText {
    detokenizer: IncrementalDetokenizer,
    stops: Option<StopMatcher>,
    stopped: bool,
}

impl ChoiceText {
    pub fn new(
        tokenizer: Arc<tokenizers::Tokenizer>,
        prompt_ids: &[u32],
        skip_special_tokens: bool,
        stop: &[String],
    ) -> Self {
        Self {
            detokenizer: IncrementalDetokenizer::new(tokenizer, prompt_ids, skip_special_tokens),
            stops: Some(StopMatcher::new(stop.to_vec())),
            stopped: false,
        }
    }

    /// Adds a generated token (not an EOS or stop token: those add no text).
    pub fn push(&mut self, token: u32) -> Result<TextDelta, DetokenizeError> {
        if self.stopped {
            return Ok(TextDelta {
                text: String::new(),
                stopped: true,
            });
        }
        let raw = self.detokenizer.push(token)?;
        Ok(self.filter(&raw))
    }

    /// Flushes held-back text once the choice ended for a reason other than a stop string.
    pub fn finish(&mut self) -> Result<String, DetokenizeError> {
        if self.stopped {
            return Ok(String::new());
        }
        let tail = self.detokenizer.finish()?;
        let mut delta = self.filter(&tail);
        if !delta.stopped {
            if let Some(stops) = self.stops.take() {
                delta.text.push_str(&stops.finish());
            }
        }
        Ok(delta.text)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn filter(&mut self, raw: &str) -> TextDelta {
        let Some(stops) = self.stops.as_mut() else {
            return TextDelta {
                text: raw.to_string(),
                stopped: false,
            };
        };
        let outcome = stops.push(raw);
        self.stopped = outcome.stopped.is_some();
        TextDelta {
            text: outcome.text,
            stopped: self.stopped,
        }
    }
}

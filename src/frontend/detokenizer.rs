//! Turns a stream of generated token ids into text deltas (incremental detokenizer) and cuts them at stop strings (stop matcher).
//!
//! The detokenizer is vLLM's / TGI's prefix-offset / read-offset scheme: each new token
//! is decoded together with a few tokens before it, and only the text past what those
//! tokens already produced is emitted. Byte-level tokens can split one character; while
//! the decoded text ends in U+FFFD the bytes are held back until the character
//! completes, so every delta is whole characters.

use std::sync::Arc;

use thiserror::Error;
use tokenizers::Tokenizer;

/// Prompt tokens decoded ahead of the first generated one (vLLM's
/// `INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET`), so that it gets its leading space
/// the way it would inside the full text.
const PROMPT_CONTEXT_TOKENS: usize = 5;

/// Once this many tokens lie before the decode window they are dropped, keeping a
/// long generation's buffer small.
const COMPACT_AFTER: usize = 64;

/// What decode produces for bytes that are not (yet) a whole character.
const REPLACEMENT: char = '\u{FFFD}';

/// Why a token could not be turned into text.
#[derive(Debug, Error)]
pub enum DetokenizeError {
    #[error("the tokenizer could not decode the generated tokens: {0}")]
    Decode(#[source] tokenizers::Error),
}

/// Streams one sequence's generated ids back to text.
pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// The prompt's last few ids, then every generated id not yet compacted away.
    ids: Vec<u32>,
    /// Start of the tokens decoded for context only: their text was already emitted
    /// (or belongs to the prompt).
    prefix_offset: usize,
    /// Start of the tokens whose text has not been emitted yet.
    read_offset: usize,
}

impl IncrementalDetokenizer {
    /// A detokenizer for a sequence whose prompt was `prompt_ids`.
    pub fn new(tokenizer: Arc<Tokenizer>, prompt_ids: &[u32], skip_special_tokens: bool) -> Self {
        let context = &prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        Self {
            tokenizer,
            skip_special_tokens,
            ids: context.to_vec(),
            prefix_offset: 0,
            read_offset: context.len(),
        }
    }

    /// Adds one generated token and returns the text it completes: possibly empty
    /// (a partial character, or a skipped special token), never a partial character.
    pub fn push(&mut self, token: u32) -> Result<String, DetokenizeError> {
        self.ids.push(token);
        self.emit(false)
    }

    /// Returns whatever is still held back; call it when generation ends. A character
    /// that never completed comes out as U+FFFD, as in a full decode.
    pub fn finish(&mut self) -> Result<String, DetokenizeError> {
        self.emit(true)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, DetokenizeError> {
        self.tokenizer
            .decode(ids, self.skip_special_tokens)
            .map_err(DetokenizeError::Decode)
    }

    fn emit(&mut self, flush: bool) -> Result<String, DetokenizeError> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let prefix_text = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let new_text = self.decode(&self.ids[self.prefix_offset..])?;
        if !flush && new_text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let delta = if let Some(delta) = new_text.strip_prefix(prefix_text.as_str()) {
            delta
        } else {
            // The context itself decoded differently with the new token (it ended
            // inside a character of the prompt): emit what follows the common part.
            let common = common_prefix_len(&prefix_text, &new_text);
            &new_text[common..]
        };
        if delta.is_empty() && !flush {
            // Nothing visible yet (e.g. a skipped special token): keep the window, so
            // the next decode still sees this token's neighbours.
            return Ok(String::new());
        }
        let delta = delta.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if self.prefix_offset >= COMPACT_AFTER {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
        Ok(delta)
    }
}

/// Length in bytes of the longest common prefix of `a` and `b` that ends on a
/// character boundary of both.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|&((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((index, _), _)| index)
}

/// What a [`StopMatcher`] lets out after one delta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to send now: it cannot be part of a stop string.
    pub text: String,
    /// The stop string that ended generation, if one did. `text` then holds all the
    /// output before it and nothing of it or after it.
    pub stopped: Option<String>,
}

/// Cuts streamed text at the first stop string, holding back any tail that could still
/// grow into one.
///
/// Generation stops at the first point where the text contains a stop string; when
/// several complete there, the one that starts earliest wins (it cuts the most).
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: a possible start of a stop string.
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (they would match anything).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// True once a stop string has been seen; later pushes return nothing.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next text delta.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::default();
        }
        self.pending.push_str(delta);
        // Everything released so far cannot start a stop string, so the first
        // occurrence to complete lies entirely in `pending`. Per stop, the earliest
        // start is also the earliest end.
        let first = self
            .stops
            .iter()
            .filter_map(|stop| {
                let start = self.pending.find(stop.as_str())?;
                Some((start + stop.len(), start, stop))
            })
            .min_by_key(|&(end, start, _)| (end, start));
        if let Some((_, start, stop)) = first {
            let stop = stop.clone();
            self.pending.truncate(start);
            self.stopped = true;
            return StopOutcome {
                text: std::mem::take(&mut self.pending),
                stopped: Some(stop),
            };
        }
        let mut release = self.pending.len() - self.held_back_len();
        while !self.pending.is_char_boundary(release) {
            release -= 1;
        }
        let rest = self.pending.split_off(release);
        StopOutcome {
            text: std::mem::replace(&mut self.pending, rest),
            stopped: None,
        }
    }

    /// Releases the held-back tail when generation ended for another reason.
    pub fn finish(self) -> String {
        if self.stopped {
            String::new()
        } else {
            self.pending
        }
    }

    /// The longest suffix of `pending` that is a proper prefix of some stop string.
    /// It starts on a character boundary: a stop's first byte never continues a
    /// character.
    fn held_back_len(&self) -> usize {
        let pending = self.pending.as_bytes();
        self.stops
            .iter()
            .filter_map(|stop| {
                let longest = (stop.len() - 1).min(pending.len());
                (1..=longest)
                    .rev()
                    .find(|&len| pending.ends_with(&stop.as_bytes()[..len]))
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// The real Llama 3 tokenizer from the model cache; fails loudly when missing.
    fn llama3() -> Arc<Tokenizer> {
        static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
        TOKENIZER
            .get_or_init(|| {
                let cache = std::env::var_os("SURGE_MODEL_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models")
                    });
                let path = cache.join("llama3-tokenizer/tokenizer.json");
                let tokenizer = Tokenizer::from_file(&path).unwrap_or_else(|err| {
                    panic!(
                        "the Llama 3 tokenizer is needed at {} ({err}); run \
                         tests/support/fetch-models.sh or set SURGE_MODEL_CACHE",
                        path.display()
                    )
                });
                Arc::new(tokenizer)
            })
            .clone()
    }

    fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    fn stream(tokenizer: &Arc<Tokenizer>, prompt: &[u32], ids: &[u32], skip: bool) -> Vec<String> {
        let mut detokenizer = IncrementalDetokenizer::new(tokenizer.clone(), prompt, skip);
        let mut deltas: Vec<String> = ids
            .iter()
            .map(|&id| detokenizer.push(id).unwrap())
            .collect();
        deltas.push(detokenizer.finish().unwrap());
        deltas
    }

    const TEXTS: &[&str] = &[
        "Hello 👋🏽 world 🎉🎉! Família 👨‍👩‍👧‍👦 done.",
        "日本語のテキストと中文字符，한국어 문장도 있습니다。",
        "café naïve résumé Ångström Œuvre Ελληνικά Кириллица",
        "fn main() {\n    let s = \"tab\\there\";\n    println!(\"{s:?}\");\n}\n",
        "  leading spaces, trailing  \n\n\t mixed \u{2028} separators ∑∫√ ≠ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    ];

    #[test]
    fn deltas_concatenate_to_the_full_decode_without_replacement_chars() {
        let tokenizer = llama3();
        let prompt = encode(&tokenizer, "Write something:");
        let mut split_characters = 0;
        for text in TEXTS {
            let ids = encode(&tokenizer, text);
            let full = tokenizer.decode(&ids, true).unwrap();
            assert_eq!(&full, text, "the tokenizer round-trips the sample");
            let deltas = stream(&tokenizer, &prompt, &ids, true);
            assert_eq!(deltas.concat(), full);
            for delta in &deltas {
                assert!(!delta.contains(REPLACEMENT), "{delta:?} in {text:?}");
            }
            split_characters += ids
                .iter()
                .filter(|&&id| tokenizer.decode(&[id], true).unwrap().contains(REPLACEMENT))
                .count();
        }
        assert!(
            split_characters > 0,
            "the samples must split some character"
        );
    }

    #[test]
    fn first_token_keeps_its_leading_space() {
        let tokenizer = llama3();
        let prompt = encode(&tokenizer, "The capital of France is");
        let output = encode(&tokenizer, " Paris, of course.");
        let deltas = stream(&tokenizer, &prompt, &output, true);
        assert!(deltas[0].starts_with(" Par"), "{deltas:?}");
        assert_eq!(deltas.concat(), " Paris, of course.");
    }

    #[test]
    fn special_tokens_are_skipped_or_kept_as_asked() {
        let tokenizer = llama3();
        let eot = tokenizer.token_to_id("<|eot_id|>").unwrap();
        let mut ids = encode(&tokenizer, "Hi there");
        ids.push(eot);
        ids.extend(encode(&tokenizer, " again 🎉"));
        let skipped = stream(&tokenizer, &[], &ids, true).concat();
        assert_eq!(skipped, tokenizer.decode(&ids, true).unwrap());
        assert!(!skipped.contains("<|eot_id|>"));
        let kept = stream(&tokenizer, &[], &ids, false).concat();
        assert_eq!(kept, tokenizer.decode(&ids, false).unwrap());
        assert!(kept.contains("<|eot_id|>"));
    }

    #[test]
    fn long_generations_compact_and_still_match() {
        let tokenizer = llama3();
        let text = TEXTS.concat().repeat(8);
        let ids = encode(&tokenizer, &text);
        assert!(ids.len() > 3 * COMPACT_AFTER);
        assert_eq!(stream(&tokenizer, &[1, 2, 3], &ids, true).concat(), text);
    }

    #[test]
    fn a_dangling_partial_character_is_flushed_by_finish() {
        let tokenizer = llama3();
        let ids = encode(&tokenizer, "ok 🎉");
        let cut = &ids[..ids.len() - 1];
        let mut detokenizer = IncrementalDetokenizer::new(tokenizer.clone(), &[], true);
        let streamed: String = cut
            .iter()
            .map(|&id| detokenizer.push(id).unwrap())
            .collect();
        assert!(!streamed.contains(REPLACEMENT));
        let tail = detokenizer.finish().unwrap();
        assert_eq!(streamed + &tail, tokenizer.decode(cut, true).unwrap());
        assert_eq!(detokenizer.finish().unwrap(), "");
    }

    #[test]
    fn a_prompt_ending_inside_a_character_does_not_stall() {
        let tokenizer = llama3();
        let ids = encode(&tokenizer, "ok 🎉");
        let (prompt, first) = ids.split_at(ids.len() - 1);
        assert!(tokenizer
            .decode(prompt, true)
            .unwrap()
            .ends_with(REPLACEMENT));
        let mut output = first.to_vec();
        output.extend(encode(&tokenizer, " yes"));
        let text = stream(&tokenizer, prompt, &output, true).concat();
        assert_eq!(text, "🎉 yes");
    }

    #[test]
    fn unknown_ids_do_not_panic() {
        let mut detokenizer = IncrementalDetokenizer::new(llama3(), &[u32::MAX], true);
        assert_eq!(detokenizer.push(u32::MAX).unwrap(), "");
        assert!(detokenizer.finish().is_ok());
    }

    /// The reference: generation stops where a stop string first completes (ties: the
    /// earliest start); the output is everything before it.
    fn reference(text: &str, stops: &[String]) -> (String, Option<String>) {
        for end in (1..=text.len()).filter(|&end| text.is_char_boundary(end)) {
            let hit = stops
                .iter()
                .filter(|stop| !stop.is_empty() && text[..end].ends_with(stop.as_str()))
                .max_by_key(|stop| stop.len());
            if let Some(stop) = hit {
                return (text[..end - stop.len()].to_string(), Some(stop.clone()));
            }
        }
        (text.to_string(), None)
    }

    /// Feeds `chunks` and returns everything released and the stop hit, checking on
    /// the way that nothing at or after a stop is ever released.
    fn run(stops: &[String], chunks: &[&str]) -> (String, Option<String>) {
        let mut matcher = StopMatcher::new(stops.to_vec());
        let mut out = String::new();
        for chunk in chunks {
            let outcome = matcher.push(chunk);
            out.push_str(&outcome.text);
            if let Some(stop) = outcome.stopped {
                assert!(matcher.is_stopped());
                assert_eq!(matcher.push("more").text, "");
                return (out, Some(stop));
            }
        }
        out.push_str(&matcher.finish());
        (out, None)
    }

    fn strings(stops: &[&str]) -> Vec<String> {
        stops.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stop_split_across_deltas_is_caught() {
        let stops = strings(&["Paris"]);
        let (out, stop) = run(&stops, &["The capital is P", "ar", "is, France"]);
        assert_eq!(
            (out.as_str(), stop.as_deref()),
            ("The capital is ", Some("Paris"))
        );
    }

    #[test]
    fn stop_at_the_very_start() {
        let (out, stop) = run(&strings(&["Hello"]), &["Hel", "lo world"]);
        assert_eq!((out.as_str(), stop.as_deref()), ("", Some("Hello")));
    }

    #[test]
    fn the_stop_that_completes_first_wins() {
        // "ab" completes before "abc" could.
        let (out, stop) = run(&strings(&["abc", "ab"]), &["xxa", "bc"]);
        assert_eq!((out.as_str(), stop.as_deref()), ("xx", Some("ab")));
        // In one delta, "bc" ends before "abcd" does.
        let (out, stop) = run(&strings(&["abcd", "bc"]), &["zabcd"]);
        assert_eq!((out.as_str(), stop.as_deref()), ("za", Some("bc")));
    }

    #[test]
    fn overlapping_partial_matches_release_only_what_cannot_match() {
        let mut matcher = StopMatcher::new(strings(&["aab"]));
        assert_eq!(matcher.push("a").text, "");
        assert_eq!(matcher.push("a").text, "");
        assert_eq!(matcher.push("a").text, "a");
        let last = matcher.push("b");
        assert_eq!(
            (last.text.as_str(), last.stopped.as_deref()),
            ("", Some("aab"))
        );
    }

    #[test]
    fn held_text_is_released_by_finish_and_unrelated_text_at_once() {
        let mut matcher = StopMatcher::new(strings(&["STOP", ""]));
        assert_eq!(matcher.push("hello ST").text, "hello ");
        assert_eq!(matcher.push("").text, "");
        assert_eq!(matcher.finish(), "ST");
        let mut none = StopMatcher::new(Vec::new());
        assert_eq!(none.push("é🎉").text, "é🎉");
    }

    #[test]
    fn stops_over_real_token_streams() {
        let tokenizer = llama3();
        let text = "The capital of France is Paris. Parisians love café au lait 🎉!";
        let ids = encode(&tokenizer, text);
        let cases: &[&[&str]] = &[
            &["Paris"],
            &["aris"],
            &["al of Fr"],
            &["The"],
            &["café au", "fé"],
            &["🎉"],
            &["lait 🎉!", "never"],
            &["absent"],
        ];
        for stops in cases {
            let stops = strings(stops);
            let deltas = stream(&tokenizer, &[], &ids, true);
            let chunks: Vec<&str> = deltas.iter().map(String::as_str).collect();
            assert_eq!(
                run(&stops, &chunks),
                reference(text, &stops),
                "stops {stops:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_the_reference(
            text in "[abé🎉]{0,40}",
            stops in proptest::collection::vec("[abé🎉]{0,4}", 0..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let boundaries: Vec<usize> =
                (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|cut| *cut.get(&boundaries)).collect();
            points.extend([0, text.len()]);
            points.sort_unstable();
            let chunks: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(run(&stops, &chunks), reference(&text, &stops));
        }
    }
}

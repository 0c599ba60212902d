//! Per-request sampling parameters (vLLM's `SamplingParams`): defaults and validation.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Temperatures below this are greedy, as vLLM's `_SAMPLING_EPS`.
pub const GREEDY_TEMPERATURE_EPS: f32 = 1e-5;

/// The most top-logprob alternatives a request may ask for (vLLM's default
/// `--max-logprobs`).
pub const MAX_LOGPROBS: usize = 20;

/// How one request's tokens are chosen and when its generation stops.
///
/// Every knob has vLLM's meaning and default; the "off" value of each filter makes
/// it a no-op, so `SamplingParams::default()` samples from the model's plain
/// distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of top tokens whose mass reaches
    /// `top_p`; 1 turns it off.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (ties at the boundary are kept);
    /// `None` turns it off.
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p` times the top token's; 0 is off.
    pub min_p: f32,
    /// HF-style penalty on every token seen in the prompt or the output; 1 is off.
    pub repetition_penalty: f32,
    /// OpenAI-style: subtracted once from each token already in the output.
    pub presence_penalty: f32,
    /// OpenAI-style: subtracted per occurrence of each token in the output.
    pub frequency_penalty: f32,
    /// Seeds this request's own RNG, so its tokens do not depend on the batch.
    pub seed: Option<u64>,
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings; none of them, nor anything after, is returned.
    pub stop: Vec<String>,
    /// Token ids that end generation (in addition to EOS unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS (benchmarks).
    pub ignore_eos: bool,
    /// Number of top alternatives to return with each token; `Some(0)` returns the
    /// chosen token's logprob only, `None` none.
    pub logprobs: Option<usize>,
    /// Leave special tokens out of the returned text.
    pub skip_special_tokens: bool,
    /// Number of completions to generate for the prompt.
    pub n: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            skip_special_tokens: true,
            n: 1,
        }
    }
}

/// Why a set of sampling parameters was refused; the message names the field, as
/// vLLM's do, so it can go to the client as a 400 unchanged.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SamplingParamsError {
    #[error("temperature must be non-negative, got {0}.")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}.")]
    TopP(f32),
    #[error("top_k must be at least 1, got {0}.")]
    TopK(usize),
    #[error("min_p must be in [0, 1], got {0}.")]
    MinP(f32),
    #[error("repetition_penalty must be greater than zero, got {0}.")]
    RepetitionPenalty(f32),
    #[error("presence_penalty must be in [-2, 2], got {0}.")]
    PresencePenalty(f32),
    #[error("frequency_penalty must be in [-2, 2], got {0}.")]
    FrequencyPenalty(f32),
    #[error("n must be at least 1, got {0}.")]
    N(usize),
    #[error("max_tokens must be at least 1, got {0}.")]
    MaxTokens(usize),
    #[error("Requested sample logprobs of {0}, which is greater than max allowed: {MAX_LOGPROBS}")]
    Logprobs(usize),
    #[error("stop strings must not be empty.")]
    EmptyStop,
    #[error("stop_token_ids contains token id {token_id}, which is out of vocabulary (vocab size {vocab_size}).")]
    StopTokenId { token_id: u32, vocab_size: usize },
}

impl SamplingParams {
    /// Checks every field against vLLM's limits; `vocab_size` bounds `stop_token_ids`.
    ///
    /// Float checks are written so that NaN fails them too.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SamplingParamsError> {
        use SamplingParamsError as E;
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(E::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(E::TopP(self.top_p));
        }
        if let Some(top_k) = self.top_k {
            if top_k < 1 {
                return Err(E::TopK(top_k));
            }
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(E::MinP(self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(E::RepetitionPenalty(self.repetition_penalty));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(E::PresencePenalty(self.presence_penalty));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(E::FrequencyPenalty(self.frequency_penalty));
        }
        if self.n < 1 {
            return Err(E::N(self.n));
        }
        if self.max_tokens < 1 {
            return Err(E::MaxTokens(self.max_tokens));
        }
        if let Some(logprobs) = self.logprobs {
            if logprobs > MAX_LOGPROBS {
                return Err(E::Logprobs(logprobs));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(E::EmptyStop);
        }
        if let Some(&token_id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| usize::try_from(id).map_or(true, |id| id >= vocab_size))
        {
            return Err(E::StopTokenId {
                token_id,
                vocab_size,
            });
        }
        Ok(())
    }

    /// True when tokens are chosen by argmax (temperature 0, or close enough that
    /// sampling would be argmax anyway).
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE_EPS
    }

    /// The parameters of the `index`-th of the `n` completions of one request: `n`
    /// becomes 1 and a seed becomes `seed + index`, as in vLLM v1, so that seeded
    /// siblings differ from each other yet stay reproducible.
    pub fn child(&self, index: usize) -> SamplingParams {
        SamplingParams {
            n: 1,
            seed: self.seed.map(|seed| seed.wrapping_add(index as u64)),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 128_256;

    fn with(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut params = SamplingParams::default();
        f(&mut params);
        params
    }

    #[test]
    fn defaults_match_vllm_and_validate() {
        let params = SamplingParams::default();
        assert_eq!(params.temperature, 1.0);
        assert_eq!(params.top_p, 1.0);
        assert_eq!(params.top_k, None);
        assert_eq!(params.min_p, 0.0);
        assert_eq!(params.repetition_penalty, 1.0);
        assert_eq!(params.max_tokens, 16);
        assert_eq!(params.n, 1);
        assert!(params.skip_special_tokens);
        assert!(!params.is_greedy());
        assert_eq!(params.validate(VOCAB), Ok(()));
    }

    #[test]
    fn greedy_is_temperature_zero() {
        assert!(with(|p| p.temperature = 0.0).is_greedy());
        assert!(!with(|p| p.temperature = 0.01).is_greedy());
    }

    #[test]
    fn each_bad_field_is_named_in_the_error() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (with(|p| p.temperature = -0.5), "temperature"),
            (with(|p| p.temperature = f32::NAN), "temperature"),
            (with(|p| p.temperature = f32::INFINITY), "temperature"),
            (with(|p| p.top_p = 0.0), "top_p"),
            (with(|p| p.top_p = 1.5), "top_p"),
            (with(|p| p.top_p = f32::NAN), "top_p"),
            (with(|p| p.top_k = Some(0)), "top_k"),
            (with(|p| p.min_p = -0.1), "min_p"),
            (with(|p| p.min_p = 1.1), "min_p"),
            (with(|p| p.min_p = f32::NAN), "min_p"),
            (with(|p| p.repetition_penalty = 0.0), "repetition_penalty"),
            (with(|p| p.presence_penalty = 2.5), "presence_penalty"),
            (with(|p| p.frequency_penalty = -2.5), "frequency_penalty"),
            (
                with(|p| p.frequency_penalty = f32::NAN),
                "frequency_penalty",
            ),
            (with(|p| p.n = 0), "n must"),
            (with(|p| p.max_tokens = 0), "max_tokens"),
            (with(|p| p.logprobs = Some(21)), "logprobs"),
            (with(|p| p.stop = vec![String::new()]), "stop"),
            (
                with(|p| p.stop_token_ids = vec![1, VOCAB as u32]),
                "stop_token_ids",
            ),
        ];
        for (params, field) in cases {
            let err = params
                .validate(VOCAB)
                .expect_err(&format!("{params:?} should be refused"));
            assert!(
                err.to_string().contains(field),
                "{err} does not name {field}"
            );
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let ok = [
            with(|p| p.temperature = 0.0),
            with(|p| p.top_p = 1.0),
            with(|p| p.top_k = Some(1)),
            with(|p| p.min_p = 1.0),
            with(|p| {
                p.presence_penalty = -2.0;
                p.frequency_penalty = 2.0;
            }),
            with(|p| p.logprobs = Some(0)),
            with(|p| p.logprobs = Some(MAX_LOGPROBS)),
            with(|p| p.stop_token_ids = vec![VOCAB as u32 - 1]),
        ];
        for params in ok {
            assert_eq!(params.validate(VOCAB), Ok(()), "{params:?}");
        }
    }

    #[test]
    fn children_get_distinct_seeds_and_n_one() {
        let params = with(|p| {
            p.n = 3;
            p.seed = Some(7);
        });
        let seeds: Vec<_> = (0..3).map(|i| params.child(i).seed).collect();
        assert_eq!(seeds, vec![Some(7), Some(8), Some(9)]);
        assert_eq!(params.child(2).n, 1);
        assert_eq!(SamplingParams::default().child(1).seed, None);
    }

    #[test]
    fn deserializes_with_defaults_for_missing_fields() {
        let params: SamplingParams =
            serde_json::from_str(r#"{"temperature":0.5,"stop":["x"]}"#).unwrap();
        assert_eq!(params.temperature, 0.5);
        assert_eq!(params.stop, vec!["x".to_string()]);
        assert_eq!(params.max_tokens, 16);
    }
}

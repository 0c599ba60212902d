//! Runs one validated request on the engine and turns its token events into per-choice
//! text deltas (incremental detokenizing, stop strings), shared by chat and completions.

use std::sync::Arc;
use std::time::Instant;

use super::error::ApiError;
use super::lifecycle::{deadline_exceeded, unavailable, Ending, InFlight};
use crate::engine::sampling_params::SamplingParams;
use crate::engine::sequence::FinishReason;
use crate::engine::{EngineEvent, EngineHandle, EngineRequest, RequestStream, SubmitError};
use crate::frontend::text_output::ChoiceText;
use crate::runner::sampler::SampledToken;

/// One step of one choice, ready for a response.
#[derive(Debug, Clone, Default)]
pub struct ChoiceDelta {
    pub index: usize,
    pub text: String,
    /// Generated tokens whose text is in this delta (or was held back).
    pub tokens: Vec<SampledToken>,
    pub finish: Option<FinishReason>,
}

/// Whether the shutdown deadline or the request's own deadline cut this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    No,
    /// Its unfinished choices end with `abort`, then an error.
    Ending(Ending),
    /// All of that was said.
    Ended,
}

/// A request in flight: dropping it aborts the request in the engine.
pub struct Generation {
    stream: RequestStream,
    choices: Vec<ChoiceText>,
    finished: Vec<bool>,
    in_flight: InFlight,
    cut: Cut,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    pub started: Instant,
    pub first_token: Option<Instant>,
}

impl Generation {
    pub fn submit(
        engine: &EngineHandle,
        tokenizer: Arc<tokenizers::Tokenizer>,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
        in_flight: InFlight,
    ) -> Result<Self, SubmitError> {
        let n = params.n.max(1);
        let choices = (0..n)
            .map(|_| {
                ChoiceText::new(
                    tokenizer.clone(),
                    &prompt_ids,
                    params.skip_special_tokens,
                    &params.stop,
                )
            })
            .collect();
        let num_prompt_tokens = prompt_ids.len();
        let stream = engine.submit(EngineRequest { prompt_ids, params })?;
        Ok(Self {
            stream,
            choices,
            finished: vec![false; n],
            in_flight,
            cut: Cut::No,
            num_prompt_tokens,
            num_output_tokens: 0,
            started: Instant::now(),
            first_token: None,
        })
    }

    pub fn request_id(&self) -> u64 {
        self.stream.id().0
    }

    /// The next delta; `None` once every choice has finished. An `Err` ends the request.
    /// When the shutdown deadline passes, every unfinished choice ends with `abort` and
    /// then a 503 error follows; when the request's `--request-timeout` passes, the same
    /// with a 504.
    pub async fn next(&mut self) -> Option<Result<ChoiceDelta, ApiError>> {
        loop {
            match self.cut {
                Cut::No => {}
                Cut::Ending(why) => return Some(self.next_cut(why)),
                Cut::Ended => return None,
            }
            let event = tokio::select! {
                event = self.stream.recv() => event?,
                why = self.in_flight.ended() => {
                    self.cut = Cut::Ending(why);
                    continue;
                }
            };
            match event {
                EngineEvent::Token {
                    index,
                    token,
                    logprobs,
                    finish,
                } => {
                    self.first_token.get_or_insert_with(Instant::now);
                    let Some(text) = self.choices.get_mut(index) else {
                        continue;
                    };
                    if self.finished[index] {
                        continue;
                    }
                    self.num_output_tokens += 1;
                    let mut delta = ChoiceDelta {
                        index,
                        finish,
                        ..ChoiceDelta::default()
                    };
                    delta.tokens.push(logprobs.unwrap_or(SampledToken {
                        token,
                        logprob: 0.0,
                        top_logprobs: Vec::new(),
                    }));
                    // EOS and stop tokens end the choice without adding text.
                    if finish != Some(FinishReason::Stop) {
                        match text.push(token) {
                            Ok(d) => {
                                delta.text = d.text;
                                if d.stopped {
                                    self.stream.finish_choice(index);
                                    delta.finish = Some(FinishReason::Stop);
                                }
                            }
                            Err(e) => return Some(Err(ApiError::internal(e.to_string()))),
                        }
                    }
                    if delta.finish.is_some() {
                        self.finished[index] = true;
                        match text.finish() {
                            Ok(tail) => delta.text.push_str(&tail),
                            Err(e) => return Some(Err(ApiError::internal(e.to_string()))),
                        }
                    }
                    return Some(Ok(delta));
                }
                EngineEvent::Finished { index, reason } => {
                    if self.finished.get(index).copied().unwrap_or(true) {
                        continue;
                    }
                    self.finished[index] = true;
                    let tail = self.choices[index].finish().unwrap_or_default();
                    return Some(Ok(ChoiceDelta {
                        index,
                        text: tail,
                        tokens: Vec::new(),
                        finish: Some(reason),
                    }));
                }
                EngineEvent::Error(message) => return Some(Err(ApiError::internal(message))),
            }
        }
    }

    /// After the cut: an `abort` for each unfinished choice, then the error.
    fn next_cut(&mut self, why: Ending) -> Result<ChoiceDelta, ApiError> {
        if let Some(index) = self.finished.iter().position(|f| !f) {
            self.finished[index] = true;
            let text = self.choices[index].finish().unwrap_or_default();
            return Ok(ChoiceDelta {
                index,
                text,
                tokens: Vec::new(),
                finish: Some(FinishReason::Abort),
            });
        }
        self.cut = Cut::Ended;
        // Ends the engine side now; dropping `self` later would too.
        self.stream.abort();
        Err(match why {
            Ending::Shutdown => unavailable("The server shut down before this request finished."),
            Ending::Deadline(timeout) => deadline_exceeded(timeout),
        })
    }
}

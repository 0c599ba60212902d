//! Offline generation for `surge generate`: a fixed set of prompts run to completion
//! in lockstep (prefill all, then decode all), each sequence in its own block range.

use std::sync::Arc;

use candle_core::IndexOp;

use super::sampler::{SampledToken, SequenceSampler};
use super::ModelRunner;
use crate::engine::batch::{BatchInputs, SeqChunk};
use crate::engine::sampling_params::SamplingParams;
use crate::frontend::detokenizer::{IncrementalDetokenizer, StopMatcher};
use crate::frontend::tokenizer::Tokenizer;
use crate::loader::LoadedModel;

/// Tokens per KV block for offline runs.
const BLOCK_SIZE: usize = 16;

/// One prompt to complete.
#[derive(Debug, Clone)]
pub struct OfflineRequest {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
}

/// Why a sequence ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

/// A finished completion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OfflineOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    #[serde(skip)]
    pub logprobs: Vec<SampledToken>,
}

struct Running {
    tokens: Vec<u32>,
    prompt_len: usize,
    num_computed: usize,
    block_table: Vec<u32>,
    params: SamplingParams,
    sampler: SequenceSampler,
    detokenizer: IncrementalDetokenizer,
    stops: StopMatcher,
    text: String,
    logprobs: Vec<SampledToken>,
    finish: Option<FinishReason>,
    stopped_by_string: bool,
}

/// Runs every request to completion and returns outputs in request order.
pub fn generate(
    loaded: &LoadedModel,
    requests: &[OfflineRequest],
) -> anyhow::Result<Vec<OfflineOutput>> {
    let max_len = loaded.config.max_position_embeddings;
    let tokenizer: &Tokenizer = &loaded.tokenizer;
    let shared = Arc::new(tokenizer.inner().clone());
    let mut next_block = 0u32;
    let mut seqs = Vec::with_capacity(requests.len());
    for (i, req) in requests.iter().enumerate() {
        req.params.validate(loaded.config.vocab_size)?;
        let prompt_len = req.prompt_ids.len();
        anyhow::ensure!(prompt_len > 0, "prompt {i} is empty");
        anyhow::ensure!(
            prompt_len < max_len,
            "prompt {i} has {prompt_len} tokens; the model's context is {max_len}"
        );
        let total = (prompt_len + req.params.max_tokens).min(max_len);
        let num_blocks = total.div_ceil(BLOCK_SIZE) as u32;
        seqs.push(Running {
            tokens: req.prompt_ids.clone(),
            prompt_len,
            num_computed: 0,
            block_table: (next_block..next_block + num_blocks).collect(),
            params: req.params.clone(),
            sampler: SequenceSampler::new(&req.params),
            detokenizer: IncrementalDetokenizer::new(
                shared.clone(),
                &req.prompt_ids,
                req.params.skip_special_tokens,
            ),
            stops: StopMatcher::new(req.params.stop.clone()),
            text: String::new(),
            logprobs: Vec::new(),
            finish: (req.params.max_tokens == 0).then_some(FinishReason::Length),
            stopped_by_string: false,
        });
        next_block += num_blocks;
    }
    let runner = ModelRunner::new(loaded, next_block as usize, BLOCK_SIZE)?;
    let eos = &tokenizer.eos_token_ids;
    let started = std::time::Instant::now();
    let mut first_step: Option<std::time::Duration> = None;
    let mut num_decode_tokens = 0usize;
    loop {
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].finish.is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        let chunks: Vec<SeqChunk<'_>> = active
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                SeqChunk {
                    tokens: &s.tokens,
                    num_computed: s.num_computed,
                    num_new: s.tokens.len() - s.num_computed,
                    block_table: &s.block_table,
                    wants_logits: true,
                }
            })
            .collect();
        let batch = BatchInputs::prepare(&chunks, BLOCK_SIZE);
        let logits = runner.execute(&batch)?;
        if first_step.is_none() {
            first_step = Some(started.elapsed());
        } else {
            num_decode_tokens += active.len();
        }
        for (row, &i) in active.iter().enumerate() {
            let row_logits: Vec<f32> = logits.i(row)?.to_vec1()?;
            let s = &mut seqs[i];
            s.num_computed = s.tokens.len();
            let sampled = s.sampler.sample(
                &row_logits,
                &s.params,
                &s.tokens[..s.prompt_len],
                &s.tokens[s.prompt_len..],
            )?;
            s.accept(sampled, eos, max_len)?;
        }
    }
    let prefill = first_step.unwrap_or_default();
    let decode = started.elapsed().saturating_sub(prefill).as_secs_f64();
    let num_prompt_tokens: usize = seqs.iter().map(|s| s.prompt_len).sum();
    tracing::info!(
        num_prompt_tokens,
        prefill_s = prefill.as_secs_f64(),
        num_decode_tokens,
        decode_s = decode,
        decode_tok_per_s = num_decode_tokens as f64 / decode.max(1e-9),
        "offline generation done"
    );
    Ok(seqs.into_iter().map(Running::into_output).collect())
}

impl Running {
    fn accept(&mut self, sampled: SampledToken, eos: &[u32], max_len: usize) -> anyhow::Result<()> {
        let token = sampled.token;
        self.tokens.push(token);
        if self.params.logprobs.is_some() {
            self.logprobs.push(sampled);
        }
        let is_eos = !self.params.ignore_eos && eos.contains(&token);
        if is_eos || self.params.stop_token_ids.contains(&token) {
            self.finish = Some(FinishReason::Stop);
            return Ok(());
        }
        let delta = self.detokenizer.push(token)?;
        let outcome = self.stops.push(&delta);
        self.text.push_str(&outcome.text);
        if outcome.stopped.is_some() {
            self.stopped_by_string = true;
            self.finish = Some(FinishReason::Stop);
        } else if self.tokens.len() - self.prompt_len >= self.params.max_tokens
            || self.tokens.len() >= max_len
        {
            self.finish = Some(FinishReason::Length);
        }
        Ok(())
    }

    fn into_output(mut self) -> OfflineOutput {
        // A stop string already cut the text; otherwise flush what was held back.
        if !self.stopped_by_string {
            let tail = self.detokenizer.finish().unwrap_or_default();
            let outcome = self.stops.push(&tail);
            self.text.push_str(&outcome.text);
            if outcome.stopped.is_none() {
                self.text.push_str(&self.stops.finish());
            }
        }
        OfflineOutput {
            text: self.text,
            token_ids: self.tokens[self.prompt_len..].to_vec(),
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            logprobs: self.logprobs,
        }
    }
}

//! Offline generation for `surge generate`: submits every prompt to an engine at once
//! and collects each completion, reporting throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::sampling_params::SamplingParams;
use crate::engine::sequence::FinishReason;
use crate::engine::{self, EngineConfig, EngineEvent, EngineRequest};
use crate::frontend::text_output::ChoiceText;
use crate::loader::LoadedModel;

/// One prompt to complete.
#[derive(Debug, Clone)]
pub struct OfflineRequest {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
}

/// A finished completion.
#[derive(Debug, Clone)]
pub struct OfflineOutput {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
}

/// Throughput of one offline run.
#[derive(Debug, Clone, Copy)]
pub struct OfflineReport {
    pub num_requests: usize,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    pub elapsed: Duration,
    pub num_steps: u64,
    pub step_p50: Duration,
    pub step_p90: Duration,
    pub step_p99: Duration,
}

impl OfflineReport {
    pub fn output_tokens_per_second(&self) -> f64 {
        self.num_output_tokens as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs every request to completion through a fresh engine; outputs in request order.
pub fn generate(
    loaded: &LoadedModel,
    requests: &[OfflineRequest],
    config: &EngineConfig,
) -> anyhow::Result<(Vec<OfflineOutput>, OfflineReport)> {
    let (handle, _info, thread) = engine::start(loaded, config)?;
    let tokenizer = Arc::new(loaded.tokenizer.inner().clone());
    let started = Instant::now();
    let mut streams = Vec::with_capacity(requests.len());
    for r in requests {
        r.params.validate(loaded.config.vocab_size)?;
        anyhow::ensure!(r.params.n == 1, "offline generation takes n = 1");
        let request = EngineRequest {
            prompt_ids: r.prompt_ids.clone(),
            params: r.params.clone(),
        };
        streams.push(handle.submit(request)?);
    }
    let mut outputs = Vec::with_capacity(requests.len());
    for (r, mut stream) in requests.iter().zip(streams) {
        let mut text = ChoiceText::new(
            tokenizer.clone(),
            &r.prompt_ids,
            r.params.skip_special_tokens,
            &r.params.stop,
        );
        let mut out = OfflineOutput {
            text: String::new(),
            token_ids: Vec::new(),
            finish_reason: FinishReason::Abort,
        };
        while let Some(event) = stream.blocking_recv() {
            match event {
                EngineEvent::Token { token, finish, .. } => {
                    if text.is_stopped() {
                        continue;
                    }
                    out.token_ids.push(token);
                    if finish != Some(FinishReason::Stop) {
                        let delta = text.push(token)?;
                        out.text.push_str(&delta.text);
                        if delta.stopped {
                            stream.finish_choice(0);
                            out.finish_reason = FinishReason::Stop;
                        }
                    }
                    if let Some(reason) = finish {
                        out.finish_reason = reason;
                    }
                }
                EngineEvent::Finished { reason, .. } => out.finish_reason = reason,
                EngineEvent::Error(message) => anyhow::bail!("generation failed: {message}"),
            }
        }
        out.text.push_str(&text.finish()?);
        outputs.push(out);
    }
    let elapsed = started.elapsed();
    let stats_watch = handle.stats_watch();
    drop(handle);
    let _ = thread.join();
    let stats = stats_watch.borrow().clone();
    let report = OfflineReport {
        num_requests: requests.len(),
        num_prompt_tokens: requests.iter().map(|r| r.prompt_ids.len()).sum(),
        num_output_tokens: outputs.iter().map(|o| o.token_ids.len()).sum(),
        elapsed,
        num_steps: stats.num_steps,
        step_p50: stats.step_times.quantile(0.5),
        step_p90: stats.step_times.quantile(0.9),
        step_p99: stats.step_times.quantile(0.99),
    };
    Ok((outputs, report))
}

//! The engine thread: drains commands, then steps — schedule, run, sample, update —
//! and sends each request its tokens. It owns all mutable engine state.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::{mpsc as tmpsc, watch};

use super::admission::Admission;
use super::batch::BatchInputs;
use super::handle::{Command, EngineEvent, EngineHandle, EngineRequest, RequestId};
use super::sampling_params::SamplingParams;
use super::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use super::sequence::{FinishReason, Sequence, SequenceId};
use super::stats::EngineStats;
use super::timeline::{Timeline, TokenLatency};
use crate::kv_cache::block_allocator::BlockAllocator;
use crate::kv_cache::capacity::{self, KvCapacity};
use crate::kv_cache::KvCacheShape;
use crate::loader::LoadedModel;
use crate::metrics::Metrics;
use crate::runner::sampler::{SamplerWorkspace, SequenceSampler};
use crate::runner::ModelRunner;

/// The engine's limits (vLLM's flags of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub block_size: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// KV cache budget in bytes (`--kv-cache-memory`, CPU).
    pub kv_cache_memory: usize,
    /// Share of a GPU's memory surge may use in all (`--gpu-memory-utilization`, GPU).
    pub gpu_memory_utilization: f64,
    pub max_model_len: Option<usize>,
    pub enable_prefix_caching: bool,
    /// Requests waiting beyond this are refused with `QueueFull`.
    pub max_num_queued_reqs: Option<usize>,
    /// Prompt tokens waiting beyond this are refused with `QueueFull`.
    pub max_num_queued_tokens: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            kv_cache_memory: 4 << 30,
            gpu_memory_utilization: 0.9,
            max_model_len: None,
            enable_prefix_caching: true,
            max_num_queued_reqs: None,
            max_num_queued_tokens: None,
        }
    }
}

/// What the engine settled on at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineInfo {
    pub capacity: KvCapacity,
    pub block_size: usize,
    /// The KV cache's memory budget (`--kv-cache-memory`, or what the GPU left).
    pub kv_cache_bytes: usize,
}

struct SeqState {
    request: RequestId,
    index: usize,
    params: SamplingParams,
    sampler: SequenceSampler,
}

struct RequestState {
    events: tmpsc::UnboundedSender<EngineEvent>,
    /// Choice index → sequence, `None` once that choice ended.
    seqs: Vec<Option<SequenceId>>,
    /// Counted in the handle's queue until its first step.
    queued: bool,
    prompt_tokens: usize,
    max_tokens: usize,
    timeline: Timeline,
    /// The finish reason of the choice that ended last.
    finish: &'static str,
}

/// Everything the engine thread owns.
pub struct EngineCore {
    scheduler: Scheduler,
    runner: ModelRunner,
    eos_token_ids: Vec<u32>,
    requests: HashMap<RequestId, RequestState>,
    seqs: HashMap<SequenceId, SeqState>,
    next_seq: u64,
    admission: Arc<Admission>,
    metrics: Option<Arc<Metrics>>,
    stats: EngineStats,
    /// The counters as last exported to `metrics`.
    exported: EngineStats,
    stats_tx: watch::Sender<EngineStats>,
    workspace: SamplerWorkspace,
    /// Requests that ended this step; their streams close only after the stats that
    /// count them as ended are published, so a client never sees stale numbers.
    ended: Vec<RequestState>,
}

/// What [`start`] returns: the handle, the settled sizes and the engine thread.
pub type Started = (EngineHandle, EngineInfo, std::thread::JoinHandle<()>);

/// Sizes the KV cache, builds the runner and scheduler, and starts the engine thread.
pub fn start(loaded: &LoadedModel, config: &EngineConfig) -> anyhow::Result<Started> {
    start_with_metrics(loaded, config, None)
}

/// [`start`], recording into `metrics` as the engine steps.
pub fn start_with_metrics(
    loaded: &LoadedModel,
    config: &EngineConfig,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<Started> {
    let c = &loaded.config;
    let shape = KvCacheShape {
        num_layers: c.num_hidden_layers,
        num_blocks: 0,
        block_size: config.block_size,
        num_kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
    };
    anyhow::ensure!(config.block_size > 0, "--block-size must be at least 1");
    let budget = crate::runner::memory::kv_cache_budget(loaded, config)?;
    let capacity = capacity::plan(
        shape,
        loaded.dtype,
        budget.bytes,
        c.max_position_embeddings,
        config.max_model_len,
    )?;
    tracing::info!(
        num_blocks = capacity.num_blocks,
        block_size = config.block_size,
        max_model_len = capacity.max_model_len,
        "KV cache planned"
    );
    let allocator = BlockAllocator::new(
        capacity.num_blocks,
        config.block_size,
        config.enable_prefix_caching,
    )?;
    let scheduler = Scheduler::new(
        SchedulerConfig {
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            block_size: config.block_size,
            max_model_len: capacity.max_model_len,
        },
        allocator,
    )?;
    let runner = ModelRunner::new(loaded, capacity.num_blocks, config.block_size)?;
    let admission = Arc::new(Admission::new(
        config.max_num_queued_reqs,
        config.max_num_queued_tokens,
    ));
    let stats = EngineStats {
        block_size: config.block_size,
        max_num_seqs: config.max_num_seqs,
        scheduler: scheduler.stats(),
        ..EngineStats::default()
    };
    let (stats_tx, stats_rx) = watch::channel(stats.clone());
    let (tx, rx) = mpsc::channel();
    let core = EngineCore {
        scheduler,
        runner,
        eos_token_ids: loaded.tokenizer.eos_token_ids.clone(),
        requests: HashMap::new(),
        seqs: HashMap::new(),
        next_seq: 0,
        admission: admission.clone(),
        metrics,
        exported: stats.clone(),
        stats,
        stats_tx,
        workspace: SamplerWorkspace::default(),
        ended: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("surge-engine".into())
        .spawn(move || core.run(rx))?;
    let handle = EngineHandle::new(tx, admission, stats_rx);
    Ok((
        handle,
        EngineInfo {
            capacity,
            block_size: config.block_size,
            kv_cache_bytes: budget.bytes,
        },
        thread,
    ))
}

impl EngineCore {
    /// Steps while there is work; blocks on the command queue while idle; returns once
    /// every handle is gone and nothing is left to do.
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if !self.scheduler.has_unfinished() {
                match commands.recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = commands.try_recv() {
                self.apply(cmd);
            }
            if !self.step() {
                // Nothing could run: wait for a command instead of spinning.
                match commands.recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(_) => return,
                }
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Add {
                id,
                arrival,
                request,
                events,
            } => self.add(id, arrival, request, events),
            Command::Abort(id) => self.abort(id),
            Command::FinishChoice { id, index } => self.finish_choice(id, index),
            Command::Warmup(done) => {
                let started = Instant::now();
                let result = self
                    .runner
                    .warmup()
                    .map(|()| started.elapsed())
                    .map_err(|e| e.to_string());
                let _ = done.send(result);
            }
        }
        self.publish();
    }

    fn add(
        &mut self,
        id: RequestId,
        arrival: Instant,
        request: EngineRequest,
        events: tmpsc::UnboundedSender<EngineEvent>,
    ) {
        let n = request.params.n.max(1);
        let prompt_tokens = request.prompt_ids.len();
        let max_tokens = request.params.max_tokens;
        let ids: Vec<SequenceId> = (0..n as u64)
            .map(|i| SequenceId(self.next_seq + i))
            .collect();
        self.next_seq += n as u64;
        let seq = Sequence::new(ids[0], request.prompt_ids, request.params.max_tokens)
            .with_siblings(ids[1..].to_vec());
        if let Err(e) = self.scheduler.add(seq) {
            self.admission.release(prompt_tokens, false);
            let _ = events.send(EngineEvent::Error(e.to_string()));
            if let Some(m) = &self.metrics {
                let timeline = Timeline::new(arrival);
                m.observe_finished(&timeline.finish(
                    Instant::now(),
                    "error",
                    (prompt_tokens, max_tokens, n),
                ));
            }
            return;
        }
        for (index, &seq) in ids.iter().enumerate() {
            let params = if n > 1 {
                request.params.child(index)
            } else {
                request.params.clone()
            };
            let sampler = SequenceSampler::new(&params);
            self.seqs.insert(
                seq,
                SeqState {
                    request: id,
                    index,
                    params,
                    sampler,
                },
            );
        }
        self.requests.insert(
            id,
            RequestState {
                events,
                seqs: ids.into_iter().map(Some).collect(),
                queued: true,
                prompt_tokens,
                max_tokens,
                timeline: Timeline::new(arrival),
                finish: "abort",
            },
        );
    }

    /// Ends every choice of a request and forgets it; its blocks go back at once.
    fn abort(&mut self, id: RequestId) {
        self.abort_as(id, "abort");
    }

    /// [`Self::abort`], counted under `finished_reason`.
    fn abort_as(&mut self, id: RequestId, finished_reason: &'static str) {
        let Some(mut request) = self.requests.remove(&id) else {
            return;
        };
        if request.queued {
            self.admission.release(request.prompt_tokens, false);
        }
        for seq in std::mem::take(&mut request.seqs).into_iter().flatten() {
            self.scheduler.abort(seq);
            self.seqs.remove(&seq);
        }
        request.finish = finished_reason;
        self.observe_finished(&request);
    }

    fn observe_finished(&self, request: &RequestState) {
        if let Some(m) = &self.metrics {
            m.observe_finished(&request.timeline.finish(
                Instant::now(),
                request.finish,
                (
                    request.prompt_tokens,
                    request.max_tokens,
                    request.seqs.len(),
                ),
            ));
        }
    }

    fn finish_choice(&mut self, id: RequestId, index: usize) {
        let Some(seq) = self
            .requests
            .get(&id)
            .and_then(|r| r.seqs.get(index).copied().flatten())
        else {
            return;
        };
        self.scheduler.finish(seq, FinishReason::Stop);
        self.end_choice(seq, None);
    }

    /// Forgets a finished choice; tells its stream unless `reported` already did.
    fn end_choice(&mut self, seq: SequenceId, reported: Option<FinishReason>) {
        let Some(state) = self.seqs.remove(&seq) else {
            return;
        };
        let Some(request) = self.requests.get_mut(&state.request) else {
            return;
        };
        request.seqs[state.index] = None;
        request.finish = reported.unwrap_or(FinishReason::Stop).as_str();
        if reported.is_none() {
            let _ = request.events.send(EngineEvent::Finished {
                index: state.index,
                reason: FinishReason::Stop,
            });
        }
        if request.seqs.iter().all(Option::is_none) {
            // Dropping the sender (after the next publish) ends the stream.
            if let Some(request) = self.requests.remove(&state.request) {
                self.observe_finished(&request);
                self.ended.push(request);
            }
        }
    }

    /// Fails every request with a sequence in `out` (the step could not run).
    fn fail(&mut self, out: &SchedulerOutput, message: &str) {
        tracing::error!(error = message, "engine step failed");
        let failed: Vec<RequestId> = out
            .scheduled
            .iter()
            .filter_map(|s| self.seqs.get(&s.id).map(|st| st.request))
            .collect();
        for id in failed {
            if let Some(r) = self.requests.get(&id) {
                let _ = r.events.send(EngineEvent::Error(message.to_string()));
            }
            self.abort_as(id, "error");
        }
    }

    /// One engine step; false if nothing was schedulable.
    fn step(&mut self) -> bool {
        let started = Instant::now();
        let out = self.scheduler.schedule();
        if out.is_empty() {
            return false;
        }
        for s in &out.scheduled {
            let Some(state) = self.seqs.get(&s.id) else {
                continue;
            };
            if let Some(request) = self.requests.get_mut(&state.request) {
                request.timeline.scheduled(started);
                if std::mem::take(&mut request.queued) {
                    self.admission.release(request.prompt_tokens, true);
                }
            }
        }
        if let Err(e) = self.forward_and_sample(&out) {
            self.fail(&out, &format!("{e:#}"));
        }
        self.stats.last_step_time = started.elapsed();
        self.stats.step_times.record(self.stats.last_step_time);
        self.stats.last_step_tokens = out.num_batched_tokens();
        self.stats.num_steps += 1;
        let seqs = self.scheduler.scheduled_sequences(&out);
        self.stats.prompt_tokens_computed += out
            .scheduled
            .iter()
            .zip(seqs)
            .map(|(s, seq)| prompt_part(seq, s.num_computed, s.num_new))
            .sum::<usize>() as u64;
        if let Some(m) = &self.metrics {
            m.iteration_tokens
                .observe(self.stats.last_step_tokens as f64);
        }
        self.publish();
        true
    }

    fn forward_and_sample(&mut self, out: &SchedulerOutput) -> anyhow::Result<()> {
        let pairs: Vec<(usize, usize)> = out
            .blocks_to_copy
            .iter()
            .map(|c| (c.src.index(), c.dst.index()))
            .collect();
        self.runner.copy_blocks(&pairs)?;
        let batch = BatchInputs::prepare(
            &self.scheduler.chunks(out)?,
            self.scheduler.block_size().get(),
        );
        let logits = self.runner.execute(&batch)?;
        let vocab = logits.dim(1)?;
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let mut sampled = Vec::new();
        let seqs = self.scheduler.scheduled_sequences(out);
        let sampling = out.scheduled.iter().zip(seqs).filter(|(s, _)| s.samples);
        for (row, (s, seq)) in sampling.enumerate() {
            let id = s.id;
            let (Some(state), Some(seq)) = (self.seqs.get_mut(&id), seq) else {
                continue;
            };
            let row = &logits[row * vocab..(row + 1) * vocab];
            let token = state.sampler.sample_with(
                &mut self.workspace,
                row,
                &state.params,
                seq.prompt_token_ids(),
                seq.output_token_ids(),
            )?;
            sampled.push((id, token));
        }
        let tokens: Vec<(SequenceId, u32)> = sampled.iter().map(|(id, t)| (*id, t.token)).collect();
        let length_done = self.scheduler.update(out, &tokens);
        for (id, token) in sampled {
            let Some(state) = self.seqs.get(&id) else {
                continue;
            };
            let hit_eos = !state.params.ignore_eos && self.eos_token_ids.contains(&token.token);
            let stopped = hit_eos || state.params.stop_token_ids.contains(&token.token);
            let (request, index) = (state.request, state.index);
            let logprobs = state.params.logprobs.is_some().then_some(token.clone());
            self.token_latency(request);
            let finish = if stopped {
                self.scheduler.finish(id, FinishReason::Stop);
                Some(FinishReason::Stop)
            } else {
                length_done
                    .iter()
                    .find(|(done, _)| *done == id)
                    .map(|(_, reason)| *reason)
            };
            let event = EngineEvent::Token {
                index,
                token: token.token,
                logprobs,
                finish,
            };
            let delivered = self
                .requests
                .get(&request)
                .is_some_and(|r| r.events.send(event).is_ok());
            if !delivered {
                // The client went away: free its blocks now.
                self.abort(request);
            } else if finish.is_some() {
                self.end_choice(id, finish);
            }
        }
        Ok(())
    }

    /// Counts a new token of `request` into the token counters and latency histograms.
    fn token_latency(&mut self, request: RequestId) {
        let Some(r) = self.requests.get_mut(&request) else {
            return;
        };
        self.stats.generation_tokens_total += 1;
        let latency = r.timeline.token(Instant::now());
        if matches!(latency, TokenLatency::First(_)) {
            // vLLM counts a request's whole prompt, cached or not, at its first token.
            self.stats.prompt_tokens_total += r.prompt_tokens as u64;
        }
        if let Some(m) = &self.metrics {
            match latency {
                TokenLatency::First(d) => m.time_to_first_token.observe(d.as_secs_f64()),
                TokenLatency::Next(d) => m.inter_token_latency.observe(d.as_secs_f64()),
            }
        }
    }

    fn publish(&mut self) {
        self.stats.scheduler = self.scheduler.stats();
        self.stats.queued_reqs = self.admission.num_queued();
        if let Some(m) = &self.metrics {
            self.stats.export(&self.exported, m);
            self.exported = self.stats.clone();
        }
        self.stats_tx.send_replace(self.stats.clone());
        self.ended.clear();
    }
}

/// Tokens of a chunk of `seq` that belong to the prompt (the rest recompute output
/// after a preemption); none once the sequence is gone.
fn prompt_part(seq: Option<&Sequence>, num_computed: usize, num_new: usize) -> usize {
    let prompt_len = seq.map_or(0, Sequence::num_prompt_tokens);
    (num_computed + num_new)
        .min(prompt_len)
        .saturating_sub(num_computed)
}

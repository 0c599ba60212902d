//! Host work of one engine step with 256 running decodes, without the model forward:
//! schedule, batch preparation, sampling of a fake `[256, 128256]` f32 logits tensor and
//! the engine's bookkeeping (append tokens, stop checks, stats). Budget: 200 µs a step.
//!
//! `cargo bench --bench step_host`. Each case runs the whole step as the engine thread
//! does (`engine/core.rs`: `step` and `forward_and_sample`) and times one part of it,
//! so the parts see the state a real decode loop leaves. Every 512 steps the engine
//! is rebuilt (untimed), so sequences stay between 1000 and ~1500 tokens.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use surge::engine::batch::BatchInputs;
use surge::engine::sampling_params::SamplingParams;
use surge::engine::scheduler::{Scheduler, SchedulerConfig};
use surge::engine::sequence::{FinishReason, Sequence, SequenceId};
use surge::kv_cache::block_allocator::BlockAllocator;
use surge::runner::sampler::{SampledToken, SamplerWorkspace, SequenceSampler};

const NUM_SEQS: usize = 256;
const PROMPT_LEN: usize = 1000;
const BLOCK_SIZE: usize = 16;
/// Llama 3's vocabulary.
const VOCAB: usize = 128_256;
const EOS: [u32; 2] = [128_001, 128_009];
/// Steps before the engine is rebuilt, which bounds sequence growth.
const STEPS_PER_ENGINE: usize = 512;

/// How a step gets its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sampling {
    /// A fixed token for every row: the step without any sampling work.
    None,
    Greedy,
    /// temperature 0.8, top-p 0.95, seeded.
    TopP,
}

/// Wall time of each part of one step.
#[derive(Debug, Default, Clone, Copy)]
struct StepTimes {
    schedule: Duration,
    prepare: Duration,
    sample: Duration,
    update: Duration,
}

impl StepTimes {
    fn host(&self) -> Duration {
        self.schedule + self.prepare + self.update
    }

    fn total(&self) -> Duration {
        self.host() + self.sample
    }
}

/// What `EngineCore` keeps per sequence, minus the channels.
struct SeqState {
    params: SamplingParams,
    sampler: SequenceSampler,
}

/// The engine thread's state without the model: the scheduler and per-sequence samplers.
struct Engine {
    scheduler: Scheduler,
    seqs: HashMap<SequenceId, SeqState>,
    workspace: SamplerWorkspace,
    steps: usize,
    sampling: Sampling,
}

impl Engine {
    /// 256 sequences with distinct ~1000-token prompts, all prefilled: every later step
    /// is a pure decode of 256 tokens.
    fn new(sampling: Sampling) -> Self {
        let max_model_len = 4096;
        let blocks_per_seq = (PROMPT_LEN + STEPS_PER_ENGINE + 2 * BLOCK_SIZE).div_ceil(BLOCK_SIZE);
        let alloc = BlockAllocator::new(NUM_SEQS * blocks_per_seq + 64, BLOCK_SIZE, true)
            .expect("allocator");
        let config = SchedulerConfig {
            max_num_seqs: NUM_SEQS,
            max_num_batched_tokens: 2048,
            block_size: BLOCK_SIZE,
            max_model_len,
        };
        let mut scheduler = Scheduler::new(config, alloc).expect("scheduler");
        let mut seqs = HashMap::new();
        let mut rng = XorShift(0x5eed);
        for i in 0..NUM_SEQS {
            let id = SequenceId(i as u64);
            // Prompts differ by a few tokens, so the prefix cache sees realistic misses.
            let len = PROMPT_LEN - 8 + (i % 16);
            let prompt = (0..len).map(|_| rng.next_u32() % 120_000).collect();
            let params = match sampling {
                Sampling::None | Sampling::Greedy => SamplingParams {
                    temperature: 0.0,
                    max_tokens: 100_000,
                    ..SamplingParams::default()
                },
                Sampling::TopP => SamplingParams {
                    temperature: 0.8,
                    top_p: 0.95,
                    seed: Some(i as u64),
                    max_tokens: 100_000,
                    ..SamplingParams::default()
                },
            };
            scheduler
                .add(Sequence::new(id, prompt, params.max_tokens))
                .expect("add");
            let sampler = SequenceSampler::new(&params);
            seqs.insert(id, SeqState { params, sampler });
        }
        let mut engine = Self {
            scheduler,
            seqs,
            workspace: SamplerWorkspace::default(),
            steps: 0,
            sampling: Sampling::None,
        };
        while engine
            .scheduler
            .sequence(SequenceId(NUM_SEQS as u64 - 1))
            .is_some_and(|s| s.num_output_tokens() == 0)
        {
            engine.step(&[]);
        }
        let out = engine.scheduler.schedule();
        assert_eq!(out.scheduled.len(), NUM_SEQS, "not all sequences decode");
        assert!(out.scheduled.iter().all(|s| s.num_new == 1));
        engine.scheduler.update(
            &out,
            &out.sampling_ids().map(|id| (id, 7)).collect::<Vec<_>>(),
        );
        engine.sampling = sampling;
        engine.steps = 0;
        engine
    }

    /// One step as `EngineCore::step` runs it, the forward replaced by `logits`
    /// (`[rows, VOCAB]` row-major; ignored when not sampling).
    fn step(&mut self, logits: &[f32]) -> StepTimes {
        let mut times = StepTimes::default();
        let started = Instant::now();
        let out = self.scheduler.schedule();
        for s in &out.scheduled {
            // The engine marks each request's timeline here.
            black_box(self.seqs.get(&s.id));
        }
        let t = Instant::now();
        times.schedule = t - started;

        let pairs: Vec<(usize, usize)> = out
            .blocks_to_copy
            .iter()
            .map(|c| (c.src.index(), c.dst.index()))
            .collect();
        black_box(&pairs);
        let batch = BatchInputs::prepare(
            &self.scheduler.chunks(&out).expect("chunks"),
            self.scheduler.block_size().get(),
        );
        black_box(&batch);
        let t2 = Instant::now();
        times.prepare = t2 - t;

        let mut sampled: Vec<(SequenceId, SampledToken)> = Vec::new();
        let seqs = self.scheduler.scheduled_sequences(&out);
        let sampling = out.scheduled.iter().zip(seqs).filter(|(s, _)| s.samples);
        for (row, (s, seq)) in sampling.enumerate() {
            let id = s.id;
            let (Some(state), Some(seq)) = (self.seqs.get_mut(&id), seq) else {
                continue;
            };
            let token = if self.sampling == Sampling::None {
                SampledToken {
                    token: 7,
                    logprob: 0.0,
                    top_logprobs: Vec::new(),
                }
            } else {
                let row = &logits[row * VOCAB..(row + 1) * VOCAB];
                // The sampler's own work, timed apart from the bookkeeping around it.
                let t = Instant::now();
                let token = state
                    .sampler
                    .sample_with(
                        &mut self.workspace,
                        row,
                        &state.params,
                        seq.prompt_token_ids(),
                        seq.output_token_ids(),
                    )
                    .expect("sample");
                times.sample += t.elapsed();
                token
            };
            sampled.push((id, token));
        }
        let t3 = Instant::now();
        // Looking up each row's sequence and state is bookkeeping around the sampler.
        times.update = t3 - t2 - times.sample;

        let tokens: Vec<(SequenceId, u32)> = sampled.iter().map(|(id, t)| (*id, t.token)).collect();
        let length_done = self.scheduler.update(&out, &tokens);
        for (id, token) in sampled {
            let Some(state) = self.seqs.get(&id) else {
                continue;
            };
            let stopped = (!state.params.ignore_eos && EOS.contains(&token.token))
                || state.params.stop_token_ids.contains(&token.token);
            let logprobs = state.params.logprobs.is_some().then_some(token.clone());
            let finish = if stopped {
                self.scheduler.finish(id, FinishReason::Stop);
                Some(FinishReason::Stop)
            } else {
                length_done
                    .iter()
                    .find(|(done, _)| *done == id)
                    .map(|(_, reason)| *reason)
            };
            black_box((logprobs, finish));
        }
        // The engine's prompt-token counter and published stats.
        let seqs = self.scheduler.scheduled_sequences(&out);
        let prompt_tokens: usize = out
            .scheduled
            .iter()
            .zip(seqs)
            .map(|(s, seq)| {
                let prompt_len = seq.map_or(0, Sequence::num_prompt_tokens);
                (s.num_computed + s.num_new)
                    .min(prompt_len)
                    .saturating_sub(s.num_computed)
            })
            .sum();
        black_box(prompt_tokens);
        black_box(self.scheduler.stats());
        times.update += t3.elapsed();
        self.steps += 1;
        times
    }
}

/// Deterministic fake logits `[NUM_SEQS, VOCAB]`: a N(0, 1.5)-like body and, per row,
/// 32 plausible tokens between 8 and 16 (never EOS), so the distribution is peaked
/// with a long tail, as a language model's usually is.
fn fake_logits() -> Vec<f32> {
    let mut rng = XorShift(42);
    let mut logits = Vec::with_capacity(NUM_SEQS * VOCAB);
    for _ in 0..NUM_SEQS * VOCAB {
        // Irwin–Hall(4) is close enough to normal for a logits body.
        let u: f32 = (0..4).map(|_| rng.next_f32()).sum::<f32>() - 2.0;
        logits.push(u * 1.5 * 3f32.sqrt());
    }
    for row in 0..NUM_SEQS {
        for j in 0..32u32 {
            let token = (rng.next_u32() % 120_000) as usize;
            logits[row * VOCAB + token] = 16.0 - j as f32 * 0.25;
        }
    }
    logits
}

struct XorShift(u64);

impl XorShift {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }

    fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
}

/// Times `part` of a step over `iters` steps, rebuilding the engine when it has grown.
fn run_steps(
    engine: &mut Engine,
    logits: &[f32],
    iters: u64,
    part: impl Fn(&StepTimes) -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        if engine.steps >= STEPS_PER_ENGINE {
            *engine = Engine::new(engine.sampling);
        }
        total += part(&engine.step(logits));
    }
    total
}

/// Which part of a step a case times.
type Part = fn(&StepTimes) -> Duration;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("step_host_256_decodes");
    group.measurement_time(Duration::from_secs(4));
    let mut engine = Engine::new(Sampling::None);
    let parts: [(&str, Part); 4] = [
        ("schedule", |t| t.schedule),
        ("prepare", |t| t.prepare),
        ("update_and_bookkeeping", |t| t.update),
        ("host_total_without_sampling", StepTimes::host),
    ];
    for (name, part) in parts {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| run_steps(&mut engine, &[], iters, part))
        });
    }
    drop(engine);

    // Sampling is milliseconds a step: few, flat samples.
    group.sample_size(10);
    group.sampling_mode(criterion::SamplingMode::Flat);
    let logits = fake_logits();
    for (name, sampling) in [("greedy", Sampling::Greedy), ("top_p", Sampling::TopP)] {
        let mut engine = Engine::new(sampling);
        group.bench_function(format!("sample_256_rows_{name}"), |b| {
            b.iter_custom(|iters| run_steps(&mut engine, &logits, iters, |t| t.sample))
        });
        group.bench_function(format!("step_total_{name}"), |b| {
            b.iter_custom(|iters| run_steps(&mut engine, &logits, iters, StepTimes::total))
        });
    }

    // What `forward_and_sample` does with the runner's logits before sampling: a CPU
    // tensor copied out to a Vec (a device-to-host transfer on a GPU).
    let tensor = Tensor::from_slice(&logits, (NUM_SEQS, VOCAB), &Device::Cpu).expect("tensor");
    group.bench_function("logits_tensor_to_vec", |b| {
        b.iter(|| {
            let v: Vec<f32> = tensor
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("to_vec1");
            black_box(v)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

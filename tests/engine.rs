//! The continuous-batching engine end to end on real models: batch invariance,
//! preemption, prefix caching, chunked prefill, aborts and queue limits.

mod support;

use std::path::Path;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use surge::engine::sampling_params::SamplingParams;
use surge::engine::stats::EngineStats;
use surge::engine::{self, EngineConfig, EngineEvent, EngineHandle, EngineRequest, SubmitError};
use surge::loader::{self, DTypeChoice, LoadedModel, ModelSource};

fn load(dir: &Path) -> LoadedModel {
    loader::load(
        &ModelSource::Local(dir.to_path_buf()),
        DTypeChoice::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        logprobs: Some(2),
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// One choice's tokens and, per token, its top-2 logprobs.
#[derive(Debug, Clone)]
struct Output {
    tokens: Vec<u32>,
    top2: Vec<Vec<(u32, f32)>>,
}

fn collect(handle: &EngineHandle, requests: Vec<EngineRequest>) -> Vec<Output> {
    let streams: Vec<_> = requests
        .into_iter()
        .map(|r| handle.submit(r).unwrap())
        .collect();
    streams
        .into_iter()
        .map(|mut s| {
            let mut out = Output {
                tokens: Vec::new(),
                top2: Vec::new(),
            };
            while let Some(event) = s.blocking_recv() {
                match event {
                    EngineEvent::Token {
                        token, logprobs, ..
                    } => {
                        out.tokens.push(token);
                        out.top2
                            .push(logprobs.map(|l| l.top_logprobs).unwrap_or_default());
                    }
                    EngineEvent::Finished { .. } => {}
                    EngineEvent::Error(e) => panic!("engine error: {e}"),
                }
            }
            out
        })
        .collect()
}

/// Runs requests on a fresh engine; returns outputs and the final stats.
fn run(
    loaded: &LoadedModel,
    config: &EngineConfig,
    requests: Vec<EngineRequest>,
) -> (Vec<Output>, EngineStats) {
    let (handle, _, thread) = engine::start(loaded, config).unwrap();
    let outputs = collect(&handle, requests);
    let stats = handle.stats_watch();
    drop(handle);
    thread.join().unwrap();
    let stats = stats.borrow().clone();
    (outputs, stats)
}

fn small_config() -> EngineConfig {
    EngineConfig {
        kv_cache_memory: 64 << 20,
        ..EngineConfig::default()
    }
}

/// Same tokens, or the first difference is a near tie (top-2 logit gap < 1e-3).
fn assert_same_or_near_tie(got: &Output, want: &Output, what: &str) {
    for (i, (a, b)) in got.tokens.iter().zip(&want.tokens).enumerate() {
        if a != b {
            let top = &want.top2[i];
            let gap = (top[0].1 - top[1].1).abs();
            assert!(
                gap < 1e-3,
                "{what}: token {i} differs ({a} vs {b}) and the top-2 gap is {gap}"
            );
            return;
        }
    }
    assert_eq!(
        got.tokens.len(),
        want.tokens.len(),
        "{what}: lengths differ"
    );
}

fn random_prompts(seed: u64, lens: &[usize]) -> Vec<Vec<u32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    lens.iter()
        .map(|&n| (0..n).map(|_| rng.random_range(100..40_000u32)).collect())
        .collect()
}

fn batch_invariance(dir: &Path) {
    let loaded = load(dir);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let lens: Vec<usize> = (0..24)
        .map(|i| {
            if i == 0 {
                1
            } else if i == 1 {
                600
            } else {
                rng.random_range(1..600)
            }
        })
        .collect();
    let prompts = random_prompts(5, &lens);
    let max_tokens: Vec<usize> = (0..24).map(|i| 1 + (i * 7) % 12).collect();
    let requests: Vec<EngineRequest> = prompts
        .iter()
        .zip(&max_tokens)
        .map(|(p, &m)| EngineRequest {
            prompt_ids: p.clone(),
            params: greedy(m),
        })
        .collect();
    let config = EngineConfig {
        max_num_batched_tokens: 512,
        ..small_config()
    };
    let (together, stats) = run(&loaded, &config, requests.clone());
    assert!(stats.num_steps > 0);
    for (i, request) in requests.into_iter().enumerate() {
        let (alone, _) = run(&loaded, &config, vec![request]);
        assert_eq!(together[i].tokens.len(), max_tokens[i]);
        assert_same_or_near_tie(
            &together[i],
            &alone[0],
            &format!("request {i} (prompt {})", lens[i]),
        );
    }
}

#[test]
fn batch_invariance_tiny() {
    batch_invariance(&support::tiny_llama());
}

#[test]
fn batch_invariance_smollm2() {
    batch_invariance(&support::smollm2_hf());
}

#[test]
fn preemption_recomputes_to_identical_output() {
    let loaded = load(&support::tiny_llama());
    let prompts = random_prompts(9, &[40, 70, 33, 90, 51, 64]);
    let requests: Vec<EngineRequest> = prompts
        .iter()
        .map(|p| EngineRequest {
            prompt_ids: p.clone(),
            params: greedy(40),
        })
        .collect();
    let (free, free_stats) = run(&loaded, &small_config(), requests.clone());
    assert_eq!(free_stats.scheduler.num_preemptions_total, 0);
    // 2 layers × 16 tokens × 1 KV head × 16 dims × 4 bytes × 2 = 4 KiB per block; 24 blocks
    // hold 384 tokens while the six requests need ~590 at their peak.
    let tight = EngineConfig {
        kv_cache_memory: 24 * 4096,
        max_model_len: Some(256),
        ..EngineConfig::default()
    };
    let (squeezed, stats) = run(&loaded, &tight, requests);
    assert!(
        stats.scheduler.num_preemptions_total > 0,
        "no preemption happened"
    );
    for (i, (a, b)) in squeezed.iter().zip(&free).enumerate() {
        assert_eq!(a.tokens, b.tokens, "request {i}");
    }
    assert_eq!(stats.scheduler.num_used_blocks, 0, "blocks leaked");
}

#[test]
fn prefix_caching_computes_only_new_tokens() {
    let loaded = load(&support::tiny_llama());
    let shared = random_prompts(21, &[80]).remove(0); // 5 full blocks of 16
    let mut second = shared.clone();
    second.extend(random_prompts(22, &[13]).remove(0));
    let first = EngineRequest {
        prompt_ids: shared.clone(),
        params: greedy(4),
    };
    let again = EngineRequest {
        prompt_ids: second.clone(),
        params: greedy(6),
    };

    let (handle, _, thread) = engine::start(&loaded, &small_config()).unwrap();
    collect(&handle, vec![first.clone()]);
    let before = handle.stats();
    let cached = collect(&handle, vec![again.clone()]);
    let stats_watch = handle.stats_watch();
    drop(handle);
    thread.join().unwrap();
    let after = stats_watch.borrow().clone();
    let hits = after.scheduler.prefix_cache_hits - before.scheduler.prefix_cache_hits;
    assert_eq!(hits, 80, "the 5 shared blocks should hit");
    let computed = after.prompt_tokens_computed - before.prompt_tokens_computed;
    assert_eq!(
        computed,
        second.len() as u64 - 80,
        "only the new prompt tokens are computed"
    );

    let uncached = EngineConfig {
        enable_prefix_caching: false,
        ..small_config()
    };
    let (plain, plain_stats) = run(&loaded, &uncached, vec![first, again]);
    assert_eq!(plain_stats.scheduler.prefix_cache_hits, 0);
    assert_eq!(cached[0].tokens, plain[1].tokens);
}

#[test]
fn chunked_prefill_keeps_decodes_going() {
    let loaded = load(&support::tiny_llama());
    let prompts = random_prompts(31, &[5, 200]);
    let decode = EngineRequest {
        prompt_ids: prompts[0].clone(),
        params: greedy(40),
    };
    let long = EngineRequest {
        prompt_ids: prompts[1].clone(),
        params: greedy(5),
    };
    let chunked = EngineConfig {
        max_num_batched_tokens: 32,
        ..small_config()
    };
    let (outs, stats) = run(&loaded, &chunked, vec![decode.clone(), long.clone()]);
    // The 200-token prompt needs at least 7 steps of ≤ 32 tokens; had the decode stalled
    // during them, 40 tokens would take more than 40 steps.
    assert_eq!(outs[0].tokens.len(), 40);
    assert_eq!(
        stats.num_steps, 40,
        "the decoding request got a token every step"
    );
    let (whole, _) = run(&loaded, &small_config(), vec![long]);
    assert_eq!(
        outs[1].tokens, whole[0].tokens,
        "chunked prefill changed the output"
    );
}

#[test]
fn dropped_stream_is_aborted_and_frees_its_blocks() {
    let loaded = load(&support::tiny_llama());
    let (handle, _, thread) = engine::start(&loaded, &small_config()).unwrap();
    let prompt = random_prompts(41, &[50]).remove(0);
    let mut stream = handle
        .submit(EngineRequest {
            prompt_ids: prompt.clone(),
            params: greedy(10_000),
        })
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            stream.blocking_recv(),
            Some(EngineEvent::Token { .. })
        ));
    }
    drop(stream);
    // A later request completes, after which nothing is held.
    let out = collect(
        &handle,
        vec![EngineRequest {
            prompt_ids: prompt,
            params: greedy(3),
        }],
    );
    assert_eq!(out[0].tokens.len(), 3);
    let stats = handle.stats();
    assert_eq!(stats.scheduler.num_running + stats.scheduler.num_waiting, 0);
    assert_eq!(stats.scheduler.num_used_blocks, 0);
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn queue_full_is_refused_and_running_requests_are_unaffected() {
    let loaded = load(&support::tiny_llama());
    let config = EngineConfig {
        max_num_seqs: 1,
        max_num_queued_reqs: Some(2),
        ..small_config()
    };
    let prompts = random_prompts(51, &[12, 13, 14, 15]);
    let request = |i: usize| EngineRequest {
        prompt_ids: prompts[i].clone(),
        params: greedy(8),
    };
    let (alone, _) = run(&loaded, &small_config(), (0..3).map(request).collect());

    let (handle, _, thread) = engine::start(&loaded, &config).unwrap();
    let mut running = handle.submit(request(0)).unwrap();
    let first = running.blocking_recv(); // now running, no longer queued
    assert!(matches!(first, Some(EngineEvent::Token { .. })));
    let queued: Vec<_> = (1..3).map(|i| handle.submit(request(i)).unwrap()).collect();
    match handle.submit(request(3)).err() {
        Some(SubmitError::QueueFull {
            queued: 2,
            max_reqs: Some(2),
            ..
        }) => {}
        other => panic!("expected QueueFull at 2 queued, got {other:?}"),
    }
    let mut tokens = vec![match first {
        Some(EngineEvent::Token { token, .. }) => token,
        _ => unreachable!(),
    }];
    while let Some(event) = running.blocking_recv() {
        if let EngineEvent::Token { token, .. } = event {
            tokens.push(token);
        }
    }
    assert_eq!(tokens, alone[0].tokens);
    for (i, mut s) in queued.into_iter().enumerate() {
        let mut got = Vec::new();
        while let Some(event) = s.blocking_recv() {
            if let EngineEvent::Token { token, .. } = event {
                got.push(token);
            }
        }
        assert_eq!(got, alone[i + 1].tokens);
    }
    // Streams hold the engine's command queue open too.
    drop(running);
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn max_model_len_cases_at_startup() {
    let loaded = load(&support::tiny_llama()); // max_position_embeddings 4096
                                               // 4 KiB per block of 16 tokens.
    let err = |config: EngineConfig| engine::start(&loaded, &config).err().map(|e| e.to_string());
    let fits = EngineConfig {
        kv_cache_memory: 256 * 4096,
        ..EngineConfig::default()
    };
    let (h, info, t) = engine::start(&loaded, &fits).unwrap();
    assert_eq!(
        info.capacity.max_model_len, 4096,
        "absent: the model's limit when it fits"
    );
    drop(h);
    t.join().unwrap();
    let small = EngineConfig {
        kv_cache_memory: 10 * 4096,
        ..EngineConfig::default()
    };
    let (h, info, t) = engine::start(&loaded, &small).unwrap();
    assert_eq!(
        info.capacity.max_model_len, 160,
        "absent: the largest length that fits"
    );
    drop(h);
    t.join().unwrap();
    let e = err(EngineConfig {
        max_model_len: Some(161),
        ..small
    })
    .unwrap();
    assert!(e.contains("161") && e.contains("--kv-cache-memory"), "{e}");
    let e = err(EngineConfig {
        max_model_len: Some(4097),
        ..fits
    })
    .unwrap();
    assert!(
        e.contains("4097") && e.contains("max_position_embeddings"),
        "{e}"
    );
}

#[test]
fn n_choices_share_the_prompt_and_seeds_reproduce() {
    let loaded = load(&support::tiny_llama());
    let prompt = random_prompts(61, &[37]).remove(0);
    let params = SamplingParams {
        n: 3,
        temperature: 1.0,
        seed: Some(5),
        max_tokens: 6,
        ..SamplingParams::default()
    };
    let (handle, _, thread) = engine::start(&loaded, &small_config()).unwrap();
    let run_once = || {
        let mut s = handle
            .submit(EngineRequest {
                prompt_ids: prompt.clone(),
                params: params.clone(),
            })
            .unwrap();
        let mut choices = vec![Vec::new(); 3];
        while let Some(event) = s.blocking_recv() {
            if let EngineEvent::Token { index, token, .. } = event {
                choices[index].push(token);
            }
        }
        choices
    };
    let a = run_once();
    let b = run_once();
    assert_eq!(a, b, "the same seed gives the same choices");
    assert!(a.iter().all(|c| c.len() == 6));
    assert_ne!(a[0], a[1], "choices get distinct seeds");
    assert_eq!(handle.stats().scheduler.num_used_blocks, 0);
    drop(handle);
    thread.join().unwrap();
}

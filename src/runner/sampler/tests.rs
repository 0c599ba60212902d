//! Tests of the sampler: filters against independently computed allowed sets, seeding, penalties, logprobs, bad input.

use super::*;
use proptest::prelude::*;
use rand::Rng;
use std::collections::BTreeSet;

const DRAWS: usize = 10_000;

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut params = SamplingParams::default();
    f(&mut params);
    params
}

/// Random logits rounded to halves, so that ties occur and the tie rules are tested.
fn random_logits(seed: u64, vocab_size: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..vocab_size)
        // `+ 0.0` turns -0.0 into 0.0: they are one value to the sampler.
        .map(|_| (rng.random_range(-6.0f32..6.0) * 2.0).round() / 2.0 + 0.0)
        .collect()
}

/// The tokens vLLM v1 may sample, computed densely in f64: softmax(logits / T),
/// min-p against the top probability, top-k keeping ties, top-p over the survivors.
fn allowed_set(logits: &[f32], params: &SamplingParams) -> BTreeSet<u32> {
    let t = f64::from(params.temperature);
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let weight: Vec<f64> = logits
        .iter()
        .map(|&x| ((f64::from(x) - max) / t).exp())
        .collect();
    let mut alive: Vec<usize> = (0..logits.len())
        .filter(|&i| weight[i] >= f64::from(params.min_p))
        .collect();
    if let Some(k) = params.top_k {
        let mut values: Vec<f32> = alive.iter().map(|&i| logits[i]).collect();
        values.sort_by(|a, b| b.total_cmp(a));
        if let Some(&kth) = values.get(k - 1) {
            alive.retain(|&i| logits[i] >= kth);
        }
    }
    alive.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let total: f64 = alive.iter().map(|&i| weight[i]).sum();
    let mut before = 0.0;
    let mut nucleus = BTreeSet::new();
    for &i in &alive {
        if before / total >= f64::from(params.top_p) {
            break;
        }
        before += weight[i];
        nucleus.insert(i as u32);
    }
    nucleus
}

fn draw_many(logits: &[f32], params: &SamplingParams, seed: u64) -> Vec<u32> {
    let mut sampler = SequenceSampler::from_seed(Some(seed));
    (0..DRAWS)
        .map(|_| sampler.sample(logits, params, &[], &[]).unwrap().token)
        .collect()
}

/// Random rows and peaked ones (a few tokens far above the rest, as real models give),
/// which let the level prefilter stop at its tightest levels.
fn rows() -> Vec<Vec<f32>> {
    let mut rows: Vec<Vec<f32>> = (0..3).map(|seed| random_logits(seed, 1000)).collect();
    let mut peaked = random_logits(9, 1000);
    peaked[37] += 14.0;
    peaked[500] += 12.0;
    peaked[501] += 11.0;
    rows.push(peaked);
    rows
}

fn assert_stays_in_allowed_set(params: &SamplingParams) {
    for (seed, logits) in rows().iter().enumerate() {
        let allowed = allowed_set(logits, params);
        let drawn: BTreeSet<u32> = draw_many(logits, params, seed as u64).into_iter().collect();
        let outside: Vec<_> = drawn.difference(&allowed).collect();
        assert!(
            outside.is_empty(),
            "{params:?} drew {outside:?} outside {allowed:?}"
        );
        if allowed.len() <= 8 {
            // Every allowed token should come up, unless it is far too unlikely to.
            let likely: BTreeSet<u32> = allowed
                .iter()
                .copied()
                .filter(|&t| allowed_probability(logits, params, &allowed, t) > 0.002)
                .collect();
            assert!(
                likely.is_subset(&drawn),
                "{params:?}: drew {drawn:?} of {allowed:?}"
            );
        } else {
            assert!(drawn.len() > 8, "{params:?} drew only {drawn:?}");
        }
    }
}

/// Probability of `token` once the distribution is cut to `allowed`.
fn allowed_probability(
    logits: &[f32],
    params: &SamplingParams,
    allowed: &BTreeSet<u32>,
    token: u32,
) -> f64 {
    let t = f64::from(params.temperature);
    let weight = |i: u32| (f64::from(logits[i as usize]) / t).exp();
    weight(token) / allowed.iter().map(|&i| weight(i)).sum::<f64>()
}

#[test]
fn top_k_never_samples_outside_the_k_largest() {
    for k in [1, 3, 20, 400] {
        assert_stays_in_allowed_set(&params(|p| p.top_k = Some(k)));
    }
}

#[test]
fn top_p_never_samples_outside_the_nucleus() {
    for (top_p, temperature) in [(0.05, 1.0), (0.5, 1.0), (0.9, 0.7), (0.95, 2.0)] {
        assert_stays_in_allowed_set(&params(|p| {
            p.top_p = top_p;
            p.temperature = temperature;
        }));
    }
}

#[test]
fn min_p_never_samples_below_its_threshold() {
    for (min_p, temperature) in [(0.05, 1.0), (0.3, 1.0), (0.5, 3.0), (1.0, 1.0)] {
        assert_stays_in_allowed_set(&params(|p| {
            p.min_p = min_p;
            p.temperature = temperature;
        }));
    }
}

#[test]
fn min_p_top_k_top_p_combine_in_vllm_order() {
    assert_stays_in_allowed_set(&params(|p| {
        p.min_p = 0.01;
        p.top_k = Some(50);
        p.top_p = 0.8;
        p.temperature = 1.3;
    }));
}

#[test]
fn draws_follow_the_tempered_distribution() {
    let logits = [1.0f32, 0.0, 2.0, -1.0];
    for temperature in [0.5f32, 1.0, 2.0] {
        let params = params(|p| p.temperature = temperature);
        let weights: Vec<f64> = logits
            .iter()
            .map(|&x| (f64::from(x) / f64::from(temperature)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let drawn = draw_many(&logits, &params, 11);
        for (token, weight) in weights.iter().enumerate() {
            let seen = drawn.iter().filter(|&&t| t as usize == token).count();
            let freq = seen as f64 / DRAWS as f64;
            let expected = weight / total;
            assert!(
                (freq - expected).abs() < 0.02,
                "T={temperature} token {token}: {freq} vs {expected}"
            );
        }
    }
}

#[test]
fn temperature_zero_is_argmax_with_lowest_index_on_ties() {
    let greedy = params(|p| p.temperature = 0.0);
    for seed in 0..20 {
        let logits = random_logits(seed, 5000);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let first_max = logits.iter().position(|&x| x == max).unwrap() as u32;
        let mut sampler = SequenceSampler::from_seed(None);
        assert_eq!(
            sampler.sample(&logits, &greedy, &[], &[]).unwrap().token,
            first_max
        );
    }
    let mut sampler = SequenceSampler::from_seed(None);
    let tied = [0.0, 3.0, 1.0, 3.0];
    assert_eq!(sampler.sample(&tied, &greedy, &[], &[]).unwrap().token, 1);
}

#[test]
fn same_seed_same_tokens_whatever_the_batch() {
    let logits = random_logits(5, 2000);
    let params = params(|p| p.top_p = 0.95);
    let mut alone = SequenceSampler::from_seed(Some(42));
    let expected: Vec<u32> = (0..200)
        .map(|_| alone.sample(&logits, &params, &[], &[]).unwrap().token)
        .collect();

    // The same seed, with another sequence sampling in between each step.
    let mut seeded = SequenceSampler::new(&SamplingParams {
        seed: Some(42),
        ..params.clone()
    });
    let mut neighbour = SequenceSampler::from_seed(None);
    let mut interleaved = Vec::new();
    for _ in 0..200 {
        neighbour.sample(&logits, &params, &[], &[]).unwrap();
        interleaved.push(seeded.sample(&logits, &params, &[], &[]).unwrap().token);
    }
    assert_eq!(interleaved, expected);

    // A workspace shared with other sequences changes nothing either.
    let mut shared = SamplerWorkspace::default();
    let mut lent = SequenceSampler::from_seed(Some(42));
    let mut with_shared = Vec::new();
    let other = SamplingParams {
        top_k: Some(3),
        ..SamplingParams::default()
    };
    for _ in 0..200 {
        neighbour
            .sample_with(&mut shared, &logits, &other, &[], &[])
            .unwrap();
        let sampled = lent.sample_with(&mut shared, &logits, &params, &[], &[]);
        with_shared.push(sampled.unwrap().token);
    }
    assert_eq!(with_shared, expected);

    let mut other = SequenceSampler::from_seed(Some(43));
    let different: Vec<u32> = (0..200)
        .map(|_| other.sample(&logits, &params, &[], &[]).unwrap().token)
        .collect();
    assert_ne!(different, expected);
}

fn penalised(logits: &[f32], params: &SamplingParams, prompt: &[u32], output: &[u32]) -> Vec<f32> {
    let mut prompt_set = PromptTokenSet::default();
    let prompt_set = prompt_set.get(prompt);
    let (mut sorted, mut buffer) = (Vec::new(), Vec::new());
    apply_penalties(logits, params, prompt_set, output, &mut sorted, &mut buffer)
        .unwrap()
        .to_vec()
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let logits = [2.0, -1.0, 0.5, 3.0, 0.0];
    let params = params(|p| p.repetition_penalty = 2.0);
    // Token 0 from the prompt, 1 and 3 from the output; 2 unseen; 4 is zero.
    let got = penalised(&logits, &params, &[0, 4], &[1, 3, 3]);
    assert_eq!(got, vec![1.0, -2.0, 0.5, 1.5, 0.0]);
}

#[test]
fn presence_and_frequency_penalise_output_tokens_only() {
    let logits = [2.0, -1.0, 0.5, 3.0];
    let params = params(|p| {
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.25;
    });
    // Token 0 is only in the prompt: untouched. Token 3 occurs twice.
    let got = penalised(&logits, &params, &[0], &[1, 3, 3]);
    assert_eq!(got, vec![2.0, -1.75, 0.5, 2.0]);
}

#[test]
fn all_penalties_apply_repetition_first() {
    let logits = [2.0, -1.0, 0.5, 3.0];
    let params = params(|p| {
        p.repetition_penalty = 2.0;
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.25;
    });
    let got = penalised(&logits, &params, &[0], &[1, 3, 3]);
    assert_eq!(got, vec![1.0, -2.75, 0.5, 0.5]);
    // And the greedy choice follows the penalised row: 3 would win unpenalised.
    let greedy = SamplingParams {
        temperature: 0.0,
        ..params
    };
    let mut sampler = SequenceSampler::from_seed(None);
    let token = sampler
        .sample(&logits, &greedy, &[0], &[1, 3, 3])
        .unwrap()
        .token;
    assert_eq!(token, 0);
}

#[test]
fn prompt_set_is_rebuilt_when_the_prompt_changes() {
    let mut set = PromptTokenSet::default();
    assert_eq!(set.get(&[5, 1, 5, 2]), &[1, 2, 5]);
    assert_eq!(set.get(&[5, 1, 5, 3]), &[1, 3, 5]);
}

#[test]
fn logprobs_come_from_raw_logits_sorted_and_normalised() {
    let logits = random_logits(3, 16);
    // Processing must not change logprobs: vLLM returns raw ones by default.
    let params = params(|p| {
        p.logprobs = Some(16);
        p.temperature = 0.3;
        p.repetition_penalty = 1.7;
        p.top_k = Some(4);
    });
    let mut sampler = SequenceSampler::from_seed(Some(1));
    let sampled = sampler.sample(&logits, &params, &[2, 9], &[4]).unwrap();

    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
    let expected = logits[sampled.token as usize] - log_z;
    assert!((sampled.logprob - expected).abs() < 1e-5);

    let top = &sampled.top_logprobs;
    assert_eq!(top.len(), 16);
    let mass: f32 = top.iter().map(|&(_, lp)| lp.exp()).sum();
    assert!((mass - 1.0).abs() < 1e-4, "probabilities sum to {mass}");
    for pair in top.windows(2) {
        let ((a, la), (b, lb)) = (pair[0], pair[1]);
        assert!(la > lb || (la == lb && a < b), "{top:?} is not in order");
    }
    let chosen = top.iter().find(|&&(t, _)| t == sampled.token).unwrap();
    assert_eq!(chosen.1, sampled.logprob);
}

#[test]
fn logprobs_top_n_and_chosen_only() {
    let logits = random_logits(8, 500);
    let mut sampler = SequenceSampler::from_seed(Some(1));
    let five = sampler
        .sample(&logits, &params(|p| p.logprobs = Some(5)), &[], &[])
        .unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let ids: Vec<u32> = five.top_logprobs.iter().map(|&(t, _)| t).collect();
    assert_eq!(
        ids,
        order[..5].iter().map(|&i| i as u32).collect::<Vec<_>>()
    );

    let none = sampler
        .sample(&logits, &params(|p| p.logprobs = Some(0)), &[], &[])
        .unwrap();
    assert!(none.top_logprobs.is_empty());
    assert!(none.logprob < 0.0);
}

#[test]
fn bad_rows_are_errors_not_panics() {
    let mut sampler = SequenceSampler::from_seed(Some(0));
    let default = SamplingParams::default();
    let greedy = params(|p| p.temperature = 0.0);
    for p in [&default, &greedy] {
        assert_eq!(
            sampler.sample(&[], p, &[], &[]),
            Err(SamplerError::EmptyLogits)
        );
        assert!(matches!(
            sampler.sample(&[0.0, f32::NAN], p, &[], &[]),
            Err(SamplerError::NonFiniteLogit { token: 1, .. })
        ));
        assert!(matches!(
            sampler.sample(&[f32::INFINITY, 0.0], p, &[], &[]),
            Err(SamplerError::NonFiniteLogit { token: 0, .. })
        ));
        let masked = [f32::NEG_INFINITY; 3];
        assert_eq!(
            sampler.sample(&masked, p, &[], &[]),
            Err(SamplerError::AllMasked)
        );
        assert_eq!(
            sampler.sample(&[0.0; 4], &params(|q| q.presence_penalty = 1.0), &[], &[4]),
            Err(SamplerError::TokenOutOfRange {
                token: 4,
                vocab_size: 4
            })
        );
    }
    assert!(matches!(
        sampler.sample(&[0.0], &params(|p| p.top_p = 0.0), &[], &[]),
        Err(SamplerError::InvalidParams(_))
    ));
}

#[test]
fn masked_tokens_are_never_drawn() {
    let mut logits = vec![f32::NEG_INFINITY; 100];
    logits[17] = -50.0;
    logits[60] = -52.0;
    let drawn: BTreeSet<u32> = draw_many(&logits, &params(|p| p.temperature = 5.0), 3)
        .into_iter()
        .collect();
    assert_eq!(drawn, BTreeSet::from([17, 60]));
}

fn finite_f32() -> impl Strategy<Value = f32> {
    use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
        -30.0f32..30.0
    ]
}

fn valid_params() -> impl Strategy<Value = SamplingParams> {
    (
        prop_oneof![Just(0.0f32), 1e-5f32..10.0],
        prop_oneof![Just(1.0f32), 1e-6f32..=1.0],
        proptest::option::of(1usize..400),
        prop_oneof![Just(0.0f32), 0.0f32..=1.0],
        prop_oneof![Just(1.0f32), 0.01f32..10.0],
        -2.0f32..=2.0,
        -2.0f32..=2.0,
        any::<u64>(),
        proptest::option::of(0usize..=20),
    )
        .prop_map(
            |(t, top_p, top_k, min_p, rep, pres, freq, seed, logprobs)| SamplingParams {
                temperature: t,
                top_p,
                top_k,
                min_p,
                repetition_penalty: rep,
                presence_penalty: pres,
                frequency_penalty: freq,
                seed: Some(seed),
                logprobs,
                ..SamplingParams::default()
            },
        )
}

proptest! {
    #[test]
    fn valid_input_always_yields_an_in_range_token(
        logits in proptest::collection::vec(finite_f32(), 1..300),
        params in valid_params(),
        prompt in proptest::collection::vec(any::<u32>(), 0..40),
        output in proptest::collection::vec(any::<u32>(), 0..40),
    ) {
        let vocab = logits.len() as u32;
        let prompt: Vec<u32> = prompt.iter().map(|id| id % vocab).collect();
        let output: Vec<u32> = output.iter().map(|id| id % vocab).collect();
        let mut sampler = SequenceSampler::new(&params);
        let sampled = sampler.sample(&logits, &params, &prompt, &output).unwrap();
        prop_assert!(sampled.token < vocab);
        prop_assert!(sampled.logprob <= 0.0 || sampled.logprob.abs() < 1e-3);
        prop_assert_eq!(sampled.top_logprobs.len(), params.logprobs.unwrap_or(0).min(logits.len()));
    }

    #[test]
    fn arbitrary_input_never_panics(
        logits in proptest::collection::vec(any::<f32>(), 0..50),
        floats in proptest::collection::vec(any::<f32>(), 7),
        top_k in proptest::option::of(any::<usize>()),
        logprobs in proptest::option::of(any::<usize>()),
        ids in proptest::collection::vec(any::<u32>(), 0..10),
    ) {
        let params = SamplingParams {
            temperature: floats[0],
            top_p: floats[1],
            min_p: floats[2],
            repetition_penalty: floats[3],
            presence_penalty: floats[4],
            frequency_penalty: floats[5],
            top_k,
            logprobs,
            ..SamplingParams::default()
        };
        let mut sampler = SequenceSampler::from_seed(Some(floats[6].to_bits().into()));
        if let Ok(sampled) = sampler.sample(&logits, &params, &ids, &ids) {
            prop_assert!(logits[sampled.token as usize].is_finite());
        }
    }
}

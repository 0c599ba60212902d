//! Chooses one sequence's next token from its CPU logits row: penalties, temperature, min-p / top-k / top-p, draw, logprobs.
//!
//! The order is vLLM v1's: penalties (repetition, frequency, presence) → temperature →
//! min-p → top-k → top-p → draw (argmax when greedy). Logprobs are taken from the raw
//! row (vLLM's default `raw_logprobs`), before any of that processing.
//!
//! Each sequence owns a [`SequenceSampler`] and with it its RNG, so a seeded request
//! gets the same tokens whatever else shares its batch. Passes over the row run
//! vectorised kernels; the row is copied only when a penalty rewrites it. Top-k /
//! top-p first measure how many tokens lie above a few probability levels, then collect
//! only those above the tightest level that provably holds the answer, so a peaked
//! distribution sorts a handful of tokens rather than the vocabulary.

mod kernels;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use crate::engine::sampling_params::{SamplingParams, SamplingParamsError};
use kernels::{LevelStats, BLOCK, COUNT_LEVELS, MASS_LEVELS};

/// First chunk of the partial sort that walks the top-p nucleus; it grows 4× a round.
const NUCLEUS_FIRST_CHUNK: usize = 64;

/// Relative slack on the mass test that picks a collection level for top-p: the level
/// sums are rounded differently from the nucleus walk, so demand a little more.
const LEVEL_MASS_SLACK: f64 = 1e-4;

/// The token chosen for one sequence at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    /// Log-probability of `token` under the raw model distribution.
    pub logprob: f32,
    /// The `params.logprobs` most likely tokens under the raw distribution, by
    /// descending logprob (ties: lower id first); empty unless asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Why no token could be sampled from a row.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SamplerError {
    #[error("the logits row is empty")]
    EmptyLogits,
    #[error("the logits row has {len} entries, more than u32 token ids can address")]
    VocabTooLarge { len: usize },
    #[error("logit of token {token} is {value}: the model output is not a distribution")]
    NonFiniteLogit { token: u32, value: f32 },
    #[error("every token is masked: all logits are -inf")]
    AllMasked,
    #[error("token id {token} in the sequence is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error("invalid sampling parameters: {0}")]
    InvalidParams(#[from] SamplingParamsError),
}

/// Scratch buffers reused across calls: up to 4 bytes per vocabulary entry when a
/// penalty applies and 8 more when top-k / top-p meet a flat distribution. A runner can
/// keep one and lend it to every sequence through [`SequenceSampler::sample_with`].
#[derive(Debug, Default)]
pub struct SamplerWorkspace {
    /// The row with penalties applied (unused when none apply).
    penalised: Vec<f32>,
    /// The output ids, sorted, to count occurrences.
    sorted_output: Vec<u32>,
    /// (scaled logit, token) for top-k / top-p; scaled = (logit − max) / temperature.
    candidates: Vec<(f32, u32)>,
    /// Σ weight per `BLOCK` of the row, for a draw that skips whole blocks.
    block_sums: Vec<f64>,
}

/// One sequence's sampling state: its own RNG and the sorted set of its prompt ids.
#[derive(Debug)]
pub struct SequenceSampler {
    rng: StdRng,
    prompt_tokens: PromptTokenSet,
    workspace: SamplerWorkspace,
}

impl SequenceSampler {
    /// A sampler seeded by `params.seed`, or from OS entropy when there is none.
    pub fn new(params: &SamplingParams) -> Self {
        Self::from_seed(params.seed)
    }

    /// A sampler seeded by `seed`, or from OS entropy when `None`.
    pub fn from_seed(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            rng,
            prompt_tokens: PromptTokenSet::default(),
            workspace: SamplerWorkspace::default(),
        }
    }

    /// Picks the next token from `logits`, one row `[vocab_size]` of model output.
    ///
    /// `prompt_ids` and `output_ids` are the sequence so far (for penalties). NaN and
    /// +inf logits are errors; -inf marks a token that must not be chosen. A random
    /// draw takes exactly one number from this sequence's RNG; greedy takes none.
    pub fn sample(
        &mut self,
        logits: &[f32],
        params: &SamplingParams,
        prompt_ids: &[u32],
        output_ids: &[u32],
    ) -> Result<SampledToken, SamplerError> {
        let mut workspace = std::mem::take(&mut self.workspace);
        let sampled = self.sample_with(&mut workspace, logits, params, prompt_ids, output_ids);
        self.workspace = workspace;
        sampled
    }

    /// As [`Self::sample`], with scratch buffers from `workspace` instead of this
    /// sampler's own, so that many sequences can share one set.
    pub fn sample_with(
        &mut self,
        workspace: &mut SamplerWorkspace,
        logits: &[f32],
        params: &SamplingParams,
        prompt_ids: &[u32],
        output_ids: &[u32],
    ) -> Result<SampledToken, SamplerError> {
        let vocab_size = logits.len();
        if vocab_size == 0 {
            return Err(SamplerError::EmptyLogits);
        }
        if u32::try_from(vocab_size - 1).is_err() {
            return Err(SamplerError::VocabTooLarge { len: vocab_size });
        }
        params.validate(vocab_size)?;
        let raw_max =
            kernels::checked_max(logits).map_err(|token| SamplerError::NonFiniteLogit {
                token: token as u32,
                value: logits[token],
            })?;
        if raw_max == f32::NEG_INFINITY {
            return Err(SamplerError::AllMasked);
        }
        let log_normalizer =
            raw_max + kernels::sum(logits, |x| kernels::exp(x - raw_max)).ln() as f32;

        let prompt_set = if params.repetition_penalty != 1.0 {
            self.prompt_tokens.get(prompt_ids)
        } else {
            &[]
        };
        let SamplerWorkspace {
            penalised,
            sorted_output,
            candidates,
            block_sums,
        } = workspace;
        let row = apply_penalties(
            logits,
            params,
            prompt_set,
            output_ids,
            sorted_output,
            penalised,
        )?;
        // Without penalties `row` is `logits`: its max is known, skip a pass.
        let max = if std::ptr::eq(row, logits) {
            raw_max
        } else {
            kernels::max(row)
        };
        let token = if params.is_greedy() {
            kernels::first_at_least(row, max)
        } else {
            let scratch = DrawScratch {
                candidates,
                block_sums,
            };
            draw(&mut self.rng, scratch, row, max, params)
        }
        .ok_or(SamplerError::AllMasked)?;

        let log_prob = |token: usize| logits[token] - log_normalizer;
        let top_logprobs = match params.logprobs {
            Some(n) if n > 0 => top_n(logits, n)
                .into_iter()
                .map(|(id, _)| (id, log_prob(id as usize)))
                .collect(),
            _ => Vec::new(),
        };
        Ok(SampledToken {
            token: token as u32,
            logprob: log_prob(token),
            top_logprobs,
        })
    }
}

/// The sorted, deduplicated prompt ids, rebuilt only when the prompt changes: the
/// repetition penalty needs them every step and prompts can be long.
#[derive(Debug, Default)]
struct PromptTokenSet {
    key: Option<(usize, u64)>,
    tokens: Vec<u32>,
}

impl PromptTokenSet {
    fn get(&mut self, prompt_ids: &[u32]) -> &[u32] {
        let key = Some((prompt_ids.len(), fingerprint(prompt_ids)));
        if self.key != key {
            self.tokens.clear();
            self.tokens.extend_from_slice(prompt_ids);
            self.tokens.sort_unstable();
            self.tokens.dedup();
            self.key = key;
        }
        &self.tokens
    }
}

/// FNV-1a over the ids: change detection in one linear pass instead of a sort.
fn fingerprint(ids: &[u32]) -> u64 {
    ids.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &id| {
        (hash ^ u64::from(id)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The row after penalties: `logits` itself when none apply, else a copy in `buffer`
/// with every touched token rewritten — repetition (HF-style) on prompt ∪ output, then
/// frequency and presence (OpenAI-style) on output, in vLLM's order.
fn apply_penalties<'a>(
    logits: &'a [f32],
    params: &SamplingParams,
    prompt_set: &[u32],
    output_ids: &[u32],
    sorted_output: &mut Vec<u32>,
    buffer: &'a mut Vec<f32>,
) -> Result<&'a [f32], SamplerError> {
    let repetition = params.repetition_penalty;
    let output_penalised = params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
    if (repetition == 1.0 || (prompt_set.is_empty() && output_ids.is_empty()))
        && (!output_penalised || output_ids.is_empty())
    {
        return Ok(logits);
    }
    sorted_output.clear();
    sorted_output.extend_from_slice(output_ids);
    sorted_output.sort_unstable();
    let vocab_size = logits.len();
    for &token in [prompt_set.last(), sorted_output.last()]
        .into_iter()
        .flatten()
    {
        if token as usize >= vocab_size {
            return Err(SamplerError::TokenOutOfRange { token, vocab_size });
        }
    }
    buffer.clear();
    buffer.extend_from_slice(logits);

    let (mut p, mut o) = (0, 0);
    loop {
        let token = match (prompt_set.get(p), sorted_output.get(o)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => break,
        };
        if prompt_set.get(p) == Some(&token) {
            p += 1;
        }
        let run_start = o;
        while sorted_output.get(o) == Some(&token) {
            o += 1;
        }
        let count = o - run_start;
        let Some(entry) = buffer.get_mut(token as usize) else {
            continue;
        };
        let raw = *entry;
        let mut value = raw;
        if repetition != 1.0 {
            value = if value > 0.0 {
                value / repetition
            } else {
                value * repetition
            };
        }
        if count > 0 {
            value -= params.frequency_penalty * count as f32;
            value -= params.presence_penalty;
        }
        if raw.is_finite() {
            // A penalty must not turn a finite logit into ±inf: +inf would poison the
            // softmax and -inf would mask a token the model allowed.
            value = value.clamp(-f32::MAX, f32::MAX);
        }
        *entry = value;
    }
    Ok(buffer)
}

/// Descending by value, then ascending by token: a total order, so partial sorts are
/// deterministic and ties resolve the same way every time.
fn by_value_desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The workspace buffers a random draw needs.
struct DrawScratch<'a> {
    candidates: &'a mut Vec<(f32, u32)>,
    block_sums: &'a mut Vec<f64>,
}

/// Random sampling after temperature, min-p, top-k and top-p; `max` is the row's
/// largest entry.
fn draw(
    rng: &mut StdRng,
    scratch: DrawScratch<'_>,
    row: &[f32],
    max: f32,
    params: &SamplingParams,
) -> Option<usize> {
    let temperature = params.temperature;
    // Subtracting the max before dividing keeps a small temperature from overflowing:
    // every scaled logit is ≤ 0 and its exp is the probability relative to the top
    // token, which is what min-p compares. `+ 0.0` folds -0.0 into 0.0.
    let scale = move |value: f32| (value - max) / temperature + 0.0;
    // min-p keeps p ≥ min_p · p_max, that is scaled ≥ ln(min_p).
    let floor = params.min_p.ln();
    // Below the floor the input becomes -inf, whose exp is 0: a select rather than a
    // branch around exp, which would stop the row kernels from vectorising.
    let weight = move |value: f32| {
        let s = scale(value);
        kernels::exp(if s >= floor { s } else { f32::NEG_INFINITY })
    };

    let top_k = params.top_k.filter(|&k| k < row.len());
    if top_k.is_none() && params.top_p >= 1.0 {
        return draw_from_row(rng, scratch.block_sums, row, weight);
    }

    // The tightest level that holds every token top-k / top-p could keep: k of them,
    // or (top-p alone) enough mass to reach the nucleus. Top-k needs only counts;
    // top-p alone needs masses, and the total, which costs an exp pass.
    let (threshold, total) = match top_k {
        Some(k) => {
            let stats = LevelStats::counts(row, COUNT_LEVELS, floor, scale);
            let level = (0..COUNT_LEVELS.len()).find(|&j| stats.count[j] >= k);
            (level.map_or(floor, |j| stats.levels[j]), None)
        }
        None => {
            let stats = LevelStats::with_mass(row, MASS_LEVELS, floor, scale);
            let needed = f64::from(params.top_p) * stats.total * (1.0 + LEVEL_MASS_SLACK);
            let level = (0..MASS_LEVELS.len()).find(|&j| stats.mass[j] >= needed);
            (level.map_or(floor, |j| stats.levels[j]), Some(stats.total))
        }
    };

    // Only entries near or above the threshold are scaled and tested exactly; the
    // margin covers the rounding between the two forms of the same comparison.
    let raw_threshold = max + threshold * temperature;
    let raw_threshold = raw_threshold - (raw_threshold.abs() + max.abs()) * 1e-4 - 1e-6;
    let candidates = scratch.candidates;
    candidates.clear();
    kernels::for_each_at_least(row, raw_threshold, |index, value| {
        let s = scale(value);
        if s >= threshold && s > f32::NEG_INFINITY {
            candidates.push((s, index as u32));
        }
    });
    let mass = |candidates: &[(f32, u32)]| -> f64 {
        candidates
            .iter()
            .map(|&(s, _)| f64::from(kernels::exp(s)))
            .sum()
    };
    if let Some(k) = top_k {
        keep_top_k(candidates, k);
    }
    if params.top_p < 1.0 {
        // Top-p cuts the distribution left by min-p and top-k: with top-k that is
        // the candidates, without it every token min-p kept.
        let total = total.unwrap_or_else(|| mass(candidates));
        keep_nucleus(candidates, f64::from(params.top_p) * total);
    }
    let target = rng.random::<f64>() * mass(candidates);
    pick(
        target,
        candidates
            .iter()
            .map(|&(s, token)| (token as usize, kernels::exp(s))),
    )
}

/// Inverse-CDF draw over the whole row without a candidate list: block sums first,
/// then a scan of the one block the draw falls in.
fn draw_from_row(
    rng: &mut StdRng,
    block_sums: &mut Vec<f64>,
    row: &[f32],
    weight: impl Fn(f32) -> f32 + Copy,
) -> Option<usize> {
    kernels::block_sums(row, weight, block_sums);
    let total: f64 = block_sums.iter().sum();
    let target = rng.random::<f64>() * total;
    // The block where the running sum passes the target; rounding past the end lands
    // in the last block with any weight.
    let mut before = 0.0;
    let mut chosen = None;
    for (index, &sum) in block_sums.iter().enumerate() {
        if sum <= 0.0 {
            continue;
        }
        chosen = Some((index, before));
        if target < before + sum {
            break;
        }
        before += sum;
    }
    let (block, before) = chosen?;
    let start = block * BLOCK;
    let values = row.get(start..).unwrap_or_default().iter().take(BLOCK);
    let weights = values
        .enumerate()
        .map(|(offset, &value)| (start + offset, weight(value)));
    pick(target - before, weights)
}

/// Inverse-CDF draw over `(token, weight)`. Zero weights are never chosen; a target
/// that rounding left past the end picks the last weighted token.
fn pick(target: f64, weights: impl Iterator<Item = (usize, f32)>) -> Option<usize> {
    let mut cumulative = 0.0;
    let mut last = None;
    for (token, weight) in weights {
        if weight <= 0.0 {
            continue;
        }
        cumulative += f64::from(weight);
        last = Some(token);
        if target < cumulative {
            break;
        }
    }
    last
}

/// Keeps the `k` largest candidates and any that tie with the k-th (vLLM masks only
/// values strictly below it).
fn keep_top_k(candidates: &mut Vec<(f32, u32)>, k: usize) {
    let k = k.max(1);
    if candidates.len() <= k {
        return;
    }
    candidates.select_nth_unstable_by(k - 1, by_value_desc);
    let threshold = candidates[k - 1].0;
    let mut end = k;
    for j in k..candidates.len() {
        if candidates[j].0 >= threshold {
            candidates.swap(end, j);
            end += 1;
        }
    }
    candidates.truncate(end);
}

/// Keeps the most likely candidates while the mass before each is below `target`
/// (top_p × the total of the distribution being cut; vLLM's rule, at least one
/// survives). Sorts only as far as the nucleus reaches.
fn keep_nucleus(candidates: &mut Vec<(f32, u32)>, target: f64) {
    let mut cumulative = 0.0;
    let mut sorted = 0;
    let mut chunk = NUCLEUS_FIRST_CHUNK;
    while sorted < candidates.len() {
        let end = (sorted + chunk).min(candidates.len());
        if end < candidates.len() {
            candidates[sorted..].select_nth_unstable_by(end - sorted - 1, by_value_desc);
        }
        candidates[sorted..end].sort_unstable_by(by_value_desc);
        for j in sorted..end {
            if cumulative >= target {
                candidates.truncate(j.max(1));
                return;
            }
            cumulative += f64::from(kernels::exp(candidates[j].0));
        }
        sorted = end;
        chunk = chunk.saturating_mul(4);
    }
}

/// The `n` largest raw logits as (token, logit), descending, lower id first on ties.
/// An insertion buffer: n ≤ 20, so this is one pass with rare inserts.
fn top_n(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n.min(logits.len()) + 1);
    for (token, &value) in logits.iter().enumerate() {
        if top.len() >= n && top.last().is_some_and(|&(_, last)| value <= last) {
            continue;
        }
        let at = top.partition_point(|&(_, v)| v >= value);
        top.insert(at, (token as u32, value));
        if top.len() > n {
            top.pop();
        }
    }
    top
}

//! Chooses one sequence's next token from its CPU logits row: penalties, temperature, min-p / top-k / top-p, draw, logprobs.
//!
//! The order is vLLM v1's: penalties (repetition, frequency, presence) → temperature →
//! min-p → top-k → top-p → draw (argmax when greedy). Logprobs are taken from the raw
//! row (vLLM's default `raw_logprobs`), before any of that processing.
//!
//! Each sequence owns a [`SequenceSampler`] and with it its RNG, so a seeded request
//! gets the same tokens whatever else shares its batch. The row is never copied: the
//! few penalised tokens are kept as sorted overrides ([`Row`]) and the passes over the
//! rest run vectorised kernels. Top-k / top-p first measure how many tokens lie above
//! a few probability levels, then collect only those above the tightest level that
//! provably holds the answer, so a peaked distribution sorts a handful of tokens.

mod kernels;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use crate::engine::sampling_params::{SamplingParams, SamplingParamsError};
use kernels::{LevelStats, BLOCK, LEVELS};

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

/// Scratch buffers reused across calls. Small for peaked distributions; up to 8 bytes
/// per vocabulary entry when top-k / top-p meet a flat one. A runner can keep one and
/// lend it to every sequence through [`SequenceSampler::sample_with`].
#[derive(Debug, Default)]
pub struct SamplerWorkspace {
    /// (token, penalised logit) for each penalised token, sorted by token.
    overrides: Vec<(u32, f32)>,
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
        if let Some(token) = kernels::first_invalid(logits) {
            return Err(SamplerError::NonFiniteLogit {
                token: token as u32,
                value: logits[token],
            });
        }
        let raw_max = kernels::max(logits);
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
        build_overrides(workspace, logits, params, prompt_set, output_ids)?;
        let row = Row {
            logits,
            overrides: &workspace.overrides,
        };
        let max = row.max();
        let token = if params.is_greedy() {
            row.first_index_of(max)
        } else {
            draw(&mut self.rng, workspace, logits, max, params)
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

/// Fills `workspace.overrides` with the penalised logit of every token that a penalty
/// touches: repetition (HF-style) on prompt ∪ output, then frequency and presence
/// (OpenAI-style) on output, in vLLM's order.
fn build_overrides(
    workspace: &mut SamplerWorkspace,
    logits: &[f32],
    params: &SamplingParams,
    prompt_set: &[u32],
    output_ids: &[u32],
) -> Result<(), SamplerError> {
    workspace.overrides.clear();
    let repetition = params.repetition_penalty;
    let output_penalised = params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
    if repetition == 1.0 && !output_penalised {
        return Ok(());
    }
    let sorted_output = &mut workspace.sorted_output;
    sorted_output.clear();
    sorted_output.extend_from_slice(output_ids);
    sorted_output.sort_unstable();
    let vocab_size = logits.len();
    for &token in [prompt_set.last(), sorted_output.last()].into_iter().flatten() {
        if token as usize >= vocab_size {
            return Err(SamplerError::TokenOutOfRange { token, vocab_size });
        }
    }

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
        let raw = logits[token as usize];
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
        workspace.overrides.push((token, value));
    }
    Ok(())
}

/// The penalised row without copying it: raw logits, with the entries named in
/// `overrides` (sorted, unique, in range) replaced.
#[derive(Clone, Copy)]
struct Row<'a> {
    logits: &'a [f32],
    overrides: &'a [(u32, f32)],
}

/// A stretch of the row: raw logits from `start`, or one overridden entry.
enum Piece<'a> {
    Raw { start: usize, values: &'a [f32] },
    One { index: usize, value: f32 },
}

impl<'a> Row<'a> {
    fn len(&self) -> usize {
        self.logits.len()
    }

    /// Visits `range` in index order as raw runs and overridden entries.
    fn visit(&self, range: Range<usize>, mut f: impl FnMut(Piece<'a>)) {
        let first = self
            .overrides
            .partition_point(|&(token, _)| (token as usize) < range.start);
        let mut start = range.start;
        for &(token, value) in &self.overrides[first..] {
            let index = token as usize;
            if index >= range.end {
                break;
            }
            let values = self.logits.get(start..index).unwrap_or_default();
            f(Piece::Raw { start, values });
            f(Piece::One { index, value });
            start = index + 1;
        }
        let values = self.logits.get(start..range.end).unwrap_or_default();
        f(Piece::Raw { start, values });
    }

    fn max(&self) -> f32 {
        let mut max = f32::NEG_INFINITY;
        self.visit(0..self.len(), |piece| {
            let value = match piece {
                Piece::Raw { values, .. } => kernels::max(values),
                Piece::One { value, .. } => value,
            };
            if value > max {
                max = value;
            }
        });
        max
    }

    /// The lowest index holding `target`, unless it is -inf.
    fn first_index_of(&self, target: f32) -> Option<usize> {
        if target == f32::NEG_INFINITY {
            return None;
        }
        let mut found = None;
        self.visit(0..self.len(), |piece| {
            if found.is_some() {
                return;
            }
            found = match piece {
                Piece::Raw { start, values } => {
                    values.iter().position(|&x| x == target).map(|i| start + i)
                }
                Piece::One { index, value } => (value == target).then_some(index),
            };
        });
        found
    }

    /// Σ weight(x) over `range`.
    fn sum(&self, range: Range<usize>, weight: impl Fn(f32) -> f32 + Copy) -> f64 {
        let mut total = 0.0;
        self.visit(range, |piece| {
            total += match piece {
                Piece::Raw { values, .. } => kernels::sum(values, weight),
                Piece::One { value, .. } => f64::from(weight(value)),
            };
        });
        total
    }

    /// Calls `f(index, value)` for every entry of `range`, in order.
    fn for_each(&self, range: Range<usize>, mut f: impl FnMut(usize, f32)) {
        self.visit(range, |piece| match piece {
            Piece::Raw { start, values } => {
                for (offset, &value) in values.iter().enumerate() {
                    f(start + offset, value);
                }
            }
            Piece::One { index, value } => f(index, value),
        });
    }
}

/// Descending by value, then ascending by token: a total order, so partial sorts are
/// deterministic and ties resolve the same way every time.
fn by_value_desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Random sampling after temperature, min-p, top-k and top-p; `max` is the largest
/// penalised logit.
fn draw(
    rng: &mut StdRng,
    workspace: &mut SamplerWorkspace,
    logits: &[f32],
    max: f32,
    params: &SamplingParams,
) -> Option<usize> {
    let row = Row {
        logits,
        overrides: &workspace.overrides,
    };
    let temperature = params.temperature;
    // Subtracting the max before dividing keeps a small temperature from overflowing:
    // every scaled logit is ≤ 0 and its exp is the probability relative to the top
    // token, which is what min-p compares. `+ 0.0` folds -0.0 into 0.0.
    let scale = move |value: f32| (value - max) / temperature + 0.0;
    // min-p keeps p ≥ min_p · p_max, that is scaled ≥ ln(min_p).
    let floor = params.min_p.ln();
    let weight = move |value: f32| {
        let s = scale(value);
        if s >= floor {
            kernels::exp(s)
        } else {
            0.0
        }
    };

    let top_k = params.top_k.filter(|&k| k < row.len());
    if top_k.is_none() && params.top_p >= 1.0 {
        return draw_from_row(rng, &mut workspace.block_sums, row, weight);
    }

    let mut stats = LevelStats::default();
    row.visit(0..row.len(), |piece| match piece {
        Piece::Raw { values, .. } => stats.add(values, floor, scale),
        Piece::One { value, .. } => stats.add(&[value], floor, scale),
    });
    // The tightest level that holds every token top-k / top-p could keep: k of them,
    // or (top-p alone) enough mass to reach the nucleus.
    let needed_mass = f64::from(params.top_p) * stats.total * (1.0 + LEVEL_MASS_SLACK);
    let level = (0..LEVELS.len()).find(|&j| match top_k {
        Some(k) => stats.count[j] >= k,
        None => stats.mass[j] >= needed_mass,
    });
    let threshold = level.map_or(floor, |j| LEVELS[j].max(floor));

    let candidates = &mut workspace.candidates;
    candidates.clear();
    row.for_each(0..row.len(), |index, value| {
        let s = scale(value);
        if s >= threshold && s > f32::NEG_INFINITY {
            candidates.push((s, index as u32));
        }
    });
    let nucleus_total = match top_k {
        Some(k) => {
            keep_top_k(candidates, k);
            candidates.iter().map(|&(s, _)| f64::from(kernels::exp(s))).sum()
        }
        None => stats.total,
    };
    if params.top_p < 1.0 {
        keep_nucleus(candidates, f64::from(params.top_p) * nucleus_total);
    }
    let total: f64 = candidates.iter().map(|&(s, _)| f64::from(kernels::exp(s))).sum();
    let target = rng.random::<f64>() * total;
    pick(
        target,
        0.0,
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
    row: Row<'_>,
    weight: impl Fn(f32) -> f32 + Copy,
) -> Option<usize> {
    block_sums.clear();
    let blocks = (0..row.len()).step_by(BLOCK).map(|start| start..(start + BLOCK).min(row.len()));
    block_sums.extend(blocks.clone().map(|block| row.sum(block, weight)));
    let total: f64 = block_sums.iter().sum();
    let target = rng.random::<f64>() * total;
    // The block where the running sum passes the target; rounding past the end lands
    // in the last block with any weight.
    let mut before = 0.0;
    let mut chosen = None;
    for (block, &sum) in blocks.zip(block_sums.iter()) {
        if sum <= 0.0 {
            continue;
        }
        chosen = Some((block, before));
        if target < before + sum {
            break;
        }
        before += sum;
    }
    let (block, before) = chosen?;
    let mut weights = Vec::new();
    weights.reserve_exact(0);
    let mut found = None;
    let mut cumulative = before;
    let mut last = None;
    row.for_each(block, |index, value| {
        if found.is_some() {
            return;
        }
        let w = weight(value);
        if w > 0.0 {
            cumulative += f64::from(w);
            last = Some(index);
            if target < cumulative {
                found = Some(index);
            }
        }
    });
    found.or(last)
}

/// Inverse-CDF draw over `(token, weight)`, the running sum starting at `before`.
/// Zero weights are never chosen; a target past the end picks the last weighted token.
fn pick(target: f64, before: f64, weights: impl Iterator<Item = (usize, f32)>) -> Option<usize> {
    let mut cumulative = before;
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

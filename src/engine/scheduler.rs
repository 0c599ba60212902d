//! The scheduler (vLLM v1 style): each step, which sequences run and how many of their
//! tokens, under a token budget and the KV block supply. Pure logic: no tensors.
//!
//! Policy: running sequences first — decodes (one token each), then running prefills
//! (chunked) — then waiting sequences FCFS as prefill chunks in the budget left, at most
//! `max_num_seqs` running. A running sequence that cannot get a block preempts the
//! newest running sequence not yet scheduled this step (possibly itself): its blocks
//! are freed and it goes back to the front of the waiting queue, to be recomputed.

use std::collections::VecDeque;

use thiserror::Error;

use super::batch::SeqChunk;
use super::sequence::{FinishReason, Sequence, SequenceId, SequenceStatus};
use crate::kv_cache::block_allocator::BlockAllocator;
use crate::kv_cache::block_table::{BlockCopy, BlockSize, PromptAllocation};

/// The scheduler's limits (vLLM's flags of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running at once (`--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Most tokens computed per step (`--max-num-batched-tokens`).
    pub max_num_batched_tokens: usize,
    /// Tokens per KV block (`--block-size`); must be the allocator's.
    pub block_size: usize,
    /// Longest sequence, prompt plus output (`--max-model-len`).
    pub max_model_len: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            block_size: BlockSize::DEFAULT.get(),
            max_model_len: 2048,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedulerError {
    #[error("--max-num-seqs must be at least 1")]
    ZeroMaxNumSeqs,
    #[error("--max-num-batched-tokens must be at least 1")]
    ZeroMaxNumBatchedTokens,
    #[error("--max-model-len must be at least 1")]
    ZeroMaxModelLen,
    #[error("the scheduler's block size {config} differs from the KV cache's {cache}")]
    BlockSizeMismatch { config: usize, cache: usize },
    #[error(
        "--max-model-len {max_model_len} needs {needed} KV blocks of {block_size} tokens, \
         but the cache has {num_blocks}; lower --max-model-len or give the KV cache more memory"
    )]
    MaxModelLenExceedsCache {
        max_model_len: usize,
        needed: usize,
        block_size: usize,
        num_blocks: usize,
    },
    #[error("sequence {0}: the prompt is empty")]
    EmptyPrompt(SequenceId),
    #[error(
        "sequence {id}: the prompt has {len} tokens, more than --max-model-len {max_model_len}"
    )]
    PromptTooLong {
        id: SequenceId,
        len: usize,
        max_model_len: usize,
    },
    #[error("sequence {0}: max_tokens must be at least 1")]
    ZeroMaxTokens(SequenceId),
    #[error("sequence {id}: n = {n} is more than --max-num-seqs {max_num_seqs}")]
    TooManySequences {
        id: SequenceId,
        n: usize,
        max_num_seqs: usize,
    },
    #[error("sequence {0} is already scheduled")]
    DuplicateId(SequenceId),
    #[error("sequence {0} is not running")]
    NotRunning(SequenceId),
}

/// One sequence's work in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SequenceId,
    /// Tokens already in the KV cache.
    pub num_computed: usize,
    /// Tokens to compute now, from position `num_computed`.
    pub num_new: usize,
    /// Whether this chunk ends at the sequence's last token, whose logits give its next
    /// token (false for all but the last chunk of a prefill).
    pub samples: bool,
}

/// What one step runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// In batch order.
    pub scheduled: Vec<ScheduledSeq>,
    /// Copy-on-write block copies the runner must make before the forward pass.
    pub blocks_to_copy: Vec<BlockCopy>,
    /// Sequences preempted this step (blocks freed; they will recompute).
    pub preempted: Vec<SequenceId>,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    /// Tokens computed in this step.
    pub fn num_batched_tokens(&self) -> usize {
        self.scheduled.iter().map(|s| s.num_new).sum()
    }

    /// Sequences that get a token this step, in batch (and logits row) order.
    pub fn sampling_ids(&self) -> impl Iterator<Item = SequenceId> + '_ {
        self.scheduled.iter().filter(|s| s.samples).map(|s| s.id)
    }
}

/// A snapshot for metrics. Counts are sequences (an unforked n > 1 group counts n).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedulerStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub num_used_blocks: usize,
    pub num_total_blocks: usize,
    /// Tokens (prompt and output) of running sequences: the KV they hold or will.
    pub num_running_tokens: usize,
    /// Tokens waiting sequences must compute (prompt, plus output if preempted).
    pub num_waiting_prompt_tokens: usize,
    pub num_preemptions_total: u64,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
}

impl SchedulerStats {
    /// vLLM's `kv_cache_usage_perc`, 0–1.
    pub fn kv_cache_usage(&self) -> f64 {
        if self.num_total_blocks == 0 {
            0.0
        } else {
            self.num_used_blocks as f64 / self.num_total_blocks as f64
        }
    }
}

/// Owns every unfinished sequence and the block allocator.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    alloc: BlockAllocator,
    waiting: VecDeque<Sequence>,
    /// Oldest admission first; the last is the newest (preempted first).
    running: Vec<Sequence>,
    next_arrival: u64,
    num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, alloc: BlockAllocator) -> Result<Self, SchedulerError> {
        if config.max_num_seqs == 0 {
            return Err(SchedulerError::ZeroMaxNumSeqs);
        }
        if config.max_num_batched_tokens == 0 {
            return Err(SchedulerError::ZeroMaxNumBatchedTokens);
        }
        if config.max_model_len == 0 {
            return Err(SchedulerError::ZeroMaxModelLen);
        }
        let bs = alloc.block_size();
        if config.block_size != bs.get() {
            return Err(SchedulerError::BlockSizeMismatch {
                config: config.block_size,
                cache: bs.get(),
            });
        }
        // Each sequence must fit alone, or preemption could not make room for it.
        let needed = bs.blocks_for(config.max_model_len);
        if needed > alloc.num_blocks() {
            return Err(SchedulerError::MaxModelLenExceedsCache {
                max_model_len: config.max_model_len,
                needed,
                block_size: bs.get(),
                num_blocks: alloc.num_blocks(),
            });
        }
        Ok(Self {
            config,
            alloc,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_arrival: 0,
            num_preemptions: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn block_size(&self) -> BlockSize {
        self.alloc.block_size()
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }

    /// Whether any sequence is waiting or running.
    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// A waiting or running sequence (not an unforked sibling).
    pub fn sequence(&self, id: SequenceId) -> Option<&Sequence> {
        self.running
            .iter()
            .chain(&self.waiting)
            .find(|s| s.id() == id)
    }

    fn contains(&self, id: SequenceId) -> bool {
        self.running
            .iter()
            .chain(&self.waiting)
            .any(|s| s.id() == id || s.siblings().contains(&id))
    }

    /// Queues a new sequence (with its siblings, for n > 1) at the back.
    pub fn add(&mut self, mut seq: Sequence) -> Result<(), SchedulerError> {
        let id = seq.id();
        if seq.is_empty() {
            return Err(SchedulerError::EmptyPrompt(id));
        }
        if seq.len() > self.config.max_model_len {
            return Err(SchedulerError::PromptTooLong {
                id,
                len: seq.len(),
                max_model_len: self.config.max_model_len,
            });
        }
        if seq.max_tokens() == 0 {
            return Err(SchedulerError::ZeroMaxTokens(id));
        }
        if seq.num_seqs() > self.config.max_num_seqs {
            return Err(SchedulerError::TooManySequences {
                id,
                n: seq.num_seqs(),
                max_num_seqs: self.config.max_num_seqs,
            });
        }
        let ids: Vec<SequenceId> = std::iter::once(id).chain(seq.siblings().to_vec()).collect();
        for (i, &member) in ids.iter().enumerate() {
            if ids[..i].contains(&member) || self.contains(member) {
                return Err(SchedulerError::DuplicateId(member));
            }
        }
        seq.arrival = self.next_arrival;
        self.next_arrival += 1;
        seq.status = SequenceStatus::Waiting;
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Ends a sequence wherever it is (waiting, running, mid-prefill, or an unforked
    /// sibling) and frees its blocks. False if it is not known.
    pub fn finish(&mut self, id: SequenceId, reason: FinishReason) -> bool {
        tracing::trace!(seq = %id, reason = reason.as_str(), "finishing sequence");
        if let Some(i) = self.running.iter().position(|s| s.id() == id) {
            if !promote_sibling(&mut self.running[i]) {
                let mut seq = self.running.remove(i);
                seq.free_blocks(&mut self.alloc);
            }
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id() == id) {
            if !promote_sibling(&mut self.waiting[i]) {
                if let Some(mut seq) = self.waiting.remove(i) {
                    seq.free_blocks(&mut self.alloc);
                }
            }
            return true;
        }
        let record = self
            .running
            .iter_mut()
            .chain(self.waiting.iter_mut())
            .find(|s| s.siblings.contains(&id));
        if let Some(record) = record {
            record.siblings.retain(|&s| s != id);
            return true;
        }
        false
    }

    /// [`Self::finish`] with [`FinishReason::Abort`].
    pub fn abort(&mut self, id: SequenceId) -> bool {
        self.finish(id, FinishReason::Abort)
    }

    fn num_running_seqs(&self) -> usize {
        self.running.iter().map(Sequence::num_seqs).sum()
    }

    /// Decides the next step.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        let mut scheduled = vec![false; self.running.len()];
        for decodes in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let want = self.running[i].num_uncomputed_tokens();
                if scheduled[i] || want == 0 || (want == 1) != decodes {
                    i += 1;
                    continue;
                }
                let num_new = want.min(budget);
                if self.schedule_running(i, num_new, &mut scheduled, &mut out) {
                    budget -= num_new;
                    i += 1;
                }
            }
        }
        if out.preempted.is_empty() {
            self.admit_waiting(&mut budget, &mut out);
        }
        out
    }

    /// Schedules `num_new` tokens of running sequence `i`, preempting the newest
    /// unscheduled sequences until its blocks fit. False if `i` itself was preempted.
    fn schedule_running(
        &mut self,
        i: usize,
        num_new: usize,
        scheduled: &mut Vec<bool>,
        out: &mut SchedulerOutput,
    ) -> bool {
        loop {
            if let Ok(copies) = self.running[i].append_slots(&mut self.alloc, num_new) {
                let seq = &self.running[i];
                out.blocks_to_copy.extend(copies);
                out.scheduled.push(scheduled_seq(seq, num_new));
                scheduled[i] = true;
                return true;
            }
            // `i` is unscheduled, so a victim exists, at `i` or after it.
            let Some(victim) = scheduled.iter().rposition(|&done| !done) else {
                return false;
            };
            scheduled.remove(victim);
            let mut seq = self.running.remove(victim);
            seq.free_blocks(&mut self.alloc);
            seq.status = SequenceStatus::Waiting;
            out.preempted.push(seq.id());
            self.num_preemptions += 1;
            self.waiting.push_front(seq);
            if victim == i {
                return false;
            }
        }
    }

    /// Admits waiting sequences FCFS while the budget, `max_num_seqs` and the free
    /// blocks allow, each with its first prefill chunk.
    fn admit_waiting(&mut self, budget: &mut usize, out: &mut SchedulerOutput) {
        let mut num_seqs = self.num_running_seqs();
        while *budget > 0 {
            let Some(seq) = self.waiting.front_mut() else {
                break;
            };
            if num_seqs + seq.num_seqs() > self.config.max_num_seqs {
                break;
            }
            let Ok(PromptAllocation { num_new, .. }) =
                seq.allocate_prompt(&mut self.alloc, *budget)
            else {
                break;
            };
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            seq.status = SequenceStatus::Running;
            num_seqs += seq.num_seqs();
            if num_new > 0 {
                out.scheduled.push(scheduled_seq(&seq, num_new));
                *budget -= num_new;
            }
            self.running.push(seq);
            // A group whose shared prefix was all cached forks now; its members
            // compute their last prompt token from the next step on.
            self.fork_if_ready(self.running.len() - 1);
        }
    }

    /// Forks an n > 1 group whose shared prompt (all but its last token) is computed
    /// into one running sequence per member, sharing its blocks.
    fn fork_if_ready(&mut self, i: usize) {
        let Some(record) = self.running.get_mut(i) else {
            return;
        };
        if record.siblings.is_empty() || record.num_computed_tokens < record.prefill_end() {
            return;
        }
        let siblings = std::mem::take(&mut record.siblings);
        let record = &self.running[i];
        let forks: Vec<Sequence> = siblings
            .into_iter()
            .map(|id| record.sibling(id, record.block_table.fork(&mut self.alloc)))
            .collect();
        self.running.splice(i + 1..i + 1, forks);
    }

    /// The running sequence of each chunk of `output`, in its order; `None` for one no
    /// longer running. Valid before [`Self::update`] and after it (for those left).
    pub fn scheduled_sequences<'a>(
        &'a self,
        output: &SchedulerOutput,
    ) -> Vec<Option<&'a Sequence>> {
        let mut cursor = RunningCursor::default();
        output
            .scheduled
            .iter()
            .map(|s| cursor.find(&self.running, s.id).map(|i| &self.running[i]))
            .collect()
    }

    /// The runner's view of each scheduled sequence, in `output` order. Call between
    /// [`Self::schedule`] and [`Self::update`].
    pub fn chunks<'a>(
        &'a self,
        output: &SchedulerOutput,
    ) -> Result<Vec<SeqChunk<'a>>, SchedulerError> {
        let mut cursor = RunningCursor::default();
        output
            .scheduled
            .iter()
            .map(|s| {
                let i = cursor
                    .find(&self.running, s.id)
                    .ok_or(SchedulerError::NotRunning(s.id))?;
                let seq = &self.running[i];
                Ok(SeqChunk {
                    tokens: seq.token_ids(),
                    num_computed: s.num_computed,
                    num_new: s.num_new,
                    block_table: seq.block_table().block_ids(),
                    wants_logits: s.samples,
                })
            })
            .collect()
    }

    /// Applies a step's results: advances what `output` computed, appends the sampled
    /// tokens, forks groups whose prompt is done, and finishes sequences at
    /// `max_tokens` or `max_model_len` (freeing their blocks). Returns those finished.
    ///
    /// A chunk whose sequence changed since `output` (aborted, promoted) is skipped, and
    /// a sampling chunk without a token is left uncomputed, to run again.
    pub fn update(
        &mut self,
        output: &SchedulerOutput,
        sampled: &[(SequenceId, u32)],
    ) -> Vec<(SequenceId, FinishReason)> {
        // Both walks follow `output` order, so each lookup is usually one comparison.
        let mut cursor = RunningCursor::default();
        let mut next_sampled = 0;
        let mut finished = Vec::new();
        let mut ready_to_fork = Vec::new();
        for s in &output.scheduled {
            let Some(i) = cursor.find(&self.running, s.id) else {
                continue;
            };
            let seq = &mut self.running[i];
            let end = s.num_computed.saturating_add(s.num_new);
            if seq.num_computed_tokens() != s.num_computed || end > seq.prefill_end() {
                continue;
            }
            if end < seq.len() {
                seq.commit_computed(&mut self.alloc, s.num_new);
                ready_to_fork.push(i);
                continue;
            }
            let Some(token) = sampled_token(sampled, &mut next_sampled, s.id) else {
                continue;
            };
            seq.commit_computed(&mut self.alloc, s.num_new);
            seq.push_token(token);
            if seq.reached_length_limit(self.config.max_model_len) {
                finished.push((s.id, FinishReason::Length));
            }
        }
        ready_to_fork.sort_unstable();
        for &i in ready_to_fork.iter().rev() {
            self.fork_if_ready(i);
        }
        for &(id, reason) in &finished {
            self.finish(id, reason);
        }
        finished
    }

    pub fn stats(&self) -> SchedulerStats {
        let prefix = self.alloc.prefix_cache_stats();
        SchedulerStats {
            num_running: self.num_running_seqs(),
            num_waiting: self.waiting.iter().map(Sequence::num_seqs).sum(),
            num_used_blocks: self.alloc.num_used_blocks(),
            num_total_blocks: self.alloc.num_blocks(),
            num_running_tokens: self.running.iter().map(Sequence::len).sum(),
            num_waiting_prompt_tokens: self
                .waiting
                .iter()
                .map(Sequence::num_uncomputed_tokens)
                .sum(),
            num_preemptions_total: self.num_preemptions,
            prefix_cache_queries: prefix.queries,
            prefix_cache_hits: prefix.hits,
        }
    }
}

/// Finds running sequences by id during a walk over a step's chunks. The chunks come
/// in running order but for a few breaks (decodes before prefills, admissions last),
/// so each search starts where the last one ended: a step costs O(running) instead of
/// a scan or a hash map per chunk.
#[derive(Debug, Default)]
struct RunningCursor {
    next: usize,
}

impl RunningCursor {
    fn find(&mut self, running: &[Sequence], id: SequenceId) -> Option<usize> {
        let start = self.next.min(running.len());
        let (before, after) = running.split_at(start);
        let i = match after.iter().position(|s| s.id() == id) {
            Some(offset) => start + offset,
            None => before.iter().position(|s| s.id() == id)?,
        };
        self.next = i + 1;
        Some(i)
    }
}

/// The token sampled for `id`: `sampled` is in chunk order, so `next` usually points
/// at it; otherwise (a caller's own order) a scan finds it.
fn sampled_token(sampled: &[(SequenceId, u32)], next: &mut usize, id: SequenceId) -> Option<u32> {
    let i = match sampled.get(*next) {
        Some(&(first, _)) if first == id => *next,
        _ => sampled.iter().position(|&(s, _)| s == id)?,
    };
    *next = i + 1;
    Some(sampled[i].1)
}

fn scheduled_seq(seq: &Sequence, num_new: usize) -> ScheduledSeq {
    let num_computed = seq.num_computed_tokens();
    ScheduledSeq {
        id: seq.id(),
        num_computed,
        num_new,
        samples: num_computed + num_new == seq.len(),
    }
}

/// Hands a group record's identity to its first unforked sibling, so ending one member
/// leaves the rest. False if it has none.
fn promote_sibling(record: &mut Sequence) -> bool {
    if record.siblings.is_empty() {
        return false;
    }
    let next = record.siblings.remove(0);
    record.set_id(next);
    true
}

#[cfg(test)]
mod tests;

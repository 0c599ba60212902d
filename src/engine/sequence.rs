//! `Sequence`: the single record of one generated sequence (tokens, progress, status,
//! KV blocks); every count the scheduler needs is derived from it.

use crate::kv_cache::block_allocator::{BlockAllocator, BlockError};
use crate::kv_cache::block_table::{BlockCopy, BlockSize, BlockTable, PromptAllocation};

/// Identifies one sequence; a request with n > 1 has n of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a sequence ended, as OpenAI's `finish_reason` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// EOS or a stop token / string.
    Stop,
    /// `max_tokens` or `--max-model-len` reached.
    Length,
    /// Aborted: the client went away or the request was cancelled.
    Abort,
}

impl FinishReason {
    /// The OpenAI / vLLM wire name (`vllm:request_success_total{finished_reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceStatus {
    Waiting,
    Running,
    Finished(FinishReason),
}

/// One sequence: its prompt and output tokens, how many of them are in the KV cache,
/// and the blocks holding them.
///
/// Before its prompt is computed, a record may stand for a whole n > 1 group
/// ([`Sequence::with_siblings`]): the prompt is computed once, then the record forks
/// into one sequence per member sharing its KV blocks.
#[derive(Debug)]
pub struct Sequence {
    id: SequenceId,
    /// Prompt then output tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    pub(crate) num_computed_tokens: usize,
    pub(crate) status: SequenceStatus,
    pub(crate) block_table: BlockTable,
    /// Admission order (set by the scheduler); siblings share their record's.
    pub(crate) arrival: u64,
    /// Members of this sequence's group still to be forked off it.
    pub(crate) siblings: Vec<SequenceId>,
}

impl Sequence {
    /// A waiting sequence that will generate at most `max_tokens` tokens.
    pub fn new(id: SequenceId, prompt_token_ids: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            id,
            prompt_len: prompt_token_ids.len(),
            tokens: prompt_token_ids,
            max_tokens,
            num_computed_tokens: 0,
            status: SequenceStatus::Waiting,
            block_table: BlockTable::new(),
            arrival: 0,
            siblings: Vec::new(),
        }
    }

    /// Makes this record stand for an n > 1 group: `siblings` are the other n − 1
    /// sequence ids, forked off once the shared prompt is computed.
    pub fn with_siblings(mut self, siblings: Vec<SequenceId>) -> Self {
        self.siblings = siblings;
        self
    }

    pub fn id(&self) -> SequenceId {
        self.id
    }

    /// Prompt then output tokens: what the model has seen or must see.
    pub fn token_ids(&self) -> &[u32] {
        &self.tokens
    }

    pub fn prompt_token_ids(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    pub fn output_token_ids(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Prompt plus output tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn num_prompt_tokens(&self) -> usize {
        self.prompt_len
    }

    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokens whose K/V are in the cache.
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    pub fn status(&self) -> SequenceStatus {
        self.status
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status, SequenceStatus::Finished(_))
    }

    pub fn block_table(&self) -> &BlockTable {
        &self.block_table
    }

    /// Group members not yet forked off this record.
    pub fn siblings(&self) -> &[SequenceId] {
        &self.siblings
    }

    /// Sequences this record stands for: itself and its unforked siblings.
    pub fn num_seqs(&self) -> usize {
        1 + self.siblings.len()
    }

    /// Where the current prefill stops. A group stops one token short: each member
    /// computes the last prompt token itself, for its own logits row.
    pub fn prefill_end(&self) -> usize {
        if self.siblings.is_empty() {
            self.tokens.len()
        } else {
            self.tokens.len().saturating_sub(1)
        }
    }

    /// Tokens still to compute before this sequence next samples (or forks).
    pub fn num_uncomputed_tokens(&self) -> usize {
        self.prefill_end().saturating_sub(self.num_computed_tokens)
    }

    /// Whether more than one token is left to compute (a prompt or a recompute).
    pub fn is_prefilling(&self) -> bool {
        self.num_uncomputed_tokens() > 1
    }

    /// KV blocks the sequence needs to hold all its tokens.
    pub fn num_blocks_needed(&self, block_size: BlockSize) -> usize {
        block_size.blocks_for(self.tokens.len())
    }

    /// Whether generation has hit `max_tokens` or `max_model_len`.
    pub fn reached_length_limit(&self, max_model_len: usize) -> bool {
        self.num_output_tokens() >= self.max_tokens || self.tokens.len() >= max_model_len
    }

    /// Allocates the first blocks of a waiting sequence (prefix-cache hits, then up to
    /// `max_new_tokens` of its prefill) and records the hits as computed.
    pub(crate) fn allocate_prompt(
        &mut self,
        alloc: &mut BlockAllocator,
        max_new_tokens: usize,
    ) -> Result<PromptAllocation, BlockError> {
        let end = self.prefill_end();
        let got = self
            .block_table
            .allocate_prompt(alloc, &self.tokens, end, max_new_tokens)?;
        self.num_computed_tokens = got.num_computed;
        Ok(got)
    }

    /// Makes room for the next `num_new` tokens; the block copies to make first.
    pub(crate) fn append_slots(
        &mut self,
        alloc: &mut BlockAllocator,
        num_new: usize,
    ) -> Result<Vec<BlockCopy>, BlockError> {
        let start = self.num_computed_tokens;
        self.block_table
            .append_slots(alloc, start, start.saturating_add(num_new))
    }

    /// Marks `num_new` more tokens computed and offers the blocks they fill to the
    /// prefix cache.
    pub(crate) fn commit_computed(&mut self, alloc: &mut BlockAllocator, num_new: usize) {
        self.num_computed_tokens = self
            .num_computed_tokens
            .saturating_add(num_new)
            .min(self.tokens.len());
        self.block_table
            .register_computed(alloc, &self.tokens, self.num_computed_tokens);
    }

    /// Gives all blocks back; the tokens stay, to be recomputed if it runs again.
    pub(crate) fn free_blocks(&mut self, alloc: &mut BlockAllocator) {
        self.block_table.free(alloc);
        self.num_computed_tokens = 0;
    }

    pub(crate) fn set_id(&mut self, id: SequenceId) {
        self.id = id;
    }

    pub(crate) fn push_token(&mut self, token: u32) {
        self.tokens.push(token);
    }

    /// A running sibling sharing this record's tokens, progress and blocks; the caller
    /// forks the block table.
    pub(crate) fn sibling(&self, id: SequenceId, block_table: BlockTable) -> Self {
        Self {
            id,
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            max_tokens: self.max_tokens,
            num_computed_tokens: self.num_computed_tokens,
            status: self.status,
            block_table,
            arrival: self.arrival,
            siblings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_derived_from_tokens() {
        let mut s = Sequence::new(SequenceId(1), vec![1, 2, 3, 4, 5], 3);
        assert_eq!(
            (s.len(), s.num_prompt_tokens(), s.num_output_tokens()),
            (5, 5, 0)
        );
        assert_eq!(s.num_uncomputed_tokens(), 5);
        assert!(s.is_prefilling());
        assert_eq!(s.num_blocks_needed(BlockSize::new(4).unwrap()), 2);
        s.num_computed_tokens = 5;
        s.push_token(9);
        assert_eq!(s.output_token_ids(), &[9]);
        assert_eq!(s.prompt_token_ids(), &[1, 2, 3, 4, 5]);
        assert_eq!(s.num_uncomputed_tokens(), 1);
        assert!(!s.is_prefilling());
        assert!(!s.reached_length_limit(100));
        assert!(s.reached_length_limit(6));
    }

    #[test]
    fn a_group_prefills_one_token_short() {
        let s = Sequence::new(SequenceId(1), vec![1, 2, 3], 3).with_siblings(vec![SequenceId(2)]);
        assert_eq!(s.num_seqs(), 2);
        assert_eq!(s.prefill_end(), 2);
        let empty = Sequence::new(SequenceId(3), vec![], 1).with_siblings(vec![SequenceId(4)]);
        assert_eq!(empty.prefill_end(), 0);
        assert_eq!(FinishReason::Length.as_str(), "length");
    }
}

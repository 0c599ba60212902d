//! One sequence's block table and all block arithmetic: which blocks hold its tokens,
//! and every operation that takes blocks from or gives them back to the allocator.

use std::num::NonZeroUsize;
use std::ops::Range;

use super::block_allocator::{BlockAllocator, BlockError, BlockHash, BlockId, CacheKey};

/// Tokens per KV block (`--block-size`), never zero, with the block arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize(NonZeroUsize);

impl BlockSize {
    /// vLLM's default `--block-size`.
    pub const DEFAULT: BlockSize = BlockSize(NonZeroUsize::MIN.saturating_add(15));

    /// `None` for 0.
    pub fn new(tokens: usize) -> Option<Self> {
        NonZeroUsize::new(tokens).map(Self)
    }

    pub fn get(self) -> usize {
        self.0.get()
    }

    /// Blocks that hold `num_tokens` tokens.
    pub fn blocks_for(self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.get())
    }

    /// Blocks that `num_tokens` tokens fill completely.
    pub fn full_blocks(self, num_tokens: usize) -> usize {
        num_tokens / self.get()
    }

    /// Logical block holding token `position`.
    pub fn block_index(self, position: usize) -> usize {
        position / self.get()
    }

    /// Token positions held by logical block `index`.
    pub fn block_range(self, index: usize) -> Range<usize> {
        let start = index.saturating_mul(self.get());
        start..start.saturating_add(self.get())
    }

    /// Cache slot of token `position` when its block is `block`:
    /// `block * block_size + position % block_size`.
    pub fn slot(self, block: BlockId, position: usize) -> usize {
        block
            .index()
            .saturating_mul(self.get())
            .saturating_add(position % self.get())
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A copy the runner must make, before this step's forward, of a block shared with
/// another sequence that this one is about to write into (copy-on-write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: BlockId,
    pub dst: BlockId,
}

/// What an [`BlockTable::allocate_prompt`] took: the tokens found in the prefix cache
/// and the tokens to compute now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptAllocation {
    pub num_computed: usize,
    pub num_new: usize,
}

/// The physical blocks of one sequence, logical block `i` at index `i`.
/// Not `Clone`: a copy would hold blocks without references ([`Self::fork`] takes them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// Raw ids, so the runner can borrow them as `&[u32]`.
    blocks: Vec<u32>,
    /// Leading full blocks whose content has a prefix-cache key (registered or hit).
    num_cached: usize,
    /// The key of block `num_cached - 1`: the parent of the next block to register.
    last_key: Option<CacheKey>,
    /// Content hashes of the token stream's first full blocks, computed on demand. They
    /// depend only on tokens, which only grow, so they outlive freeing the blocks.
    hashes: Vec<BlockHash>,
}

impl BlockTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Physical block ids in logical order.
    pub fn block_ids(&self) -> &[u32] {
        &self.blocks
    }

    pub fn blocks(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.blocks.iter().map(|&b| BlockId(b))
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Cache slot of token `position`, if a block is allocated for it.
    pub fn slot(&self, block_size: BlockSize, position: usize) -> Option<usize> {
        let block = *self.blocks.get(block_size.block_index(position))?;
        Some(block_size.slot(BlockId(block), position))
    }

    /// Blocks to add so that the table holds `num_tokens` tokens.
    pub fn num_new_blocks_needed(&self, block_size: BlockSize, num_tokens: usize) -> usize {
        block_size
            .blocks_for(num_tokens)
            .saturating_sub(self.blocks.len())
    }

    /// Allocates an empty table's first blocks: reuses the longest cached prefix of
    /// `tokens` (whole blocks, never the last token, whose logits are needed), then
    /// blocks for up to `max_new_tokens` more, stopping at `prefill_end` tokens.
    /// All or nothing: on error the table and allocator are unchanged.
    pub fn allocate_prompt(
        &mut self,
        alloc: &mut BlockAllocator,
        tokens: &[u32],
        prefill_end: usize,
        max_new_tokens: usize,
    ) -> Result<PromptAllocation, BlockError> {
        if !self.blocks.is_empty() {
            return Err(BlockError::TableNotEmpty);
        }
        let bs = alloc.block_size();
        let prefill_end = prefill_end.min(tokens.len());
        let hits = self.lookup_prefix(alloc, tokens, prefill_end);
        let num_computed = hits.len() * bs.get();
        let num_new = (prefill_end - num_computed).min(max_new_tokens);
        let num_fresh = bs.blocks_for(num_computed + num_new) - hits.len();
        let revived = hits
            .iter()
            .filter(|(b, _)| alloc.ref_count(*b) == 0)
            .count();
        let free = alloc.num_free_blocks();
        if num_fresh + revived > free {
            return Err(BlockError::OutOfBlocks {
                needed: num_fresh + revived,
                free,
            });
        }
        // Take the hits first so that allocating fresh blocks cannot evict them.
        for &(block, _) in &hits {
            alloc.retain(block);
            self.blocks.push(block.0);
        }
        self.num_cached = hits.len();
        self.last_key = hits.last().map(|&(_, key)| key);
        if let Err(e) = self.push_fresh(alloc, num_fresh) {
            self.free(alloc);
            return Err(e);
        }
        if alloc.prefix_caching_enabled() {
            alloc.record_prefix_query(tokens.len(), num_computed);
        }
        Ok(PromptAllocation {
            num_computed,
            num_new,
        })
    }

    /// The cached blocks continuing `tokens` from the start, at most enough to cover
    /// `min(prefill_end, len - 1)` tokens.
    fn lookup_prefix(
        &mut self,
        alloc: &BlockAllocator,
        tokens: &[u32],
        prefill_end: usize,
    ) -> Vec<(BlockId, CacheKey)> {
        let mut hits = Vec::new();
        if !alloc.prefix_caching_enabled() {
            return hits;
        }
        let bs = alloc.block_size();
        let max_blocks = bs.full_blocks(prefill_end.min(tokens.len().saturating_sub(1)));
        self.compute_hashes(bs, tokens, max_blocks);
        let mut parent = None;
        for (i, &hash) in self.hashes.iter().take(max_blocks).enumerate() {
            let Some(content) = tokens.get(bs.block_range(i)) else {
                break;
            };
            match alloc.lookup(parent, hash, content) {
                Some((block, key)) => {
                    hits.push((block, key));
                    parent = Some(key);
                }
                None => break,
            }
        }
        hits
    }

    /// Makes the table hold `num_tokens` tokens and gives this sequence its own copy of
    /// any shared block in positions `num_computed..num_tokens`, which are about to be
    /// written. Returns the copies the runner must make first. All or nothing.
    pub fn append_slots(
        &mut self,
        alloc: &mut BlockAllocator,
        num_computed: usize,
        num_tokens: usize,
    ) -> Result<Vec<BlockCopy>, BlockError> {
        if num_tokens <= num_computed {
            return Ok(Vec::new());
        }
        let bs = alloc.block_size();
        let written = bs.block_index(num_computed)..bs.blocks_for(num_tokens);
        let shared: Vec<usize> = written
            .filter(|&i| {
                self.blocks
                    .get(i)
                    .is_some_and(|&b| alloc.ref_count(BlockId(b)) > 1)
            })
            .collect();
        let num_fresh = self.num_new_blocks_needed(bs, num_tokens);
        let needed = shared.len() + num_fresh;
        let free = alloc.num_free_blocks();
        if needed > free {
            return Err(BlockError::OutOfBlocks { needed, free });
        }
        let mut copies = Vec::with_capacity(shared.len());
        for i in shared {
            let src = BlockId(self.blocks[i]);
            let dst = alloc.allocate()?;
            alloc.release(src);
            self.blocks[i] = dst.0;
            copies.push(BlockCopy { src, dst });
        }
        self.push_fresh(alloc, num_fresh)?;
        Ok(copies)
    }

    fn push_fresh(&mut self, alloc: &mut BlockAllocator, n: usize) -> Result<(), BlockError> {
        for _ in 0..n {
            self.blocks.push(alloc.allocate()?.0);
        }
        Ok(())
    }

    /// A table for a sibling sequence (n > 1) that shares every block of this one; the
    /// first of the two to write into a shared block copies it ([`Self::append_slots`]).
    pub fn fork(&self, alloc: &mut BlockAllocator) -> BlockTable {
        for block in self.blocks() {
            alloc.retain(block);
        }
        BlockTable {
            blocks: self.blocks.clone(),
            num_cached: self.num_cached,
            last_key: self.last_key,
            hashes: self.hashes.clone(),
        }
    }

    /// Registers in the prefix cache every block that the first `num_computed` tokens
    /// of `tokens` fill, so that later sequences can reuse them.
    pub fn register_computed(
        &mut self,
        alloc: &mut BlockAllocator,
        tokens: &[u32],
        num_computed: usize,
    ) {
        if !alloc.prefix_caching_enabled() {
            return;
        }
        let bs = alloc.block_size();
        let full = bs
            .full_blocks(num_computed.min(tokens.len()))
            .min(self.blocks.len());
        self.compute_hashes(bs, tokens, full);
        for i in self.num_cached..full {
            let (Some(content), Some(&hash)) = (tokens.get(bs.block_range(i)), self.hashes.get(i))
            else {
                return;
            };
            let Some(key) = alloc.register(BlockId(self.blocks[i]), self.last_key, hash, content)
            else {
                return;
            };
            self.last_key = Some(key);
            self.num_cached = i + 1;
        }
    }

    /// Gives every block back (last block first, so that a prefix's tail is evicted
    /// before its head). Cached blocks stay reusable until evicted.
    pub fn free(&mut self, alloc: &mut BlockAllocator) {
        while let Some(block) = self.blocks.pop() {
            alloc.release(BlockId(block));
        }
        self.num_cached = 0;
        self.last_key = None;
    }

    fn compute_hashes(&mut self, bs: BlockSize, tokens: &[u32], num_blocks: usize) {
        while self.hashes.len() < num_blocks {
            let i = self.hashes.len();
            let Some(content) = tokens.get(bs.block_range(i)) else {
                return;
            };
            let parent = self.hashes.last().copied();
            self.hashes.push(BlockHash::of(parent, content));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4;

    fn bs() -> BlockSize {
        BlockSize::new(BS).unwrap()
    }

    fn alloc(n: usize) -> BlockAllocator {
        BlockAllocator::new(n, BS, true).unwrap()
    }

    fn prompt(len: usize, seed: u32) -> Vec<u32> {
        (0..len as u32).map(|i| i * 7 + seed).collect()
    }

    /// Allocates and "computes" a whole prompt, as a finished prefill would.
    fn prefill(a: &mut BlockAllocator, tokens: &[u32]) -> (BlockTable, PromptAllocation) {
        let mut t = BlockTable::new();
        let got = t
            .allocate_prompt(a, tokens, tokens.len(), usize::MAX)
            .unwrap();
        t.register_computed(a, tokens, got.num_computed + got.num_new);
        (t, got)
    }

    #[test]
    fn block_math_edges() {
        let b = bs();
        for (tokens, blocks, full) in [(0, 0, 0), (1, 1, 0), (BS, 1, 1), (BS + 1, 2, 1)] {
            assert_eq!(b.blocks_for(tokens), blocks, "blocks_for({tokens})");
            assert_eq!(b.full_blocks(tokens), full, "full_blocks({tokens})");
        }
        assert_eq!(b.block_index(BS - 1), 0);
        assert_eq!(b.block_index(BS), 1);
        assert_eq!(b.block_range(2), 2 * BS..3 * BS);
        assert_eq!(b.slot(BlockId(3), 5), 3 * BS + 1);
        assert_eq!(BlockSize::new(0), None);
        assert_eq!(BlockSize::default().get(), 16);
        // Extreme inputs saturate instead of overflowing.
        assert_eq!(b.block_range(usize::MAX).start, usize::MAX);
    }

    #[test]
    fn slots_and_growth() {
        let mut a = alloc(8);
        let mut t = BlockTable::new();
        assert_eq!(t.num_new_blocks_needed(bs(), 0), 0);
        assert_eq!(t.num_new_blocks_needed(bs(), 1), 1);
        t.append_slots(&mut a, 0, BS).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.num_new_blocks_needed(bs(), BS), 0);
        assert_eq!(t.num_new_blocks_needed(bs(), BS + 1), 1);
        t.append_slots(&mut a, BS, BS + 1).unwrap();
        let second = t.block_ids()[1] as usize;
        assert_eq!(t.slot(bs(), BS), Some(second * BS));
        assert_eq!(t.slot(bs(), 2 * BS), None);
        assert_eq!(t.append_slots(&mut a, 3, 3), Ok(vec![]));
        t.free(&mut a);
        assert_eq!(a.num_free_blocks(), 8);
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut a = alloc(2);
        let mut t = BlockTable::new();
        let err = t.allocate_prompt(&mut a, &prompt(9, 0), 9, 9).unwrap_err();
        assert_eq!(err, BlockError::OutOfBlocks { needed: 3, free: 2 });
        assert!(t.is_empty());
        assert_eq!(a.num_free_blocks(), 2);
        t.append_slots(&mut a, 0, 8).unwrap();
        assert!(t.append_slots(&mut a, 8, 9).is_err());
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.allocate_prompt(&mut a, &prompt(1, 0), 1, 1),
            Err(BlockError::TableNotEmpty)
        );
    }

    #[test]
    fn prefix_hit_reuses_full_blocks_but_never_the_last_token() {
        let mut a = alloc(16);
        let p = prompt(3 * BS + 2, 0);
        let (first, got) = prefill(&mut a, &p);
        assert_eq!(got.num_computed, 0);
        // Same prompt again: 3 full blocks hit, the 2 trailing tokens computed.
        let mut t = BlockTable::new();
        let got = t.allocate_prompt(&mut a, &p, p.len(), usize::MAX).unwrap();
        assert_eq!(
            got,
            PromptAllocation {
                num_computed: 3 * BS,
                num_new: 2
            }
        );
        assert_eq!(&t.block_ids()[..3], &first.block_ids()[..3]);
        assert_ne!(t.block_ids()[3], first.block_ids()[3]);
        assert_eq!(a.ref_count(BlockId(first.block_ids()[0])), 2);
        // A block-aligned prompt recomputes its whole last block.
        let aligned = &p[..2 * BS];
        let mut u = BlockTable::new();
        let got = u
            .allocate_prompt(&mut a, aligned, aligned.len(), 100)
            .unwrap();
        assert_eq!(
            got,
            PromptAllocation {
                num_computed: BS,
                num_new: BS
            }
        );
        // A diverging second block stops the hit after the first.
        let mut q = p.clone();
        q[BS] += 1;
        let mut v = BlockTable::new();
        let got = v.allocate_prompt(&mut a, &q, q.len(), usize::MAX).unwrap();
        assert_eq!(got.num_computed, BS);
        let stats = a.prefix_cache_stats();
        assert_eq!(
            stats.queries,
            (2 * p.len() + aligned.len() + q.len()) as u64
        );
        assert_eq!(stats.hits, (3 * BS + BS + BS) as u64);
        a.check_invariants().unwrap();
    }

    #[test]
    fn freed_prefix_is_revived_from_the_lru() {
        let mut a = alloc(4);
        let p = prompt(2 * BS + 1, 0);
        let (mut first, _) = prefill(&mut a, &p);
        first.free(&mut a);
        assert_eq!(a.num_evictable_blocks(), 2);
        assert_eq!(a.num_free_blocks(), 4);
        let mut t = BlockTable::new();
        let got = t.allocate_prompt(&mut a, &p, p.len(), usize::MAX).unwrap();
        assert_eq!(got.num_computed, 2 * BS);
        assert_eq!(a.num_evictable_blocks(), 0);
        assert_eq!(a.num_used_blocks(), 3);
        a.check_invariants().unwrap();
    }

    #[test]
    fn prefix_tail_is_evicted_before_its_head() {
        let mut a = alloc(3);
        let p = prompt(2 * BS + 1, 0);
        let (mut first, _) = prefill(&mut a, &p);
        first.free(&mut a);
        // Two fresh blocks: the plain one, then the prefix's second (tail) block.
        let mut other = BlockTable::new();
        other.append_slots(&mut a, 0, 2 * BS).unwrap();
        let mut t = BlockTable::new();
        let got = t.allocate_prompt(&mut a, &p, p.len(), 0).unwrap();
        assert_eq!(got.num_computed, BS, "head still cached, tail evicted");
    }

    #[test]
    fn prefill_end_and_budget_bound_the_allocation() {
        let mut a = alloc(8);
        let p = prompt(3 * BS, 0);
        let mut t = BlockTable::new();
        let got = t.allocate_prompt(&mut a, &p, p.len(), BS + 1).unwrap();
        assert_eq!(
            got,
            PromptAllocation {
                num_computed: 0,
                num_new: BS + 1
            }
        );
        assert_eq!(t.len(), 2);
        let mut u = BlockTable::new();
        let got = u.allocate_prompt(&mut a, &p, 2, usize::MAX).unwrap();
        assert_eq!(got.num_new, 2);
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn fork_shares_blocks_and_copies_the_partial_one_on_write() {
        let mut a = alloc(8);
        let p = prompt(BS + 2, 0);
        let (mut parent, _) = prefill(&mut a, &p);
        let mut child = parent.fork(&mut a);
        assert_eq!(child.block_ids(), parent.block_ids());
        for b in parent.blocks() {
            assert_eq!(a.ref_count(b), 2);
        }
        // The child writes position BS + 2, inside the shared partial block.
        let copies = child.append_slots(&mut a, p.len(), p.len() + 1).unwrap();
        let shared_partial = BlockId(parent.block_ids()[1]);
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].src, shared_partial);
        assert_eq!(child.block_ids()[1], copies[0].dst.0);
        assert_eq!(
            child.block_ids()[0],
            parent.block_ids()[0],
            "full block shared"
        );
        assert_eq!(a.ref_count(shared_partial), 1);
        // The parent now owns its partial block alone: no copy.
        assert_eq!(
            parent.append_slots(&mut a, p.len(), p.len() + 1),
            Ok(vec![])
        );
        parent.free(&mut a);
        child.free(&mut a);
        assert_eq!(a.num_free_blocks(), 8);
        assert_eq!(a.num_used_blocks(), 0);
        a.check_invariants().unwrap();
    }

    #[test]
    fn fork_at_block_boundary_needs_no_copy() {
        let mut a = alloc(8);
        let p = prompt(BS, 0);
        let (parent, _) = prefill(&mut a, &p);
        let mut child = parent.fork(&mut a);
        assert_eq!(child.append_slots(&mut a, BS, BS + 1), Ok(vec![]));
        assert_eq!(child.len(), 2);
        assert_eq!(a.ref_count(BlockId(parent.block_ids()[0])), 2);
    }

    #[test]
    fn identical_prompts_computed_together_share_cache_entries() {
        let mut a = alloc(8);
        let p = prompt(2 * BS + 1, 0);
        let mut x = BlockTable::new();
        let mut y = BlockTable::new();
        x.allocate_prompt(&mut a, &p, p.len(), usize::MAX).unwrap();
        y.allocate_prompt(&mut a, &p, p.len(), usize::MAX).unwrap();
        x.register_computed(&mut a, &p, p.len());
        y.register_computed(&mut a, &p, p.len());
        for b in y.blocks() {
            assert!(!a.is_cached(b), "duplicate content stays uncached");
        }
        // y's next block chains onto x's cached entries.
        let mut longer = p.clone();
        longer.extend([1, 2, 3, 4]);
        y.append_slots(&mut a, p.len(), longer.len()).unwrap();
        y.register_computed(&mut a, &longer, longer.len());
        x.free(&mut a);
        y.free(&mut a);
        let mut z = BlockTable::new();
        let got = z.allocate_prompt(&mut a, &longer, longer.len(), 1).unwrap();
        assert_eq!(got.num_computed, 3 * BS);
        a.check_invariants().unwrap();
    }
}

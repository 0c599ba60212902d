//! Owns every KV block: the free list, per-block reference counts, and the prefix cache
//! (content hash → block) with its LRU of freed cached blocks.
//!
//! Only [`BlockTable`](super::block_table::BlockTable) moves blocks in and out; everyone
//! else reads counters. A block is in exactly one state: free (ref 0, no cached
//! content), evictable (ref 0, cached content kept for a later prefix hit) or used
//! (ref ≥ 1).

use std::collections::{BTreeMap, HashMap, VecDeque};

use thiserror::Error;

use super::block_table::BlockSize;

/// A physical KV block: an index into the cache's `[num_blocks, …]` dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl BlockId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Stable 64-bit content hash of one full block: hash(parent block's hash, its tokens).
///
/// Only a lookup key: equal hashes are confirmed by comparing tokens and the parent's
/// cache entry, so a collision costs a miss, never wrong KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub u64);

impl BlockHash {
    /// Hashes a full block's tokens after its parent's hash (`None` for the first block).
    pub fn of(parent: Option<BlockHash>, tokens: &[u32]) -> Self {
        // FxHash-style mixing with fixed constants (stable across runs and Rust
        // versions, unlike std's hashers), then a splitmix64 finalizer to spread bits.
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h: u64 = match parent {
            Some(p) => p.0 ^ 0x9e37_79b9_7f4a_7c15,
            None => 0x243f_6a88_85a3_08d3,
        };
        for &t in tokens {
            h = (h.rotate_left(5) ^ u64::from(t)).wrapping_mul(K);
        }
        h ^= tokens.len() as u64;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        BlockHash(h ^ (h >> 31))
    }
}

/// Identity of one prefix-cache entry: the hash to find it and a never-reused id that
/// children name as their parent, so a match proves the whole prefix is equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub hash: BlockHash,
    entry: u64,
}

/// Errors of block allocation. None of them leaves the allocator changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockError {
    #[error("--block-size must be at least 1")]
    ZeroBlockSize,
    #[error("{num_blocks} KV blocks exceed the {max} a block id can address")]
    TooManyBlocks { num_blocks: usize, max: usize },
    #[error("out of KV blocks: {needed} needed, {free} free")]
    OutOfBlocks { needed: usize, free: usize },
    #[error("the prefix-cache hit is stale: a block was evicted since the lookup")]
    StalePrefixHit,
    #[error("the block table already holds blocks")]
    TableNotEmpty,
}

/// Prefix-cache counters in tokens, as vLLM's `prefix_cache_{queries,hits}_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Tokens of the sequences looked up.
    pub queries: u64,
    /// Of those, tokens found already computed.
    pub hits: u64,
}

#[derive(Debug, Clone)]
struct CacheEntry {
    entry: u64,
    parent: Option<u64>,
    tokens: Box<[u32]>,
    block: BlockId,
}

#[derive(Debug, Clone, Default)]
struct BlockState {
    ref_count: u32,
    cached: Option<CacheKey>,
    /// Position in the evictable LRU while ref 0 and cached.
    lru_tick: Option<u64>,
}

/// The pool of KV blocks of one cache.
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: BlockSize,
    enable_prefix_caching: bool,
    blocks: Vec<BlockState>,
    /// Ref-0 blocks without cached content, handed out first.
    free: VecDeque<BlockId>,
    /// Ref-0 blocks with cached content, oldest release first.
    evictable: BTreeMap<u64, BlockId>,
    next_tick: u64,
    cache: HashMap<BlockHash, Vec<CacheEntry>>,
    next_entry: u64,
    num_used: usize,
    stats: PrefixCacheStats,
}

impl BlockAllocator {
    /// `num_blocks` blocks of `block_size` tokens, all free.
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        enable_prefix_caching: bool,
    ) -> Result<Self, BlockError> {
        let block_size = BlockSize::new(block_size).ok_or(BlockError::ZeroBlockSize)?;
        let max = u32::MAX as usize;
        if num_blocks > max {
            return Err(BlockError::TooManyBlocks { num_blocks, max });
        }
        Ok(Self {
            block_size,
            enable_prefix_caching,
            blocks: vec![BlockState::default(); num_blocks],
            free: (0..num_blocks as u32).map(BlockId).collect(),
            evictable: BTreeMap::new(),
            next_tick: 0,
            cache: HashMap::new(),
            next_entry: 0,
            num_used: 0,
            stats: PrefixCacheStats::default(),
        })
    }

    pub fn block_size(&self) -> BlockSize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn prefix_caching_enabled(&self) -> bool {
        self.enable_prefix_caching
    }

    /// Blocks an allocation can get now: free plus evictable cached ones.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Freed blocks still holding cached content.
    pub fn num_evictable_blocks(&self) -> usize {
        self.evictable.len()
    }

    /// Blocks with a reference count of at least one.
    pub fn num_used_blocks(&self) -> usize {
        self.num_used
    }

    /// Share of blocks in use, 0–1 (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            0.0
        } else {
            self.num_used as f64 / self.blocks.len() as f64
        }
    }

    /// References held on `block` (0 for an unknown id).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks.get(block.index()).map_or(0, |b| b.ref_count)
    }

    /// Whether `block` holds content registered in the prefix cache.
    pub fn is_cached(&self, block: BlockId) -> bool {
        self.cached_key(block).is_some()
    }

    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Takes one block, evicting the least recently freed cached block if no plain
    /// free block is left.
    pub(crate) fn allocate(&mut self) -> Result<BlockId, BlockError> {
        let block = match self.free.pop_front() {
            Some(block) => block,
            None => {
                let Some((_, block)) = self.evictable.pop_first() else {
                    return Err(BlockError::OutOfBlocks { needed: 1, free: 0 });
                };
                self.evict(block);
                block
            }
        };
        if let Some(state) = self.blocks.get_mut(block.index()) {
            state.ref_count = 1;
            state.lru_tick = None;
        }
        self.num_used += 1;
        Ok(block)
    }

    /// Adds a reference; a ref-0 cached block leaves the LRU (a prefix hit).
    pub(crate) fn retain(&mut self, block: BlockId) {
        let Some(state) = self.blocks.get_mut(block.index()) else {
            return;
        };
        if state.ref_count == 0 {
            if let Some(tick) = state.lru_tick.take() {
                self.evictable.remove(&tick);
            } else if let Some(pos) = self.free.iter().position(|&b| b == block) {
                // Never reached through BlockTable; kept so misuse cannot corrupt state.
                self.free.remove(pos);
            }
            self.num_used += 1;
        }
        state.ref_count = state.ref_count.saturating_add(1);
    }

    /// Drops a reference; at 0 the block becomes evictable if cached, else free.
    pub(crate) fn release(&mut self, block: BlockId) {
        let Some(state) = self.blocks.get_mut(block.index()) else {
            return;
        };
        if state.ref_count == 0 {
            tracing::error!(block = block.0, "KV block released twice; ignored");
            return;
        }
        state.ref_count -= 1;
        if state.ref_count > 0 {
            return;
        }
        self.num_used = self.num_used.saturating_sub(1);
        if state.cached.is_some() {
            let tick = self.next_tick;
            self.next_tick += 1;
            state.lru_tick = Some(tick);
            self.evictable.insert(tick, block);
        } else {
            self.free.push_back(block);
        }
    }

    /// The cache key `block` is registered under, if any.
    pub(crate) fn cached_key(&self, block: BlockId) -> Option<CacheKey> {
        self.blocks.get(block.index()).and_then(|b| b.cached)
    }

    /// Finds the cached block whose content is `tokens` after the entry `parent`.
    pub(crate) fn lookup(
        &self,
        parent: Option<CacheKey>,
        hash: BlockHash,
        tokens: &[u32],
    ) -> Option<(BlockId, CacheKey)> {
        if !self.enable_prefix_caching {
            return None;
        }
        let parent = parent.map(|p| p.entry);
        self.cache
            .get(&hash)?
            .iter()
            .find(|e| e.parent == parent && *e.tokens == *tokens)
            .map(|e| {
                (
                    e.block,
                    CacheKey {
                        hash,
                        entry: e.entry,
                    },
                )
            })
    }

    /// Registers the computed full `block` holding `tokens` after `parent`. Returns the
    /// key that identifies this content: an existing entry's if the same content is
    /// already cached in another block (this block then stays uncached).
    pub(crate) fn register(
        &mut self,
        block: BlockId,
        parent: Option<CacheKey>,
        hash: BlockHash,
        tokens: &[u32],
    ) -> Option<CacheKey> {
        if !self.enable_prefix_caching || block.index() >= self.blocks.len() {
            return None;
        }
        if let Some((_, key)) = self.lookup(parent, hash, tokens) {
            return Some(key);
        }
        if let Some(key) = self.cached_key(block) {
            return Some(key);
        }
        let entry = self.next_entry;
        self.next_entry += 1;
        self.cache.entry(hash).or_default().push(CacheEntry {
            entry,
            parent: parent.map(|p| p.entry),
            tokens: tokens.into(),
            block,
        });
        let key = CacheKey { hash, entry };
        self.blocks[block.index()].cached = Some(key);
        Some(key)
    }

    /// Counts one prefix-cache lookup that was acted on.
    pub(crate) fn record_prefix_query(&mut self, num_query_tokens: usize, num_hit_tokens: usize) {
        if self.enable_prefix_caching {
            self.stats.queries += num_query_tokens as u64;
            self.stats.hits += num_hit_tokens as u64;
        }
    }

    /// Forgets the cached content of `block` (which the caller took out of the LRU).
    fn evict(&mut self, block: BlockId) {
        let Some(key) = self
            .blocks
            .get_mut(block.index())
            .and_then(|b| b.cached.take())
        else {
            return;
        };
        if let Some(bucket) = self.cache.get_mut(&key.hash) {
            bucket.retain(|e| e.entry != key.entry);
            if bucket.is_empty() {
                self.cache.remove(&key.hash);
            }
        }
    }

    /// Checks that every block is in exactly one state and the cache agrees with the
    /// blocks; the first inconsistency found, for tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        const FREE: u8 = 1;
        const EVICTABLE: u8 = 16;
        let mut listed = vec![0u8; self.blocks.len()];
        let free = self.free.iter().map(|&b| (b, FREE));
        let evictable = self.evictable.values().map(|&b| (b, EVICTABLE));
        for (b, list) in free.chain(evictable) {
            let Some(mark) = listed.get_mut(b.index()) else {
                return Err(format!("block {} out of range", b.0));
            };
            *mark = mark.saturating_add(list);
        }
        let mut used = 0;
        for (i, (state, &mark)) in self.blocks.iter().zip(&listed).enumerate() {
            let ok = match (state.ref_count, mark) {
                (0, FREE) => state.cached.is_none() && state.lru_tick.is_none(),
                (0, EVICTABLE) => {
                    state.cached.is_some()
                        && state.lru_tick.and_then(|t| self.evictable.get(&t))
                            == Some(&BlockId(i as u32))
                }
                (r, 0) if r > 0 => {
                    used += 1;
                    state.lru_tick.is_none()
                }
                _ => false,
            };
            if !ok {
                return Err(format!("block {i} inconsistent: {state:?}, listed {mark}"));
            }
            if let Some(key) = state.cached {
                let owned = self.cache.get(&key.hash).is_some_and(|bucket| {
                    bucket
                        .iter()
                        .any(|e| e.entry == key.entry && e.block.index() == i)
                });
                if !owned {
                    return Err(format!("block {i} cached without a cache entry"));
                }
            }
        }
        if used != self.num_used {
            return Err(format!(
                "{used} blocks used, counter says {}",
                self.num_used
            ));
        }
        let entries: usize = self.cache.values().map(Vec::len).sum();
        let cached = self.blocks.iter().filter(|b| b.cached.is_some()).count();
        if entries != cached {
            return Err(format!(
                "{entries} cache entries for {cached} cached blocks"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(n: usize) -> BlockAllocator {
        BlockAllocator::new(n, 4, true).unwrap()
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(
            BlockAllocator::new(4, 0, true).unwrap_err(),
            BlockError::ZeroBlockSize
        );
        assert!(BlockAllocator::new(0, 16, true).is_ok());
    }

    #[test]
    fn allocate_until_empty_then_error() {
        let mut a = alloc(2);
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert_ne!(x, y);
        assert_eq!(a.num_free_blocks(), 0);
        assert_eq!(a.num_used_blocks(), 2);
        assert!(matches!(a.allocate(), Err(BlockError::OutOfBlocks { .. })));
        a.release(x);
        assert_eq!(a.allocate().unwrap(), x);
        a.check_invariants().unwrap();
    }

    #[test]
    fn refcounts_share_and_release() {
        let mut a = alloc(3);
        let b = a.allocate().unwrap();
        a.retain(b);
        assert_eq!(a.ref_count(b), 2);
        assert_eq!(a.num_used_blocks(), 1);
        a.release(b);
        assert_eq!(a.ref_count(b), 1);
        assert_eq!(a.num_free_blocks(), 2);
        a.release(b);
        assert_eq!(a.ref_count(b), 0);
        assert_eq!(a.num_free_blocks(), 3);
        // A double release and unknown ids are ignored, not a panic.
        a.release(b);
        a.release(BlockId(99));
        a.retain(BlockId(99));
        assert_eq!(a.ref_count(BlockId(99)), 0);
        a.check_invariants().unwrap();
    }

    #[test]
    fn cached_block_is_evictable_and_reused_on_hit() {
        let mut a = alloc(2);
        let b = a.allocate().unwrap();
        let tokens = [1, 2, 3, 4];
        let h = BlockHash::of(None, &tokens);
        let key = a.register(b, None, h, &tokens).unwrap();
        a.release(b);
        assert_eq!(a.num_evictable_blocks(), 1);
        assert_eq!(a.num_free_blocks(), 2);
        assert_eq!(a.lookup(None, h, &tokens), Some((b, key)));
        a.retain(b);
        assert_eq!(a.ref_count(b), 1);
        assert_eq!(a.num_evictable_blocks(), 0);
        a.check_invariants().unwrap();
    }

    #[test]
    fn eviction_takes_plain_free_blocks_first_then_oldest_cached() {
        let mut a = alloc(3);
        let blocks: Vec<_> = (0..3).map(|_| a.allocate().unwrap()).collect();
        let contents = [[1u32, 1, 1, 1], [2, 2, 2, 2]];
        for (b, t) in blocks.iter().zip(&contents) {
            a.register(*b, None, BlockHash::of(None, t), t).unwrap();
        }
        // Release order: block 1 (cached), block 0 (cached), block 2 (plain).
        a.release(blocks[1]);
        a.release(blocks[0]);
        a.release(blocks[2]);
        assert_eq!(a.allocate().unwrap(), blocks[2]);
        assert_eq!(a.allocate().unwrap(), blocks[1]);
        let h1 = BlockHash::of(None, &contents[1]);
        assert_eq!(a.lookup(None, h1, &contents[1]), None, "evicted");
        let h0 = BlockHash::of(None, &contents[0]);
        assert!(a.lookup(None, h0, &contents[0]).is_some(), "kept");
        a.check_invariants().unwrap();
    }

    #[test]
    fn hash_collisions_are_told_apart_by_tokens_and_parent() {
        let mut a = alloc(4);
        let same = BlockHash(42);
        let (x, y) = (a.allocate().unwrap(), a.allocate().unwrap());
        let kx = a.register(x, None, same, &[1, 2, 3, 4]).unwrap();
        let ky = a.register(y, None, same, &[5, 6, 7, 8]).unwrap();
        assert_ne!(kx, ky);
        assert_eq!(a.lookup(None, same, &[1, 2, 3, 4]), Some((x, kx)));
        assert_eq!(a.lookup(None, same, &[5, 6, 7, 8]), Some((y, ky)));
        assert_eq!(a.lookup(None, same, &[9, 9, 9, 9]), None);
        // Same tokens and hash under different parents are different content.
        let z = a.allocate().unwrap();
        let kz = a.register(z, Some(kx), same, &[5, 6, 7, 8]).unwrap();
        assert_eq!(a.lookup(Some(kx), same, &[5, 6, 7, 8]), Some((z, kz)));
        assert_eq!(a.lookup(Some(ky), same, &[5, 6, 7, 8]), None);
        a.check_invariants().unwrap();
    }

    #[test]
    fn duplicate_content_keeps_first_block() {
        let mut a = alloc(2);
        let (x, y) = (a.allocate().unwrap(), a.allocate().unwrap());
        let t = [7, 7, 7, 7];
        let h = BlockHash::of(None, &t);
        let kx = a.register(x, None, h, &t).unwrap();
        assert_eq!(a.register(y, None, h, &t), Some(kx));
        assert!(!a.is_cached(y));
        a.release(y);
        assert_eq!(
            a.num_evictable_blocks(),
            0,
            "uncached block goes to the free list"
        );
        a.check_invariants().unwrap();
    }

    #[test]
    fn disabled_prefix_caching_never_hits_or_counts() {
        let mut a = BlockAllocator::new(2, 4, false).unwrap();
        let b = a.allocate().unwrap();
        let t = [1, 2, 3, 4];
        let h = BlockHash::of(None, &t);
        assert_eq!(a.register(b, None, h, &t), None);
        assert_eq!(a.lookup(None, h, &t), None);
        a.record_prefix_query(10, 0);
        assert_eq!(a.prefix_cache_stats(), PrefixCacheStats::default());
        a.release(b);
        assert_eq!(a.num_evictable_blocks(), 0);
    }

    #[test]
    fn hash_depends_on_parent_and_tokens() {
        let t = [1, 2, 3];
        let root = BlockHash::of(None, &t);
        assert_eq!(root, BlockHash::of(None, &t));
        assert_ne!(root, BlockHash::of(Some(root), &t));
        assert_ne!(root, BlockHash::of(None, &[1, 2, 4]));
        assert_ne!(BlockHash::of(None, &[0]), BlockHash::of(None, &[0, 0]));
    }
}

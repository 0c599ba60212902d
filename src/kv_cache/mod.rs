//! The paged KV cache: the tensors, and (with the engine) block bookkeeping.

pub mod block_allocator;
pub mod block_table;
pub mod cache;
pub mod capacity;

pub use cache::{KvCache, KvCacheShape};

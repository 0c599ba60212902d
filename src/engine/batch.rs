//! The model's input for one step: every scheduled sequence's new tokens, flattened.

use crate::ops::AttentionMetadata;

/// Host-side inputs of one forward pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchInputs {
    /// `[num_tokens]`: the new tokens of all sequences, sequence after sequence.
    pub token_ids: Vec<u32>,
    /// `[num_tokens]`: position of each new token in its sequence.
    pub positions: Vec<u32>,
    /// Where each sequence's tokens live in the batch and in the paged cache.
    pub attention: AttentionMetadata,
    /// Token rows whose logits are wanted (usually the last row of each sequence).
    pub logits_indices: Vec<u32>,
}

/// One sequence's part of a step, as the scheduler decides it.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// All tokens of the sequence so far (prompt and output).
    pub tokens: &'a [u32],
    /// Tokens whose K/V are already in the cache.
    pub num_computed: usize,
    /// Tokens to compute in this step, starting at `num_computed`.
    pub num_new: usize,
    /// Physical blocks covering at least `num_computed + num_new` tokens.
    pub block_table: &'a [u32],
    /// Whether the logits of this chunk's last token are wanted.
    pub wants_logits: bool,
}

impl BatchInputs {
    /// Flattens scheduled chunks into one batch.
    pub fn prepare(chunks: &[SeqChunk<'_>], block_size: usize) -> Self {
        let num_tokens: usize = chunks.iter().map(|c| c.num_new).sum();
        let mut batch = Self {
            token_ids: Vec::with_capacity(num_tokens),
            positions: Vec::with_capacity(num_tokens),
            attention: AttentionMetadata {
                block_size,
                slot_mapping: Vec::with_capacity(num_tokens),
                query_start: Vec::with_capacity(chunks.len() + 1),
                context_lens: Vec::with_capacity(chunks.len()),
                block_tables: Vec::with_capacity(chunks.len()),
            },
            logits_indices: Vec::new(),
        };
        batch.attention.query_start.push(0);
        for chunk in chunks {
            let end = chunk.num_computed + chunk.num_new;
            for pos in chunk.num_computed..end {
                batch.token_ids.push(chunk.tokens[pos]);
                batch.positions.push(pos as u32);
                let block = chunk.block_table[pos / block_size] as usize;
                batch
                    .attention
                    .slot_mapping
                    .push(block * block_size + pos % block_size);
            }
            batch.attention.query_start.push(batch.token_ids.len());
            batch.attention.context_lens.push(end);
            let blocks_used = end.div_ceil(block_size);
            batch
                .attention
                .block_tables
                .push(chunk.block_table[..blocks_used].to_vec());
            if chunk.wants_logits && chunk.num_new > 0 {
                batch.logits_indices.push(batch.token_ids.len() as u32 - 1);
            }
        }
        batch
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Every sequence adds exactly one token (a pure decode step).
    pub fn is_decode_only(&self) -> bool {
        self.num_tokens() == self.attention.num_seqs()
    }
}

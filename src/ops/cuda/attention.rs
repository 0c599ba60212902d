//! Paged attention on the GPU: the step's metadata packed into one i32 upload per step,
//! then kernels/attention.cu's decode kernels (split-K, flash-decoding) for sequences with
//! one new token and its prefill kernel (query tiles, causal) for the others.

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CpuStorage, CudaDevice, CudaStorage, Layout, Result, Shape};

use super::{device_info, dtype_suffix, kernel, part, to_i32, upload_i32, view, with_float_type};
use crate::ops::AttentionMetadata;

/// Query rows per prefill block (`Q_TILE` in kernels/attention.cu).
const Q_TILE: usize = 16;
/// Query heads per KV head that the decode kernel holds (`GROUP_MAX`).
const GROUP_MAX: usize = 8;
/// Threads per attention block (`THREADS`).
const THREADS: u32 = 128;
/// Head sizes the attention kernels are instantiated for.
const HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// Context positions one decode block covers at most, so long contexts split.
const MAX_PARTITION: usize = 8192;
/// Context positions one decode block covers at least, so short ones don't over-split.
const MIN_PARTITION: usize = 64;

/// The one-token sequences of a step: `seqs` rows of `rows`, `ctx` and `tables`.
struct DecodePart {
    seqs: usize,
    rows: Range<usize>,
    ctx: Range<usize>,
    tables: Range<usize>,
    max_blocks: usize,
    max_ctx: usize,
}

/// The sequences with several new tokens, cut into `tiles` query tiles.
struct PrefillPart {
    tiles: usize,
    tile_seq: Range<usize>,
    tile_start: Range<usize>,
    q_starts: Range<usize>,
    q_lens: Range<usize>,
    ctx: Range<usize>,
    tables: Range<usize>,
    max_blocks: usize,
}

/// A step's attention metadata on the device (see `ops::AttentionPlan`).
pub(crate) struct GpuPlan {
    ints: CudaSlice<i32>,
    slots: Range<usize>,
    decode: Option<DecodePart>,
    prefill: Option<PrefillPart>,
}

/// Appends `values` as i32 and returns their range.
fn push_ints(
    host: &mut Vec<i32>,
    at: &mut usize,
    values: impl Iterator<Item = usize>,
    what: &str,
) -> Result<Range<usize>> {
    let before = host.len();
    for v in values {
        host.push(to_i32(v, what)?);
    }
    Ok(part(at, host.len() - before))
}

/// Appends `tables`, each padded to the longest, and returns (range, row length).
fn push_tables(
    host: &mut Vec<i32>,
    at: &mut usize,
    tables: &[&[u32]],
) -> Result<(Range<usize>, usize)> {
    let max_blocks = tables.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    for table in tables {
        for &b in *table {
            host.push(to_i32(b as usize, "paged attention: block")?);
        }
        host.extend(std::iter::repeat_n(0, max_blocks - table.len()));
    }
    Ok((part(at, tables.len() * max_blocks), max_blocks))
}

impl GpuPlan {
    /// Packs and uploads `meta` (already checked against the tensors by `ops::check`).
    pub fn new(meta: &AttentionMetadata, dev: &CudaDevice) -> Result<Self> {
        let mut host: Vec<i32> = Vec::new();
        let mut at = 0;
        let slots = push_ints(
            &mut host,
            &mut at,
            meta.slot_mapping.iter().copied(),
            "reshape_and_cache: slot",
        )?;
        let query_len = |s: usize| meta.query_start[s + 1] - meta.query_start[s];
        let (decode_seqs, prefill_seqs): (Vec<usize>, Vec<usize>) = (0..meta.num_seqs())
            .filter(|&s| query_len(s) > 0)
            .partition(|&s| query_len(s) == 1);

        let decode = if decode_seqs.is_empty() {
            None
        } else {
            let rows = push_ints(
                &mut host,
                &mut at,
                decode_seqs.iter().map(|&s| meta.query_start[s]),
                "token row",
            )?;
            let ctx = push_ints(
                &mut host,
                &mut at,
                decode_seqs.iter().map(|&s| meta.context_lens[s]),
                "context",
            )?;
            let tables: Vec<&[u32]> = decode_seqs
                .iter()
                .map(|&s| &meta.block_tables[s][..])
                .collect();
            let (tables, max_blocks) = push_tables(&mut host, &mut at, &tables)?;
            Some(DecodePart {
                seqs: decode_seqs.len(),
                rows,
                ctx,
                tables,
                max_blocks,
                max_ctx: decode_seqs
                    .iter()
                    .map(|&s| meta.context_lens[s])
                    .max()
                    .unwrap_or(1),
            })
        };

        let prefill = if prefill_seqs.is_empty() {
            None
        } else {
            let (mut tile_seq, mut tile_start) = (Vec::new(), Vec::new());
            for (i, &s) in prefill_seqs.iter().enumerate() {
                for start in (0..query_len(s)).step_by(Q_TILE) {
                    tile_seq.push(i);
                    tile_start.push(start);
                }
            }
            let tiles = tile_seq.len();
            let tile_seq = push_ints(&mut host, &mut at, tile_seq.into_iter(), "tile")?;
            let tile_start = push_ints(&mut host, &mut at, tile_start.into_iter(), "tile start")?;
            let q_starts = push_ints(
                &mut host,
                &mut at,
                prefill_seqs.iter().map(|&s| meta.query_start[s]),
                "token row",
            )?;
            let q_lens = push_ints(
                &mut host,
                &mut at,
                prefill_seqs.iter().map(|&s| query_len(s)),
                "query length",
            )?;
            let ctx = push_ints(
                &mut host,
                &mut at,
                prefill_seqs.iter().map(|&s| meta.context_lens[s]),
                "context",
            )?;
            let tables: Vec<&[u32]> = prefill_seqs
                .iter()
                .map(|&s| &meta.block_tables[s][..])
                .collect();
            let (tables, max_blocks) = push_tables(&mut host, &mut at, &tables)?;
            Some(PrefillPart {
                tiles,
                tile_seq,
                tile_start,
                q_starts,
                q_lens,
                ctx,
                tables,
                max_blocks,
            })
        };
        if host.is_empty() {
            host.push(0); // an empty step still gets a valid (unused) buffer
        }
        Ok(Self {
            ints: upload_i32(dev, &host)?,
            slots,
            decode,
            prefill,
        })
    }

    fn ints(&self, range: &Range<usize>) -> CudaView<'_, i32> {
        self.ints.slice(range.clone())
    }

    pub(super) fn slots(&self) -> CudaView<'_, i32> {
        self.ints(&self.slots)
    }
}

/// Paged causal attention; see `AttentionPlan::attention`.
pub(crate) struct PagedAttention<'a> {
    pub plan: &'a GpuPlan,
    pub scale: f32,
}

/// How a decode launch splits the context: (splits, positions per split).
fn decode_splits(
    seqs: usize,
    kv_heads: usize,
    max_ctx: usize,
    multiprocessors: usize,
) -> (usize, usize) {
    // Enough blocks for two waves over the GPU, but no split shorter than MIN_PARTITION
    // and none longer than MAX_PARTITION.
    let wanted = (2 * multiprocessors).div_ceil(seqs * kv_heads);
    let splits = wanted
        .min(max_ctx.div_ceil(MIN_PARTITION))
        .max(max_ctx.div_ceil(MAX_PARTITION))
        .max(1);
    // Whole warps' worth of positions per split.
    let partition = max_ctx.div_ceil(splits).next_multiple_of(32);
    (max_ctx.div_ceil(partition), partition)
}

impl candle_core::CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("paged_attention: CUDA op called on CPU tensors")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (tokens, heads, dim) = ql.shape().dims3()?;
        let (_, block_size, kv_heads, _) = kl.shape().dims4()?;
        if !HEAD_DIMS.contains(&dim) {
            bail!("paged_attention: head_dim {dim} has no CUDA kernel (built for {HEAD_DIMS:?})")
        }
        if heads / kv_heads > GROUP_MAX {
            bail!("paged_attention: {} query heads per KV head, the CUDA kernel takes at most {GROUP_MAX}", heads / kv_heads)
        }
        let dev = q.device().clone();
        let suffix = dtype_suffix(q.dtype())?;
        let (heads_i, kv_heads_i, block_size_i) = (
            to_i32(heads, "heads")?,
            to_i32(kv_heads, "kv heads")?,
            to_i32(block_size, "block size")?,
        );
        let plan = self.plan;
        with_float_type!(q.dtype(), T => {
            let qv = view::<T>(q, ql, "paged_attention: q")?;
            let kv = view::<T>(k, kl, "paged_attention: k_cache")?;
            let vv = view::<T>(v, vl, "paged_attention: v_cache")?;
            // SAFETY: every token row is written, by the decode or the prefill kernel.
            let mut out = unsafe { dev.alloc::<T>(tokens.max(1) * heads * dim)? };
            let stream = dev.cuda_stream();
            if let Some(d) = &plan.decode {
                let sms = device_info(&dev)?.multiprocessors as usize;
                let (splits, partition) = decode_splits(d.seqs, kv_heads, d.max_ctx, sms);
                let partials = if splits > 1 { d.seqs * heads * splits } else { 1 };
                // SAFETY: the kernel writes every partial it later reads.
                let mut part_out = unsafe { dev.alloc::<f32>(partials * dim)? };
                let mut part_max = unsafe { dev.alloc::<f32>(partials)? };
                let mut part_sum = unsafe { dev.alloc::<f32>(partials)? };
                let func = kernel(&dev, "attention", &format!("paged_decode_{suffix}_d{dim}"))?;
                let (rows, ctx, tables) = (plan.ints(&d.rows), plan.ints(&d.ctx), plan.ints(&d.tables));
                let (max_blocks, partition_i) = (to_i32(d.max_blocks, "blocks")?, to_i32(partition, "partition")?);
                let mut b = stream.launch_builder(&func);
                b.arg(&mut part_out).arg(&mut part_max).arg(&mut part_sum).arg(&mut out);
                b.arg(&qv).arg(&kv).arg(&vv).arg(&rows).arg(&ctx).arg(&tables);
                b.arg(&max_blocks).arg(&heads_i).arg(&kv_heads_i).arg(&block_size_i);
                b.arg(&partition_i).arg(&self.scale);
                let cfg = LaunchConfig {
                    grid_dim: (kv_heads as u32, d.seqs as u32, splits as u32),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: the metadata was checked against these tensors by `ops::check`.
                unsafe { b.launch(cfg) }.w()?;
                if splits > 1 {
                    let func = kernel(&dev, "attention", &format!("paged_decode_reduce_{suffix}"))?;
                    let (splits_i, dim_i) = (to_i32(splits, "splits")?, to_i32(dim, "head_dim")?);
                    let mut b = stream.launch_builder(&func);
                    b.arg(&mut out).arg(&part_out).arg(&part_max).arg(&part_sum).arg(&rows);
                    b.arg(&heads_i).arg(&splits_i).arg(&dim_i);
                    let cfg = LaunchConfig {
                        grid_dim: (heads as u32, d.seqs as u32, 1),
                        block_dim: (dim as u32, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: as above; partials are [seqs, heads, splits(, dim)].
                    unsafe { b.launch(cfg) }.w()?;
                }
            }
            if let Some(p) = &plan.prefill {
                let func = kernel(&dev, "attention", &format!("paged_prefill_{suffix}_d{dim}"))?;
                let max_blocks = to_i32(p.max_blocks, "blocks")?;
                let ints = |r: &Range<usize>| plan.ints(r);
                let (tile_seq, tile_start) = (ints(&p.tile_seq), ints(&p.tile_start));
                let (q_starts, q_lens, ctx, tables) = (ints(&p.q_starts), ints(&p.q_lens), ints(&p.ctx), ints(&p.tables));
                let mut b = stream.launch_builder(&func);
                b.arg(&mut out).arg(&qv).arg(&kv).arg(&vv).arg(&tile_seq).arg(&tile_start);
                b.arg(&q_starts).arg(&q_lens).arg(&ctx).arg(&tables).arg(&max_blocks);
                b.arg(&heads_i).arg(&kv_heads_i).arg(&block_size_i).arg(&self.scale);
                let cfg = LaunchConfig {
                    grid_dim: (p.tiles as u32, heads as u32, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: as above.
                unsafe { b.launch(cfg) }.w()?;
            }
            Ok((T::wrap_cuda_slice(out, dev.clone()), ql.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::decode_splits;

    #[test]
    fn decode_splits_fill_the_gpu_and_bound_each_split() {
        // One sequence, 8 KV heads, 132 SMs: split the 1000-token context for parallelism.
        let (splits, partition) = decode_splits(1, 8, 1000, 132);
        assert!(
            splits > 1 && splits * partition >= 1000 && partition >= 64,
            "{splits} {partition}"
        );
        // 256 sequences fill the GPU without splitting a short context.
        assert_eq!(decode_splits(256, 8, 2000, 132).0, 1);
        // A long context always splits to at most MAX_PARTITION positions.
        let (splits, partition) = decode_splits(256, 8, 100_000, 132);
        assert!(partition <= 8192 && splits * partition >= 100_000);
        // A tiny context never splits below MIN_PARTITION.
        assert_eq!(decode_splits(1, 1, 10, 132), (1, 32));
        assert_eq!(decode_splits(1, 1, 100, 132), (2, 64));
    }
}

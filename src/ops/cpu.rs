//! CPU paged attention and cache writes: the reference for every GPU kernel and the
//! CPU serving path. KV layout: `[num_blocks, block_size, num_kv_heads, head_dim]`.

use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use half::{bf16, f16};
use rayon::prelude::*;

use super::AttentionMetadata;

mod fused;

pub(crate) use fused::{AddRmsNorm, RmsNorm, Rope, SiluMul};

use super::check::MAX_HEAD_DIM;

/// A float element the CPU ops read and write; all math happens in f32.
trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Elem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} must be contiguous"),
    }
}

/// In-place cache write; see [`super::reshape_and_cache`].
pub(crate) struct ReshapeAndCache<'a> {
    pub slot_mapping: &'a [usize],
}

impl candle_core::InplaceOp2 for ReshapeAndCache<'_> {
    fn name(&self) -> &'static str {
        "reshape_and_cache"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cl: &Layout,
        new: &CpuStorage,
        nl: &Layout,
    ) -> Result<()> {
        fn write<T: Copy>(
            cache: &mut [T],
            cl: &Layout,
            new: &[T],
            nl: &Layout,
            slots: &[usize],
        ) -> Result<()> {
            let Some((start, end)) = cl.contiguous_offsets() else {
                bail!("reshape_and_cache: cache must be contiguous")
            };
            let cache = &mut cache[start..end];
            let new = contiguous(new, nl, "reshape_and_cache: new")?;
            let row = new.len() / slots.len().max(1);
            for (t, &slot) in slots.iter().enumerate() {
                cache[slot * row..(slot + 1) * row].copy_from_slice(&new[t * row..(t + 1) * row]);
            }
            Ok(())
        }
        let slots = self.slot_mapping;
        match (cache, new) {
            (CpuStorage::F32(c), CpuStorage::F32(n)) => write(c, cl, n, nl, slots),
            (CpuStorage::BF16(c), CpuStorage::BF16(n)) => write(c, cl, n, nl, slots),
            (CpuStorage::F16(c), CpuStorage::F16(n)) => write(c, cl, n, nl, slots),
            _ => bail!("reshape_and_cache: unsupported dtype"),
        }
    }
}

/// In-place block copies; see [`super::copy_blocks`].
pub(crate) struct CopyBlocks<'a> {
    pub pairs: &'a [(usize, usize)],
}

impl candle_core::InplaceOp1 for CopyBlocks<'_> {
    fn name(&self) -> &'static str {
        "copy_blocks"
    }

    fn cpu_fwd(&self, cache: &mut CpuStorage, layout: &Layout) -> Result<()> {
        fn copy<T: Copy>(cache: &mut [T], layout: &Layout, pairs: &[(usize, usize)]) -> Result<()> {
            let Some((start, end)) = layout.contiguous_offsets() else {
                bail!("copy_blocks: cache must be contiguous")
            };
            let cache = &mut cache[start..end];
            let block = cache.len() / layout.shape().dims()[0].max(1);
            for &(src, dst) in pairs {
                cache.copy_within(src * block..(src + 1) * block, dst * block);
            }
            Ok(())
        }
        match cache {
            CpuStorage::F32(c) => copy(c, layout, self.pairs),
            CpuStorage::BF16(c) => copy(c, layout, self.pairs),
            CpuStorage::F16(c) => copy(c, layout, self.pairs),
            _ => bail!("copy_blocks: unsupported dtype"),
        }
    }
}

/// Paged causal attention; see [`super::paged_attention`].
pub(crate) struct PagedAttention<'a> {
    pub meta: &'a AttentionMetadata,
    pub scale: f32,
}

impl candle_core::CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = ql.shape().clone();
        let storage = match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(self.run(q, ql, k, kl, v, vl)?)
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                CpuStorage::BF16(self.run(q, ql, k, kl, v, vl)?)
            }
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                CpuStorage::F16(self.run(q, ql, k, kl, v, vl)?)
            }
            _ => bail!("paged_attention: q, k_cache and v_cache must share one float dtype"),
        };
        Ok((storage, shape))
    }
}

impl PagedAttention<'_> {
    fn run<T: Elem>(
        &self,
        q: &[T],
        ql: &Layout,
        k: &[T],
        kl: &Layout,
        v: &[T],
        vl: &Layout,
    ) -> Result<Vec<T>> {
        let q = contiguous(q, ql, "paged_attention: q")?;
        let k = contiguous(k, kl, "paged_attention: k_cache")?;
        let v = contiguous(v, vl, "paged_attention: v_cache")?;
        let (num_tokens, num_heads, head_dim) = ql.shape().dims3()?;
        let (_, block_size, kv_heads, _) = kl.shape().dims4()?;
        let group = num_heads / kv_heads;
        let meta = self.meta;
        let mut token_seq = Vec::with_capacity(num_tokens);
        for s in 0..meta.num_seqs() {
            token_seq.extend(std::iter::repeat_n(
                s,
                meta.query_start[s + 1] - meta.query_start[s],
            ));
        }
        let mut out = vec![T::from_f32(0.0); num_tokens * num_heads * head_dim];
        out.par_chunks_mut(head_dim)
            .enumerate()
            .for_each(|(row, out)| {
                let (t, h) = (row / num_heads, row % num_heads);
                let s = token_seq[t];
                let query_len = meta.query_start[s + 1] - meta.query_start[s];
                // Causal: the i-th new token sits at position context_len - query_len + i.
                let position = meta.context_lens[s] - query_len + (t - meta.query_start[s]);
                let table = &meta.block_tables[s];
                let kv_head = h / group;
                let mut qv = [0f32; MAX_HEAD_DIM];
                let mut acc = [0f32; MAX_HEAD_DIM];
                let (qv, acc) = (&mut qv[..head_dim], &mut acc[..head_dim]);
                for (dst, src) in qv.iter_mut().zip(&q[row * head_dim..(row + 1) * head_dim]) {
                    *dst = src.to_f32() * self.scale;
                }
                // Online softmax: running max, running denominator, rescaled accumulator.
                let (mut max, mut denom) = (f32::NEG_INFINITY, 0f32);
                for j in 0..=position {
                    let slot = table[j / block_size] as usize * block_size + j % block_size;
                    let base = (slot * kv_heads + kv_head) * head_dim;
                    let kr = &k[base..base + head_dim];
                    let score: f32 = qv.iter().zip(kr).map(|(a, b)| a * b.to_f32()).sum();
                    if score > max {
                        let correction = (max - score).exp();
                        denom *= correction;
                        acc.iter_mut().for_each(|a| *a *= correction);
                        max = score;
                    }
                    let w = (score - max).exp();
                    denom += w;
                    for (a, b) in acc.iter_mut().zip(&v[base..base + head_dim]) {
                        *a += w * b.to_f32();
                    }
                }
                for (o, a) in out.iter_mut().zip(acc.iter()) {
                    *o = T::from_f32(a / denom);
                }
            });
        Ok(out)
    }
}

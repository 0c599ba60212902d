//! How many bytes the KV cache gets. On CPU: `--kv-cache-memory`. On a GPU, as vLLM sizes
//! it: total memory × `--gpu-memory-utilization`, minus what is in use once the weights
//! are loaded (weights, the CUDA context, other processes), minus the peak activations of a
//! profiling forward pass over `--max-num-batched-tokens` tokens.

use candle_core::Device;

use crate::engine::EngineConfig;
use crate::loader::LoadedModel;

/// The KV cache budget and where it came from, for the start-up log and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvBudget {
    pub bytes: usize,
    /// Only on a GPU: the memory picture it was derived from.
    pub gpu: Option<GpuMemory>,
}

/// A GPU's memory as measured before the KV cache is allocated, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuMemory {
    pub total: usize,
    pub utilization: f64,
    /// In use after loading the weights: weights, the CUDA context, other processes.
    pub in_use: usize,
    /// Peak activations (and workspaces) of the profiling forward pass.
    pub activations: usize,
    pub profiled_tokens: usize,
}

impl GpuMemory {
    /// `total × utilization − in_use − activations`, or why nothing is left.
    pub fn kv_budget(&self) -> anyhow::Result<usize> {
        let allowed = (self.total as f64 * self.utilization) as usize;
        allowed
            .checked_sub(self.in_use + self.activations)
            .filter(|&b| b > 0)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no GPU memory left for the KV cache: --gpu-memory-utilization {} allows {allowed} of {} bytes, \
                     but {} are in use after loading the weights and a forward pass of {} tokens peaks at {} more; \
                     raise --gpu-memory-utilization or lower --max-num-batched-tokens",
                    self.utilization,
                    self.total,
                    self.in_use,
                    self.profiled_tokens,
                    self.activations
                )
            })
    }
}

/// The KV cache budget for `loaded` on its device.
pub fn kv_cache_budget(loaded: &LoadedModel, config: &EngineConfig) -> anyhow::Result<KvBudget> {
    match &loaded.device {
        Device::Cpu => Ok(KvBudget {
            bytes: config.kv_cache_memory,
            gpu: None,
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let gpu = profile_gpu(loaded, dev, config)?;
            let bytes = gpu.kv_budget()?;
            tracing::info!(
                total_bytes = gpu.total,
                gpu_memory_utilization = gpu.utilization,
                in_use_after_weights_bytes = gpu.in_use,
                peak_activation_bytes = gpu.activations,
                profiled_tokens = gpu.profiled_tokens,
                kv_cache_bytes = bytes,
                "GPU memory planned"
            );
            Ok(KvBudget {
                bytes,
                gpu: Some(gpu),
            })
        }
        other => anyhow::bail!("no KV cache sizing for device {other:?}"),
    }
}

/// Measures a forward pass of `max_num_batched_tokens` tokens on a scratch KV cache.
#[cfg(feature = "cuda")]
fn profile_gpu(
    loaded: &LoadedModel,
    dev: &candle_core::CudaDevice,
    config: &EngineConfig,
) -> anyhow::Result<GpuMemory> {
    use candle_core::backend::BackendDevice;

    use crate::ops::cuda;

    let tokens = config
        .max_num_batched_tokens
        .min(loaded.config.max_position_embeddings)
        .max(1);
    let (free, total) = cuda::memory_info(dev)?;
    let watermark = cuda::PoolWatermark::start(dev)?;
    let scratch = super::ModelRunner::new(
        loaded,
        tokens.div_ceil(config.block_size),
        config.block_size,
    )?;
    scratch.prefill_dummy(tokens)?;
    dev.synchronize()?;
    let activations = (watermark.peak_growth()? as usize).saturating_sub(scratch.cache_bytes());
    drop(scratch);
    dev.synchronize()?;
    // Memory the forward pass took outside the pool (cuBLAS workspaces and the like).
    let (free_after, _) = cuda::memory_info(dev)?;
    Ok(GpuMemory {
        total,
        utilization: config.gpu_memory_utilization,
        in_use: total - free,
        activations: activations + free.saturating_sub(free_after),
        profiled_tokens: tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::GpuMemory;

    const GIB: usize = 1 << 30;

    #[test]
    fn the_kv_budget_is_what_utilization_leaves_after_weights_and_activations() {
        // An H200-sized GPU with 8B weights in bf16: 0.9 × 141 GiB − 17 GiB − 3 GiB.
        let gpu = GpuMemory {
            total: 141 * GIB,
            utilization: 0.9,
            in_use: 17 * GIB,
            activations: 3 * GIB,
            profiled_tokens: 2048,
        };
        let expected = (141.0 * 0.9 * GIB as f64) as usize - 20 * GIB;
        assert_eq!(gpu.kv_budget().unwrap(), expected);
    }

    #[test]
    fn a_budget_at_or_below_zero_is_an_error_naming_the_flags() {
        let at_edge = GpuMemory {
            total: 10 * GIB,
            utilization: 0.5,
            in_use: 4 * GIB,
            activations: GIB,
            profiled_tokens: 2048,
        };
        let e = at_edge.kv_budget().unwrap_err().to_string();
        assert!(
            e.contains("--gpu-memory-utilization") && e.contains("--max-num-batched-tokens"),
            "{e}"
        );
        let one_byte = GpuMemory {
            activations: GIB - 1,
            ..at_edge
        };
        assert_eq!(one_byte.kv_budget().unwrap(), 1);
    }
}

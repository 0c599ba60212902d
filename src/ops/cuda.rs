//! surge's CUDA kernels (kernels/*.cu, compiled to PTX by build.rs for each target
//! architecture) as candle custom ops on candle's stream. Shapes are checked by the
//! callers in `ops`; each op here states the layout it launches with. The CPU twins
//! (`ops::cpu`) define what each kernel must compute.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::{self, CUdevice_attribute};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CpuStorage, CudaDevice, CudaStorage, DType, Layout, Result};

include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));

mod attention;
mod fused;

pub(crate) use attention::{GpuPlan, PagedAttention};
pub(crate) use fused::{AddRmsNorm, RmsNorm, Rope, SiluMul};

/// Runs `$body` with `$T` bound to the Rust element type of `$dtype` (f32, f16, bf16).
macro_rules! with_float_type {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::F16 => {
                type $T = half::f16;
                $body
            }
            candle_core::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            other => {
                candle_core::bail!("surge's CUDA kernels take f32, f16 or bf16, not {other:?}")
            }
        }
    };
}
pub(crate) use with_float_type;

/// The suffix of a kernel's entry point for an element type.
fn dtype_suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => bail!("surge's CUDA kernels take f32, f16 or bf16, not {other:?}"),
    })
}

/// What surge needs to know about a GPU, read once per device.
#[derive(Debug, Clone, Copy)]
struct DeviceInfo {
    /// Compute capability as `major * 10 + minor`, e.g. 90.
    compute_cap: u32,
    multiprocessors: u32,
}

fn device_info(dev: &CudaDevice) -> Result<DeviceInfo> {
    static INFO: OnceLock<Mutex<HashMap<usize, DeviceInfo>>> = OnceLock::new();
    let key = dev.cuda_stream().context().ordinal();
    let cache = INFO.get_or_init(Default::default);
    if let Some(info) = cache.lock().expect("device info lock").get(&key) {
        return Ok(*info);
    }
    let ctx = dev.cuda_stream().context().clone();
    let attr = |a| ctx.attribute(a).w();
    let info = DeviceInfo {
        compute_cap: (attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? * 10
            + attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?)
            as u32,
        multiprocessors: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
    };
    cache.lock().expect("device info lock").insert(key, info);
    Ok(info)
}

/// The PTX of `module` built for the newest architecture the device can run.
fn ptx_for(module: &str, compute_cap: u32) -> Result<(u32, &'static str)> {
    KERNELS_PTX
        .iter()
        .filter(|(m, arch, _)| *m == module && *arch <= compute_cap)
        .max_by_key(|(_, arch, _)| *arch)
        .map(|(_, arch, ptx)| (*arch, *ptx))
        .ok_or_else(|| {
            let built: Vec<u32> = KERNELS_PTX.iter().map(|(_, a, _)| *a).collect();
            candle_core::Error::Msg(format!(
                "surge's kernels were built for compute capabilities {built:?}, none of which \
                 runs on this GPU ({compute_cap}); rebuild with SURGE_CUDA_ARCHS={compute_cap}"
            ))
        })
}

/// Loads (once per device) and returns a kernel of kernels/`module`.cu.
fn kernel(dev: &CudaDevice, module: &str, name: &str) -> Result<CudaFunction> {
    let info = device_info(dev)?;
    let (arch, ptx) = ptx_for(module, info.compute_cap)?;
    Ok(dev
        .get_or_load_custom_func(name, &format!("surge_{module}_sm{arch}"), ptx)?
        .into_cuda_function())
}

/// The contiguous elements a layout covers, as a typed view.
fn view<'a, T: CudaDType + DeviceRepr>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what} must be contiguous")
    };
    Ok(T::as_cuda_slice(storage)?.slice(start..end))
}

/// A launch shape for `n` threads' worth of element-wise work in a grid-stride loop.
fn elementwise_config(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS).clamp(1, 1 << 16), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads per block for a row of `width` elements: a multiple of 32, at most 1024.
fn row_threads(width: usize) -> u32 {
    (width.div_ceil(4) as u32)
        .next_multiple_of(32)
        .clamp(32, 1024)
}

fn to_i32(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| candle_core::Error::Msg(format!("{what} {value} exceeds i32")))
}

/// In-place cache write by slot; see `AttentionPlan::write_cache`.
pub(crate) struct ReshapeAndCache<'a> {
    pub plan: &'a GpuPlan,
}

impl candle_core::InplaceOp2 for ReshapeAndCache<'_> {
    fn name(&self) -> &'static str {
        "reshape_and_cache"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        bail!("reshape_and_cache: CUDA op called on CPU tensors")
    }

    fn cuda_fwd(
        &self,
        cache: &mut CudaStorage,
        cl: &Layout,
        new: &CudaStorage,
        nl: &Layout,
    ) -> Result<()> {
        let (tokens, kv_heads, head_dim) = nl.shape().dims3()?;
        if tokens == 0 {
            return Ok(());
        }
        let dev = cache.device().clone();
        let func = kernel(
            &dev,
            "cache",
            &format!("reshape_and_cache_{}", dtype_suffix(new.dtype())?),
        )?;
        let row = to_i32(kv_heads * head_dim, "reshape_and_cache: row")?;
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (row_threads(kv_heads * head_dim), 1, 1),
            shared_mem_bytes: 0,
        };
        let slots = self.plan.slots();
        let Some((start, _)) = cl.contiguous_offsets() else {
            bail!("reshape_and_cache: cache must be contiguous")
        };
        with_float_type!(new.dtype(), T => {
            let src = view::<T>(new, nl, "reshape_and_cache: new")?;
            let mut dst = T::as_cuda_slice_mut(cache)?.slice_mut(start..);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&mut dst).arg(&src).arg(&slots).arg(&row);
            // SAFETY: slots were checked against the cache's size; shapes by the caller.
            unsafe { b.launch(cfg) }.w()?;
        });
        Ok(())
    }
}

/// In-place whole-block copies; see `ops::copy_blocks`.
pub(crate) struct CopyBlocks<'a> {
    pub pairs: &'a [(usize, usize)],
}

impl candle_core::InplaceOp1 for CopyBlocks<'_> {
    fn name(&self) -> &'static str {
        "copy_blocks"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        bail!("copy_blocks: CUDA op called on CPU tensors")
    }

    fn cuda_fwd(&self, cache: &mut CudaStorage, layout: &Layout) -> Result<()> {
        if self.pairs.is_empty() {
            return Ok(());
        }
        let dev = cache.device().clone();
        let func = kernel(
            &dev,
            "cache",
            &format!("copy_blocks_{}", dtype_suffix(cache.dtype())?),
        )?;
        let pairs = self
            .pairs
            .iter()
            .flat_map(|&(s, d)| [s, d])
            .map(|b| to_i32(b, "copy_blocks: block"))
            .collect::<Result<Vec<i32>>>()?;
        let pairs: CudaSlice<i32> = dev.clone_htod(&pairs)?;
        let block_elems = layout.shape().elem_count() / layout.shape().dims()[0].max(1);
        let Some((start, _)) = layout.contiguous_offsets() else {
            bail!("copy_blocks: cache must be contiguous")
        };
        let cfg = LaunchConfig {
            grid_dim: (self.pairs.len() as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        with_float_type!(cache.dtype(), T => {
            let mut c = T::as_cuda_slice_mut(cache)?.slice_mut(start..);
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&func);
            b.arg(&mut c).arg(&pairs).arg(&block_elems);
            // SAFETY: pairs were checked against the number of blocks by the caller.
            unsafe { b.launch(cfg) }.w()?;
        });
        Ok(())
    }
}

/// Free and total memory of the device, in bytes.
pub fn memory_info(dev: &CudaDevice) -> Result<(usize, usize)> {
    dev.cuda_stream().context().mem_get_info().w()
}

/// A host vector uploaded as i32, for kernel metadata.
fn upload_i32(dev: &CudaDevice, values: &[i32]) -> Result<CudaSlice<i32>> {
    dev.clone_htod(values)
}

/// Offsets of the parts of one packed i32 upload.
fn part(start: &mut usize, len: usize) -> Range<usize> {
    let r = *start..*start + len;
    *start += len;
    r
}

/// The high-water mark of the device's default memory pool, where candle's stream-ordered
/// allocations live: [`PoolWatermark::start`] resets it, [`PoolWatermark::peak_growth`]
/// says how far above the starting use it went (freed memory leaves the pool at the next
/// synchronisation, so `memory_info` alone cannot see a peak).
pub struct PoolWatermark {
    pool: sys::CUmemoryPool,
    start: u64,
}

impl PoolWatermark {
    pub fn start(dev: &CudaDevice) -> Result<Self> {
        let ctx = dev.cuda_stream().context().clone();
        ctx.bind_to_thread().w()?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: plain driver calls on a bound context, writing into locals.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
                .result()
                .w()?;
            let mut zero = 0u64;
            sys::cuMemPoolSetAttribute(pool, POOL_HIGH, (&mut zero as *mut u64).cast())
                .result()
                .w()?;
        }
        Ok(Self {
            pool,
            start: pool_attribute(pool, POOL_CURRENT)?,
        })
    }

    pub fn peak_growth(&self) -> Result<u64> {
        Ok(pool_attribute(self.pool, POOL_HIGH)?.saturating_sub(self.start))
    }
}

const POOL_HIGH: sys::CUmemPool_attribute = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
const POOL_CURRENT: sys::CUmemPool_attribute =
    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT;

fn pool_attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut value = 0u64;
    // SAFETY: the attribute is a u64 written into a local.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
        .result()
        .w()?;
    Ok(value)
}

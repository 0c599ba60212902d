//! kernels/fused.cu as candle ops: RMSNorm (+ residual add), RoPE and SiLU·mul.
//! Contracts and CPU twins: `ops::cpu` (fused.rs); shapes checked by `ops`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CpuStorage, CudaStorage, Layout, Result, Shape};

use super::{dtype_suffix, elementwise_config, kernel, row_threads, to_i32, view, with_float_type};

fn per_row(rows: usize, width: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (row_threads(width), 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(crate) struct RmsNorm {
    pub eps: f32,
}

impl candle_core::CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("rms_norm: CUDA op called on CPU tensors")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, hidden) = xl.shape().dims2()?;
        let dev = x.device().clone();
        let func = kernel(
            &dev,
            "fused",
            &format!("rms_norm_{}", dtype_suffix(x.dtype())?),
        )?;
        let hidden_i = to_i32(hidden, "rms_norm: hidden")?;
        with_float_type!(x.dtype(), T => {
            let (xv, wv) = (view::<T>(x, xl, "rms_norm: x")?, view::<T>(w, wl, "rms_norm: weight")?);
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<T>((rows * hidden).max(1))? };
            if rows > 0 {
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                b.arg(&mut out).arg(&xv).arg(&wv).arg(&hidden_i).arg(&self.eps);
                // SAFETY: shapes checked by `ops::rms_norm`.
                unsafe { b.launch(per_row(rows, hidden)) }.w()?;
            }
            Ok((T::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
        })
    }
}

pub(crate) struct AddRmsNorm {
    pub eps: f32,
}

impl candle_core::CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add_rms_norm"
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
        bail!("add_rms_norm: CUDA op called on CPU tensors")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        r: &CudaStorage,
        rl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, hidden) = xl.shape().dims2()?;
        let dev = x.device().clone();
        let func = kernel(
            &dev,
            "fused",
            &format!("add_rms_norm_{}", dtype_suffix(x.dtype())?),
        )?;
        let (rows_i, hidden_i) = (
            to_i32(rows, "add_rms_norm: rows")?,
            to_i32(hidden, "add_rms_norm: hidden")?,
        );
        with_float_type!(x.dtype(), T => {
            let xv = view::<T>(x, xl, "add_rms_norm: x")?;
            let rv = view::<T>(r, rl, "add_rms_norm: residual")?;
            let wv = view::<T>(w, wl, "add_rms_norm: weight")?;
            // SAFETY: every element of both halves is written by the kernel.
            let mut out = unsafe { dev.alloc::<T>((2 * rows * hidden).max(1))? };
            if rows > 0 {
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                b.arg(&mut out).arg(&xv).arg(&rv).arg(&wv).arg(&rows_i).arg(&hidden_i).arg(&self.eps);
                // SAFETY: shapes checked by `ops::add_rms_norm`.
                unsafe { b.launch(per_row(rows, hidden)) }.w()?;
            }
            Ok((T::wrap_cuda_slice(out, dev.clone()), Shape::from((2, rows, hidden))))
        })
    }
}

pub(crate) struct Rope;

impl candle_core::CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        bail!("rope: CUDA op called on CPU tensors")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
        f: &CudaStorage,
        fl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (tokens, heads, dim) = xl.shape().dims3()?;
        let dev = x.device().clone();
        let func = kernel(&dev, "fused", &format!("rope_{}", dtype_suffix(x.dtype())?))?;
        let (heads_i, half_i) = (
            to_i32(heads, "rope: heads")?,
            to_i32(dim / 2, "rope: half")?,
        );
        let positions = view::<u32>(p, pl, "rope: positions")?;
        let inv_freq = view::<f32>(f, fl, "rope: inv_freq")?;
        with_float_type!(x.dtype(), T => {
            let xv = view::<T>(x, xl, "rope: x")?;
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<T>((tokens * heads * dim).max(1))? };
            if tokens > 0 {
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                b.arg(&mut out).arg(&xv).arg(&positions).arg(&inv_freq).arg(&heads_i).arg(&half_i);
                // SAFETY: shapes checked by `ops::rope`.
                unsafe { b.launch(per_row(tokens, heads * dim / 2)) }.w()?;
            }
            Ok((T::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
        })
    }
}

pub(crate) struct SiluMul;

impl candle_core::CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu_mul"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("silu_mul: CUDA op called on CPU tensors")
    }

    fn cuda_fwd(
        &self,
        g: &CudaStorage,
        gl: &Layout,
        u: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let n = gl.shape().elem_count();
        let dev = g.device().clone();
        let func = kernel(
            &dev,
            "fused",
            &format!("silu_mul_{}", dtype_suffix(g.dtype())?),
        )?;
        with_float_type!(g.dtype(), T => {
            let (gv, uv) = (view::<T>(g, gl, "silu_mul: gate")?, view::<T>(u, ul, "silu_mul: up")?);
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<T>(n.max(1))? };
            if n > 0 {
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                b.arg(&mut out).arg(&gv).arg(&uv).arg(&n);
                // SAFETY: both inputs hold n elements (`ops::silu_mul` checked the shapes).
                unsafe { b.launch(elementwise_config(n)) }.w()?;
            }
            Ok((T::wrap_cuda_slice(out, dev.clone()), gl.shape().clone()))
        })
    }
}

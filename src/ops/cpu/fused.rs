//! CPU twins of kernels/fused.cu: RMSNorm (+ residual add), RoPE and SiLU·mul, with the
//! kernels' contracts (shapes checked in `ops::check`, f32 math, one rounding per output).

use candle_core::{bail, CpuStorage, Layout, Result, Shape};
use rayon::prelude::*;

use super::{contiguous, Elem};

/// `x` `[rows, hidden]`, `weight` `[hidden]` → `x / sqrt(mean(x²) + eps) · weight`.
pub(crate) struct RmsNorm {
    pub eps: f32,
}

fn normalize_row<T: Elem>(out: &mut [T], x: &[T], weight: &[T], eps: f32) {
    let ss: f32 = x.iter().map(|v| v.to_f32() * v.to_f32()).sum();
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = T::from_f32(v.to_f32() * inv * w.to_f32());
    }
}

impl candle_core::CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(x: &[T], xl: &Layout, w: &[T], wl: &Layout, eps: f32) -> Result<Vec<T>> {
            let x = contiguous(x, xl, "rms_norm: x")?;
            let w = contiguous(w, wl, "rms_norm: weight")?;
            let mut out = vec![T::from_f32(0.0); x.len()];
            out.par_chunks_mut(w.len())
                .zip(x.par_chunks(w.len()))
                .for_each(|(o, x)| normalize_row(o, x, w, eps));
            Ok(out)
        }
        let storage = match (x, w) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(run(x, xl, w, wl, self.eps)?)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => {
                CpuStorage::BF16(run(x, xl, w, wl, self.eps)?)
            }
            (CpuStorage::F16(x), CpuStorage::F16(w)) => {
                CpuStorage::F16(run(x, xl, w, wl, self.eps)?)
            }
            _ => bail!("rms_norm: x and weight must share one float dtype"),
        };
        Ok((storage, xl.shape().clone()))
    }
}

/// `x`, `residual` `[rows, hidden]`, `weight` `[hidden]` → `[2, rows, hidden]`:
/// `[0]` = rms_norm(sum), `[1]` = sum = x + residual, rounded to the dtype before the norm.
pub(crate) struct AddRmsNorm {
    pub eps: f32,
}

impl candle_core::CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add_rms_norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        r: &CpuStorage,
        rl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(
            x: (&[T], &Layout),
            r: (&[T], &Layout),
            w: (&[T], &Layout),
            eps: f32,
        ) -> Result<Vec<T>> {
            let x = contiguous(x.0, x.1, "add_rms_norm: x")?;
            let r = contiguous(r.0, r.1, "add_rms_norm: residual")?;
            let w = contiguous(w.0, w.1, "add_rms_norm: weight")?;
            let mut out = vec![T::from_f32(0.0); 2 * x.len()];
            let (normed, sum) = out.split_at_mut(x.len());
            normed
                .par_chunks_mut(w.len())
                .zip(sum.par_chunks_mut(w.len()))
                .zip(x.par_chunks(w.len()).zip(r.par_chunks(w.len())))
                .for_each(|((n, s), (x, r))| {
                    for ((s, x), r) in s.iter_mut().zip(x).zip(r) {
                        *s = T::from_f32(x.to_f32() + r.to_f32());
                    }
                    normalize_row(n, s, w, eps);
                });
            Ok(out)
        }
        let eps = self.eps;
        let storage = match (x, r, w) {
            (CpuStorage::F32(x), CpuStorage::F32(r), CpuStorage::F32(w)) => {
                CpuStorage::F32(run((x, xl), (r, rl), (w, wl), eps)?)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(r), CpuStorage::BF16(w)) => {
                CpuStorage::BF16(run((x, xl), (r, rl), (w, wl), eps)?)
            }
            (CpuStorage::F16(x), CpuStorage::F16(r), CpuStorage::F16(w)) => {
                CpuStorage::F16(run((x, xl), (r, rl), (w, wl), eps)?)
            }
            _ => bail!("add_rms_norm: x, residual and weight must share one float dtype"),
        };
        let (rows, hidden) = xl.shape().dims2()?;
        Ok((storage, Shape::from((2, rows, hidden))))
    }
}

/// Rotate-half RoPE: `x` `[tokens, heads, 2·half]`, `positions` u32 `[tokens]`,
/// `inv_freq` f32 `[half]`; pair `i` of every head turns by `position · inv_freq[i]`.
pub(crate) struct Rope;

impl candle_core::CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
        f: &CpuStorage,
        fl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(
            x: &[T],
            xl: &Layout,
            positions: &[u32],
            inv_freq: &[f32],
        ) -> Result<Vec<T>> {
            let x = contiguous(x, xl, "rope: x")?;
            let (_, heads, dim) = xl.shape().dims3()?;
            let half = dim / 2;
            let mut out = vec![T::from_f32(0.0); x.len()];
            out.par_chunks_mut(heads * dim)
                .zip(x.par_chunks(heads * dim))
                .zip(positions.par_iter())
                .for_each(|((out, x), &pos)| {
                    let pos = pos as f32;
                    for (i, &freq) in inv_freq.iter().enumerate() {
                        let (sin, cos) = (pos * freq).sin_cos();
                        for h in 0..heads {
                            let base = h * dim;
                            let (a, b) = (x[base + i].to_f32(), x[base + i + half].to_f32());
                            out[base + i] = T::from_f32(a * cos - b * sin);
                            out[base + i + half] = T::from_f32(b * cos + a * sin);
                        }
                    }
                });
            Ok(out)
        }
        let (CpuStorage::U32(p), CpuStorage::F32(f)) = (p, f) else {
            bail!("rope: positions must be u32 and inv_freq f32")
        };
        let p = contiguous(p, pl, "rope: positions")?;
        let f = contiguous(f, fl, "rope: inv_freq")?;
        let storage = match x {
            CpuStorage::F32(x) => CpuStorage::F32(run(x, xl, p, f)?),
            CpuStorage::BF16(x) => CpuStorage::BF16(run(x, xl, p, f)?),
            CpuStorage::F16(x) => CpuStorage::F16(run(x, xl, p, f)?),
            _ => bail!("rope: x must be f32, bf16 or f16"),
        };
        Ok((storage, xl.shape().clone()))
    }
}

/// `silu(gate) · up`, element-wise; `silu(g) = g / (1 + e^-g)`.
pub(crate) struct SiluMul;

impl candle_core::CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu_mul"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Elem>(g: &[T], gl: &Layout, u: &[T], ul: &Layout) -> Result<Vec<T>> {
            let g = contiguous(g, gl, "silu_mul: gate")?;
            let u = contiguous(u, ul, "silu_mul: up")?;
            let mut out = vec![T::from_f32(0.0); g.len()];
            out.par_chunks_mut(4096)
                .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
                .for_each(|(o, (g, u))| {
                    for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                        let g = g.to_f32();
                        *o = T::from_f32(g / (1.0 + (-g).exp()) * u.to_f32());
                    }
                });
            Ok(out)
        }
        let storage = match (g, u) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => CpuStorage::F32(run(g, gl, u, ul)?),
            (CpuStorage::BF16(g), CpuStorage::BF16(u)) => CpuStorage::BF16(run(g, gl, u, ul)?),
            (CpuStorage::F16(g), CpuStorage::F16(u)) => CpuStorage::F16(run(g, gl, u, ul)?),
            _ => bail!("silu_mul: gate and up must share one float dtype"),
        };
        Ok((storage, gl.shape().clone()))
    }
}

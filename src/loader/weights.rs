//! Weight storage behind one interface: memory-mapped safetensors (one file or
//! sharded), GGUF (quantized tensors stay quantized) and random (`--load-format
//! dummy`). Tensors are looked up by their Hugging Face names whatever the format.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::LoadError;
use crate::model::layers::Linear;

/// `--dtype`: the activation and dense-weight dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DTypeChoice {
    /// f32 on CPU (bf16 is several times slower there), bf16 on GPU.
    #[default]
    Auto,
    Bf16,
    F16,
    F32,
}

impl DTypeChoice {
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => DType::BF16,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
            Self::F32 => DType::F32,
        }
    }
}

/// The weights of one model, on one device, in one activation dtype.
pub struct Weights {
    store: Store,
    dtype: DType,
    device: Device,
}

enum Store {
    Safetensors(Vec<SafetensorsFile>),
    Gguf(GgufFile),
    /// Every tensor asked for is made up, in the shape asked for.
    Random,
}

struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    tensors: HashMap<String, TensorInfo>,
}

struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
    /// Heads of Q and K: llama.cpp permutes their rows for interleaved RoPE.
    num_heads: usize,
    num_kv_heads: usize,
}

impl Weights {
    /// Memory-maps safetensors files; their headers are validated here, tensors read lazily.
    pub fn from_safetensors(
        files: &[PathBuf],
        dtype: DType,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let files = files
            .iter()
            .map(|p| SafetensorsFile::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            store: Store::Safetensors(files),
            dtype,
            device: device.clone(),
        })
    }

    /// Wraps a parsed GGUF file. GGUF models compute in f32.
    pub fn from_gguf(
        path: &Path,
        content: gguf_file::Content,
        num_heads: usize,
        num_kv_heads: usize,
        device: &Device,
    ) -> Self {
        let file = GgufFile {
            path: path.to_path_buf(),
            content,
            num_heads,
            num_kv_heads,
        };
        Self {
            store: Store::Gguf(file),
            dtype: DType::F32,
            device: device.clone(),
        }
    }

    /// Random weights (`--load-format dummy`), each made on `device` in `dtype` when
    /// the model asks for it.
    pub fn random(dtype: DType, device: &Device) -> Self {
        Self {
            store: Store::Random,
            dtype,
            device: device.clone(),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self.store, Store::Gguf(_))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors(files) => files.iter().any(|f| f.tensors.contains_key(name)),
            Store::Gguf(g) => {
                gguf_name(name).is_some_and(|n| g.content.tensor_infos.contains_key(&n))
            }
            Store::Random => true,
        }
    }

    /// A dense tensor of `shape`, converted to the activation dtype.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let t = match &self.store {
            Store::Safetensors(files) => {
                let file = files
                    .iter()
                    .find(|f| f.tensors.contains_key(name))
                    .ok_or_else(|| self.missing(name))?;
                file.load(name, shape, &self.device)?
            }
            Store::Gguf(g) => g
                .load(name, shape, &self.device)?
                .dequantize(&self.device)?,
            Store::Random => super::dummy::tensor(name, shape, self.dtype, &self.device)?,
        };
        Ok(t.to_dtype(self.dtype)?)
    }

    /// A `[out, in]` projection: dense for safetensors, quantized for GGUF.
    pub fn linear(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear, LoadError> {
        match &self.store {
            Store::Safetensors(_) | Store::Random => {
                Ok(Linear::dense(self.tensor(name, &[out_dim, in_dim])?))
            }
            Store::Gguf(g) => {
                let q = g.load(name, &[out_dim, in_dim], &self.device)?;
                Ok(Linear::quantized(QMatMul::from_qtensor(q)?))
            }
        }
    }

    fn missing(&self, name: &str) -> LoadError {
        let file = match &self.store {
            Store::Safetensors(files) if files.len() == 1 => files[0].path.clone(),
            Store::Safetensors(files) => files
                .first()
                .and_then(|f| f.path.parent())
                .map_or_else(PathBuf::new, Path::to_path_buf),
            Store::Gguf(g) => g.path.clone(),
            Store::Random => PathBuf::from("<random weights>"),
        };
        LoadError::MissingTensor {
            file,
            name: name.to_string(),
        }
    }
}

impl SafetensorsFile {
    fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: the file is opened read-only and surge never writes to model files;
        // a model file truncated by another process while serving is outside the contract.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| LoadError::Corrupt {
                file: path.to_path_buf(),
                format: "safetensors",
                message: e.to_string(),
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header_len,
            tensors,
        })
    }

    fn load(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor, LoadError> {
        let info = &self.tensors[name];
        if info.shape != shape {
            return Err(LoadError::TensorShape {
                file: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let dtype = match info.dtype {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => {
                return Err(LoadError::TensorDType {
                    file: self.path.clone(),
                    name: name.to_string(),
                    expected: "F32, F16 or BF16".to_string(),
                    found: format!("{other:?}"),
                })
            }
        };
        // read_metadata validated that every tensor's offsets lie inside the buffer.
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        let bytes = &self.mmap[start..end];
        Ok(Tensor::from_raw_buffer(bytes, dtype, shape, device)?)
    }
}

impl GgufFile {
    fn load(&self, hf_name: &str, shape: &[usize], device: &Device) -> Result<QTensor, LoadError> {
        let missing = || LoadError::MissingTensor {
            file: self.path.clone(),
            name: hf_name.to_string(),
        };
        let name = gguf_name(hf_name).ok_or_else(missing)?;
        let info = self.content.tensor_infos.get(&name).ok_or_else(missing)?;
        if info.shape.dims() != shape {
            return Err(LoadError::TensorShape {
                file: self.path.clone(),
                name: name.clone(),
                expected: shape.to_vec(),
                found: info.shape.dims().to_vec(),
            });
        }
        let mut reader = File::open(&self.path).map_err(|e| LoadError::io(&self.path, e))?;
        let tensor = info
            .read(&mut reader, self.content.tensor_data_offset, device)
            .map_err(|e| LoadError::Corrupt {
                file: self.path.clone(),
                format: "GGUF",
                message: format!("tensor `{name}`: {e}"),
            })?;
        if hf_name.ends_with("self_attn.q_proj.weight") {
            return Ok(unpermute_rows(tensor, self.num_heads)?);
        }
        if hf_name.ends_with("self_attn.k_proj.weight") {
            return Ok(unpermute_rows(tensor, self.num_kv_heads)?);
        }
        Ok(tensor)
    }
}

/// The GGUF name of a Hugging Face Llama tensor name.
fn gguf_name(hf_name: &str) -> Option<String> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let part = match rest {
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.weight"))
}

/// Undoes llama.cpp's row permutation of Q/K (made for interleaved RoPE) so that one
/// RoPE layout (HF's rotate-half) serves every format. Rows are whole quantized blocks,
/// so the permutation moves bytes without dequantizing.
fn unpermute_rows(tensor: QTensor, num_heads: usize) -> candle_core::Result<QTensor> {
    let (rows, cols) = tensor.shape().dims2()?;
    let dtype = tensor.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let head_dim = rows / num_heads;
    let half = head_dim / 2;
    let data = tensor.data()?;
    let mut out = vec![0u8; data.len()];
    // llama.cpp row (h, i, j) with i < half, j < 2 came from HF row (h, j, i).
    for h in 0..num_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + i * 2 + j;
                let dst = h * head_dim + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let device = tensor.device();
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &device, dtype)?;
    QTensor::new(storage, (rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hf_names_to_gguf() {
        assert_eq!(
            gguf_name("model.layers.3.mlp.up_proj.weight").unwrap(),
            "blk.3.ffn_up.weight"
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").unwrap(),
            "token_embd.weight"
        );
        assert!(gguf_name("model.layers.3.unknown.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() -> candle_core::Result<()> {
        // Two heads of head_dim 4, each row filled with its HF row index.
        let (heads, head_dim, cols) = (2, 4, 32);
        let hf: Vec<f32> = (0..heads * head_dim)
            .flat_map(|r| vec![r as f32; cols])
            .collect();
        // llama.cpp: reshape(n, 2, half, in).swapaxes(1, 2)
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..head_dim / 2 {
                    let src = h * head_dim + j * (head_dim / 2) + i;
                    let dst = h * head_dim + i * 2 + j;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let t = Tensor::from_vec(permuted, (heads * head_dim, cols), &Device::Cpu)?;
        let q = QTensor::quantize(&t, candle_core::quantized::GgmlDType::Q8_0)?;
        let back = unpermute_rows(q, heads)?.dequantize(&Device::Cpu)?;
        let rows: Vec<f32> = back
            .get_on_dim(1, 0)?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.round())
            .collect();
        assert_eq!(rows, (0..8).map(|r| r as f32).collect::<Vec<_>>());
        Ok(())
    }
}

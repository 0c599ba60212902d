//! Llama 3.x: GQA attention over the paged KV cache, RoPE (with llama3 scaling),
//! RMSNorm, SwiGLU and optionally tied embeddings.

use candle_core::{DType, Device, Result, Tensor};

use super::layers::{Linear, RmsNorm};
use super::rope::Rope;
use super::CausalLm;
use crate::engine::batch::BatchInputs;
use crate::kv_cache::KvCache;
use crate::loader::{LlamaConfig, LoadError, Weights};
use crate::ops::{self, AttentionPlan};

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    attention: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// A Llama 3.x model on one device.
pub struct Llama {
    config: LlamaConfig,
    /// `[vocab_size, hidden_size]`.
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
}

impl Llama {
    /// Builds the model from weights named as in Hugging Face's `LlamaForCausalLM`.
    pub fn load(config: &LlamaConfig, weights: &Weights) -> std::result::Result<Self, LoadError> {
        let c = config;
        let (hidden, head_dim) = (c.hidden_size, c.head_dim);
        let q_dim = c.num_attention_heads * head_dim;
        let kv_dim = c.num_key_value_heads * head_dim;
        let norm = |name: &str| -> std::result::Result<RmsNorm, LoadError> {
            Ok(RmsNorm::new(
                weights.tensor(name, &[hidden])?,
                c.rms_norm_eps,
            ))
        };
        let embed_tokens = weights.tensor("model.embed_tokens.weight", &[c.vocab_size, hidden])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |name: &str, out: usize, inp: usize| {
                weights.linear(&format!("{p}.{name}.weight"), out, inp)
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
                attention: Attention {
                    q_proj: lin("self_attn.q_proj", q_dim, hidden)?,
                    k_proj: lin("self_attn.k_proj", kv_dim, hidden)?,
                    v_proj: lin("self_attn.v_proj", kv_dim, hidden)?,
                    o_proj: lin("self_attn.o_proj", hidden, q_dim)?,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate_proj: lin("mlp.gate_proj", c.intermediate_size, hidden)?,
                    up_proj: lin("mlp.up_proj", c.intermediate_size, hidden)?,
                    down_proj: lin("mlp.down_proj", hidden, c.intermediate_size)?,
                },
            });
        }
        // Tied models have no lm_head; a GGUF file may also omit `output`, and then
        // llama.cpp reuses the (still quantized) embedding.
        let tied =
            c.tie_word_embeddings || (weights.is_gguf() && !weights.contains("lm_head.weight"));
        let lm_head = match (tied, weights.is_gguf()) {
            (false, _) => weights.linear("lm_head.weight", c.vocab_size, hidden)?,
            (true, true) => weights.linear("model.embed_tokens.weight", c.vocab_size, hidden)?,
            (true, false) => Linear::dense(embed_tokens.clone()),
        };
        let device = weights.device().clone();
        Ok(Self {
            config: c.clone(),
            embed_tokens,
            layers,
            norm: norm("model.norm.weight")?,
            lm_head,
            rope: Rope::new(head_dim, c.rope_theta, c.rope_scaling, &device)?,
            device,
        })
    }
}

impl Attention {
    /// `x`: `[num_tokens, hidden]` → `[num_tokens, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        (rope, positions): (&Rope, &Tensor),
        (k_cache, v_cache): (&Tensor, &Tensor),
        plan: &AttentionPlan,
        c: &LlamaConfig,
    ) -> Result<Tensor> {
        let num_tokens = x.dim(0)?;
        let heads = |t: Tensor, n: usize| t.reshape((num_tokens, n, c.head_dim));
        let q = heads(self.q_proj.forward(x)?, c.num_attention_heads)?;
        let k = heads(self.k_proj.forward(x)?, c.num_key_value_heads)?;
        let v = heads(self.v_proj.forward(x)?, c.num_key_value_heads)?;
        let q = rope.apply(&q, positions)?;
        let k = rope.apply(&k, positions)?;
        plan.write_cache(k_cache, &k)?;
        plan.write_cache(v_cache, &v)?;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let attn = plan.attention(&q, k_cache, v_cache, scale)?;
        self.o_proj
            .forward(&attn.reshape((num_tokens, c.num_attention_heads * c.head_dim))?)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        self.down_proj
            .forward(&ops::silu_mul(&gate, &self.up_proj.forward(x)?)?)
    }
}

impl CausalLm for Llama {
    fn forward(&self, batch: &BatchInputs, cache: &KvCache) -> Result<Tensor> {
        let num_tokens = batch.num_tokens();
        let ids = Tensor::from_slice(&batch.token_ids, num_tokens, &self.device)?;
        let positions = Tensor::from_slice(&batch.positions, num_tokens, &self.device)?;
        let plan = AttentionPlan::new(&batch.attention, &self.device)?;
        // The residual stream `x`; each norm after the first also adds the previous
        // sublayer's output to it (fused residual add + RMSNorm).
        let mut x = self.embed_tokens.index_select(&ids, 0)?;
        let mut h = match self.layers.first() {
            Some(first) => first.input_layernorm.forward(&x)?,
            None => x.clone(),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = layer.attention.forward(
                &h,
                (&self.rope, &positions),
                cache.layer(i),
                &plan,
                &self.config,
            )?;
            let (normed, sum) = layer.post_attention_layernorm.forward_add(&attn, &x)?;
            let mlp = layer.mlp.forward(&normed)?;
            match self.layers.get(i + 1) {
                Some(next) => (h, x) = next.input_layernorm.forward_add(&mlp, &sum)?,
                None => x = (sum + mlp)?,
            }
        }
        let rows = Tensor::from_slice(
            &batch.logits_indices,
            batch.logits_indices.len(),
            &self.device,
        )?;
        let x = self.norm.forward(&x.index_select(&rows, 0)?)?;
        self.lm_head.forward(&x)?.to_dtype(DType::F32)?.contiguous()
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }
}

//! surge's logits against candle-transformers' independent Llama implementations.

mod support;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama as reference, quantized_llama};
use rand::{Rng, SeedableRng};
use surge::engine::batch::{BatchInputs, SeqChunk};
use surge::loader::{self, DTypeChoice, LoadedModel, ModelSource};
use surge::runner::ModelRunner;

const BLOCK_SIZE: usize = 16;

/// Drives surge's model over several sequences at once, each in its own block range.
struct SurgeRun {
    runner: ModelRunner,
    seqs: Vec<(Vec<u32>, usize, Vec<u32>)>, // tokens, computed, block table
}

impl SurgeRun {
    fn new(loaded: &LoadedModel, prompts: &[Vec<u32>], max_len: usize) -> Self {
        let per_seq = max_len.div_ceil(BLOCK_SIZE) as u32;
        let runner =
            ModelRunner::new(loaded, per_seq as usize * prompts.len(), BLOCK_SIZE).unwrap();
        let seqs = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    p.clone(),
                    0,
                    (i as u32 * per_seq..(i as u32 + 1) * per_seq).collect(),
                )
            })
            .collect();
        Self { runner, seqs }
    }

    /// Runs every sequence's uncomputed tokens in one batch; last-token logits per sequence.
    fn step(&mut self) -> Vec<Vec<f32>> {
        let chunks: Vec<SeqChunk<'_>> = self
            .seqs
            .iter()
            .map(|(tokens, computed, table)| SeqChunk {
                tokens,
                num_computed: *computed,
                num_new: tokens.len() - computed,
                block_table: table,
                wants_logits: true,
            })
            .collect();
        let batch = BatchInputs::prepare(&chunks, BLOCK_SIZE);
        let logits = self.runner.execute(&batch).unwrap();
        for s in &mut self.seqs {
            s.1 = s.0.len();
        }
        (0..self.seqs.len())
            .map(|i| logits.i(i).unwrap().to_vec1().unwrap())
            .collect()
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefill prompts (all in one batch, or each alone), then decode a few greedy steps,
/// comparing every step's logits with candle-transformers' Llama fed the same tokens.
///
/// Alone, surge's matmuls have the reference's shapes; batched, their row counts differ
/// and the BLAS kernels sum in another order, which on a 30-layer real model moves
/// logits by ~1e-4 without any difference in the model.
fn compare_with_reference(
    dir: &std::path::Path,
    prompts: Vec<Vec<u32>>,
    decode_steps: usize,
    batched: bool,
) {
    if !batched {
        for prompt in prompts {
            compare_with_reference(dir, vec![prompt], decode_steps, true);
        }
        return;
    }
    let loaded = loader::load(
        &ModelSource::Local(dir.to_path_buf()),
        DTypeChoice::F32,
        &Device::Cpu,
    )
    .unwrap();
    let cfg: reference::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = cfg.into_config(false);
    // SAFETY: test-owned files that nothing modifies while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = reference::Llama::load(vb, &cfg).unwrap();
    let max_len = prompts.iter().map(Vec::len).max().unwrap() + decode_steps + 1;
    let mut surge = SurgeRun::new(&loaded, &prompts, max_len);
    let mut caches: Vec<_> = prompts
        .iter()
        .map(|_| reference::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap())
        .collect();
    let mut worst = 0f32;
    for step in 0..=decode_steps {
        let got = surge.step();
        for (i, cache) in caches.iter_mut().enumerate() {
            let tokens = &surge.seqs[i].0;
            let (start, input) = if step == 0 {
                (0, tokens.as_slice())
            } else {
                (tokens.len() - 1, &tokens[tokens.len() - 1..])
            };
            let x = Tensor::new(input, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let want: Vec<f32> = model
                .forward(&x, start, cache)
                .unwrap()
                .i(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = max_diff(&got[i], &want);
            worst = worst.max(diff);
            assert!(
                diff <= 1e-4,
                "prompt {i} (len {}), step {step}: max abs diff {diff}",
                prompts[i].len()
            );
            surge.seqs[i].0.push(argmax(&want));
        }
    }
    eprintln!("worst max abs diff over all prompts and steps: {worst:e}");
}

#[test]
fn tiny_llama31_matches_reference_including_long_positions() {
    let dir = support::tiny_llama();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let prompts: Vec<Vec<u32>> = [1usize, 5, 40, 2100]
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(0..128_000u32)).collect())
        .collect();
    compare_with_reference(&dir, prompts, 3, true);
}

#[test]
fn smollm2_hf_matches_reference() {
    let dir = support::smollm2_hf();
    let loaded = loader::load(
        &ModelSource::Local(dir.clone()),
        DTypeChoice::F32,
        &Device::Cpu,
    )
    .unwrap();
    let texts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "Hello",
        "fn main() {\n    println!(\"{}\", (1..=10).map(|x| x * x).sum::<u32>());\n}\n// The output of this program is",
    ];
    let prompts = texts
        .iter()
        .map(|t| loaded.tokenizer.encode(t, false).unwrap())
        .collect();
    compare_with_reference(&dir, prompts, 4, false);
}

#[test]
fn smollm2_gguf_greedy_matches_quantized_llama() {
    let path = support::smollm2_gguf();
    let loaded = loader::load(
        &ModelSource::Gguf(path.clone()),
        DTypeChoice::Auto,
        &Device::Cpu,
    )
    .unwrap();
    let prompts: Vec<Vec<u32>> = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "The three primary colors are",
    ]
    .iter()
    .map(|t| loaded.tokenizer.encode(t, false).unwrap())
    .collect();
    let steps = 12;
    let mut wants = Vec::new();
    for prompt in &prompts {
        let mut file = std::fs::File::open(&path).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        let mut model =
            quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
        let (mut want, mut input, mut pos) = (Vec::new(), prompt.clone(), 0);
        for _ in 0..steps {
            let x = Tensor::new(input.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits: Vec<f32> = model
                .forward(&x, pos)
                .unwrap()
                .i(0)
                .unwrap()
                .to_vec1()
                .unwrap();
            pos += input.len();
            let t = argmax(&logits);
            want.push(t);
            input = vec![t];
        }
        wants.push(want);
    }
    let mut surge = SurgeRun::new(&loaded, &prompts, 128);
    let mut got = vec![Vec::new(); prompts.len()];
    for _ in 0..steps {
        let logits = surge.step();
        for (i, l) in logits.iter().enumerate() {
            let t = argmax(l);
            got[i].push(t);
            surge.seqs[i].0.push(t);
        }
    }
    assert_eq!(got, wants);
}

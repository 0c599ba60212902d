//! surge's CUDA kernels against their CPU twins (`ops::cpu`), and the tiny model's greedy
//! tokens on CUDA against CPU. They need a usable GPU: elsewhere (a CPU build, or a cuda
//! build on a host without one) every test prints "skipped: no GPU" and passes.
//!
//! Tolerance: the kernel runs in the tested dtype; the twin runs in f32 on the same
//! (already rounded) inputs. Both compute in f32, so what differs is the summation order
//! and the kernel's final rounding to its dtype: |gpu - cpu| <= ATOL + RTOL * |cpu| with
//! (ATOL, RTOL) = (1e-4, 1e-4) for f32, (2e-3, 1e-2) for f16 and (1e-2, 2e-2) for bf16.

mod support;

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use surge::ops::{self, AttentionMetadata};

fn gpu() -> Option<Device> {
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(device) => return Some(device),
        Err(e) => eprintln!("skipped: no GPU ({e})"),
    }
    #[cfg(not(feature = "cuda"))]
    eprintln!("skipped: no GPU (this build has no cuda feature)");
    None
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn tolerance(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (1e-4, 1e-4),
        DType::F16 => (2e-3, 1e-2),
        _ => (1e-2, 2e-2),
    }
}

/// Random values in `dtype` on the CPU (so both sides see the same rounded inputs).
fn random(shape: &[usize], spread: f32, dtype: DType, rng: &mut impl Rng) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-spread..spread)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Asserts the GPU result matches the f32 CPU twin's within the dtype's tolerance.
fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, dtype: DType) {
    let gpu: Vec<f32> = gpu
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let cpu: Vec<f32> = cpu
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let (atol, rtol) = tolerance(dtype);
    let mut worst = (0.0f32, 0usize);
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(g.is_finite(), "{what} {dtype:?}: element {i} is {g}");
        let excess = (g - c).abs() - (atol + rtol * c.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what} {dtype:?}: element {i}: gpu {} vs cpu {} (atol {atol}, rtol {rtol})",
        gpu[i],
        cpu[i]
    );
    eprintln!("{what} {dtype:?}: {} elements within tolerance", gpu.len());
}

fn f32_cpu(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

#[test]
fn rms_norm_and_fused_add_match_the_twin() {
    let Some(dev) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for dtype in DTYPES {
        for (rows, hidden) in [(1, 4096), (37, 4096), (5, 576)] {
            let x = random(&[rows, hidden], 2.0, dtype, &mut rng);
            let r = random(&[rows, hidden], 2.0, dtype, &mut rng);
            let w = random(&[hidden], 1.0, dtype, &mut rng);
            let on = |t: &Tensor| t.to_device(&dev).unwrap();
            let gpu = ops::rms_norm(&on(&x), &on(&w), 1e-5).unwrap();
            let cpu = ops::rms_norm(&f32_cpu(&x), &f32_cpu(&w), 1e-5).unwrap();
            assert_close("rms_norm", &gpu, &cpu, dtype);
            let (gpu_n, gpu_s) = ops::add_rms_norm(&on(&x), &on(&r), &on(&w), 1e-5).unwrap();
            // The kernel rounds the sum to its dtype before normalising, so the twin gets
            // that rounded sum too.
            let sum = (x.to_dtype(DType::F32).unwrap() + r.to_dtype(DType::F32).unwrap())
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let cpu_n = ops::rms_norm(&f32_cpu(&sum), &f32_cpu(&w), 1e-5).unwrap();
            assert_close("add_rms_norm sum", &gpu_s, &f32_cpu(&sum), dtype);
            assert_close("add_rms_norm normed", &gpu_n, &cpu_n, dtype);
        }
    }
}

#[test]
fn rope_matches_the_twin_at_long_positions() {
    let Some(dev) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let (tokens, heads, dim) = (19, 8, 128);
    let inv_freq: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / 500_000f32.powf(2.0 * i as f32 / dim as f32))
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, dim / 2, &Device::Cpu).unwrap();
    let positions: Vec<u32> = (0..tokens).map(|_| rng.random_range(0..131_072)).collect();
    let positions = Tensor::from_vec(positions, tokens, &Device::Cpu).unwrap();
    for dtype in DTYPES {
        let x = random(&[tokens, heads, dim], 3.0, dtype, &mut rng);
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let gpu = ops::rope(&on(&x), &on(&positions), &on(&inv_freq)).unwrap();
        let cpu = ops::rope(&f32_cpu(&x), &positions, &inv_freq).unwrap();
        assert_close("rope", &gpu, &cpu, dtype);
    }
}

#[test]
fn silu_mul_matches_the_twin() {
    let Some(dev) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for dtype in DTYPES {
        let g = random(&[33, 14336], 8.0, dtype, &mut rng);
        let u = random(&[33, 14336], 2.0, dtype, &mut rng);
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let gpu = ops::silu_mul(&on(&g), &on(&u)).unwrap();
        let cpu = ops::silu_mul(&f32_cpu(&g), &f32_cpu(&u)).unwrap();
        assert_close("silu_mul", &gpu, &cpu, dtype);
    }
}

/// A mixed step: `(query_len, context_len)` per sequence, blocks scattered at random.
fn mixed_step(
    seqs: &[(usize, usize)],
    block_size: usize,
    rng: &mut impl Rng,
) -> (AttentionMetadata, usize) {
    let total_blocks: usize = seqs
        .iter()
        .map(|&(_, c)| c.div_ceil(block_size))
        .sum::<usize>()
        + 3;
    let mut free: Vec<u32> = (0..total_blocks as u32).collect();
    free.shuffle(rng);
    let mut meta = AttentionMetadata {
        block_size,
        query_start: vec![0],
        ..AttentionMetadata::default()
    };
    for &(query_len, ctx) in seqs {
        let table: Vec<u32> = (0..ctx.div_ceil(block_size))
            .map(|_| free.pop().unwrap())
            .collect();
        for pos in ctx - query_len..ctx {
            meta.slot_mapping
                .push(table[pos / block_size] as usize * block_size + pos % block_size);
        }
        meta.query_start
            .push(meta.query_start.last().unwrap() + query_len);
        meta.context_lens.push(ctx);
        meta.block_tables.push(table);
    }
    (meta, total_blocks)
}

#[test]
fn paged_attention_decode_and_prefill_match_the_twin() {
    let Some(dev) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    // Decode rows with short and long (split-K) contexts, a prefill from scratch, and a
    // chunked prefill continuing a cached prefix, in one step.
    let seqs = [
        (1, 1),
        (1, 77),
        (40, 40),
        (1, 5000),
        (23, 300),
        (1, 16),
        (17, 17),
    ];
    for (heads, kv_heads, dim) in [(32, 8, 128), (8, 2, 64), (4, 1, 32), (9, 3, 64)] {
        for dtype in DTYPES {
            let block_size = 16;
            let (meta, num_blocks) = mixed_step(&seqs, block_size, &mut rng);
            let tokens = meta.num_tokens();
            let cache_shape = [num_blocks, block_size, kv_heads, dim];
            // Fill the whole cache with history, then write this step's new K/V into it
            // on both devices through reshape_and_cache.
            let k_hist = random(&cache_shape, 1.0, dtype, &mut rng);
            let v_hist = random(&cache_shape, 1.0, dtype, &mut rng);
            let k_new = random(&[tokens, kv_heads, dim], 1.0, dtype, &mut rng);
            let v_new = random(&[tokens, kv_heads, dim], 1.0, dtype, &mut rng);
            let q = random(&[tokens, heads, dim], 1.0, dtype, &mut rng);
            let scale = 1.0 / (dim as f32).sqrt();

            let on = |t: &Tensor| t.to_device(&dev).unwrap().copy().unwrap();
            let (kg, vg) = (on(&k_hist), on(&v_hist));
            let plan = ops::AttentionPlan::new(&meta, &dev).unwrap();
            plan.write_cache(&kg, &on(&k_new)).unwrap();
            plan.write_cache(&vg, &on(&v_new)).unwrap();
            let gpu = plan.attention(&on(&q), &kg, &vg, scale).unwrap();

            let (kc, vc) = (
                f32_cpu(&k_hist).copy().unwrap(),
                f32_cpu(&v_hist).copy().unwrap(),
            );
            ops::reshape_and_cache(&kc, &f32_cpu(&k_new), &meta.slot_mapping).unwrap();
            ops::reshape_and_cache(&vc, &f32_cpu(&v_new), &meta.slot_mapping).unwrap();
            let cpu = ops::paged_attention(&f32_cpu(&q), &kc, &vc, &meta, scale).unwrap();

            let what = format!("cache after reshape_and_cache ({heads}/{kv_heads}x{dim})");
            assert_close(&what, &kg, &kc, dtype);
            assert_close(
                &format!("paged_attention ({heads}/{kv_heads}x{dim})"),
                &gpu,
                &cpu,
                dtype,
            );
        }
    }
}

#[test]
fn copy_blocks_matches_the_twin() {
    let Some(dev) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for dtype in DTYPES {
        let cache = random(&[10, 16, 2, 64], 1.0, dtype, &mut rng);
        let pairs = [(1, 7), (3, 0), (9, 4)];
        let gpu = cache.to_device(&dev).unwrap().copy().unwrap();
        ops::copy_blocks(&gpu, &pairs).unwrap();
        let cpu = f32_cpu(&cache).copy().unwrap();
        ops::copy_blocks(&cpu, &pairs).unwrap();
        assert_close("copy_blocks", &gpu, &cpu, dtype);
    }
}

#[test]
fn tiny_model_greedy_tokens_on_cuda_equal_cpu_in_f32() {
    let Some(dev) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    // head_dim 32, 4 query heads per KV head: shapes the CUDA attention kernels take.
    let config = support::TinyConfig {
        hidden_size: 128,
        intermediate_size: 256,
        num_heads: 4,
        num_kv_heads: 1,
        ..support::TinyConfig::default()
    };
    support::write_tiny_llama(dir.path(), config);
    let source = surge::loader::ModelSource::Local(dir.path().to_path_buf());
    let run = |device: &Device| {
        let loaded = surge::loader::load(&source, surge::loader::DTypeChoice::F32, device).unwrap();
        let requests: Vec<_> = [
            &[128000u32, 9906, 11, 1917][..],
            &[128000, 791, 6864, 315, 9822, 374][..],
        ]
        .iter()
        .map(|prompt| surge::runner::offline::OfflineRequest {
            prompt_ids: prompt.to_vec(),
            params: surge::engine::sampling_params::SamplingParams {
                temperature: 0.0,
                max_tokens: 24,
                ignore_eos: true,
                ..Default::default()
            },
        })
        .collect();
        let config = surge::engine::EngineConfig {
            kv_cache_memory: 64 << 20,
            ..Default::default()
        };
        let (outputs, _) = surge::runner::offline::generate(&loaded, &requests, &config).unwrap();
        outputs.into_iter().map(|o| o.token_ids).collect::<Vec<_>>()
    };
    let (gpu_tokens, cpu_tokens) = (run(&dev), run(&Device::Cpu));
    assert_eq!(gpu_tokens, cpu_tokens);
    eprintln!("greedy tokens equal on CUDA and CPU: {gpu_tokens:?}");
}

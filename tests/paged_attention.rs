//! Paged attention over random block tables equals dense causal attention.

use candle_core::{DType, Device, IndexOp, Tensor};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use surge::ops::{paged_attention, reshape_and_cache, AttentionMetadata};

#[derive(Debug, Clone)]
struct Case {
    block_size: usize,
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    /// (context_len, query_len) per sequence.
    seqs: Vec<(usize, usize)>,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let seq = (1usize..80).prop_flat_map(|ctx| (Just(ctx), 1..=ctx));
    (
        prop::sample::select(vec![1usize, 16, 32]),
        1usize..=2,
        prop::sample::select(vec![1usize, 4, 8]),
        prop::sample::select(vec![8usize, 16, 64]),
        prop::collection::vec(seq, 1..4),
        any::<u64>(),
    )
        .prop_map(|(block_size, kv_heads, group, head_dim, seqs, seed)| Case {
            block_size,
            kv_heads,
            group,
            head_dim,
            seqs,
            seed,
        })
}

fn randn(rng: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Softmax(q·kᵀ·scale, causal) · v for one sequence, with GQA by repeating KV heads.
fn dense(q: &Tensor, k: &Tensor, v: &Tensor, group: usize, context: usize) -> Tensor {
    let (query_len, heads, head_dim) = q.dims3().unwrap();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outs = Vec::new();
    for h in 0..heads {
        let qh = q.i((.., h, ..)).unwrap(); // [q, d]
        let kh = k.i((.., h / group, ..)).unwrap(); // [ctx, d]
        let vh = v.i((.., h / group, ..)).unwrap();
        let scores = (qh.matmul(&kh.t().unwrap()).unwrap() * scale).unwrap();
        let mask: Vec<f32> = (0..query_len)
            .flat_map(|i| {
                let pos = context - query_len + i;
                (0..context).map(move |j| if j <= pos { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (query_len, context), &Device::Cpu).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&(scores + mask).unwrap()).unwrap();
        outs.push(probs.matmul(&vh).unwrap());
    }
    Tensor::stack(&outs, 1).unwrap()
}

fn run(c: &Case) -> f32 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
    let heads = c.kv_heads * c.group;
    let blocks_per_seq: Vec<usize> = c
        .seqs
        .iter()
        .map(|(ctx, _)| ctx.div_ceil(c.block_size))
        .collect();
    let num_blocks = blocks_per_seq.iter().sum::<usize>() + 3;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    ids.shuffle(&mut rng);
    let shape = (num_blocks, c.block_size, c.kv_heads, c.head_dim);
    let k_cache = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let v_cache = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let mut meta = AttentionMetadata {
        block_size: c.block_size,
        query_start: vec![0],
        ..Default::default()
    };
    let (mut qs, mut expected) = (Vec::new(), Vec::new());
    let mut next = 0;
    for (&(context, query_len), &nb) in c.seqs.iter().zip(&blocks_per_seq) {
        let table = ids[next..next + nb].to_vec();
        next += nb;
        let k = randn(&mut rng, &[context, c.kv_heads, c.head_dim]);
        let v = randn(&mut rng, &[context, c.kv_heads, c.head_dim]);
        let q = randn(&mut rng, &[query_len, heads, c.head_dim]);
        // Earlier tokens were cached by previous steps; write them in two parts as they would be.
        let slots: Vec<usize> = (0..context)
            .map(|j| table[j / c.block_size] as usize * c.block_size + j % c.block_size)
            .collect();
        reshape_and_cache(&k_cache, &k, &slots).unwrap();
        reshape_and_cache(&v_cache, &v, &slots).unwrap();
        meta.slot_mapping
            .extend_from_slice(&slots[context - query_len..]);
        meta.query_start
            .push(meta.query_start.last().unwrap() + query_len);
        meta.context_lens.push(context);
        meta.block_tables.push(table);
        expected.push(dense(&q, &k, &v, c.group, context));
        qs.push(q);
    }
    let q = Tensor::cat(&qs, 0).unwrap();
    let scale = 1.0 / (c.head_dim as f32).sqrt();
    let got = paged_attention(&q, &k_cache, &v_cache, &meta, scale).unwrap();
    let want = Tensor::cat(&expected, 0).unwrap();
    (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn paged_equals_dense(c in case()) {
        let diff = run(&c);
        prop_assert!(diff <= 1e-5, "max abs diff {diff} for {c:?}");
    }
}

#[test]
fn crosses_block_edges_at_every_block_size() {
    for block_size in [1, 16, 32] {
        for group in [1, 4, 8] {
            let c = Case {
                block_size,
                kv_heads: 2,
                group,
                head_dim: 16,
                seqs: vec![
                    (block_size + 1, 1),
                    (2 * block_size + 3, block_size + 2),
                    (33, 33),
                ],
                seed: 1,
            };
            assert!(run(&c) <= 1e-5, "{c:?}");
        }
    }
}

#[test]
fn rejects_inconsistent_metadata() {
    let cache = Tensor::zeros((2, 4, 1, 8), DType::F32, &Device::Cpu).unwrap();
    let q = Tensor::zeros((3, 2, 8), DType::F32, &Device::Cpu).unwrap();
    let good = AttentionMetadata {
        block_size: 4,
        slot_mapping: vec![0, 1, 2],
        query_start: vec![0, 3],
        context_lens: vec![3],
        block_tables: vec![vec![0]],
    };
    assert!(paged_attention(&q, &cache, &cache, &good, 1.0).is_ok());
    let mut bad_block = good.clone();
    bad_block.block_tables = vec![vec![5]];
    let mut short_table = good.clone();
    short_table.context_lens = vec![9];
    let mut bad_start = good.clone();
    bad_start.query_start = vec![0, 2];
    for meta in [bad_block, short_table, bad_start] {
        let e = paged_attention(&q, &cache, &cache, &meta, 1.0).unwrap_err();
        assert!(e.to_string().contains("paged_attention"), "{e}");
    }
    let new = Tensor::zeros((1, 1, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(
        reshape_and_cache(&cache, &new, &[8]).is_err(),
        "slot past the cache"
    );
    assert!(reshape_and_cache(&cache, &new, &[7]).is_ok());
}

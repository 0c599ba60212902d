//! Scheduler tests: policy, chunking, preemption, n > 1 and the no-leak proptest.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::kv_cache::block_allocator::BlockId;

const BS: usize = 4;

fn config(max_num_seqs: usize, budget: usize, max_model_len: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        block_size: BS,
        max_model_len,
    }
}

fn sched(num_blocks: usize, cfg: SchedulerConfig) -> Scheduler {
    let alloc = BlockAllocator::new(num_blocks, cfg.block_size, true).unwrap();
    Scheduler::new(cfg, alloc).unwrap()
}

fn seq(id: u64, len: usize, max_tokens: usize) -> Sequence {
    let prompt = (0..len as u32).map(|t| t + 100 * id as u32).collect();
    Sequence::new(SequenceId(id), prompt, max_tokens)
}

/// One engine step with token 7 sampled for every sampling sequence.
fn step(s: &mut Scheduler) -> (SchedulerOutput, Vec<(SequenceId, FinishReason)>) {
    let out = s.schedule();
    let sampled: Vec<_> = out.sampling_ids().map(|id| (id, 7)).collect();
    let finished = s.update(&out, &sampled);
    (out, finished)
}

fn work(out: &SchedulerOutput) -> Vec<(u64, usize, usize, bool)> {
    let w = out.scheduled.iter();
    w.map(|s| (s.id.0, s.num_computed, s.num_new, s.samples))
        .collect()
}

fn assert_all_free(s: &Scheduler) {
    let a = s.allocator();
    assert_eq!(a.num_free_blocks(), a.num_blocks());
    assert_eq!(a.num_used_blocks(), 0);
    for b in 0..a.num_blocks() {
        assert_eq!(a.ref_count(BlockId(b as u32)), 0);
    }
    a.check_invariants().unwrap();
}

#[test]
fn config_is_validated() {
    let alloc = || BlockAllocator::new(4, BS, true).unwrap();
    let err = |cfg| Scheduler::new(cfg, alloc()).unwrap_err();
    assert_eq!(err(config(0, 8, 8)), SchedulerError::ZeroMaxNumSeqs);
    assert_eq!(
        err(config(1, 0, 8)),
        SchedulerError::ZeroMaxNumBatchedTokens
    );
    assert_eq!(err(config(1, 8, 0)), SchedulerError::ZeroMaxModelLen);
    let mut wrong_bs = config(1, 8, 8);
    wrong_bs.block_size = 16;
    assert!(matches!(
        err(wrong_bs),
        SchedulerError::BlockSizeMismatch { .. }
    ));
    let e = err(config(1, 8, 4 * BS + 1));
    assert!(
        e.to_string()
            .contains("--max-model-len 17 needs 5 KV blocks"),
        "{e}"
    );
    assert!(Scheduler::new(config(1, 8, 4 * BS), alloc()).is_ok());
    assert_eq!(SchedulerConfig::default().max_num_seqs, 256);
}

#[test]
fn add_rejects_bad_sequences() {
    let mut s = sched(8, config(2, 8, 10));
    let e = |s: &mut Scheduler, q| s.add(q).unwrap_err();
    assert_eq!(
        e(&mut s, seq(1, 0, 1)),
        SchedulerError::EmptyPrompt(SequenceId(1))
    );
    assert!(matches!(
        e(&mut s, seq(1, 11, 1)),
        SchedulerError::PromptTooLong { .. }
    ));
    assert_eq!(
        e(&mut s, seq(1, 3, 0)),
        SchedulerError::ZeroMaxTokens(SequenceId(1))
    );
    let group = seq(1, 3, 1).with_siblings(vec![SequenceId(2), SequenceId(3)]);
    assert!(matches!(
        e(&mut s, group),
        SchedulerError::TooManySequences { .. }
    ));
    let twice = seq(1, 3, 1).with_siblings(vec![SequenceId(1)]);
    assert_eq!(e(&mut s, twice), SchedulerError::DuplicateId(SequenceId(1)));
    s.add(seq(1, 10, 1)).unwrap();
    assert_eq!(
        e(&mut s, seq(1, 3, 1)),
        SchedulerError::DuplicateId(SequenceId(1))
    );
    let clash = seq(2, 3, 1).with_siblings(vec![SequenceId(1)]);
    assert_eq!(e(&mut s, clash), SchedulerError::DuplicateId(SequenceId(1)));
    assert!(!s.abort(SequenceId(9)));
}

#[test]
fn fcfs_prefill_then_decode_until_max_tokens() {
    let mut s = sched(16, config(8, 64, 64));
    s.add(seq(1, 5, 2)).unwrap();
    s.add(seq(2, 3, 1)).unwrap();
    let (out, done) = step(&mut s);
    assert_eq!(work(&out), [(1, 0, 5, true), (2, 0, 3, true)]);
    assert_eq!(done, [(SequenceId(2), FinishReason::Length)]);
    let (out, done) = step(&mut s);
    assert_eq!(work(&out), [(1, 5, 1, true)]);
    assert_eq!(done, [(SequenceId(1), FinishReason::Length)]);
    assert!(!s.has_unfinished());
    assert_all_free(&s);
}

#[test]
fn fcfs_does_not_skip_a_blocked_head() {
    // The head needs 3 blocks but only 2 exist beyond the running one's.
    let mut s = sched(3, config(8, 64, 3 * BS));
    s.add(seq(1, 2, 9)).unwrap();
    step(&mut s);
    s.add(seq(2, 3 * BS, 1)).unwrap();
    s.add(seq(3, 1, 1)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(work(&out), [(1, 2, 1, true)], "3 waits behind 2");
    assert_eq!(s.stats().num_waiting, 2);
}

#[test]
fn long_prompt_is_prefilled_in_chunks_and_decodes_continue() {
    let mut s = sched(32, config(8, 8, 64));
    s.add(seq(1, 3, 20)).unwrap();
    step(&mut s);
    s.add(seq(2, 20, 1)).unwrap();
    let chunks: Vec<_> = (0..3).map(|_| work(&step(&mut s).0)).collect();
    assert_eq!(chunks[0], [(1, 3, 1, true), (2, 0, 7, false)]);
    assert_eq!(chunks[1], [(1, 4, 1, true), (2, 7, 7, false)]);
    assert_eq!(chunks[2], [(1, 5, 1, true), (2, 14, 6, true)]);
    let decoding = s.sequence(SequenceId(1)).unwrap();
    assert_eq!(decoding.output_token_ids(), &[7, 7, 7, 7]);
}

#[test]
fn waiting_prompts_get_the_budget_left_after_decodes() {
    let mut s = sched(32, config(8, 4, 64));
    s.add(seq(1, 12, 1)).unwrap();
    s.add(seq(2, 2, 5)).unwrap();
    // 1's chunks take the whole budget, so 2 waits (FCFS) until 1's prompt is done.
    assert_eq!(work(&step(&mut s).0), [(1, 0, 4, false)]);
    assert_eq!(work(&step(&mut s).0), [(1, 4, 4, false)]);
    assert_eq!(work(&step(&mut s).0), [(1, 8, 4, true)]);
    s.add(seq(3, 9, 1)).unwrap();
    assert_eq!(work(&step(&mut s).0), [(2, 0, 2, true), (3, 0, 2, false)]);
    assert_eq!(work(&step(&mut s).0), [(2, 2, 1, true), (3, 2, 3, false)]);
}

#[test]
fn a_group_whose_prompt_is_cached_forks_on_admission() {
    let mut s = sched(16, config(8, 64, 64));
    let prompt: Vec<u32> = (0..2 * BS as u32 + 1).collect();
    s.add(Sequence::new(SequenceId(1), prompt.clone(), 1))
        .unwrap();
    step(&mut s);
    let members = vec![SequenceId(3), SequenceId(4)];
    s.add(Sequence::new(SequenceId(2), prompt, 2).with_siblings(members))
        .unwrap();
    let (out, _) = step(&mut s);
    assert!(out.is_empty(), "nothing left to compute before the fork");
    assert_eq!(s.stats().num_running, 3);
    let (out, _) = step(&mut s);
    // Each member computes the last prompt token for its own logits row.
    let expected: Vec<_> = (2..=4).map(|id| (id, 2 * BS, 1, true)).collect();
    assert_eq!(work(&out), expected);
    assert!(out.blocks_to_copy.is_empty(), "block-aligned: fresh blocks");
    while s.has_unfinished() {
        step(&mut s);
    }
    assert_all_free(&s);
}

#[test]
fn max_num_seqs_caps_running() {
    let mut s = sched(16, config(2, 64, 16));
    for id in 1..=3 {
        s.add(seq(id, 2, 3)).unwrap();
    }
    for _ in 0..3 {
        let (out, _) = step(&mut s);
        assert_eq!(out.scheduled.len(), 2);
        assert!(out.scheduled.iter().all(|w| w.id != SequenceId(3)));
        assert_eq!(s.stats().num_waiting, 1);
    }
    let (out, _) = step(&mut s);
    assert_eq!(work(&out), [(3, 0, 2, true)], "admitted once two finished");
}

#[test]
fn preempts_the_newest_and_recomputes_it() {
    // 4 blocks of 4: two sequences of 6 tokens hold 2 blocks each; growing to 9
    // tokens needs a third block, which only preemption can free.
    let mut s = sched(4, config(8, 64, 16));
    s.add(seq(1, 6, 6)).unwrap();
    s.add(seq(2, 6, 6)).unwrap();
    step(&mut s);
    step(&mut s);
    let (out, _) = step(&mut s);
    assert!(out.preempted.is_empty());
    assert_eq!(s.allocator().num_free_blocks(), 0);
    // Both at 8 tokens computed with 9 known; 1 needs a new block.
    let (out, _) = step(&mut s);
    assert_eq!(out.preempted, [SequenceId(2)]);
    assert_eq!(work(&out), [(1, 8, 1, true)]);
    assert_eq!(s.stats().num_preemptions_total, 1);
    let waiting = s.sequence(SequenceId(2)).unwrap();
    assert_eq!(waiting.status(), SequenceStatus::Waiting);
    assert_eq!(waiting.num_computed_tokens(), 0);
    assert_eq!(waiting.output_token_ids().len(), 3, "output kept");
    assert_eq!(s.stats().num_waiting_prompt_tokens, 9);
    // 1 finishes at 6 outputs; then 2 recomputes prompt + output and continues.
    let mut recompute = None;
    while s.has_unfinished() {
        let (out, _) = step(&mut s);
        if let Some(w) = out.scheduled.iter().find(|w| w.id == SequenceId(2)) {
            recompute.get_or_insert(*w);
        }
    }
    // 1's third block evicted 2's cached tail block; its head block is a hit.
    let w = recompute.unwrap();
    assert_eq!((w.num_computed, w.num_new, w.samples), (BS, 5, true));
    assert_all_free(&s);
}

#[test]
fn preemption_without_prefix_cache_recomputes_everything() {
    let alloc = BlockAllocator::new(4, BS, false).unwrap();
    let mut s = Scheduler::new(config(8, 64, 16), alloc).unwrap();
    s.add(seq(1, 6, 6)).unwrap();
    s.add(seq(2, 6, 6)).unwrap();
    for _ in 0..4 {
        step(&mut s);
    }
    let mut first_back = None;
    while s.has_unfinished() {
        let (out, _) = step(&mut s);
        let back = out.scheduled.iter().find(|w| w.id == SequenceId(2));
        first_back = first_back.or(back.copied());
    }
    let w = first_back.unwrap();
    assert_eq!((w.num_computed, w.num_new), (0, 9));
    assert_eq!(s.stats().prefix_cache_queries, 0);
    assert_all_free(&s);
}

#[test]
fn abort_frees_blocks_wherever_the_sequence_is() {
    let mut s = sched(8, config(8, 4, 32));
    s.add(seq(1, 10, 4)).unwrap();
    s.add(seq(2, 3, 4)).unwrap();
    step(&mut s);
    assert_eq!(s.sequence(SequenceId(1)).unwrap().num_computed_tokens(), 4);
    assert!(s.abort(SequenceId(1)), "mid-prefill");
    assert!(s.abort(SequenceId(2)), "waiting");
    assert!(!s.abort(SequenceId(1)), "only once");
    assert!(!s.has_unfinished());
    assert_all_free(&s);
    s.add(seq(3, 3, 4)).unwrap();
    step(&mut s);
    assert!(s.finish(SequenceId(3), FinishReason::Stop), "running");
    assert_all_free(&s);
}

#[test]
fn finishes_at_max_model_len() {
    let mut s = sched(8, config(8, 64, 6));
    s.add(seq(1, 4, 100)).unwrap();
    assert!(step(&mut s).1.is_empty());
    let (_, done) = step(&mut s);
    assert_eq!(done, [(SequenceId(1), FinishReason::Length)]);
    assert_all_free(&s);
}

#[test]
fn shared_prefix_is_computed_once() {
    let mut s = sched(16, config(8, 64, 64));
    let prompt: Vec<u32> = (0..4 * BS as u32 + 2).collect();
    s.add(Sequence::new(SequenceId(1), prompt.clone(), 1))
        .unwrap();
    step(&mut s);
    let mut other = prompt[..4 * BS].to_vec();
    other.extend([90, 91, 92]);
    s.add(Sequence::new(SequenceId(2), other, 1)).unwrap();
    let (out, _) = step(&mut s);
    assert_eq!(work(&out), [(2, 4 * BS, 3, true)]);
    let st = s.stats();
    assert_eq!(st.prefix_cache_queries, (prompt.len() + 4 * BS + 3) as u64);
    assert_eq!(st.prefix_cache_hits, 4 * BS as u64);
}

#[test]
fn n_gt_1_forks_after_the_shared_prompt_with_copy_on_write() {
    let mut s = sched(16, config(8, 64, 64));
    let group = seq(1, 6, 2).with_siblings(vec![SequenceId(2), SequenceId(3)]);
    s.add(group).unwrap();
    assert_eq!(s.stats().num_waiting, 3);
    let (out, _) = step(&mut s);
    assert_eq!(
        work(&out),
        [(1, 0, 5, false)],
        "all but the last prompt token"
    );
    assert_eq!(s.stats().num_running, 3);
    let shared = s.sequence(SequenceId(1)).unwrap().block_table().block_ids()[1];
    assert_eq!(s.allocator().ref_count(BlockId(shared)), 3);
    let (out, _) = step(&mut s);
    assert_eq!(
        work(&out),
        [(1, 5, 1, true), (2, 5, 1, true), (3, 5, 1, true)]
    );
    // Two members copy the shared partial block; the last writes it in place.
    let copies = &out.blocks_to_copy;
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|c| c.src == BlockId(shared)));
    let tables: Vec<_> = (1..=3)
        .map(|id| {
            s.sequence(SequenceId(id))
                .unwrap()
                .block_table()
                .block_ids()
        })
        .collect();
    assert_eq!(tables[0][0], tables[2][0], "full block still shared");
    let lasts: HashSet<_> = tables.iter().map(|t| t[1]).collect();
    assert_eq!(lasts.len(), 3);
    while s.has_unfinished() {
        step(&mut s);
    }
    assert_all_free(&s);
}

#[test]
fn ending_a_group_record_before_the_fork_keeps_its_siblings() {
    let mut s = sched(16, config(8, 4, 64));
    let group = seq(1, 9, 1).with_siblings(vec![SequenceId(2), SequenceId(3)]);
    s.add(group).unwrap();
    step(&mut s);
    assert!(s.abort(SequenceId(1)));
    assert!(s.abort(SequenceId(3)));
    assert_eq!(s.stats().num_running, 1);
    let mut seen = Vec::new();
    while s.has_unfinished() {
        seen.extend(step(&mut s).1);
    }
    assert_eq!(seen, [(SequenceId(2), FinishReason::Length)]);
    assert_all_free(&s);
}

#[test]
fn chunks_mirror_the_output_and_stale_updates_are_ignored() {
    let mut s = sched(8, config(8, 64, 32));
    s.add(seq(1, 5, 3)).unwrap();
    let out = s.schedule();
    let chunks = s.chunks(&out).unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        chunks[0].tokens,
        s.sequence(SequenceId(1)).unwrap().token_ids()
    );
    assert_eq!((chunks[0].num_new, chunks[0].wants_logits), (5, true));
    assert_eq!(chunks[0].block_table.len(), 2);
    // No token for a sampling chunk: nothing advances; it is scheduled again.
    assert!(s.update(&out, &[]).is_empty());
    assert_eq!(s.sequence(SequenceId(1)).unwrap().num_computed_tokens(), 0);
    let again = s.schedule();
    assert_eq!(work(&again), [(1, 0, 5, true)]);
    s.update(&again, &[(SequenceId(1), 3)]);
    s.update(&again, &[(SequenceId(1), 3)]);
    let seq1 = s.sequence(SequenceId(1)).unwrap();
    assert_eq!(
        seq1.output_token_ids(),
        &[3],
        "a replayed update is ignored"
    );
    s.abort(SequenceId(1));
    assert_eq!(
        s.chunks(&again).unwrap_err(),
        SchedulerError::NotRunning(SequenceId(1))
    );
    assert!(s.update(&again, &[(SequenceId(1), 3)]).is_empty());
    assert_all_free(&s);
}

/// What the no-leak property drives.
#[derive(Debug, Clone)]
enum Op {
    Add {
        base: usize,
        shared: usize,
        suffix: Vec<u32>,
        max_tokens: usize,
        n: usize,
    },
    Abort(usize),
    Stop(usize),
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    let add = (0..3usize, 0..20usize, prop::collection::vec(0..3u32, 0..8)).prop_flat_map(
        |(base, shared, suffix)| {
            (1..8usize, prop_oneof![4 => Just(1usize), 1 => 2..4usize]).prop_map(
                move |(max_tokens, n)| Op::Add {
                    base,
                    shared,
                    suffix: suffix.clone(),
                    max_tokens,
                    n,
                },
            )
        },
    );
    prop_oneof![
        3 => add,
        1 => any::<usize>().prop_map(Op::Abort),
        1 => any::<usize>().prop_map(Op::Stop),
        4 => Just(Op::Step),
    ]
}

/// Fingerprint of `tokens[..=pos]`: what a correct KV slot for `pos` holds.
fn fingerprint(tokens: &[u32], pos: usize) -> u64 {
    tokens[..=pos].iter().fold(0xcbf2_9ce4_8422_2325, |h, &t| {
        (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A fake cache whose slots hold the fingerprint of the prefix that wrote them.
struct FakeKv {
    slots: Vec<Option<u64>>,
    bs: usize,
}

impl FakeKv {
    /// Checks one step's output and plays it on the fake cache: copies, then
    /// writes, then every chunk must read exactly its own prefix.
    fn run(&mut self, s: &Scheduler, out: &SchedulerOutput) -> Result<(), TestCaseError> {
        let a = s.allocator();
        let cfg = s.config();
        prop_assert!(out.num_batched_tokens() <= cfg.max_num_batched_tokens);
        prop_assert!(s.stats().num_running <= cfg.max_num_seqs);
        let ids: HashSet<_> = out.scheduled.iter().map(|w| w.id).collect();
        prop_assert_eq!(ids.len(), out.scheduled.len());
        for c in &out.blocks_to_copy {
            let (src, dst) = (c.src.index() * self.bs, c.dst.index() * self.bs);
            for k in 0..self.bs {
                self.slots[dst + k] = self.slots[src + k];
            }
        }
        let chunks = s.chunks(out).unwrap();
        let mut written = HashSet::new();
        for (w, c) in out.scheduled.iter().zip(&chunks) {
            let end = c.num_computed + c.num_new;
            prop_assert!(c.num_new >= 1);
            prop_assert!(c.block_table.len() * self.bs >= end);
            prop_assert_eq!(w.samples, end == c.tokens.len());
            for pos in c.num_computed..end {
                let block = BlockId(c.block_table[pos / self.bs]);
                prop_assert_eq!(a.ref_count(block), 1, "writes a shared block");
                prop_assert!(!a.is_cached(block), "writes a cached block");
                let slot = block.index() * self.bs + pos % self.bs;
                prop_assert!(written.insert(slot), "two writes to slot {}", slot);
                self.slots[slot] = Some(fingerprint(c.tokens, pos));
            }
        }
        for c in &chunks {
            for pos in 0..c.num_computed + c.num_new {
                let slot = c.block_table[pos / self.bs] as usize * self.bs + pos % self.bs;
                prop_assert_eq!(self.slots[slot], Some(fingerprint(c.tokens, pos)));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_leak(
        bs in 1..=4usize,
        max_model_len in 4..=24usize,
        spare_blocks in 0..6usize,
        max_num_seqs in 3..=6usize,
        budget in 1..=16usize,
        prefix_caching in any::<bool>(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let num_blocks = max_model_len.div_ceil(bs) + spare_blocks;
        let cfg = SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens: budget,
            block_size: bs,
            max_model_len,
        };
        let alloc = BlockAllocator::new(num_blocks, bs, prefix_caching).unwrap();
        let mut s = Scheduler::new(cfg, alloc).unwrap();
        let mut kv = FakeKv { slots: vec![None; num_blocks * bs], bs };
        let bases: Vec<Vec<u32>> = (0..3u32).map(|b| (0..24).map(|t| t % 5 + b).collect()).collect();
        let mut rng = seed | 1;
        let mut next_token = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 3) as u32
        };
        let mut next_id = 0u64;
        let mut live: Vec<SequenceId> = Vec::new();
        let mut ended: HashMap<SequenceId, usize> = HashMap::new();
        let end = |ended: &mut HashMap<SequenceId, usize>, live: &mut Vec<SequenceId>, id| {
            *ended.entry(id).or_default() += 1;
            live.retain(|&l| l != id);
        };
        let mut do_step = |s: &mut Scheduler, kv: &mut FakeKv, ended: &mut HashMap<_, _>, live: &mut Vec<_>| -> Result<(), TestCaseError> {
            let out = s.schedule();
            kv.run(s, &out)?;
            let sampled: Vec<_> = out.sampling_ids().map(|id| (id, next_token())).collect();
            for (id, _) in s.update(&out, &sampled) {
                end(ended, live, id);
            }
            // The engine's EOS: token 0 after a few outputs stops some sequences.
            for &(id, token) in &sampled {
                let long = s.sequence(id).is_some_and(|q| q.num_output_tokens() >= 3);
                if token == 0 && long && s.finish(id, FinishReason::Stop) {
                    end(ended, live, id);
                }
            }
            s.allocator().check_invariants().map_err(TestCaseError::fail)?;
            Ok(())
        };
        for op in ops {
            match op {
                Op::Add { base, shared, suffix, max_tokens, n } => {
                    let mut prompt = bases[base][..shared].to_vec();
                    prompt.extend(suffix);
                    prompt.truncate(max_model_len);
                    if prompt.is_empty() {
                        prompt.push(1);
                    }
                    let ids: Vec<_> = (0..n).map(|k| SequenceId(next_id + k as u64)).collect();
                    next_id += n as u64;
                    let q = Sequence::new(ids[0], prompt, max_tokens).with_siblings(ids[1..].to_vec());
                    s.add(q).unwrap();
                    live.extend(ids);
                }
                Op::Abort(k) | Op::Stop(k) if live.is_empty() => {
                    prop_assert!(!s.abort(SequenceId(next_id + k as u64 % 4)));
                }
                Op::Abort(k) => {
                    let id = live[k % live.len()];
                    prop_assert!(s.abort(id));
                    end(&mut ended, &mut live, id);
                }
                Op::Stop(k) => {
                    let id = live[k % live.len()];
                    prop_assert!(s.finish(id, FinishReason::Stop));
                    end(&mut ended, &mut live, id);
                }
                Op::Step => do_step(&mut s, &mut kv, &mut ended, &mut live)?,
            }
        }
        let mut steps = 0;
        while s.has_unfinished() {
            prop_assert!(steps < 20_000, "no progress: {:?}", s.stats());
            do_step(&mut s, &mut kv, &mut ended, &mut live)?;
            steps += 1;
        }
        prop_assert!(live.is_empty(), "lost: {:?}", live);
        prop_assert_eq!(ended.len() as u64, next_id);
        prop_assert!(ended.values().all(|&n| n == 1), "ended twice: {:?}", ended);
        let a = s.allocator();
        prop_assert_eq!(a.num_free_blocks(), num_blocks);
        prop_assert_eq!(a.num_used_blocks(), 0);
        for b in 0..num_blocks {
            prop_assert_eq!(a.ref_count(BlockId(b as u32)), 0);
        }
        a.check_invariants().map_err(TestCaseError::fail)?;
    }
}

#[test]
fn lookups_follow_the_output_in_any_order() {
    let mut s = sched(64, config(8, 64, 64));
    for id in 0..4 {
        s.add(seq(id, 5, 8)).unwrap();
    }
    step(&mut s);
    let out = s.schedule();
    let ids: Vec<u64> = s
        .scheduled_sequences(&out)
        .iter()
        .map(|q| q.unwrap().id().0)
        .collect();
    assert_eq!(ids, work(&out).iter().map(|w| w.0).collect::<Vec<_>>());
    // Tokens given in reverse order still reach their own sequences.
    let mut sampled: Vec<_> = out
        .sampling_ids()
        .map(|id| (id, 40 + id.0 as u32))
        .collect();
    sampled.reverse();
    s.update(&out, &sampled);
    for id in 0..4 {
        let q = s.sequence(SequenceId(id)).unwrap();
        assert_eq!(q.output_token_ids(), &[7, 40 + id as u32]);
    }
    // A chunk whose sequence ended is `None`, the others still found.
    s.abort(SequenceId(1));
    let found = s.scheduled_sequences(&out);
    assert!(found[1].is_none());
    assert_eq!(found[2].map(Sequence::id), Some(SequenceId(2)));
}

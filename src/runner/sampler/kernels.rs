//! Branch-free f32 kernels the sampler runs over whole logit rows: a fast exp, and lane-wise max, sums and threshold statistics.
//!
//! A 128k-entry row is scanned several times per token, so these loops are written
//! so that LLVM vectorises them: fixed-width lane accumulators, selects instead of
//! branches, no early exits. Sums keep f32 lanes within a block and add blocks in
//! f64, which bounds the rounding error whatever the row length.

/// Accumulator lanes per loop (two SSE registers, one AVX register).
const LANES: usize = 8;

/// Entries per f32 partial sum before it is folded into f64.
pub(super) const BLOCK: usize = 256;

/// Below this, `exp` returns exactly 0 (the true value would be subnormal).
const EXP_MIN_INPUT: f32 = -87.0;

/// exp(x) within 2 ulp of the true value on [-87, 88], 0 below -87 (including -inf).
///
/// Cephes' `expf`: x = n·ln2 + r with |r| ≤ ln2/2, a degree-7 polynomial for e^r, and
/// 2^n built in the exponent bits. Callers pass x ≤ 0 (logits minus their max).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let clamped = x.clamp(EXP_MIN_INPUT, 88.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let mantissa = p * r * r + r + 1.0;
    // n ∈ [-126, 127], so n + 127 is a normal exponent (u32 arithmetic wraps back).
    let exponent = shifted
        .to_bits()
        .wrapping_sub(ROUNDER.to_bits())
        .wrapping_add(127);
    let value = mantissa * f32::from_bits(exponent << 23);
    if x < EXP_MIN_INPUT {
        0.0
    } else {
        value
    }
}

/// The largest value; -inf for an empty slice. NaN entries are ignored.
pub(super) fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The largest value, or the index of the first NaN or +inf: [`max`] and
/// [`first_invalid`] in one pass, for the first (memory-bound) read of a row.
pub(super) fn checked_max(values: &[f32]) -> Result<f32, usize> {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut invalid = [false; LANES];
    let (chunks, rest) = as_lanes(values);
    for chunk in chunks {
        for ((lane, bad), &x) in lanes.iter_mut().zip(&mut invalid).zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
            *bad |= x.is_nan() | (x == f32::INFINITY);
        }
    }
    let tail_invalid = rest.iter().any(|&x| x.is_nan() || x == f32::INFINITY);
    if tail_invalid || invalid.contains(&true) {
        return Err(first_invalid(values).unwrap_or(0));
    }
    Ok(rest
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m }))
}

/// Index of the first NaN or +inf, if any.
pub(super) fn first_invalid(values: &[f32]) -> Option<usize> {
    let invalid = |x: f32| x.is_nan() | (x == f32::INFINITY);
    for (block_index, block) in values.chunks(BLOCK).enumerate() {
        if block.iter().fold(false, |any, &x| any | invalid(x)) {
            let offset = block.iter().position(|&x| invalid(x)).unwrap_or(0);
            return Some(block_index * BLOCK + offset);
        }
    }
    None
}

/// Index of the first entry ≥ `target`, if any (with `target` the max: the argmax,
/// lowest index first).
pub(super) fn first_at_least(values: &[f32], target: f32) -> Option<usize> {
    let mut found = None;
    for_each_at_least_until(values, target, |index, _| {
        found = Some(index);
        true
    });
    found
}

/// Calls `f(index, x)` for every x ≥ `threshold`, in order. Whole lane groups below
/// it are skipped with one vector compare, so a high threshold costs one fast pass.
#[inline(always)]
pub(super) fn for_each_at_least(values: &[f32], threshold: f32, mut f: impl FnMut(usize, f32)) {
    for_each_at_least_until(values, threshold, |index, x| {
        f(index, x);
        false
    });
}

/// As [`for_each_at_least`], stopping once `f` returns true.
#[inline(always)]
fn for_each_at_least_until(values: &[f32], threshold: f32, mut f: impl FnMut(usize, f32) -> bool) {
    let (chunks, rest) = as_lanes(values);
    let tail_start = values.len() - rest.len();
    for (group, chunk) in chunks.enumerate() {
        if !chunk.iter().fold(false, |any, &x| any | (x >= threshold)) {
            continue;
        }
        for (lane, &x) in chunk.iter().enumerate() {
            if x >= threshold && f(group * LANES + lane, x) {
                return;
            }
        }
    }
    for (offset, &x) in rest.iter().enumerate() {
        if x >= threshold && f(tail_start + offset, x) {
            return;
        }
    }
}

/// Σ f(x) over `values`.
#[inline(always)]
pub(super) fn sum(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in values.chunks(BLOCK) {
        total += f64::from(block_sum(block, &f));
    }
    total
}

/// Σ f(x) over each `BLOCK` of `values`, into `sums` (cleared first).
#[inline(always)]
pub(super) fn block_sums(values: &[f32], f: impl Fn(f32) -> f32, sums: &mut Vec<f64>) {
    sums.clear();
    for block in values.chunks(BLOCK) {
        sums.push(f64::from(block_sum(block, &f)));
    }
}

/// Σ f(x) over at most a block, in f32 lanes.
#[inline(always)]
fn block_sum(block: &[f32], f: &impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (chunks, rest) = as_lanes(block);
    for chunk in chunks {
        let mut mapped = [0.0f32; LANES];
        for (slot, &x) in mapped.iter_mut().zip(chunk) {
            *slot = f(x);
        }
        for (lane, x) in lanes.iter_mut().zip(mapped) {
            *lane += x;
        }
    }
    let rest: f32 = rest.iter().map(|&x| f(x)).sum();
    lanes.iter().sum::<f32>() + rest
}

/// `values` as whole lane arrays plus the leftover tail. Fixed-size arrays, rather
/// than slices, are what lets LLVM turn the per-lane loops into vector code.
#[inline(always)]
fn as_lanes(values: &[f32]) -> (impl Iterator<Item = &[f32; LANES]>, &[f32]) {
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    (chunks.filter_map(|chunk| chunk.try_into().ok()), rest)
}

/// Thresholds (on scaled logits, i.e. log of the probability relative to the top
/// token) at which [`LevelStats::counts`] counts tokens, for top-k. Counting is cheap
/// (no exp), so the levels are fine: the chosen one holds few more tokens than k.
pub(super) const COUNT_LEVELS: [f32; 8] = [-1.0, -2.3, -4.6, -6.9, -9.2, -11.5, -13.8, -18.4];

/// Thresholds at which [`LevelStats::with_mass`] weighs tokens, for top-p: e^-2.3 ≈
/// 0.1, e^-6.9 ≈ 1e-3, e^-18.4 ≈ 1e-8. Few, as each adds work to an exp pass.
pub(super) const MASS_LEVELS: [f32; 3] = [-2.3, -6.9, -18.4];

/// Lanes of the level accumulators: one SSE register each, so that all of them stay
/// in registers.
const LEVEL_LANES: usize = 4;

/// How many tokens, and how much unnormalised probability, lie at or above each of
/// `N` levels; lets top-k / top-p collect only the tokens that can matter.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LevelStats<const N: usize> {
    /// The thresholds, each raised to the min-p floor.
    pub levels: [f32; N],
    /// Σ exp(s) over every token kept by min-p (0 from [`LevelStats::counts`]).
    pub total: f64,
    pub count: [usize; N],
    /// Σ exp(s) at or above each level (0 from [`LevelStats::counts`]).
    pub mass: [f64; N],
}

impl<const N: usize> LevelStats<N> {
    /// Counts per level of the scaled logits `scale(x)`, x in `values`; a token counts
    /// only when it is at least `floor` as well (min-p). No exp: a cheap pass.
    pub fn counts(
        values: &[f32],
        levels: [f32; N],
        floor: f32,
        scale: impl Fn(f32) -> f32,
    ) -> Self {
        Self::measure::<false>(values, levels, floor, scale)
    }

    /// As [`Self::counts`], with the masses and the total.
    pub fn with_mass(
        values: &[f32],
        levels: [f32; N],
        floor: f32,
        scale: impl Fn(f32) -> f32,
    ) -> Self {
        Self::measure::<true>(values, levels, floor, scale)
    }

    #[inline(always)]
    fn measure<const MASS: bool>(
        values: &[f32],
        levels: [f32; N],
        floor: f32,
        scale: impl Fn(f32) -> f32,
    ) -> Self {
        let levels = levels.map(|level| level.max(floor));
        let mut stats = Self {
            levels,
            total: 0.0,
            count: [0; N],
            mass: [0.0; N],
        };
        for block in values.chunks(BLOCK) {
            let mut lanes = LevelLanes::<N>::default();
            let mut chunks = block.chunks_exact(LEVEL_LANES);
            for chunk in &mut chunks {
                let mut scaled = [0.0f32; LEVEL_LANES];
                for (slot, &x) in scaled.iter_mut().zip(chunk) {
                    *slot = scale(x);
                }
                lanes.add::<MASS>(&scaled, floor, &levels);
            }
            // The tail, padded with -inf: it clears no threshold and weighs 0.
            let mut tail = [f32::NEG_INFINITY; LEVEL_LANES];
            for (slot, &x) in tail.iter_mut().zip(chunks.remainder()) {
                *slot = scale(x);
            }
            lanes.add::<MASS>(&tail, floor, &levels);
            stats.total += f64::from(lanes.total.iter().sum::<f32>());
            for j in 0..N {
                stats.count[j] += lanes.count[j].iter().sum::<f32>() as usize;
                stats.mass[j] += f64::from(lanes.mass[j].iter().sum::<f32>());
            }
        }
        stats
    }
}

/// One block's f32 lane accumulators for [`LevelStats`] (counts are exact: a block
/// is far below 2^24 entries).
struct LevelLanes<const N: usize> {
    total: [f32; LEVEL_LANES],
    count: [[f32; LEVEL_LANES]; N],
    mass: [[f32; LEVEL_LANES]; N],
}

impl<const N: usize> Default for LevelLanes<N> {
    fn default() -> Self {
        Self {
            total: [0.0; LEVEL_LANES],
            count: [[0.0; LEVEL_LANES]; N],
            mass: [[0.0; LEVEL_LANES]; N],
        }
    }
}

impl<const N: usize> LevelLanes<N> {
    /// Adds one lane-width of scaled logits.
    #[inline(always)]
    fn add<const MASS: bool>(
        &mut self,
        scaled: &[f32; LEVEL_LANES],
        floor: f32,
        levels: &[f32; N],
    ) {
        let mut weights = [0.0f32; LEVEL_LANES];
        if MASS {
            for (w, &s) in weights.iter_mut().zip(scaled) {
                *w = exp(s);
            }
            for ((total, &s), &w) in self.total.iter_mut().zip(scaled).zip(&weights) {
                *total += if s >= floor { w } else { 0.0 };
            }
        }
        for ((count, mass), &level) in self.count.iter_mut().zip(&mut self.mass).zip(levels) {
            for (((count, mass), &s), &w) in count.iter_mut().zip(mass).zip(scaled).zip(&weights) {
                let hit = s >= level;
                *count += if hit { 1.0 } else { 0.0 };
                if MASS {
                    *mass += if hit { w } else { 0.0 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.001_3;
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-87.5), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(-80.0) > 0.0);
    }

    #[test]
    fn max_and_first_invalid_scan_every_position() {
        for len in [0usize, 1, 7, 8, 9, 300, 1000] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 37) % 101) as f32).collect();
            let want = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&values), want);
            assert_eq!(checked_max(&values), Ok(want));
            assert_eq!(first_invalid(&values), None);
            for at in [0, len / 2, len.saturating_sub(1)]
                .into_iter()
                .filter(|&at| at < len)
            {
                for bad in [f32::NAN, f32::INFINITY] {
                    let mut row = values.clone();
                    row[at] = bad;
                    assert_eq!(first_invalid(&row), Some(at));
                    // A second bad entry later must not hide the first.
                    row[len - 1] = f32::NAN;
                    assert_eq!(checked_max(&row), Err(at));
                }
            }
        }
        assert_eq!(max(&[f32::NEG_INFINITY, f32::NAN, -3.0]), -3.0);
        assert_eq!(checked_max(&[f32::NEG_INFINITY; 9]), Ok(f32::NEG_INFINITY));
    }

    #[test]
    fn threshold_scans_visit_exactly_the_entries_above() {
        let values: Vec<f32> = (0..1003).map(|i| ((i * 7919) % 1000) as f32).collect();
        for threshold in [f32::NEG_INFINITY, 0.0, 500.0, 990.0, 999.0, 1000.0] {
            let mut seen = Vec::new();
            for_each_at_least(&values, threshold, |i, x| seen.push((i, x)));
            let want: Vec<(usize, f32)> = values
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, x)| x >= threshold)
                .collect();
            assert_eq!(seen, want);
            assert_eq!(
                first_at_least(&values, threshold),
                want.first().map(|&(i, _)| i)
            );
        }
    }

    #[test]
    fn sum_is_accurate_over_long_rows() {
        let values: Vec<f32> = (0..130_001).map(|i| (i % 7) as f32 * 0.1).collect();
        let want: f64 = values.iter().map(|&x| f64::from(x)).sum();
        assert!((sum(&values, |x| x) - want).abs() / want < 1e-6);
        assert_eq!(sum(&[], |x| x), 0.0);
    }

    #[test]
    fn level_stats_count_and_weigh_each_level() {
        // Scaled logits 0, -0.5, ..., -29.5: each level holds the tokens at or above it.
        let values: Vec<f32> = (0..60).map(|i| -(i as f32) / 2.0).collect();
        let stats = LevelStats::with_mass(&values, MASS_LEVELS, f32::NEG_INFINITY, |x| x);
        for (j, &level) in MASS_LEVELS.iter().enumerate() {
            let inside: Vec<f32> = values.iter().copied().filter(|&s| s >= level).collect();
            assert_eq!(stats.count[j], inside.len());
            let mass: f64 = inside.iter().map(|&s| f64::from(s).exp()).sum();
            assert!((stats.mass[j] - mass).abs() < 1e-6);
        }
        let total: f64 = values.iter().map(|&s| f64::from(s).exp()).sum();
        assert!((stats.total - total).abs() < 1e-6);

        let counts = LevelStats::counts(&values, COUNT_LEVELS, f32::NEG_INFINITY, |x| x);
        for (j, &level) in COUNT_LEVELS.iter().enumerate() {
            assert_eq!(
                counts.count[j],
                values.iter().filter(|&&s| s >= level).count()
            );
        }

        // A min-p floor of e^-3 caps every level and the total.
        let floored = LevelStats::with_mass(&values, MASS_LEVELS, -3.0, |x| x);
        assert_eq!(floored.count, [5, 7, 7]);
        assert_eq!(floored.levels, [-2.3, -3.0, -3.0]);
        let kept: f64 = (0..7).map(|i| (-f64::from(i) / 2.0).exp()).sum();
        assert!((floored.total - kept).abs() < 1e-6);
    }
}

//! The two time windows the autoscaler models need: an average over one-second buckets
//! (Knative's stable and panic windows) and a maximum over recent decisions (Knative's
//! scale-down delay, the HPA's scale-down stabilization).

use std::collections::VecDeque;

/// Samples averaged per one-second bucket, and window averages over those buckets, as
/// Knative's metric collector keeps them: a bucket with no sample counts as 0, and a
/// window longer than the history averages over the history only.
#[derive(Debug, Clone, Default)]
pub struct BucketAverage {
    /// (second, sum of samples, number of samples), oldest first, one per second.
    buckets: VecDeque<(i64, f64, u32)>,
    first_second: Option<i64>,
    /// Buckets older than this many seconds are forgotten.
    keep_s: i64,
}

impl BucketAverage {
    /// Keeps enough history for windows up to `longest_window_s`.
    pub fn new(longest_window_s: f64) -> Self {
        Self {
            buckets: VecDeque::new(),
            first_second: None,
            keep_s: longest_window_s.ceil() as i64 + 1,
        }
    }

    /// Records a sample taken at `now`.
    pub fn record(&mut self, now: f64, value: f64) {
        let second = now.floor() as i64;
        self.first_second.get_or_insert(second);
        match self.buckets.back_mut() {
            Some(b) if b.0 == second => {
                b.1 += value;
                b.2 += 1;
            }
            _ => self.buckets.push_back((second, value, 1)),
        }
        while self
            .buckets
            .front()
            .is_some_and(|b| b.0 <= second - self.keep_s)
        {
            self.buckets.pop_front();
        }
    }

    /// The average over the buckets of the last `window_s` seconds up to `now`, or
    /// `None` before the first sample.
    pub fn average(&self, now: f64, window_s: f64) -> Option<f64> {
        let first = self.first_second?;
        let second = now.floor() as i64;
        let window = (window_s.round() as i64).max(1);
        let oldest = (second - window + 1).max(first);
        let num_buckets = (second - oldest + 1).max(1);
        let sum: f64 = self
            .buckets
            .iter()
            .filter(|b| b.0 >= oldest && b.0 <= second)
            .map(|b| b.1 / f64::from(b.2))
            .sum();
        Some(sum / num_buckets as f64)
    }
}

/// The largest value recorded in the last `window_s` seconds.
#[derive(Debug, Clone)]
pub struct MaxWindow {
    window_s: f64,
    entries: VecDeque<(f64, u32)>,
}

impl MaxWindow {
    pub fn new(window_s: f64) -> Self {
        Self {
            window_s,
            entries: VecDeque::new(),
        }
    }

    /// Records `value` at `now` and returns the maximum over the window ending now.
    pub fn record(&mut self, now: f64, value: u32) -> u32 {
        self.entries.push_back((now, value));
        while self
            .entries
            .front()
            .is_some_and(|e| e.0 <= now - self.window_s)
        {
            self.entries.pop_front();
        }
        self.entries.iter().map(|e| e.1).max().unwrap_or(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_buckets_over_the_window_or_the_history() {
        let mut w = BucketAverage::new(60.0);
        assert_eq!(w.average(0.0, 6.0), None);
        for tenth in 0..100 {
            // 0 for the first 5 s, 10 for the next 5 s.
            let t = f64::from(tenth) / 10.0;
            w.record(t, if t < 5.0 { 0.0 } else { 10.0 });
        }
        assert_eq!(w.average(9.9, 60.0), Some(5.0));
        assert_eq!(w.average(9.9, 5.0), Some(10.0));
        // A silent second (no sample) counts as zero.
        w.record(11.0, 10.0);
        assert_eq!(w.average(11.0, 3.0), Some(20.0 / 3.0));
    }

    #[test]
    fn max_window_forgets_after_its_length() {
        let mut m = MaxWindow::new(10.0);
        assert_eq!(m.record(0.0, 5), 5);
        assert_eq!(m.record(5.0, 2), 5);
        assert_eq!(m.record(10.0, 1), 2);
        assert_eq!(m.record(15.0, 1), 1);
    }
}

//! Admission control: how many requests and prompt tokens may wait for the engine
//! (`--max-num-queued-reqs`, `--max-num-queued-tokens`), and when a refused client
//! should come back, estimated from how fast the queue has been draining.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many recent dequeues the drain rate is measured over.
const DRAIN_WINDOW: usize = 64;
/// Dequeues older than this say nothing about the current rate.
const DRAIN_MAX_AGE: Duration = Duration::from_secs(120);
/// Retry-After when nothing has drained recently (no rate to go by).
const RETRY_WITHOUT_RATE: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A refused request: the queue limit it hit and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub max_reqs: Option<usize>,
    pub max_tokens: Option<usize>,
    pub retry_after: Duration,
}

/// Requests and prompt tokens accepted but not yet scheduled, shared by every handle and
/// the engine thread.
#[derive(Debug)]
pub struct Admission {
    reqs: AtomicUsize,
    tokens: AtomicUsize,
    max_reqs: Option<usize>,
    max_tokens: Option<usize>,
    /// When recent requests left the queue for the engine.
    drained: Mutex<VecDeque<Instant>>,
}

impl Admission {
    pub fn new(max_reqs: Option<usize>, max_tokens: Option<usize>) -> Self {
        Self {
            reqs: AtomicUsize::new(0),
            tokens: AtomicUsize::new(0),
            max_reqs,
            max_tokens,
            drained: Mutex::new(VecDeque::with_capacity(DRAIN_WINDOW)),
        }
    }

    /// Takes a place for a request of `prompt_tokens`, or says when to retry. A request
    /// larger than the token limit is still let into an empty queue: nothing it waits
    /// for would make room for it later.
    pub fn try_admit(&self, prompt_tokens: usize) -> Result<(), Refusal> {
        let reqs_ok = self
            .reqs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                self.max_reqs.is_none_or(|max| n < max).then_some(n + 1)
            })
            .is_ok();
        let tokens_ok = reqs_ok
            && self
                .tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    let fits = self
                        .max_tokens
                        .is_none_or(|max| t == 0 || t + prompt_tokens <= max);
                    fits.then_some(t + prompt_tokens)
                })
                .is_ok();
        if tokens_ok {
            return Ok(());
        }
        if reqs_ok {
            self.reqs.fetch_sub(1, Ordering::AcqRel);
        }
        Err(Refusal {
            max_reqs: self.max_reqs,
            max_tokens: self.max_tokens,
            retry_after: self.retry_after(Instant::now()),
        })
    }

    /// A request left the queue: scheduled (`drained`), refused by the engine or aborted.
    pub fn release(&self, prompt_tokens: usize, drained: bool) {
        let _ = self
            .reqs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(prompt_tokens))
            });
        if drained {
            let mut times = self.drained.lock().unwrap_or_else(|e| e.into_inner());
            if times.len() == DRAIN_WINDOW {
                times.pop_front();
            }
            times.push_back(Instant::now());
        }
    }

    pub fn num_queued(&self) -> usize {
        self.reqs.load(Ordering::Acquire)
    }

    pub fn queued_tokens(&self) -> usize {
        self.tokens.load(Ordering::Acquire)
    }

    /// How long until the requests queued now have drained at the recent rate, within
    /// 1–60 s.
    pub fn retry_after(&self, now: Instant) -> Duration {
        let times = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        let recent: Vec<Instant> = times
            .iter()
            .copied()
            .filter(|t| now.duration_since(*t) <= DRAIN_MAX_AGE)
            .collect();
        let estimate = match (recent.first(), recent.len()) {
            (Some(&first), len) if len >= 2 => {
                // `len` dequeues over the span from the first of them until now.
                let span = now.duration_since(first).as_secs_f64().max(1e-3);
                let rate = len as f64 / span;
                Duration::from_secs_f64((self.num_queued().max(1) as f64 / rate).ceil())
            }
            _ => RETRY_WITHOUT_RATE,
        };
        estimate.clamp(RETRY_MIN, RETRY_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_limit_is_exact() {
        let a = Admission::new(Some(2), None);
        assert!(a.try_admit(10).is_ok());
        assert!(a.try_admit(10).is_ok());
        let refusal = a.try_admit(10).unwrap_err();
        assert_eq!(refusal.max_reqs, Some(2));
        assert_eq!(a.num_queued(), 2);
        a.release(10, true);
        assert!(a.try_admit(10).is_ok());
    }

    #[test]
    fn token_limit_is_exact_and_an_empty_queue_takes_anything() {
        let a = Admission::new(None, Some(100));
        assert!(a.try_admit(60).is_ok());
        assert!(a.try_admit(40).is_ok(), "at the limit");
        assert!(a.try_admit(1).is_err(), "past the limit");
        assert_eq!((a.num_queued(), a.queued_tokens()), (2, 100));
        a.release(60, true);
        a.release(40, true);
        assert!(
            a.try_admit(500).is_ok(),
            "an empty queue admits a large prompt"
        );
        assert!(a.try_admit(1).is_err());
    }

    #[test]
    fn a_token_refusal_gives_back_the_request_place() {
        let a = Admission::new(Some(5), Some(10));
        a.try_admit(10).unwrap();
        assert!(a.try_admit(5).is_err());
        assert_eq!(a.num_queued(), 1);
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        let a = Admission::new(Some(100), None);
        assert_eq!(a.retry_after(Instant::now()), RETRY_WITHOUT_RATE);
        for _ in 0..40 {
            a.try_admit(1).unwrap();
        }
        // 10 dequeues over the last ~2 s: 5 per second, 30 left → about 6 s.
        let start = Instant::now();
        {
            let mut times = a.drained.lock().unwrap();
            for i in 0..10 {
                times.push_back(start - Duration::from_millis(2000 - 200 * i));
            }
        }
        for _ in 0..10 {
            a.reqs.fetch_sub(1, Ordering::AcqRel);
        }
        let secs = a.retry_after(start).as_secs();
        assert!((5..=7).contains(&secs), "{secs}");
        // A fast drain still asks for at least a second; a stalled one at most a minute.
        assert_eq!(a.retry_after(start + DRAIN_MAX_AGE * 2), RETRY_WITHOUT_RATE);
    }
}

//! One request's timeline in the engine — arrival, first scheduled, first and latest
//! token — turned into the latencies vLLM's histograms observe.

use std::time::{Duration, Instant};

use crate::metrics::FinishedRequest;

/// What a new token adds to the latency histograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenLatency {
    /// The request's first token: time since arrival.
    First(Duration),
    /// A later token: time since the previous one.
    Next(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    arrival: Instant,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    generated: usize,
}

impl Timeline {
    pub fn new(arrival: Instant) -> Self {
        Self {
            arrival,
            scheduled: None,
            first_token: None,
            last_token: None,
            generated: 0,
        }
    }

    /// Marks the first time the request runs; true only that first time.
    pub fn scheduled(&mut self, now: Instant) -> bool {
        let first = self.scheduled.is_none();
        self.scheduled.get_or_insert(now);
        first
    }

    pub fn token(&mut self, now: Instant) -> TokenLatency {
        self.generated += 1;
        let latency = match self.last_token {
            None => TokenLatency::First(now.saturating_duration_since(self.arrival)),
            Some(last) => TokenLatency::Next(now.saturating_duration_since(last)),
        };
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        latency
    }

    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The finished request's numbers; phases it never reached count as zero.
    pub fn finish(
        &self,
        now: Instant,
        finished_reason: &'static str,
        (prompt_tokens, max_tokens, n): (usize, usize, usize),
    ) -> FinishedRequest {
        let scheduled = self.scheduled.unwrap_or(now);
        let first_token = self.first_token.unwrap_or(now);
        FinishedRequest {
            finished_reason,
            e2e: now.saturating_duration_since(self.arrival),
            queue: scheduled.saturating_duration_since(self.arrival),
            inference: now.saturating_duration_since(scheduled),
            prefill: first_token.saturating_duration_since(scheduled),
            decode: now.saturating_duration_since(first_token),
            prompt_tokens,
            generation_tokens: self.generated,
            max_tokens,
            n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timeline::new(t0);
        assert!(t.scheduled(t0 + ms(10)));
        assert!(
            !t.scheduled(t0 + ms(20)),
            "a preempted request is not re-queued"
        );
        assert_eq!(t.token(t0 + ms(30)), TokenLatency::First(ms(30)));
        assert_eq!(t.token(t0 + ms(45)), TokenLatency::Next(ms(15)));
        let f = t.finish(t0 + ms(50), "length", (7, 2, 1));
        assert_eq!((f.e2e, f.queue, f.inference), (ms(50), ms(10), ms(40)));
        assert_eq!((f.prefill, f.decode), (ms(20), ms(20)));
        assert_eq!((f.prompt_tokens, f.generation_tokens), (7, 2));
    }

    #[test]
    fn an_aborted_waiting_request_spent_all_its_time_queued() {
        let t0 = Instant::now();
        let f = Timeline::new(t0).finish(t0 + Duration::from_secs(2), "abort", (5, 9, 1));
        assert_eq!(f.queue, Duration::from_secs(2));
        assert_eq!((f.inference, f.generation_tokens), (Duration::ZERO, 0));
    }
}

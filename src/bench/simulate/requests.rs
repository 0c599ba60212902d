//! The record of one simulated request: when it arrived, started, produced its first
//! token and finished, or why it was dropped.

use serde::Serialize;

use super::capacity::CapacityCurve;
use super::trace::TraceRequest;

/// Index of a request in the simulation's record table.
pub type RequestId = usize;

/// Prompt length assumed for a trace request that does not give one.
const DEFAULT_PROMPT_TOKENS: f64 = 256.0;

/// Why a request was never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// It waited longer than `--request-timeout` without starting (Knative's revision
    /// timeout, a client's patience).
    Timeout,
    /// Its replica was removed and did not finish it within `--shutdown-timeout`.
    Shutdown,
    /// The simulation's horizon ended before it finished.
    Unfinished,
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub arrival: f64,
    pub prompt_tokens: f64,
    pub output_tokens: f64,
    /// Service demand in units of the capacity report's average request: its output
    /// length over the report's mean output length (1 when either is unknown).
    pub work: f64,
    /// When a replica started running it (the end of its queueing delay).
    pub started: Option<f64>,
    pub first_token: Option<f64>,
    pub finished: Option<f64>,
    pub dropped: Option<DropReason>,
}

impl RequestRecord {
    /// The record of a trace request, not yet arrived anywhere.
    pub fn new(r: &TraceRequest, curve: &CapacityCurve) -> Self {
        let mean = curve.mean_output_tokens();
        let output = r
            .output_tokens
            .map(f64::from)
            .or(mean)
            .unwrap_or(DEFAULT_PROMPT_TOKENS);
        let work = match (r.output_tokens, mean) {
            (Some(o), Some(m)) if m > 0.0 => (f64::from(o) / m).max(1e-3),
            _ => 1.0,
        };
        Self {
            arrival: r.t_seconds,
            prompt_tokens: r.prompt_tokens.map_or(DEFAULT_PROMPT_TOKENS, f64::from),
            output_tokens: output,
            work,
            started: None,
            first_token: None,
            finished: None,
            dropped: None,
        }
    }

    /// Finished or dropped: nothing more will happen to it.
    pub fn is_resolved(&self) -> bool {
        self.finished.is_some() || self.dropped.is_some()
    }

    /// Seconds from arrival to start, for a request that started.
    pub fn queue_delay(&self) -> Option<f64> {
        self.started.map(|s| s - self.arrival)
    }

    /// Seconds from arrival to the first token, for a finished request.
    pub fn ttft(&self) -> Option<f64> {
        self.finished?;
        self.first_token.map(|f| f - self.arrival)
    }

    /// Seconds from arrival to the last token, for a finished request.
    pub fn e2e(&self) -> Option<f64> {
        self.finished.map(|f| f - self.arrival)
    }
}

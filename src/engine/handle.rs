//! The engine's cloneable front: submit a request, get a stream of its tokens.
//! Dropping the stream aborts the request; the engine then frees its blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as tmpsc, watch};

use super::admission::Admission;
use super::sampling_params::SamplingParams;
use super::sequence::FinishReason;
use super::stats::EngineStats;
use crate::runner::sampler::SampledToken;

/// Identifies a request for its whole life in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A validated request: prompt tokens and sampling parameters.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
}

/// What the engine tells a request's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// Choice `index` got a token; `finish` is set on its last event.
    Token {
        index: usize,
        token: u32,
        /// Present when the request asked for logprobs.
        logprobs: Option<SampledToken>,
        finish: Option<FinishReason>,
    },
    /// Choice `index` ended without a new token (aborted, or stopped by the caller).
    Finished { index: usize, reason: FinishReason },
    /// The engine failed this request; no more events follow.
    Error(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full ({queued} requests with {queued_tokens} prompt tokens waiting; limits: --max-num-queued-reqs {}, --max-num-queued-tokens {})", limit(.max_reqs), limit(.max_tokens))]
    QueueFull {
        queued: usize,
        queued_tokens: usize,
        max_reqs: Option<usize>,
        max_tokens: Option<usize>,
        /// When the queue should have room again, from its recent drain rate.
        retry_after: Duration,
    },
    #[error("the engine has stopped")]
    EngineStopped,
}

fn limit(max: &Option<usize>) -> String {
    max.map_or_else(|| "none".to_string(), |m| m.to_string())
}

pub(crate) enum Command {
    Add {
        id: RequestId,
        /// When the caller submitted it (queue time and latencies start here).
        arrival: Instant,
        request: EngineRequest,
        events: tmpsc::UnboundedSender<EngineEvent>,
    },
    Abort(RequestId),
    /// The caller stopped one choice (a stop string matched).
    FinishChoice {
        id: RequestId,
        index: usize,
    },
    /// Run one throw-away forward pass; answers with its duration.
    Warmup(mpsc::Sender<Result<Duration, String>>),
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    admission: Arc<Admission>,
    stats: watch::Receiver<EngineStats>,
}

impl EngineHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        admission: Arc<Admission>,
        stats: watch::Receiver<EngineStats>,
    ) -> Self {
        Self {
            commands,
            next_id: Arc::new(AtomicU64::new(0)),
            admission,
            stats,
        }
    }

    /// Queues a request. Fails at once with [`SubmitError::QueueFull`] when the waiting
    /// requests or their prompt tokens are at `--max-num-queued-reqs` /
    /// `--max-num-queued-tokens`; running ones are unaffected.
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream, SubmitError> {
        let prompt_tokens = request.prompt_ids.len();
        if let Err(refusal) = self.admission.try_admit(prompt_tokens) {
            return Err(SubmitError::QueueFull {
                queued: self.admission.num_queued(),
                queued_tokens: self.admission.queued_tokens(),
                max_reqs: refusal.max_reqs,
                max_tokens: refusal.max_tokens,
                retry_after: refusal.retry_after,
            });
        }
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = tmpsc::unbounded_channel();
        if self
            .commands
            .send(Command::Add {
                id,
                arrival: Instant::now(),
                request,
                events: tx,
            })
            .is_err()
        {
            self.admission.release(prompt_tokens, false);
            return Err(SubmitError::EngineStopped);
        }
        Ok(RequestStream {
            id,
            events: rx,
            commands: self.commands.clone(),
            done: false,
        })
    }

    /// Runs one throw-away forward pass on the engine thread so that the first request
    /// pays no one-time costs; blocks until done and returns how long it took.
    pub fn warmup(&self) -> anyhow::Result<Duration> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::Warmup(tx))
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow::anyhow!("the engine stopped during warm-up"))?
            .map_err(|e| anyhow::anyhow!("warm-up failed: {e}"))
    }

    /// The latest per-step snapshot.
    pub fn stats(&self) -> EngineStats {
        self.stats.borrow().clone()
    }

    /// A receiver of the per-step snapshots that outlives the handle (read it after the
    /// engine thread has ended to get the final numbers).
    pub fn stats_watch(&self) -> watch::Receiver<EngineStats> {
        self.stats.clone()
    }

    /// Requests accepted and not yet running.
    pub fn num_queued(&self) -> usize {
        self.admission.num_queued()
    }
}

/// The events of one request. Dropping it aborts the request.
pub struct RequestStream {
    id: RequestId,
    events: tmpsc::UnboundedReceiver<EngineEvent>,
    commands: mpsc::Sender<Command>,
    done: bool,
}

impl RequestStream {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` once the request is over.
    pub async fn recv(&mut self) -> Option<EngineEvent> {
        let event = self.events.recv().await;
        self.done |= event.is_none();
        event
    }

    /// [`Self::recv`] for threads outside an async runtime.
    pub fn blocking_recv(&mut self) -> Option<EngineEvent> {
        let event = self.events.blocking_recv();
        self.done |= event.is_none();
        event
    }

    /// Ends the whole request now; no more events follow.
    pub fn abort(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }

    /// Ends choice `index` now (a stop string matched); its blocks are freed.
    pub fn finish_choice(&self, index: usize) {
        let _ = self
            .commands
            .send(Command::FinishChoice { id: self.id, index });
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

//! The engine's cloneable front: submit a request, get a stream of its tokens.
//! Dropping the stream aborts the request; the engine then frees its blocks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::{mpsc as tmpsc, watch};

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
    #[error("the request queue is full ({max} requests waiting)")]
    QueueFull { max: usize },
    #[error("the engine has stopped")]
    EngineStopped,
}

pub(crate) enum Command {
    Add {
        id: RequestId,
        request: EngineRequest,
        events: tmpsc::UnboundedSender<EngineEvent>,
    },
    Abort(RequestId),
    /// The caller stopped one choice (a stop string matched).
    FinishChoice {
        id: RequestId,
        index: usize,
    },
}

/// Requests accepted but not yet running, shared between handles and the engine.
#[derive(Debug, Default)]
pub(crate) struct QueueCounter(AtomicUsize);

impl QueueCounter {
    /// Takes a place if fewer than `max` are taken.
    fn try_take(&self, max: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    queued: Arc<QueueCounter>,
    max_num_queued_reqs: usize,
    stats: watch::Receiver<EngineStats>,
}

impl EngineHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        queued: Arc<QueueCounter>,
        max_num_queued_reqs: usize,
        stats: watch::Receiver<EngineStats>,
    ) -> Self {
        Self {
            commands,
            next_id: Arc::new(AtomicU64::new(0)),
            queued,
            max_num_queued_reqs,
            stats,
        }
    }

    /// Queues a request. Fails at once with [`SubmitError::QueueFull`] when
    /// `--max-num-queued-reqs` requests are already waiting; running ones are unaffected.
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream, SubmitError> {
        if !self.queued.try_take(self.max_num_queued_reqs) {
            return Err(SubmitError::QueueFull {
                max: self.max_num_queued_reqs,
            });
        }
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = tmpsc::unbounded_channel();
        if self
            .commands
            .send(Command::Add {
                id,
                request,
                events: tx,
            })
            .is_err()
        {
            self.queued.release();
            return Err(SubmitError::EngineStopped);
        }
        Ok(RequestStream {
            id,
            events: rx,
            commands: self.commands.clone(),
            done: false,
        })
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
        self.queued.get()
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

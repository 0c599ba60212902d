//! SIGTERM / SIGINT: stop taking requests, let those in flight finish until the
//! shutdown timeout, then cut the rest (a second signal cuts at once).

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use surge::api::AppState;

/// How long requests that were cut get to write their last chunk.
const CUT_GRACE: Duration = Duration::from_secs(5);
/// How long open connections get to close after the drain.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// SIGTERM (Kubernetes) and SIGINT (Ctrl-C).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Drains: 503 for new requests from now, in-flight ones finish within `timeout`.
pub async fn drain(state: &AppState, timeout: Duration, signals: &mut Signals) {
    let lifecycle = &state.lifecycle;
    lifecycle.drain();
    tracing::info!(
        in_flight = lifecycle.num_in_flight(),
        timeout_s = timeout.as_secs(),
        "draining"
    );
    let finished = tokio::select! {
        idle = tokio::time::timeout(timeout, lifecycle.wait_idle()) => idle.is_ok(),
        () = signals.next() => false,
    };
    if !finished {
        tracing::warn!(
            in_flight = lifecycle.num_in_flight(),
            "shutdown timeout: ending the requests still running"
        );
        lifecycle.cut();
        if tokio::time::timeout(CUT_GRACE, lifecycle.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = lifecycle.num_in_flight(),
                "requests did not end"
            );
        }
    }
}

//! Download progress (OCI pulls, Hugging Face hub files): an indicatif bar (bytes, rate,
//! ETA) on a terminal, otherwise a log line every few seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

/// Bytes received so far, shared by the concurrent layer downloads.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    total: u64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Mutex<Instant>,
    label: String,
}

impl Progress {
    /// `bar`: draw a progress bar (the caller knows whether stderr is a terminal).
    pub fn new(label: &str, total: u64, bar: bool) -> Self {
        let bar = bar.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("a valid template"),
            );
            bar.set_message(label.to_string());
            bar
        });
        Self {
            inner: Arc::new(Inner {
                total,
                done: AtomicU64::new(0),
                bar,
                started: Instant::now(),
                last_line: Mutex::new(Instant::now()),
                label: label.to_string(),
            }),
        }
    }

    pub fn add(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.inc(n);
        }
    }

    /// Logs progress every few seconds until the returned guard is dropped (no-op with a bar).
    pub fn spawn_logger(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.inner.bar.is_some() {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOG_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                this.log_line();
            }
        }))
    }

    /// For synchronous downloads, called as bytes arrive: a log line when the last one is
    /// [`LOG_EVERY`] old (no-op with a bar).
    pub fn log_if_due(&self) {
        if self.inner.bar.is_some() {
            return;
        }
        let mut last = self
            .inner
            .last_line
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            drop(last);
            self.log_line();
        }
    }

    fn log_line(&self) {
        let inner = &self.inner;
        let done = inner.done.load(Ordering::Relaxed);
        let secs = inner.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = (rate > 0.0).then(|| (inner.total.saturating_sub(done)) as f64 / rate);
        tracing::info!(
            source = %inner.label,
            "pulled {} of {} ({}/s, ETA {})",
            bytesize::ByteSize(done).display().iec(),
            bytesize::ByteSize(inner.total).display().iec(),
            bytesize::ByteSize(rate as u64).display().iec(),
            eta.map_or_else(|| "?".to_string(), |s| format!("{s:.0}s")),
        );
    }

    /// Clears the bar and logs the total.
    pub fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
        self.log_line();
    }
}

//! Progress of one load level: an indicatif bar on a terminal, log lines otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Counts finished requests of one level.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    /// The next tenth of `total` that logs a line (without a terminal).
    next_log: u64,
}

impl Progress {
    /// A bar (or log lines) for `total` requests labelled `label`.
    pub fn new(label: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} requests {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        tracing::info!("{label}: up to {total} requests");
        Progress {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            next_log: 1,
        }
    }

    /// One more request ended; `errors` is the number failed so far.
    pub fn inc(&mut self, errors: u64) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if errors > 0 {
                    bar.set_message(format!("({errors} errors)"));
                }
            }
            None => {
                if self.done * 10 >= self.next_log * self.total {
                    tracing::info!(
                        "{}: {}/{} requests done, {errors} errors",
                        self.label,
                        self.done,
                        self.total
                    );
                    self.next_log = self.done * 10 / self.total.max(1) + 1;
                }
            }
        }
    }

    /// Ends the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

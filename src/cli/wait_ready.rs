//! `surge wait-ready <base-url>`: polls /health until the server is ready — through
//! refused connections and 503s, as while Knative wakes a revision scaled to zero — for
//! pipelines that must wake a model before using it.

use std::time::{Duration, Instant};

use clap::Args;

#[derive(Args, Debug)]
pub struct WaitReadyArgs {
    /// The server's base URL, e.g. http://my-model.default.svc.cluster.local.
    url: String,
    /// Give up after this long (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Time between polls.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: WaitReadyArgs) -> anyhow::Result<()> {
    let url = health_url(&args.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(poll(&url, args.timeout, args.interval))
}

/// `<base>/health` (a URL that already ends in /health is kept).
fn health_url(base: &str) -> anyhow::Result<reqwest::Url> {
    let base = base.trim_end_matches('/');
    let full = if base.ends_with("/health") {
        base.to_string()
    } else {
        format!("{base}/health")
    };
    reqwest::Url::parse(&full).map_err(|e| anyhow::anyhow!("bad URL {full:?}: {e}"))
}

async fn poll(url: &reqwest::Url, timeout: Duration, interval: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().build()?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = match client
            .get(url.clone())
            .timeout(left.min(REQUEST_TIMEOUT).max(Duration::from_millis(1)))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                tracing::info!(
                    url = %url,
                    after_s = started.elapsed().as_secs_f64(),
                    "ready"
                );
                return Ok(());
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                format!("{status} {}", body.trim())
            }
            Err(e) => format!("no answer ({})", root_cause(&e)),
        };
        if answer != last {
            tracing::info!(url = %url, "not ready yet: {answer}");
            last = answer;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!(
                "{url} was not ready after {}; last answer: {last}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(interval.min(left)).await;
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

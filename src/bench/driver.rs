//! A whole `surge bench` run: checks the configuration, builds the workload, runs each
//! level in turn, then writes the report, the plot, the advice and the overlay.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::advisor::{self, Slos};
use super::client::{self, Target};
use super::load::{self, Arrivals, LevelPlan};
use super::overlay;
use super::plot;
use super::report::{self, Report};
use super::workload::{self, Api, LengthDist, RequestSpec, TokenizerSource};

/// The levels of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Sweep {
    /// One level per concurrency, in the order given.
    Concurrency(Vec<usize>),
    /// One level per Poisson rate (requests/s).
    Rate(Vec<f64>),
}

/// Where the prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadSource {
    /// Synthetic prompts; token counts from `tokenizer` (a model directory), or from the
    /// server's `/tokenize` when `None`.
    Synthetic {
        prompt_tokens: LengthDist,
        tokenizer: Option<PathBuf>,
    },
    /// A JSONL dataset (see `workload::read_dataset`).
    Dataset(PathBuf),
}

/// Everything `surge bench` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// The server's base URL (`http://host:port`; a trailing `/v1` is dropped).
    pub url: String,
    /// The served model name; `None` asks `/v1/models` and takes the only one.
    pub model: Option<String>,
    pub api: Api,
    pub ignore_eos: bool,
    pub sweep: Sweep,
    /// Per level: at most this many requests …
    pub max_requests: usize,
    /// … and no new request after this long (running ones are then cancelled).
    pub duration: Duration,
    pub request_timeout: Duration,
    pub workload: WorkloadSource,
    /// Tokens to generate (a dataset entry's own `max_tokens` wins).
    pub output_tokens: LengthDist,
    pub seed: u64,
    /// The server's Prometheus endpoint, sampled during each level; `None`: `URL/metrics`.
    pub metrics_url: Option<String>,
    pub output: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub plot_font: Option<PathBuf>,
    pub slos: Slos,
    pub write_overlay: Option<PathBuf>,
    /// The deploy/ manifests that `write_overlay` copies.
    pub deploy_dir: PathBuf,
}

impl BenchConfig {
    /// Rejects combinations that make no sense, naming the flags.
    pub fn validate(&self) -> anyhow::Result<()> {
        match &self.sweep {
            Sweep::Concurrency(c) if c.is_empty() || c.contains(&0) => {
                bail!("--concurrency: give one or more counts of at least 1")
            }
            Sweep::Rate(r) if r.is_empty() || r.iter().any(|r| !(*r > 0.0 && r.is_finite())) => {
                bail!("--rate: give one or more positive request rates")
            }
            _ => {}
        }
        if self.max_requests == 0 {
            bail!("--max-requests must be at least 1");
        }
        if self.duration.is_zero() || self.request_timeout.is_zero() {
            bail!("--duration and --request-timeout must be longer than 0");
        }
        if let Some(p) = &self.plot {
            plot::Format::of(p)?;
        } else if self.plot_font.is_some() {
            bail!("--plot-font only matters with --plot");
        }
        if self.write_overlay.is_some() && !self.slos.any() {
            bail!("--write-overlay needs objectives to find the knee: --slo-ttft-p90, --slo-itl-p90 or --slo-e2e-p90");
        }
        if let (Some(_), Sweep::Concurrency(c)) = (&self.write_overlay, &self.sweep) {
            if c.len() < 2 {
                tracing::warn!("one concurrency level: the advisor cannot interpolate; sweep several (e.g. --concurrency 1,2,4,8,16)");
            }
        }
        for (name, slo) in [
            ("--slo-ttft-p90", self.slos.ttft_p90_s),
            ("--slo-itl-p90", self.slos.itl_p90_s),
            ("--slo-e2e-p90", self.slos.e2e_p90_s),
        ] {
            if slo.is_some_and(|s| s <= 0.0) {
                bail!("{name} must be longer than 0");
            }
        }
        Ok(())
    }

    fn base_url(&self) -> String {
        let url = self.url.trim_end_matches('/');
        url.strip_suffix("/v1").unwrap_or(url).to_string()
    }

    fn levels(&self) -> Vec<LevelPlan> {
        let plan = |arrivals| LevelPlan {
            arrivals,
            max_requests: self.max_requests,
            duration: self.duration,
        };
        match &self.sweep {
            Sweep::Concurrency(cs) => cs.iter().map(|&c| plan(Arrivals::Concurrency(c))).collect(),
            Sweep::Rate(rs) => rs
                .iter()
                .enumerate()
                .map(|(i, &rate)| {
                    plan(Arrivals::Rate {
                        rate,
                        seed: self.seed.wrapping_add(i as u64),
                    })
                })
                .collect(),
        }
    }
}

/// The model name: given, or the only one `/v1/models` lists.
async fn resolve_model(
    client: &reqwest::Client,
    base: &str,
    given: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(m) = given {
        return Ok(m.to_string());
    }
    let url = format!("{base}/v1/models");
    let v: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url} (or pass --model)"))?
        .error_for_status()
        .with_context(|| format!("GET {url} (or pass --model)"))?
        .json()
        .await?;
    let ids: Vec<&str> = v["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    match ids.as_slice() {
        [one] => {
            tracing::info!("benchmarking model {one:?} (the only one {url} lists)");
            Ok(one.to_string())
        }
        [] => bail!("{url} lists no model; pass --model"),
        many => bail!("{url} lists several models ({many:?}); pass --model"),
    }
}

/// The requests of every level: level `i` gets its own `max_requests`, so that no
/// prompt repeats across levels (a prefix cache would flatter the later ones).
async fn build_requests(
    config: &BenchConfig,
    target: &Target,
    num_levels: usize,
) -> anyhow::Result<Vec<RequestSpec>> {
    let n = config.max_requests * num_levels;
    match &config.workload {
        WorkloadSource::Dataset(path) => {
            let specs = workload::read_dataset(path, config.output_tokens, config.seed)?;
            // Any body check (e.g. `messages` with --api completions) fails now, not per request.
            specs[0].body(config.api, &target.model, config.ignore_eos)?;
            Ok(specs)
        }
        WorkloadSource::Synthetic {
            prompt_tokens,
            tokenizer,
        } => {
            let source = match tokenizer {
                Some(dir) => TokenizerSource::local(dir)?,
                None => TokenizerSource::Server {
                    client: target.client.clone(),
                    base_url: target.base_url.clone(),
                    model: target.model.clone(),
                },
            };
            tracing::info!("building {n} synthetic prompts");
            workload::synthetic(
                &source,
                n,
                *prompt_tokens,
                config.output_tokens,
                config.seed,
            )
            .await
        }
    }
}

/// Runs the benchmark and returns its report (also written, plotted and advised on as
/// the configuration asks).
pub async fn run(config: &BenchConfig) -> anyhow::Result<Report> {
    config.validate()?;
    let base_url = config.base_url();
    let http = client::http_client(config.request_timeout)?;
    let model = resolve_model(&http, &base_url, config.model.as_deref()).await?;
    let target = Arc::new(Target {
        client: http,
        base_url: base_url.clone(),
        model: model.clone(),
        api: config.api,
        ignore_eos: config.ignore_eos,
    });
    let plans = config.levels();
    let specs = build_requests(config, &target, plans.len()).await?;
    let metrics_url = config
        .metrics_url
        .clone()
        .unwrap_or_else(|| format!("{base_url}/metrics"));

    let started_at = chrono::Utc::now().to_rfc3339();
    let mut levels = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let slice: Vec<RequestSpec> = (0..config.max_requests)
            .map(|j| specs[(i * config.max_requests + j) % specs.len()].clone())
            .collect();
        let stats =
            load::run_level(target.clone(), Arc::new(slice), plan, Some(&metrics_url)).await;
        tracing::info!(
            "{}: {} of {} requests completed, {:.1} output tokens/s, TTFT p90 {}",
            plan.label(),
            stats.completed,
            stats.requests,
            stats.output_tokens_per_s,
            advisor::fmt_s(stats.ttft_s.p90)
        );
        levels.push(stats);
    }
    let api = match config.api {
        Api::Completions => "completions",
        Api::Chat => "chat",
    };
    let mut report = Report {
        url: base_url,
        model,
        api: api.into(),
        surge_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        levels,
        advice: None,
    };
    println!("{}", report.summary());
    if config.slos.any() {
        let advice = advisor::advise(&report.levels, &config.slos);
        println!("{}", report::advice_text(&advice));
        report.advice = Some(advice);
    }
    if let Some(path) = &config.output {
        report.write(path)?;
        println!("report: {}", path.display());
    }
    if let Some(path) = &config.plot {
        let title = format!("{} at {}", report.model, report.url);
        plot::write_plot(path, &report.levels, &title, config.plot_font.as_deref())?;
        println!("plot: {}", path.display());
    }
    if let (Some(dir), Some(advice)) = (&config.write_overlay, &report.advice) {
        let changed = overlay::write_overlay(&config.deploy_dir, dir, advice)?;
        println!(
            "overlay: {} (a copy of {})",
            dir.display(),
            config.deploy_dir.display()
        );
        for line in changed {
            println!("  {line}");
        }
    }
    Ok(report)
}

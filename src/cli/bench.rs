//! `surge bench`: load-test an OpenAI-compatible server and advise on autoscaling
//! targets; `surge bench simulate` compares autoscaling policies on a trace.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use surge::bench::advisor::Slos;
use surge::bench::simulate::SimulateArgs;
use surge::bench::workload::{Api, LengthDist};
use surge::bench::{BenchConfig, Sweep, WorkloadSource};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Replay a request-arrival trace through models of Knative's KPA and KEDA + HPA.
    Simulate(SimulateArgs),
}

/// The load generator's flags.
#[derive(Args, Debug)]
struct LoadArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine).
    #[arg(long, required = true)]
    url: Option<String>,
    /// The served model name (default: the only model GET /v1/models lists).
    #[arg(long)]
    model: Option<String>,
    /// The endpoint: completions (exact prompt lengths) or chat.
    #[arg(long, value_enum, default_value = "completions")]
    api: Api,
    /// Concurrency levels to sweep, comma-separated; one level per value.
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    concurrency: Vec<usize>,
    /// Poisson request rates (requests/s) to sweep instead, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Per level: at most this many requests.
    #[arg(long, default_value_t = 100)]
    max_requests: usize,
    /// Per level: no new request after this long; requests still running are cancelled.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The longest one request may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Prompt tokens of synthetic prompts: N, MIN..MAX (uniform) or normal:MEAN,SD.
    #[arg(long, conflicts_with = "dataset")]
    prompt_tokens: Option<LengthDist>,
    /// Tokens to generate: N, MIN..MAX or normal:MEAN,SD (a dataset's own max_tokens wins).
    #[arg(long, default_value = "128")]
    output_tokens: LengthDist,
    /// A JSONL dataset instead of synthetic prompts: {"prompt": "…"} or
    /// {"messages": […]}, optionally with "max_tokens".
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// A model directory whose tokenizer.json counts synthetic prompt tokens (default:
    /// the server's /tokenize).
    #[arg(long, conflicts_with = "dataset")]
    tokenizer: Option<PathBuf>,
    /// Do not send `ignore_eos` (for servers that reject it); outputs may then end early.
    #[arg(long)]
    no_ignore_eos: bool,
    /// Seed of the prompts, lengths and arrivals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The server's Prometheus endpoint, sampled for the advisor (default: URL/metrics).
    #[arg(long)]
    metrics_url: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Plot throughput and latency against concurrency: a .png or .svg file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A TrueType font for the plot's text (default: a system DejaVu/Liberation/Noto Sans).
    #[arg(long)]
    plot_font: Option<PathBuf>,
    /// Objective: 90th-percentile time to first token (e.g. 2s, 500ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    slo_ttft_p90: Option<Duration>,
    /// Objective: 90th-percentile inter-token latency (e.g. 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    slo_itl_p90: Option<Duration>,
    /// Objective: 90th-percentile end-to-end latency (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    slo_e2e_p90: Option<Duration>,
    /// Copy the deploy/ manifests here with the advised values written in.
    #[arg(long)]
    write_overlay: Option<PathBuf>,
    /// The deploy/ directory that --write-overlay copies.
    #[arg(long, default_value = "deploy")]
    deploy_dir: PathBuf,
}

impl LoadArgs {
    fn into_config(self) -> anyhow::Result<BenchConfig> {
        let sweep = match (self.concurrency.is_empty(), self.rate.is_empty()) {
            (_, false) => Sweep::Rate(self.rate),
            (false, true) => Sweep::Concurrency(self.concurrency),
            (true, true) => Sweep::Concurrency(vec![1]),
        };
        let workload = match self.dataset {
            Some(path) => WorkloadSource::Dataset(path),
            None => WorkloadSource::Synthetic {
                prompt_tokens: self.prompt_tokens.unwrap_or(LengthDist::Fixed(256)),
                tokenizer: self.tokenizer,
            },
        };
        if self.deploy_dir != std::path::Path::new("deploy") && self.write_overlay.is_none() {
            bail!("--deploy-dir only matters with --write-overlay");
        }
        Ok(BenchConfig {
            url: self.url.context("--url is required")?,
            model: self.model,
            api: self.api,
            ignore_eos: !self.no_ignore_eos,
            sweep,
            max_requests: self.max_requests,
            duration: self.duration,
            request_timeout: self.request_timeout,
            workload,
            output_tokens: self.output_tokens,
            seed: self.seed,
            metrics_url: self.metrics_url,
            output: self.output,
            plot: self.plot,
            plot_font: self.plot_font,
            slos: Slos {
                ttft_p90_s: self.slo_ttft_p90.map(|d| d.as_secs_f64()),
                itl_p90_s: self.slo_itl_p90.map(|d| d.as_secs_f64()),
                e2e_p90_s: self.slo_e2e_p90.map(|d| d.as_secs_f64()),
            },
            write_overlay: self.write_overlay,
            deploy_dir: self.deploy_dir,
        })
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        Some(BenchCommand::Simulate(sim)) => surge::bench::simulate::run(&sim),
        None => {
            let config = args.load.into_config()?;
            config.validate()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(surge::bench::run(&config)).map(|_| ())
        }
    }
}

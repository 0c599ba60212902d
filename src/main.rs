//! The `surge` command line: parses arguments and hands off to a subcommand.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "surge",
    version,
    about = "A vLLM-style LLM inference server for Llama 3.x"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SURGE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve(cli::serve::ServeArgs),
    /// Offline generation from a prompt or a JSONL file of prompts.
    Generate(cli::generate::GenerateArgs),
    /// Wait until a server answers /health with 200 (e.g. while it scales from zero).
    WaitReady(cli::wait_ready::WaitReadyArgs),
    /// Pull an oci:// model image or a Hugging Face hub model into its cache; print its dir.
    Pull(cli::pull::PullArgs),
    /// Build and push ModelCar images (a model under /models) without a container engine.
    Modelcar(cli::modelcar::ModelCarArgs),
    /// Load-test an OpenAI-compatible server and advise on autoscaling targets, or
    /// (`bench simulate`) compare autoscaling policies on a trace.
    Bench(Box<cli::bench::BenchArgs>),
}

fn main() -> std::process::ExitCode {
    surge::config::default_cpu_threads();
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::WaitReady(args) => cli::wait_ready::run(args),
        Command::Pull(args) => cli::pull::run(args),
        Command::Modelcar(args) => cli::modelcar::run(args),
        Command::Bench(args) => cli::bench::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

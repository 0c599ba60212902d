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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline generation from a prompt or a JSONL file of prompts.
    Generate(cli::generate::GenerateArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Generate(args) => cli::generate::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

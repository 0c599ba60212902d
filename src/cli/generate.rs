//! `surge generate`: offline one-shot or batch generation.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use surge::config::{EngineArgs, ModelArgs};
use surge::engine::sampling_params::SamplingParams;
use surge::frontend::chat_template::{ChatMessage, ChatTemplate, MessageContent};
use surge::loader::{self, LoadedModel, ModelSource};
use surge::runner::offline::{self, OfflineRequest};
use surge::runner::select_device;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt; printed output is the completion only.
    #[arg(
        long,
        conflicts_with = "prompts_file",
        required_unless_present = "prompts_file"
    )]
    prompt: Option<String>,
    /// JSONL file, one {"prompt": …} or {"messages": […]} per line; prints one JSON line per prompt.
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// Wrap --prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 (the default here) is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past EOS (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
}

/// One line of `--prompts-file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let device = select_device(&args.model.device)?;
    let source =
        ModelSource::parse(&args.model.model_or_demo()?)?.fetch(&args.model.fetch_settings())?;
    let loaded = loader::load_with(&source, &args.model.load_options(), &device)?;
    let engine_config = args.engine.engine_config()?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    let prompts = match (&args.prompt, &args.prompts_file) {
        (Some(prompt), _) if args.chat => vec![PromptLine {
            prompt: None,
            messages: Some(vec![ChatMessage {
                role: "user".into(),
                content: MessageContent::Text(prompt.clone()),
                name: None,
                tool_call_id: None,
            }]),
        }],
        (Some(prompt), _) => vec![PromptLine {
            prompt: Some(prompt.clone()),
            messages: None,
        }],
        (None, Some(file)) => read_prompts(file)?,
        (None, None) => anyhow::bail!("give --prompt or --prompts-file"),
    };
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let prompt_ids = prompt_ids(&loaded, line).with_context(|| format!("prompt {i}"))?;
            Ok(OfflineRequest {
                prompt_ids,
                params: params.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (outputs, report) = offline::generate(&loaded, &requests, &engine_config)?;
    tracing::info!(
        requests = report.num_requests,
        prompt_tokens = report.num_prompt_tokens,
        output_tokens = report.num_output_tokens,
        elapsed_s = report.elapsed.as_secs_f64(),
        output_tok_per_s = report.output_tokens_per_second(),
        steps = report.num_steps,
        step_p50_ms = report.step_p50.as_secs_f64() * 1e3,
        step_p90_ms = report.step_p90.as_secs_f64() * 1e3,
        step_p99_ms = report.step_p99.as_secs_f64() * 1e3,
        "generation done"
    );
    let mut out = std::io::stdout().lock();
    if args.prompts_file.is_some() {
        for (index, o) in outputs.iter().enumerate() {
            let line = serde_json::json!({
                "index": index, "text": o.text, "token_ids": o.token_ids, "finish_reason": o.finish_reason.as_str(),
            });
            writeln!(out, "{line}")?;
        }
    } else if let Some(o) = outputs.first() {
        writeln!(out, "{}", o.text)?;
    }
    Ok(())
}

fn read_prompts(file: &PathBuf) -> anyhow::Result<Vec<PromptLine>> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let mut lines = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: PromptLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: expected {{\"prompt\": …}} or {{\"messages\": […]}}",
                file.display(),
                n + 1
            )
        })?;
        lines.push(parsed);
    }
    Ok(lines)
}

fn prompt_ids(loaded: &LoadedModel, line: &PromptLine) -> anyhow::Result<Vec<u32>> {
    let tokenizer = &loaded.tokenizer;
    match (&line.prompt, &line.messages) {
        (Some(prompt), None) => Ok(tokenizer.encode(prompt, true)?),
        (None, Some(messages)) => {
            let source = tokenizer
                .chat_template()
                .context("the model has no chat template")?;
            let template = ChatTemplate::new(
                source,
                tokenizer.bos_token.clone(),
                tokenizer.eos_token.clone(),
            )?;
            let text = template.render(messages, true)?;
            // The template writes BOS itself.
            Ok(tokenizer.encode(&text, false)?)
        }
        _ => anyhow::bail!("each line needs exactly one of `prompt` and `messages`"),
    }
}

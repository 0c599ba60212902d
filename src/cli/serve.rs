//! `surge serve`: load the model, start the engine, serve the OpenAI API.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use surge::api::{self, AppState, AppStateInner};
use surge::config::{EngineArgs, ModelArgs};
use surge::frontend::chat_template::ChatTemplate;
use surge::frontend::validate::{Validator, ValidatorConfig};
use surge::loader::{self, ModelSource};
use surge::runner::select_device;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0", env = "SURGE_HOST")]
    host: String,
    /// Port to bind; 0 picks a free one (the log line says which).
    #[arg(long, default_value_t = 8000, env = "SURGE_PORT")]
    port: u16,
    /// Model name in the API; defaults to the --model path's last component.
    #[arg(long, env = "SURGE_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long, env = "SURGE_API_KEY")]
    api_key: Option<String>,
    /// Larger request bodies get 413.
    #[arg(long, default_value_t = 4 << 20, env = "SURGE_MAX_REQUEST_BODY_BYTES")]
    max_request_body_bytes: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let model = args.model.model_or_demo()?;
    let device = select_device(&args.model.device)?;
    let loaded = loader::load(&ModelSource::parse(&model)?, args.model.dtype, &device)?;
    let (engine, info, _engine_thread) =
        surge::engine::start(&loaded, &args.engine.engine_config()?)?;
    let served_model_name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| default_name(&model));
    let tokenizer = Arc::new(loaded.tokenizer.inner().clone());
    let chat_template = match loaded.tokenizer.chat_template() {
        Some(source) => Some(ChatTemplate::new(
            source,
            loaded.tokenizer.bos_token.clone(),
            loaded.tokenizer.eos_token.clone(),
        )?),
        None => None,
    };
    let validator = Validator::new(
        Arc::new(loaded.tokenizer.clone()),
        chat_template,
        ValidatorConfig {
            served_model_name: served_model_name.clone(),
            max_model_len: info.capacity.max_model_len,
            vocab_size: loaded.config.vocab_size,
        },
    );
    let state = AppState(Arc::new(AppStateInner {
        engine,
        validator,
        tokenizer,
        served_model_name,
        max_model_len: info.capacity.max_model_len,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
    }));
    let router = api::router(state, args.max_request_body_bytes);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot bind {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })
}

fn default_name(model: &str) -> String {
    let trimmed = model.trim_end_matches('/');
    std::path::Path::new(trimmed)
        .file_name()
        .map_or_else(|| trimmed.to_string(), |n| n.to_string_lossy().into_owned())
}

//! `surge serve`: listen at once, load the model behind a 503, serve the OpenAI API,
//! and drain on SIGTERM / SIGINT.

mod shutdown;
mod startup;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use surge::api::listener::Listener;
use surge::api::{self, ApiOptions, AppState};
use surge::config::{EngineArgs, HttpArgs, ModelArgs};
use surge::metrics::Metrics;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    http: HttpArgs,
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
    /// Seconds in-flight requests may take to finish after SIGTERM / SIGINT before they
    /// are cut; 0 cuts them at once.
    #[arg(long, default_value_t = 30, env = "SURGE_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: u64,
    /// How long to wait for an absolute --model path to appear (e.g. 5m): KServe's
    /// ModelCar sidecar links /mnt/models only once it runs (MODEL_INIT_MODE=async).
    /// 0 fails at once when the path is missing.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, env = "SURGE_MODEL_WAIT_TIMEOUT")]
    model_wait_timeout: Duration,
    /// Parse and check the flags, print them and exit without serving: checks a
    /// deployment's args (deploy/README.md).
    #[arg(long, hide = true)]
    check_args: bool,
    /// Testing aid: stay this many milliseconds longer in the load phase.
    #[arg(long, hide = true, env = "SURGE_DEBUG_LOAD_DELAY_MS")]
    debug_load_delay_ms: Option<u64>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener_config = args.http.listener_config()?;
    let router_config = args.http.router_config(args.max_request_body_bytes)?;
    if args.check_args {
        args.engine.engine_config()?;
        let shown = ServeArgs {
            api_key: args.api_key.as_ref().map(|_| "<redacted>".to_string()),
            ..args
        };
        println!("{shown:#?}");
        return Ok(());
    }
    let model = args.model.model_or_demo()?;
    let served_model_name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| default_name(&model));
    let metrics = Arc::new(Metrics::new(&served_model_name)?);
    let options = ApiOptions {
        api_key: args.api_key.clone(),
        request_timeout: args.http.request_timeout,
        log_requests: args.http.log_requests,
    };
    let state = AppState::loading(metrics, served_model_name, options);
    let router = api::router(state.clone(), &router_config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(async move {
        let mut signals = shutdown::Signals::new()?;
        let listener = Listener::bind(&args.host, args.port, listener_config).await?;
        let addr = listener.local_addr()?;
        tracing::info!("listening on {}://{addr}", listener.scheme());
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(router, async {
            let _ = closed.await;
        }));
        let plan = startup::Plan {
            model,
            model_args: args.model.clone(),
            engine_config: args.engine.engine_config()?,
            load_delay: args.debug_load_delay_ms.map(Duration::from_millis),
            model_wait_timeout: args.model_wait_timeout,
        };
        let loading = tokio::task::spawn_blocking({
            let state = state.clone();
            move || startup::load(&plan, &state)
        });
        tokio::select! {
            loaded = loading => loaded.context("the loading task failed")??,
            () = signals.next() => {
                tracing::info!("signal while loading: exiting");
                return Ok(());
            }
        }
        signals.next().await;
        shutdown::drain(
            &state,
            Duration::from_secs(args.shutdown_timeout),
            &mut signals,
        )
        .await;
        let _ = close.send(());
        match tokio::time::timeout(shutdown::CLOSE_TIMEOUT, server).await {
            Ok(served) => served?,
            Err(_) => tracing::warn!("connections still open after the drain; closing them"),
        }
        tracing::info!("shut down");
        anyhow::Ok(())
    });
    // A signal during start-up leaves the loading thread running (a model wait or a
    // weight load cannot be interrupted): exit without joining it.
    runtime.shutdown_background();
    served
}

fn default_name(model: &str) -> String {
    let trimmed = model.trim_end_matches('/');
    std::path::Path::new(trimmed)
        .file_name()
        .map_or_else(|| trimmed.to_string(), |n| n.to_string_lossy().into_owned())
}

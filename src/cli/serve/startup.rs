//! Start-up behind the listener: pull, load, warm up — each phase shown by /health and
//! timed in `surge_startup_seconds` — then the server takes requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use surge::api::lifecycle::Phase;
use surge::api::{AppState, ServingModel};
use surge::config::ModelArgs;
use surge::engine::{self, EngineConfig};
use surge::frontend::chat_template::ChatTemplate;
use surge::frontend::validate::{Validator, ValidatorConfig};
use surge::loader::wait_for_model::wait_for_model;
use surge::loader::{self, ModelSource};
use surge::metrics::CacheInfo;
use surge::runner::select_device;

/// What to load and how.
pub struct Plan {
    pub model: String,
    pub model_args: ModelArgs,
    pub engine_config: EngineConfig,
    /// Testing aid: extra time in the load phase.
    pub load_delay: Option<Duration>,
    /// How long an absolute model path may take to appear (0: not waited for).
    pub model_wait_timeout: Duration,
}

/// Runs every phase; on success the state serves the model.
pub fn load(plan: &Plan, state: &AppState) -> anyhow::Result<()> {
    let timed = |phase: Phase, started: Instant| {
        let secs = started.elapsed().as_secs_f64();
        state
            .metrics
            .startup_seconds
            .with_label_values(&[phase.as_str()])
            .set(secs);
        secs
    };

    state.lifecycle.loading(Phase::Pull);
    let started = Instant::now();
    let local = std::path::Path::new(&plan.model);
    if local.is_absolute() && !plan.model_wait_timeout.is_zero() {
        let waited = wait_for_model(local, plan.model_wait_timeout)?;
        tracing::info!(path = %local.display(), waited_s = waited.as_secs_f64(), "model path present");
    }
    let source = ModelSource::parse(&plan.model)?;
    let kind = source.kind();
    let source = source.fetch(&plan.model_args.fetch_settings())?;
    let pull = timed(Phase::Pull, started);

    state.lifecycle.loading(Phase::Load);
    let started = Instant::now();
    if let Some(delay) = plan.load_delay {
        std::thread::sleep(delay);
    }
    let device = select_device(&plan.model_args.device)?;
    let loaded = loader::load_with(&source, &plan.model_args.load_options(), &device)?;
    let (engine, info, _engine_thread) =
        engine::start_with_metrics(&loaded, &plan.engine_config, Some(state.metrics.clone()))?;
    let max_model_len = info.capacity.max_model_len;
    let dtype = format!("{:?}", loaded.dtype).to_lowercase();
    state.metrics.model_loaded(
        &CacheInfo {
            block_size: info.block_size,
            num_blocks: info.capacity.num_blocks,
            enable_prefix_caching: plan.engine_config.enable_prefix_caching,
            cache_dtype: dtype.clone(),
            max_model_len,
            kv_cache_memory_bytes: info.kv_cache_bytes,
            gpu_memory_utilization: plan.engine_config.gpu_memory_utilization,
        },
        (kind, &dtype, &device_name(&loaded.device)),
    )?;
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
            served_model_name: state.served_model_name.clone(),
            max_model_len,
            vocab_size: loaded.config.vocab_size,
        },
    );
    let load = timed(Phase::Load, started);

    state.lifecycle.loading(Phase::Warmup);
    let started = Instant::now();
    engine.warmup()?;
    let warmup = timed(Phase::Warmup, started);

    state.serve(ServingModel {
        engine,
        validator,
        tokenizer: Arc::new(loaded.tokenizer.inner().clone()),
        max_model_len,
    });
    tracing::info!(
        pull_s = pull,
        load_s = load,
        warmup_s = warmup,
        max_model_len,
        "model ready"
    );
    Ok(())
}

fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

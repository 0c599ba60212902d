//! What every handler shares: the lifecycle, the metrics, and — once loaded — the
//! engine, the validator and the served model's facts.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::error::ApiError;
use super::lifecycle::{InFlight, Lifecycle};
use crate::engine::EngineHandle;
use crate::frontend::validate::Validator;
use crate::metrics::Metrics;

/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState(pub Arc<AppStateInner>);

pub struct AppStateInner {
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub served_model_name: String,
    /// Unix seconds at start-up (`created` of /v1/models).
    pub created: u64,
    /// `--api-key`: required as a Bearer token on /v1/* when set.
    pub api_key: Option<String>,
    /// `--request-timeout`: generations still running this long after admission end.
    pub request_timeout: Option<Duration>,
    /// `--log-requests`: log each request's prompt and parameters.
    pub log_requests: bool,
    model: OnceLock<Serving>,
}

/// The per-request settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    pub api_key: Option<String>,
    pub request_timeout: Option<Duration>,
    pub log_requests: bool,
}

/// The loaded model and what serves it.
pub struct ServingModel {
    pub engine: EngineHandle,
    pub validator: Validator,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub max_model_len: usize,
}

pub type Serving = Arc<ServingModel>;

impl AppState {
    /// A server still loading its model: only /health, /ping, /version and /metrics answer.
    pub fn loading(metrics: Arc<Metrics>, served_model_name: String, options: ApiOptions) -> Self {
        Self(Arc::new(AppStateInner {
            lifecycle: Arc::new(Lifecycle::new(metrics.clone())),
            metrics,
            served_model_name,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            api_key: options.api_key.filter(|k| !k.is_empty()),
            request_timeout: options.request_timeout.filter(|t| !t.is_zero()),
            log_requests: options.log_requests,
            model: OnceLock::new(),
        }))
    }

    /// The model is loaded and warm: start taking requests.
    pub fn serve(&self, model: ServingModel) {
        if self.model.set(Arc::new(model)).is_ok() {
            self.lifecycle.ready();
        }
    }

    /// The model, for requests that do not generate (tokenize, model list): 503 while
    /// loading.
    pub fn model(&self) -> Result<Serving, ApiError> {
        match self.model.get() {
            Some(m) => Ok(m.clone()),
            None => {
                Err(self.lifecycle.enter().err().unwrap_or_else(|| {
                    super::lifecycle::unavailable("The model is not loaded yet.")
                }))
            }
        }
    }

    /// The model and a place in flight for a new generation, its `--request-timeout`
    /// counted from now: 503 while loading or draining.
    pub fn admit(&self) -> Result<(Serving, InFlight), ApiError> {
        let in_flight = self.lifecycle.enter()?.with_timeout(self.request_timeout);
        Ok((self.model()?, in_flight))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

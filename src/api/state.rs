//! What every handler shares: the engine, the validator and the served model's facts.

use std::sync::Arc;

use crate::engine::EngineHandle;
use crate::frontend::validate::Validator;

/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState(pub Arc<AppStateInner>);

pub struct AppStateInner {
    pub engine: EngineHandle,
    pub validator: Validator,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub served_model_name: String,
    pub max_model_len: usize,
    /// Unix seconds at start-up (`created` of /v1/models).
    pub created: u64,
    /// `--api-key`: required as a Bearer token on /v1/* when set.
    pub api_key: Option<String>,
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

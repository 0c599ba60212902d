//! The OpenAI-compatible HTTP API: router, wire types, handlers, errors, auth, health.
//! A leaf: it talks to the engine through `EngineHandle` and to `frontend` only.

pub mod auth;
pub mod body_limit;
pub mod body_timeout;
pub mod chat;
pub mod completions;
pub mod cors;
pub mod error;
pub mod generation;
pub mod health;
pub mod lifecycle;
pub mod listener;
pub mod models;
pub mod request_log;
pub mod respond;
pub mod routes;
pub mod state;
pub mod tls;
pub mod tokenize;
pub mod wire;

pub use routes::{router, RouterConfig};
pub use state::{ApiOptions, AppState, AppStateInner, Serving, ServingModel};

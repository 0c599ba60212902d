//! The OpenAI-compatible HTTP API: router, wire types, handlers, errors, auth, health.
//! A leaf: it talks to the engine through `EngineHandle` and to `frontend` only.

pub mod auth;
pub mod body_limit;
pub mod chat;
pub mod completions;
pub mod error;
pub mod generation;
pub mod health;
pub mod lifecycle;
pub mod models;
pub mod respond;
pub mod routes;
pub mod state;
pub mod tokenize;
pub mod wire;

pub use routes::router;
pub use state::{AppState, AppStateInner, Serving, ServingModel};

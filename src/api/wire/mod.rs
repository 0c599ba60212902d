//! OpenAI / vLLM wire types, one file per API; requests are checked by
//! `frontend::validate`.

pub mod chat;
pub mod common;
pub mod completions;
pub mod models;
pub mod tokenize;

pub use chat::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobToken, ChatLogprobs, ChatResponseMessage,
    ChatTopLogprob,
};
pub use common::{ErrorResponse, Stop, StreamOptions, Usage};
pub use completions::{
    CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest, CompletionResponse,
    Prompt, TopLogprobMap,
};
pub use models::{ModelCard, ModelList};
pub use tokenize::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};

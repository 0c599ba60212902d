//! POST /v1/chat/completions, streaming and not.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::generation::{ChoiceDelta, Generation};
use super::request_log;
use super::respond::{self, blocking, log_finished, sse, token_text};
use super::state::{AppState, Serving};
use super::wire::chat::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobToken, ChatLogprobs, ChatResponseMessage,
    ChatTopLogprob,
};
use super::wire::common::{response_id, unix_now, wire_logprob, Usage};
use crate::frontend::validate::{parse_request, ValidRequest};

pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match async { run(state, respond::body(body)?).await }.await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(app: AppState, body: Bytes) -> Result<Response, ApiError> {
    let (state, in_flight) = app.admit()?;
    let request: ChatCompletionRequest = parse_request(&body)?;
    let s = state.clone();
    let valid = blocking(move || s.validator.chat(request)).await?;
    let generation = Generation::submit(
        &state.engine,
        state.tokenizer.clone(),
        valid.prompt_ids.clone(),
        valid.params.clone(),
        in_flight,
    )?;
    request_log::received(app.log_requests, generation.request_id(), &valid);
    if valid.stream {
        Ok(stream(state, valid, generation))
    } else {
        whole(state, valid, generation).await
    }
}

fn logprobs(state: &Serving, valid: &ValidRequest, delta: &ChoiceDelta) -> Option<ChatLogprobs> {
    let top_n = valid.logprobs?;
    let entry = |token: u32, logprob: f32| {
        let text = token_text(&state.tokenizer, token);
        (text.as_bytes().to_vec(), text, wire_logprob(logprob))
    };
    let content = delta
        .tokens
        .iter()
        .map(|t| {
            let (bytes, token, logprob) = entry(t.token, t.logprob);
            let top_logprobs = t
                .top_logprobs
                .iter()
                .take(top_n)
                .map(|&(id, lp)| {
                    let (bytes, token, logprob) = entry(id, lp);
                    ChatTopLogprob {
                        token,
                        logprob,
                        bytes: Some(bytes),
                    }
                })
                .collect();
            ChatLogprobToken {
                token,
                logprob,
                bytes: Some(bytes),
                top_logprobs,
            }
        })
        .collect();
    Some(ChatLogprobs { content })
}

async fn whole(
    state: Serving,
    valid: ValidRequest,
    mut generation: Generation,
) -> Result<Response, ApiError> {
    let n = valid.params.n.max(1);
    let mut texts = vec![String::new(); n];
    let mut lps: Vec<Option<ChatLogprobs>> =
        vec![valid.logprobs.map(|_| ChatLogprobs::default()); n];
    let mut finish = vec![None; n];
    while let Some(delta) = generation.next().await {
        let delta = delta?;
        texts[delta.index].push_str(&delta.text);
        if let (Some(all), Some(mut more)) =
            (lps[delta.index].as_mut(), logprobs(&state, &valid, &delta))
        {
            all.content.append(&mut more.content);
        }
        if let Some(reason) = delta.finish {
            finish[delta.index] = Some(reason.as_str().to_string());
        }
    }
    log_finished(
        &generation,
        finish
            .first()
            .cloned()
            .flatten()
            .as_deref()
            .unwrap_or("abort"),
    );
    let choices = (0..n)
        .map(|i| ChatChoice {
            index: i,
            message: ChatResponseMessage::assistant(std::mem::take(&mut texts[i])),
            logprobs: lps[i].take(),
            finish_reason: finish[i].take(),
        })
        .collect();
    let usage = Usage::new(generation.num_prompt_tokens, generation.num_output_tokens);
    Ok(Json(ChatCompletionResponse::new(
        response_id("chatcmpl"),
        unix_now(),
        valid.model.clone(),
        choices,
        usage,
    ))
    .into_response())
}

fn stream(state: Serving, valid: ValidRequest, mut generation: Generation) -> Response {
    let (tx, rx) = mpsc::channel(64);
    let id = response_id("chatcmpl");
    let created = unix_now();
    tokio::spawn(async move {
        let chunk =
            |choices| ChatCompletionChunk::new(id.clone(), created, valid.model.clone(), choices);
        let json = |c: &ChatCompletionChunk| serde_json::to_string(c).unwrap_or_default();
        let n = valid.params.n.max(1);
        let usage_so_far = |generation: &Generation| {
            valid
                .continuous_usage
                .then(|| Usage::new(generation.num_prompt_tokens, generation.num_output_tokens))
        };
        for index in 0..n {
            let mut first = chunk(vec![ChatChunkChoice {
                index,
                delta: ChatDelta::role(),
                logprobs: None,
                finish_reason: None,
            }]);
            first.usage = usage_so_far(&generation);
            if tx.send(json(&first)).await.is_err() {
                return;
            }
        }
        let mut last_finish = None;
        while let Some(delta) = generation.next().await {
            let message = match delta {
                Ok(delta) => {
                    last_finish = delta.finish.map(|f| f.as_str().to_string()).or(last_finish);
                    let choice = ChatChunkChoice {
                        index: delta.index,
                        logprobs: logprobs(&state, &valid, &delta),
                        delta: ChatDelta::text(delta.text.clone()),
                        finish_reason: delta.finish.map(|f| f.as_str().to_string()),
                    };
                    let mut message = chunk(vec![choice]);
                    message.usage = usage_so_far(&generation);
                    json(&message)
                }
                Err(e) => {
                    let _ = tx.send(e.body().to_string()).await;
                    break;
                }
            };
            if tx.send(message).await.is_err() {
                log_finished(&generation, "abort");
                return; // client gone: dropping `generation` aborts the request
            }
        }
        log_finished(&generation, last_finish.as_deref().unwrap_or("abort"));
        if valid.include_usage {
            let usage = Usage::new(generation.num_prompt_tokens, generation.num_output_tokens);
            let _ = tx
                .send(json(&ChatCompletionChunk::usage_only(
                    id.clone(),
                    created,
                    valid.model.clone(),
                    usage,
                )))
                .await;
        }
        let _ = tx.send("[DONE]".to_string()).await;
    });
    sse(rx)
}

//! POST /v1/completions: one or several prompts, each with `n` choices (choice index =
//! prompt × n + choice, as vLLM numbers them), streaming and not.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::generation::{ChoiceDelta, Generation};
use super::request_log;
use super::respond::{self, blocking, log_finished, sse, token_text};
use super::state::{AppState, Serving};
use super::wire::common::{response_id, unix_now, wire_logprob, Usage};
use super::wire::completions::{
    CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest, CompletionResponse,
    TopLogprobMap,
};
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
    let request: CompletionRequest = parse_request(&body)?;
    let s = state.clone();
    let valids = blocking(move || s.validator.completion(request)).await?;
    let Some(first) = valids.first().cloned() else {
        return Err(ApiError::bad_request(
            "The prompt is empty.",
            Some("prompt"),
        ));
    };
    let mut generations = Vec::with_capacity(valids.len());
    for v in &valids {
        let generation = Generation::submit(
            &state.engine,
            state.tokenizer.clone(),
            v.prompt_ids.clone(),
            v.params.clone(),
            in_flight.clone(),
        )?;
        request_log::received(app.log_requests, generation.request_id(), v);
        generations.push(generation);
    }
    if first.stream {
        Ok(stream(state, valids, generations))
    } else {
        whole(state, valids, generations).await
    }
}

/// Per-choice text offset (in characters, as OpenAI counts) for logprobs.
#[derive(Default, Clone)]
struct Offsets(usize);

fn logprobs(
    state: &Serving,
    valid: &ValidRequest,
    delta: &ChoiceDelta,
    offset: &mut Offsets,
) -> Option<CompletionLogprobs> {
    let top_n = valid.logprobs?;
    let mut out = CompletionLogprobs::default();
    for t in &delta.tokens {
        let text = token_text(&state.tokenizer, t.token);
        out.text_offset.push(offset.0);
        offset.0 += text.chars().count();
        out.tokens.push(text);
        out.token_logprobs.push(Some(wire_logprob(t.logprob)));
        let top = t
            .top_logprobs
            .iter()
            .take(top_n)
            .map(|&(id, lp)| (token_text(&state.tokenizer, id), wire_logprob(lp)));
        out.top_logprobs.push(Some(TopLogprobMap(top.collect())));
    }
    Some(out)
}

fn append(all: &mut CompletionLogprobs, more: CompletionLogprobs) {
    all.tokens.extend(more.tokens);
    all.token_logprobs.extend(more.token_logprobs);
    all.top_logprobs.extend(more.top_logprobs);
    all.text_offset.extend(more.text_offset);
}

/// Where a choice's text starts: after the prompt when it is echoed.
fn start_text(valid: &ValidRequest) -> String {
    if valid.echo {
        valid.prompt_text.clone().unwrap_or_default()
    } else {
        String::new()
    }
}

async fn whole(
    state: Serving,
    valids: Vec<ValidRequest>,
    generations: Vec<Generation>,
) -> Result<Response, ApiError> {
    let n = valids[0].params.n.max(1);
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut output_tokens) = (0, 0);
    for (p, (valid, mut generation)) in valids.iter().zip(generations).enumerate() {
        let mut texts: Vec<String> = vec![start_text(valid); n];
        let mut offsets: Vec<Offsets> = texts.iter().map(|t| Offsets(t.chars().count())).collect();
        let mut lps: Vec<Option<CompletionLogprobs>> =
            vec![valid.logprobs.map(|_| CompletionLogprobs::default()); n];
        let mut finish = vec![None; n];
        while let Some(delta) = generation.next().await {
            let delta = delta?;
            let i = delta.index;
            texts[i].push_str(&delta.text);
            if let Some(more) = logprobs(&state, valid, &delta, &mut offsets[i]) {
                if let Some(all) = lps[i].as_mut() {
                    append(all, more);
                }
            }
            if let Some(reason) = delta.finish {
                finish[i] = Some(reason.as_str().to_string());
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
        prompt_tokens += generation.num_prompt_tokens;
        output_tokens += generation.num_output_tokens;
        for i in 0..n {
            choices.push(CompletionChoice {
                index: p * n + i,
                text: std::mem::take(&mut texts[i]),
                logprobs: lps[i].take(),
                finish_reason: finish[i].take(),
            });
        }
    }
    let response = CompletionResponse::new(
        response_id("cmpl"),
        unix_now(),
        valids[0].model.clone(),
        choices,
        Usage::new(prompt_tokens, output_tokens),
    );
    Ok(Json(response).into_response())
}

fn stream(state: Serving, valids: Vec<ValidRequest>, generations: Vec<Generation>) -> Response {
    let (tx, rx) = mpsc::channel(64);
    let id = response_id("cmpl");
    let created = unix_now();
    let model = valids[0].model.clone();
    let include_usage = valids[0].include_usage;
    let continuous_usage = valids[0].continuous_usage;
    let n = valids[0].params.n.max(1);
    let prompt_tokens: usize = valids.iter().map(|v| v.prompt_ids.len()).sum();
    tokio::spawn(async move {
        let json = |c: &CompletionChunk| serde_json::to_string(c).unwrap_or_default();
        // Echoed prompts go first, one chunk per choice.
        let mut offsets = Vec::new();
        for (p, valid) in valids.iter().enumerate() {
            let text = start_text(valid);
            for i in 0..n {
                offsets.push(Offsets(text.chars().count()));
                if valid.echo {
                    let choice = CompletionChoice {
                        index: p * n + i,
                        text: text.clone(),
                        logprobs: None,
                        finish_reason: None,
                    };
                    if tx
                        .send(json(&CompletionChunk::new(
                            id.clone(),
                            created,
                            model.clone(),
                            vec![choice],
                        )))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let streams = generations.into_iter().enumerate().map(|(p, g)| {
            futures::stream::unfold(g, move |mut g| async move {
                match g.next().await {
                    Some(d) => Some(((p, d), g)),
                    None => {
                        log_finished(&g, "finished");
                        None
                    }
                }
            })
            .boxed()
        });
        let mut merged = futures::stream::select_all(streams);
        let mut output_tokens = 0;
        while let Some((p, delta)) = merged.next().await {
            let message = match delta {
                Ok(delta) => {
                    output_tokens += delta.tokens.len();
                    let index = p * n + delta.index;
                    let choice = CompletionChoice {
                        index,
                        logprobs: logprobs(&state, &valids[p], &delta, &mut offsets[index]),
                        text: delta.text.clone(),
                        finish_reason: delta.finish.map(|f| f.as_str().to_string()),
                    };
                    let mut message =
                        CompletionChunk::new(id.clone(), created, model.clone(), vec![choice]);
                    if continuous_usage {
                        message.usage = Some(Usage::new(prompt_tokens, output_tokens));
                    }
                    json(&message)
                }
                Err(e) => {
                    let _ = tx.send(e.body().to_string()).await;
                    break;
                }
            };
            if tx.send(message).await.is_err() {
                return; // client gone: dropping the generations aborts them
            }
        }
        if include_usage {
            let usage = Usage::new(prompt_tokens, output_tokens);
            let _ = tx
                .send(json(&CompletionChunk::usage_only(
                    id.clone(),
                    created,
                    model.clone(),
                    usage,
                )))
                .await;
        }
        let _ = tx.send("[DONE]".to_string()).await;
    });
    sse(rx)
}

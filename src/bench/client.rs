//! One streaming OpenAI request, timed: time to first token, the gaps between token
//! chunks, end-to-end latency, and the token counts of the final `usage` chunk.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use super::sse::{SseEvent, SseParser};
use super::stats::{Outcome, RequestRecord};
use super::workload::{Api, RequestSpec};

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct Target {
    pub client: reqwest::Client,
    /// `http://host:port`, without `/v1`.
    pub base_url: String,
    pub model: String,
    pub api: Api,
    /// Send `ignore_eos: true`, so that every request generates exactly `max_tokens`.
    pub ignore_eos: bool,
}

impl Target {
    /// The endpoint's URL.
    pub fn endpoint(&self) -> String {
        match self.api {
            Api::Completions => format!("{}/v1/completions", self.base_url),
            Api::Chat => format!("{}/v1/chat/completions", self.base_url),
        }
    }
}

/// A reqwest client for load generation: one connection per concurrent request and a
/// bound on each request's whole time.
pub fn http_client(request_timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(10).min(request_timeout))
        .pool_max_idle_per_host(1024)
        .build()?)
}

/// The text a chunk carries: `choices[0].text` (completions) or the delta's `content`
/// or `reasoning_content` (chat).
fn chunk_text(chunk: &Value) -> Option<&str> {
    let choice = chunk.get("choices")?.get(0)?;
    let text = choice.get("text").and_then(Value::as_str);
    let delta = choice.get("delta");
    let content = delta.and_then(|d| d.get("content")).and_then(Value::as_str);
    let reasoning = delta
        .and_then(|d| d.get("reasoning_content"))
        .and_then(Value::as_str);
    [text, content, reasoning]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
}

/// What a stream has delivered so far.
#[derive(Debug, Default)]
pub struct StreamState {
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    itl_s: Vec<f64>,
    num_token_chunks: u64,
    usage: Option<(u64, u64)>,
}

impl StreamState {
    /// Takes one event's JSON, received at `at`. Errs with the error kind for an
    /// `error` object inside the stream or data that is not JSON.
    pub fn on_data(&mut self, data: &str, at: Instant) -> Result<(), &'static str> {
        let chunk: Value = serde_json::from_str(data).map_err(|_| "bad_chunk")?;
        if chunk.get("error").is_some() {
            return Err("stream_error");
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Some((n("prompt_tokens"), n("completion_tokens")));
        }
        if chunk_text(&chunk).is_some() {
            if let Some(last) = self.last_token {
                self.itl_s.push((at - last).as_secs_f64());
            }
            self.first_token.get_or_insert(at);
            self.last_token = Some(at);
            self.num_token_chunks += 1;
        }
        Ok(())
    }

    /// The record of a stream that ended with `[DONE]` at `end`.
    pub fn finish(self, started: Instant, end: Instant) -> RequestRecord {
        let (prompt_tokens, output_tokens) = self.usage.unwrap_or((0, self.num_token_chunks));
        RequestRecord {
            // A stream without a token (max_tokens reached with empty text) has its first
            // "token" at its end.
            ttft_s: (self.first_token.unwrap_or(end) - started).as_secs_f64(),
            itl_s: self.itl_s,
            e2e_s: (end - started).as_secs_f64(),
            prompt_tokens,
            output_tokens,
            has_usage: self.usage.is_some(),
        }
    }
}

/// The error kind of a failed send or read.
fn error_kind(e: &reqwest::Error, reading: bool) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if reading {
        "stream_broken".into()
    } else {
        "request".into()
    }
}

/// Sends one streaming request and reads it to `[DONE]`.
pub async fn send(target: &Target, spec: &RequestSpec) -> Outcome {
    let started = Instant::now();
    let fail = |kind: String| Outcome::Err {
        kind,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let body = match spec.body(target.api, &target.model, target.ignore_eos) {
        Ok(b) => b,
        Err(_) => return fail("bad_request".into()),
    };
    let response = match target
        .client
        .post(target.endpoint())
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(error_kind(&e, false)),
    };
    let status = response.status();
    if !status.is_success() {
        return fail(format!("http_{}", status.as_u16()));
    }
    let mut parser = SseParser::new();
    let mut state = StreamState::default();
    let mut bytes = response.bytes_stream();
    while let Some(piece) = bytes.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => return fail(error_kind(&e, true)),
        };
        let at = Instant::now();
        let events = match parser.feed(&piece) {
            Ok(events) => events,
            Err(_) => return fail("bad_chunk".into()),
        };
        for event in events {
            match event {
                SseEvent::Done => return Outcome::Ok(state.finish(started, at)),
                SseEvent::Data(data) => {
                    if let Err(kind) = state.on_data(&data, at) {
                        return fail(kind.into());
                    }
                }
            }
        }
    }
    fail("stream_broken".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_yields_ttft_itl_and_usage() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = StreamState::default();
        // A role-only chat chunk is not a token.
        s.on_data(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            ms(5),
        )
        .unwrap();
        s.on_data(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#, ms(100))
            .unwrap();
        s.on_data(r#"{"choices":[{"text":"lo"}]}"#, ms(130))
            .unwrap();
        s.on_data(
            r#"{"choices":[{"delta":{"content":"!"},"finish_reason":"length"}]}"#,
            ms(170),
        )
        .unwrap();
        s.on_data(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
            ms(171),
        )
        .unwrap();
        let r = s.finish(t0, ms(172));
        assert!((r.ttft_s - 0.1).abs() < 1e-9, "{r:?}");
        assert_eq!(r.itl_s.len(), 2);
        assert!((r.itl_s[0] - 0.03).abs() < 1e-9 && (r.itl_s[1] - 0.04).abs() < 1e-9);
        assert!((r.e2e_s - 0.172).abs() < 1e-9);
        assert_eq!(
            (r.prompt_tokens, r.output_tokens, r.has_usage),
            (12, 3, true)
        );
    }

    #[test]
    fn without_usage_token_chunks_are_counted() {
        let t0 = Instant::now();
        let mut s = StreamState::default();
        s.on_data(r#"{"choices":[{"text":"a"}]}"#, t0).unwrap();
        s.on_data(r#"{"choices":[{"text":"b"}],"usage":null}"#, t0)
            .unwrap();
        let r = s.finish(t0, t0);
        assert_eq!(
            (r.prompt_tokens, r.output_tokens, r.has_usage),
            (0, 2, false)
        );
    }

    #[test]
    fn errors_inside_the_stream_have_kinds() {
        let mut s = StreamState::default();
        let now = Instant::now();
        assert_eq!(
            s.on_data(r#"{"error":{"message":"boom","code":500}}"#, now),
            Err("stream_error")
        );
        assert_eq!(s.on_data("{not json", now), Err("bad_chunk"));
    }
}

//! Checks a parsed API request and turns it into a [`ValidRequest`] (prompt tokens and
//! sampling parameters) before anything is queued: every 400 and the unknown-model 404
//! come from here, never later.
//!
//! Tokenizing and template rendering are CPU work: call [`Validator::chat`],
//! [`Validator::completion`] and [`Validator::tokenize`] on `spawn_blocking`.

use std::sync::Arc;

use crate::api::wire::chat::ChatCompletionRequest;
use crate::api::wire::common::StreamOptions;
use crate::api::wire::completions::{CompletionRequest, Prompt};
use crate::engine::handle::EngineRequest;
use crate::engine::sampling_params::SamplingParams;
use crate::frontend::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
use crate::frontend::tokenizer::Tokenizer;

mod fields;
mod parse;
#[cfg(test)]
mod tests;
mod tokenize;

pub use parse::parse_request;

use fields::{SamplingInput, CHAT_FIELDS, COMPLETION_FIELDS};

/// The most completions one request may ask for (`n`).
pub const MAX_N: usize = 128;
/// The most prompts one completions request may carry.
pub const MAX_PROMPTS: usize = 256;
/// The most stop strings per request (OpenAI allows 4; vLLM has no limit). Each
/// generated token is checked against every one of them.
pub const MAX_STOP_STRINGS: usize = 16;
/// The longest stop string, in UTF-8 bytes.
pub const MAX_STOP_BYTES: usize = 512;
/// The most `stop_token_ids` per request.
pub const MAX_STOP_TOKEN_IDS: usize = 256;

/// A refused request: the HTTP status and vLLM's error fields (`code` = `status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub status: u16,
    pub message: String,
    /// The error `type`: `BadRequestError`, `NotFoundError`, `InternalServerError`.
    pub kind: &'static str,
    /// The request field at fault, e.g. `temperature` or `messages[1].content[0].type`.
    pub param: Option<String>,
}

impl ValidationError {
    pub fn bad_request(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "BadRequestError",
            param: Some(param.into()),
        }
    }

    pub fn bad_request_without_param(message: impl Into<String>) -> Self {
        Self {
            param: None,
            ..Self::bad_request("", message)
        }
    }

    /// vLLM's unknown-model answer.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: 404,
            message: format!("The model `{model}` does not exist."),
            kind: "NotFoundError",
            param: Some("model".to_string()),
        }
    }

    /// A failure that is the server's, not the request's (tokenizer error).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
            kind: "InternalServerError",
            param: None,
        }
    }
}

/// One checked prompt, ready for the engine, plus what the handler needs to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    /// The served model name, for the response's `model`.
    pub model: String,
    pub prompt_ids: Vec<u32>,
    /// The prompt as text: the rendered chat prompt, the completion prompt as sent, or
    /// a token prompt decoded (only when `echo`). Completions with `echo` put it first.
    pub prompt_text: Option<String>,
    /// `max_tokens` is final: what was asked, or what is left of the context.
    pub params: SamplingParams,
    pub stream: bool,
    /// Send the usage chunk before `[DONE]` (`stream_options.include_usage`).
    pub include_usage: bool,
    /// Also put the usage so far in every chunk (`stream_options.continuous_usage_stats`
    /// with `include_usage`, as vLLM).
    pub continuous_usage: bool,
    /// Completions only: return the prompt before the completion.
    pub echo: bool,
    /// Top-N alternatives per token (same as `params.logprobs`): `Some(0)` = only the
    /// chosen token's logprob. Chat: `top_logprobs` when `logprobs: true`.
    pub logprobs: Option<usize>,
    /// Which API it came from, i.e. which response types to build.
    pub chat: bool,
}

impl ValidRequest {
    pub fn engine_request(&self) -> EngineRequest {
        EngineRequest {
            prompt_ids: self.prompt_ids.clone(),
            params: self.params.clone(),
        }
    }
}

/// What a [`Validator`] checks against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorConfig {
    /// The one name `model` may have (`--served-model-name`).
    pub served_model_name: String,
    pub max_model_len: usize,
    /// The model's vocabulary (its embedding rows), which may be smaller than the
    /// tokenizer's: token ids at or above it are refused.
    pub vocab_size: usize,
}

/// Checks requests for one served model. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Validator {
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<ChatTemplate>,
    served_model_name: String,
    max_model_len: usize,
    vocab_size: usize,
}

/// One prompt's token ids and, when known, its text.
type PromptParts = (Vec<u32>, Option<String>);

/// Where the prompt came from, for the context-length message.
#[derive(Clone, Copy)]
enum PromptKind {
    Messages,
    Prompt,
}

impl PromptKind {
    fn noun(self) -> &'static str {
        match self {
            PromptKind::Messages => "messages",
            PromptKind::Prompt => "prompt",
        }
    }
}

impl Validator {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        chat_template: Option<ChatTemplate>,
        config: ValidatorConfig,
    ) -> Self {
        Self {
            tokenizer,
            chat_template,
            served_model_name: config.served_model_name,
            max_model_len: config.max_model_len,
            vocab_size: config.vocab_size,
        }
    }

    /// A validator using the tokenizer's own chat template (none: chat requests get a
    /// 400); fails when that template does not compile.
    pub fn from_tokenizer(
        tokenizer: Arc<Tokenizer>,
        config: ValidatorConfig,
    ) -> Result<Self, ChatTemplateError> {
        let chat_template = tokenizer
            .chat_template()
            .map(|source| {
                ChatTemplate::new(
                    source,
                    tokenizer.bos_token.clone(),
                    tokenizer.eos_token.clone(),
                )
            })
            .transpose()?;
        Ok(Self::new(tokenizer, chat_template, config))
    }

    pub fn served_model_name(&self) -> &str {
        &self.served_model_name
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// `model` absent or empty means the served model, as in vLLM; any other name than
    /// the served one is a 404.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ValidationError> {
        match model {
            None | Some("") => Ok(()),
            Some(name) if name == self.served_model_name => Ok(()),
            Some(name) => Err(ValidationError::model_not_found(name)),
        }
    }

    /// A chat request: its messages rendered with the chat template (with the
    /// assistant header unless `add_generation_prompt: false`) and encoded without
    /// special tokens (the template writes BOS). `max_completion_tokens` wins over
    /// `max_tokens` when both are given, as in vLLM; both must be at least 1.
    pub fn chat(&self, req: ChatCompletionRequest) -> Result<ValidRequest, ValidationError> {
        fields::check_extra(&req.extra, CHAT_FIELDS, "")?;
        if let Some(format) = &req.response_format {
            match format.kind.as_deref() {
                Some("text") if format.extra.is_empty() => {}
                Some("text") | None => {
                    return Err(ValidationError::bad_request(
                        "response_format",
                        "response_format must be {\"type\": \"text\"}.",
                    ))
                }
                Some(kind) => {
                    return Err(ValidationError::bad_request(
                        "response_format",
                        format!(
                            "surge does not support response_format `{kind}`; only `text` is \
                             supported."
                        ),
                    ))
                }
            }
        }
        self.check_model(req.model.as_deref())?;
        let stream = req.stream.unwrap_or(false);
        let (include_usage, continuous_usage) = stream_usage(stream, req.stream_options.as_ref())?;

        if let Some(max_tokens) = req.max_tokens {
            if max_tokens < 1 {
                return Err(ValidationError::bad_request(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {max_tokens}."),
                ));
            }
        }
        let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
            (Some(value), _) => Some((value, "max_completion_tokens")),
            (None, Some(value)) => Some((value, "max_tokens")),
            (None, None) => None,
        };
        let top_logprobs = req.top_logprobs.unwrap_or(0);
        if !(0..=crate::engine::sampling_params::MAX_LOGPROBS as i64).contains(&top_logprobs) {
            return Err(ValidationError::bad_request(
                "top_logprobs",
                format!("top_logprobs must be between 0 and 20, got {top_logprobs}."),
            ));
        }
        let logprobs = req.logprobs.unwrap_or(false);
        if top_logprobs > 0 && !logprobs {
            return Err(ValidationError::bad_request(
                "top_logprobs",
                "when using `top_logprobs`, `logprobs` must be set to true.",
            ));
        }
        let (mut params, requested) = fields::sampling_params(
            SamplingInput {
                temperature: req.temperature,
                top_p: req.top_p,
                top_k: req.top_k,
                min_p: req.min_p,
                n: req.n,
                stop: req.stop,
                stop_token_ids: req.stop_token_ids,
                seed: req.seed,
                presence_penalty: req.presence_penalty,
                frequency_penalty: req.frequency_penalty,
                repetition_penalty: req.repetition_penalty,
                ignore_eos: req.ignore_eos,
                skip_special_tokens: req.skip_special_tokens,
                max_tokens,
                logprobs: logprobs.then_some((top_logprobs, "top_logprobs")),
            },
            self.vocab_size,
        )?;

        let messages = fields::chat_messages(req.messages)?;
        let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
        let prompt_text = self.render(&messages, add_generation_prompt)?;
        let prompt_ids = self.encode(&prompt_text, req.add_special_tokens.unwrap_or(false))?;
        self.check_ids(&prompt_ids, "messages")?;
        params.max_tokens = self.fit(prompt_ids.len(), requested, PromptKind::Messages)?;
        Ok(ValidRequest {
            model: self.served_model_name.clone(),
            prompt_ids,
            prompt_text: Some(prompt_text),
            logprobs: params.logprobs,
            params,
            stream,
            include_usage,
            continuous_usage,
            echo: false,
            chat: true,
        })
    }

    /// A completions request: one [`ValidRequest`] per prompt, in order (choice `index`
    /// on the wire = prompt index × n + choice index). Text prompts are encoded with
    /// special tokens (BOS) unless `add_special_tokens: false`; token prompts are taken
    /// as they are. `max_tokens` absent fills each prompt's remaining context.
    pub fn completion(&self, req: CompletionRequest) -> Result<Vec<ValidRequest>, ValidationError> {
        fields::check_extra(&req.extra, COMPLETION_FIELDS, "")?;
        if req.suffix.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(ValidationError::bad_request(
                "suffix",
                "surge does not support suffix (insertion): remove `suffix` from the request.",
            ));
        }
        self.check_model(req.model.as_deref())?;
        let stream = req.stream.unwrap_or(false);
        let (include_usage, continuous_usage) = stream_usage(stream, req.stream_options.as_ref())?;
        if let Some(best_of) = req.best_of {
            if best_of != req.n.unwrap_or(1) {
                return Err(ValidationError::bad_request(
                    "best_of",
                    format!(
                        "surge does not support best_of other than n (got best_of={best_of}, \
                         n={}).",
                        req.n.unwrap_or(1)
                    ),
                ));
            }
        }
        let echo = req.echo.unwrap_or(false);
        if echo && req.logprobs.is_some() {
            return Err(ValidationError::bad_request(
                "echo",
                "surge does not support echo together with logprobs (prompt logprobs).",
            ));
        }
        let (params, requested) = fields::sampling_params(
            SamplingInput {
                temperature: req.temperature,
                top_p: req.top_p,
                top_k: req.top_k,
                min_p: req.min_p,
                n: req.n,
                stop: req.stop,
                stop_token_ids: req.stop_token_ids,
                seed: req.seed,
                presence_penalty: req.presence_penalty,
                frequency_penalty: req.frequency_penalty,
                repetition_penalty: req.repetition_penalty,
                ignore_eos: req.ignore_eos,
                skip_special_tokens: req.skip_special_tokens,
                max_tokens: req.max_tokens.map(|v| (v, "max_tokens")),
                logprobs: req.logprobs.map(|v| (v, "logprobs")),
            },
            self.vocab_size,
        )?;

        let add_special_tokens = req.add_special_tokens.unwrap_or(true);
        let prompts = self.completion_prompts(req.prompt, add_special_tokens, echo)?;
        prompts
            .into_iter()
            .map(|(prompt_ids, prompt_text)| {
                let mut params = params.clone();
                params.max_tokens = self.fit(prompt_ids.len(), requested, PromptKind::Prompt)?;
                Ok(ValidRequest {
                    model: self.served_model_name.clone(),
                    prompt_ids,
                    prompt_text,
                    logprobs: params.logprobs,
                    params,
                    stream,
                    include_usage,
                    continuous_usage,
                    echo,
                    chat: false,
                })
            })
            .collect()
    }

    /// Each prompt's ids and (for text, or for tokens under echo) its text.
    fn completion_prompts(
        &self,
        prompt: Option<Prompt>,
        add_special_tokens: bool,
        echo: bool,
    ) -> Result<Vec<PromptParts>, ValidationError> {
        let prompt =
            prompt.ok_or_else(|| ValidationError::bad_request("prompt", "prompt is required."))?;
        let num_prompts = match &prompt {
            Prompt::Text(_) | Prompt::Tokens(_) => 1,
            Prompt::Texts(list) => list.len(),
            Prompt::TokenLists(list) => list.len(),
        };
        if num_prompts == 0 {
            return Err(ValidationError::bad_request(
                "prompt",
                "prompt must contain at least one prompt.",
            ));
        }
        if num_prompts > MAX_PROMPTS {
            return Err(ValidationError::bad_request(
                "prompt",
                format!("prompt may hold at most {MAX_PROMPTS} prompts, got {num_prompts}."),
            ));
        }
        let texts = |texts: Vec<String>| {
            texts
                .into_iter()
                .map(|text| {
                    if text.is_empty() {
                        return Err(empty_prompt());
                    }
                    let ids = self.encode(&text, add_special_tokens)?;
                    self.check_ids(&ids, "prompt")?;
                    Ok((ids, Some(text)))
                })
                .collect()
        };
        let token_lists = |lists: Vec<Vec<i64>>| {
            lists
                .into_iter()
                .map(|list| {
                    if list.is_empty() {
                        return Err(empty_prompt());
                    }
                    let ids = list
                        .into_iter()
                        .map(|id| {
                            fields::token_id(id, self.vocab_size)
                                .ok_or_else(|| self.out_of_vocab(id, "prompt"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let text = if echo {
                        Some(
                            self.tokenizer
                                .decode(&ids, false)
                                .map_err(|err| ValidationError::internal(err.to_string()))?,
                        )
                    } else {
                        None
                    };
                    Ok((ids, text))
                })
                .collect()
        };
        match prompt {
            Prompt::Text(text) => texts(vec![text]),
            Prompt::Texts(list) => texts(list),
            Prompt::Tokens(ids) => token_lists(vec![ids]),
            Prompt::TokenLists(lists) => token_lists(lists),
        }
    }

    fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ValidationError> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            ValidationError::bad_request(
                "messages",
                "This model has no chat template, so it cannot serve chat requests; use \
                 /v1/completions instead.",
            )
        })?;
        template
            .render(messages, add_generation_prompt)
            .map_err(|err| match err {
                ChatTemplateError::UnknownRole { index, .. } => {
                    ValidationError::bad_request(format!("messages[{index}].role"), err.to_string())
                }
                ChatTemplateError::Syntax(_) => ValidationError::internal(err.to_string()),
                ChatTemplateError::Raised(_)
                | ChatTemplateError::OutOfFuel
                | ChatTemplateError::Render(_) => {
                    ValidationError::bad_request("messages", err.to_string())
                }
            })
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ValidationError> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map_err(|err| ValidationError::internal(err.to_string()))
    }

    /// Refuses ids the model has no embedding for (a tokenizer with more ids than the
    /// model, or a token prompt).
    fn check_ids(&self, ids: &[u32], param: &str) -> Result<(), ValidationError> {
        if ids.is_empty() {
            return Err(ValidationError::bad_request(
                param,
                "The prompt cannot be empty.",
            ));
        }
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(&id) => Err(self.out_of_vocab(i64::from(id), param)),
            None => Ok(()),
        }
    }

    fn out_of_vocab(&self, id: i64, param: &str) -> ValidationError {
        ValidationError::bad_request(
            param,
            format!(
                "Token id {id} is out of vocabulary (the model has {} tokens).",
                self.vocab_size
            ),
        )
    }

    /// The final `max_tokens`: the requested one if prompt + it fits the context, else a
    /// 400 in vLLM's words; absent, whatever is left of the context (at least 1).
    fn fit(
        &self,
        prompt_len: usize,
        requested: Option<usize>,
        kind: PromptKind,
    ) -> Result<usize, ValidationError> {
        let noun = kind.noun();
        let max = self.max_model_len;
        match requested {
            None if prompt_len >= max => Err(ValidationError::bad_request(
                noun,
                format!(
                    "This model's maximum context length is {max} tokens. However, you \
                     requested {prompt_len} tokens in the {noun}. Please reduce the length of \
                     the {noun}."
                ),
            )),
            None => Ok(max - prompt_len),
            Some(max_tokens) if prompt_len.saturating_add(max_tokens) > max => {
                let total = prompt_len as u128 + max_tokens as u128;
                Err(ValidationError::bad_request(
                    noun,
                    format!(
                        "This model's maximum context length is {max} tokens. However, you \
                         requested {total} tokens ({prompt_len} in the {noun}, {max_tokens} in \
                         the completion). Please reduce the length of the {noun} or completion."
                    ),
                ))
            }
            Some(max_tokens) => Ok(max_tokens),
        }
    }
}

fn empty_prompt() -> ValidationError {
    ValidationError::bad_request("prompt", "The prompt cannot be empty.")
}

/// `(include_usage, continuous_usage_stats)`; `stream_options` is only allowed with
/// `stream: true` (vLLM, OpenAI), and continuous usage only counts with `include_usage`
/// (as in vLLM).
fn stream_usage(
    stream: bool,
    options: Option<&StreamOptions>,
) -> Result<(bool, bool), ValidationError> {
    let Some(options) = options else {
        return Ok((false, false));
    };
    if !stream {
        return Err(ValidationError::bad_request(
            "stream_options",
            "Stream options can only be defined when `stream=True`.",
        ));
    }
    fields::check_extra(&options.extra, &[], "stream_options.")?;
    let include_usage = options.include_usage.unwrap_or(false);
    let continuous = include_usage && options.continuous_usage_stats.unwrap_or(false);
    Ok((include_usage, continuous))
}

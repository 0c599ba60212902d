//! vLLM's `/tokenize` and `/detokenize`: the same model check and chat rendering as the
//! generation APIs, without their length limits.

use super::{fields, ValidationError, Validator};
use crate::api::wire::tokenize::{
    DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse,
};

impl Validator {
    /// vLLM's `/tokenize`: either `prompt` or `messages`; no length limit applies.
    pub fn tokenize(&self, req: TokenizeRequest) -> Result<TokenizeResponse, ValidationError> {
        fields::check_extra(&req.extra, &[], "")?;
        self.check_model(req.model.as_deref())?;
        let tokens = match (req.prompt, req.messages) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::bad_request(
                    "messages",
                    "Send either `prompt` or `messages`, not both.",
                ))
            }
            (None, None) => {
                return Err(ValidationError::bad_request(
                    "prompt",
                    "Either `prompt` or `messages` is required.",
                ))
            }
            // `add_generation_prompt` means nothing for a raw prompt.
            (Some(prompt), None) => self.encode(&prompt, req.add_special_tokens.unwrap_or(true))?,
            (None, Some(messages)) => {
                let messages = fields::chat_messages(Some(messages))?;
                let text = self.render(&messages, req.add_generation_prompt.unwrap_or(true))?;
                self.encode(&text, req.add_special_tokens.unwrap_or(false))?
            }
        };
        let token_strs = req.return_token_strs.unwrap_or(false).then(|| {
            tokens
                .iter()
                .map(|&id| self.tokenizer.id_to_token(id).unwrap_or_default())
                .collect()
        });
        Ok(TokenizeResponse {
            count: tokens.len(),
            max_model_len: self.max_model_len,
            tokens,
            token_strs,
        })
    }

    /// vLLM's `/detokenize`: the text of `tokens`, special tokens included.
    pub fn detokenize(
        &self,
        req: DetokenizeRequest,
    ) -> Result<DetokenizeResponse, ValidationError> {
        fields::check_extra(&req.extra, &[], "")?;
        self.check_model(req.model.as_deref())?;
        let tokens = req
            .tokens
            .ok_or_else(|| ValidationError::bad_request("tokens", "tokens is required."))?;
        let vocab_size = self.tokenizer.vocab_size();
        let ids = tokens
            .into_iter()
            .map(|id| {
                fields::token_id(id, vocab_size).ok_or_else(|| {
                    ValidationError::bad_request(
                        "tokens",
                        format!("Token id {id} is out of vocabulary (vocab size {vocab_size})."),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prompt = self
            .tokenizer
            .decode(&ids, false)
            .map_err(|err| ValidationError::internal(err.to_string()))?;
        Ok(DetokenizeResponse { prompt })
    }
}

//! Request bodies → parsing and validation, as the chat and completions handlers do:
//! every input is either a valid request or a 400, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use surge::api::wire::chat::ChatCompletionRequest;
use surge::api::wire::completions::CompletionRequest;
use surge::frontend::chat_template::ChatTemplate;
use surge::frontend::validate::{parse_request, Validator, ValidatorConfig};

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let tokenizer = surge_fuzz::llama3();
        let template = ChatTemplate::new(
            surge_fuzz::LLAMA3_TEMPLATE,
            tokenizer.bos_token.clone(),
            tokenizer.eos_token.clone(),
        )
        .expect("the Llama 3 template compiles");
        let config = ValidatorConfig {
            served_model_name: "llama".into(),
            max_model_len: 256,
            vocab_size: 128_256,
        };
        Validator::new(tokenizer, Some(template), config)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&api, body)) = data.split_first() else {
        return;
    };
    let validator = validator();
    if api % 2 == 0 {
        if let Ok(request) = parse_request::<ChatCompletionRequest>(body) {
            let _ = validator.chat(request);
        }
    } else if let Ok(request) = parse_request::<CompletionRequest>(body) {
        if let Ok(valid) = validator.completion(request) {
            for request in valid {
                assert!(request.prompt_ids.len() <= validator.max_model_len());
            }
        }
    }
});

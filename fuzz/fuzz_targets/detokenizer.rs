//! Token ids → the incremental detokenizer: never a panic, and the deltas add up to what
//! a full decode of the same ids says.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use surge::frontend::detokenizer::IncrementalDetokenizer;

fn llama3() -> Arc<tokenizers::Tokenizer> {
    static TOKENIZER: OnceLock<Arc<tokenizers::Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| Arc::new(surge_fuzz::llama3().inner().clone()))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&prompt_len, rest)) = data.split_first() else {
        return;
    };
    let tokenizer = llama3();
    let vocab = tokenizer.get_vocab_size(true) as u32;
    let ids: Vec<u32> = rest
        .chunks_exact(3)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], 0]) % vocab)
        .collect();
    let split = usize::from(prompt_len).min(ids.len());
    let (prompt, generated) = ids.split_at(split);
    for skip_special_tokens in [false, true] {
        let mut detokenizer =
            IncrementalDetokenizer::new(tokenizer.clone(), prompt, skip_special_tokens);
        let mut text = String::new();
        for &id in generated {
            text.push_str(&detokenizer.push(id).expect("ids are in the vocabulary"));
        }
        text.push_str(&detokenizer.finish().expect("ids are in the vocabulary"));
        let full = tokenizer
            .decode(generated, skip_special_tokens)
            .expect("ids are in the vocabulary");
        if !full.contains('\u{FFFD}') {
            assert_eq!(text, full, "ids {generated:?}");
        }
    }
});

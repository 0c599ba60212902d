//! Text in and out: tokenizers, chat templates and the incremental detokenizer.

pub mod chat_template;
pub mod detokenizer;
pub mod gguf_tokenizer;
pub mod text_output;
pub mod tokenizer;
pub mod validate;

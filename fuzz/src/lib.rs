//! What the fuzz targets share: the real Llama 3 tokenizer from the model cache
//! (`tests/support/fetch-models.sh` fetches it; `SURGE_MODEL_CACHE` moves it).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use surge::frontend::tokenizer::Tokenizer;

/// The Llama 3 chat template the tests also use.
pub const LLAMA3_TEMPLATE: &str = include_str!("../../tests/fixtures/templates/llama3.jinja");

/// The Llama 3 tokenizer; panics with the fix when the model cache lacks it.
pub fn llama3() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let cache = std::env::var_os("SURGE_MODEL_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models")
                });
            let dir = cache.join("llama3-tokenizer");
            let tokenizer = Tokenizer::from_hf_dir(&dir).unwrap_or_else(|err| {
                panic!(
                    "the Llama 3 tokenizer is needed in {} ({err}); run \
                     tests/support/fetch-models.sh",
                    dir.display()
                )
            });
            Arc::new(tokenizer)
        })
        .clone()
}

//! Builds a byte-level BPE `Tokenizer` from a GGUF file's `tokenizer.*` metadata.
//!
//! candle's `TokenizerFromGguf` is not used: it adds a prefix space for `pre = smollm`
//! ("Hello" → "ĠHello"), so ids would differ from the model's own tokenizer.json.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::tokenizer::{Tokenizer, TokenizerError, TokenizerParts};

const ORIGIN: &str = "GGUF metadata";

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
/// llama.cpp's end-of-turn and end-of-message ids also stop generation (Llama 3's
/// `<|eot_id|>`, `<|eom_id|>`).
const KEYS_EXTRA_EOS_ID: [&str; 2] = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"];
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// The pre-tokenizer regex of Llama 3's tokenizer.json (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Builds the tokenizer described by GGUF `metadata` (only `tokenizer.ggml.model = gpt2`,
/// i.e. byte-level BPE, is supported).
pub fn tokenizer_from_gguf(metadata: &HashMap<String, Value>) -> Result<Tokenizer, TokenizerError> {
    let model = required_str(metadata, KEY_MODEL)?;
    if model != "gpt2" {
        return Err(field_error(
            KEY_MODEL,
            format!("expected \"gpt2\" (byte-level BPE), found {model:?}"),
        ));
    }
    let pre = optional_str(metadata, KEY_PRE)?.unwrap_or("default");
    let pre_tokenizer = pre_tokenizer_for(pre)?;

    let tokens = string_array(metadata, KEY_TOKENS)?;
    let merges = string_array(metadata, KEY_MERGES)?
        .iter()
        .enumerate()
        .map(|(i, merge)| split_merge(merge).ok_or_else(|| bad_merge(i, merge)))
        .collect::<Result<Vec<_>, _>>()?;
    let token_types = match metadata.get(KEY_TOKEN_TYPE) {
        Some(value) => int_array(value, KEY_TOKEN_TYPE)?,
        None => Vec::new(),
    };
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(field_error(
            KEY_TOKEN_TYPE,
            format!(
                "has {} entries but `{KEY_TOKENS}` has {}",
                token_types.len(),
                tokens.len()
            ),
        ));
    }

    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        let id =
            u32::try_from(id).map_err(|_| field_error(KEY_TOKENS, "more than u32::MAX tokens"))?;
        // Keep the first id of a duplicated string so that it round-trips.
        vocab.entry((*token).clone()).or_insert(id);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // llama.cpp looks a whole pre-token up before merging for Llama 3, and so does
        // Llama 3's tokenizer.json (`ignore_merges: true`).
        .ignore_merges(matches!(pre, "llama-bpe" | "llama3"))
        .build()
        .map_err(|e| build_error(e.to_string()))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevelDecoder::default()));

    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (token, kind) in tokens.iter().zip(token_types.iter()) {
        match *kind {
            TOKEN_TYPE_CONTROL => special.push(AddedToken::from((*token).clone(), true)),
            TOKEN_TYPE_USER_DEFINED => {
                user_defined.push(AddedToken::from((*token).clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    inner
        .add_special_tokens(special)
        .map_err(|e| build_error(format!("special tokens: {e}")))?;
    inner
        .add_tokens(user_defined)
        .map_err(|e| build_error(format!("user-defined tokens: {e}")))?;

    let token_at = |key: &str, id: u32| -> Result<String, TokenizerError> {
        tokens
            .get(id as usize)
            .map(|t| (*t).clone())
            .ok_or_else(|| {
                field_error(
                    key,
                    format!("id {id} is outside the vocabulary of {}", tokens.len()),
                )
            })
    };
    let bos_id = optional_id(metadata, KEY_BOS_ID)?;
    let bos_token = bos_id.map(|id| token_at(KEY_BOS_ID, id)).transpose()?;
    let eos_id = optional_id(metadata, KEY_EOS_ID)?;
    let eos_token = eos_id.map(|id| token_at(KEY_EOS_ID, id)).transpose()?;
    let mut eos_token_ids: Vec<u32> = eos_id.into_iter().collect();
    for key in KEYS_EXTRA_EOS_ID {
        if let Some(id) = optional_id(metadata, key)? {
            token_at(key, id)?;
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    let add_bos = match metadata.get(KEY_ADD_BOS) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong_type(KEY_ADD_BOS, "boolean", other)),
    };
    let post_processor: PostProcessorWrapper = match (&bos_token, add_bos) {
        (Some(bos), true) => bos_post_processor(bos, bos_id.unwrap_or_default())?.into(),
        (None, true) => {
            return Err(field_error(
                KEY_ADD_BOS,
                format!("is true but `{KEY_BOS_ID}` is missing"),
            ))
        }
        _ => ByteLevel::default().trim_offsets(false).into(),
    };
    inner.with_post_processor(Some(post_processor));

    let chat_template = optional_str(metadata, KEY_CHAT_TEMPLATE)?.map(str::to_string);

    Ok(Tokenizer::from_parts(TokenizerParts {
        inner,
        eos_token_ids,
        bos_token,
        eos_token,
        chat_template,
    }))
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, spelled as in the model's
/// own tokenizer.json.
fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    Ok(match pre {
        "smollm" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        "llama-bpe" | "llama3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT_REGEX.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| build_error(format!("Llama 3 split regex: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        other => {
            return Err(field_error(
                KEY_PRE,
                format!(
                    "unsupported pre-tokenizer {other:?} (supported: \"smollm\", \
                     \"llama-bpe\", \"llama3\", \"gpt2\", \"default\")"
                ),
            ))
        }
    })
}

/// Prepends BOS to every sequence, as Llama 3's tokenizer.json does.
fn bos_post_processor(bos: &str, bos_id: u32) -> Result<TemplateProcessing, TokenizerError> {
    TemplateProcessing::builder()
        .try_single(format!("{bos} $A"))
        .and_then(|b| b.try_pair(format!("{bos} $A {bos}:1 $B:1")))
        .map_err(|e| build_error(format!("BOS template for {bos:?}: {e}")))?
        .special_tokens(vec![(bos.to_string(), bos_id)])
        .build()
        .map_err(|e| build_error(format!("BOS template for {bos:?}: {e}")))
}

/// A merge is "left right"; the split point is the first space after the first character
/// (llama.cpp's rule), so a left side that is itself a space still parses.
fn split_merge(merge: &str) -> Option<(String, String)> {
    let first_len = merge.chars().next()?.len_utf8();
    let at = merge[first_len..].find(' ')? + first_len;
    let (left, right) = (&merge[..at], &merge[at + 1..]);
    if right.is_empty() {
        return None;
    }
    Some((left.to_string(), right.to_string()))
}

fn bad_merge(index: usize, merge: &str) -> TokenizerError {
    field_error(
        format!("{KEY_MERGES}[{index}]"),
        format!("expected \"left right\", found {merge:?}"),
    )
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> TokenizerError {
    TokenizerError::field(ORIGIN, field, message)
}

fn build_error(message: String) -> TokenizerError {
    TokenizerError::Build {
        origin: ORIGIN.to_string(),
        message,
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F32(_) => "f32",
        Value::F64(_) => "f64",
        Value::Bool(_) => "boolean",
        Value::String(_) => "string",
        Value::Array(_) => "array",
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> TokenizerError {
    field_error(
        key,
        format!("expected {expected}, found {}", kind_name(found)),
    )
}

fn missing(key: &str) -> TokenizerError {
    field_error(key, "missing")
}

fn optional_str<'a>(
    metadata: &'a HashMap<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, TokenizerError> {
    match metadata.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "string", other)),
    }
}

fn required_str<'a>(
    metadata: &'a HashMap<String, Value>,
    key: &str,
) -> Result<&'a str, TokenizerError> {
    optional_str(metadata, key)?.ok_or_else(|| missing(key))
}

fn string_array<'a>(
    metadata: &'a HashMap<String, Value>,
    key: &str,
) -> Result<Vec<&'a String>, TokenizerError> {
    let value = metadata.get(key).ok_or_else(|| missing(key))?;
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "array of strings", value));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s),
            other => Err(wrong_type(&format!("{key}[{i}]"), "string", other)),
        })
        .collect()
}

fn as_int(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(v) => (*v).into(),
        Value::I8(v) => (*v).into(),
        Value::U16(v) => (*v).into(),
        Value::I16(v) => (*v).into(),
        Value::U32(v) => (*v).into(),
        Value::I32(v) => (*v).into(),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I64(v) => *v,
        _ => return None,
    })
}

fn int_array(value: &Value, key: &str) -> Result<Vec<i64>, TokenizerError> {
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "array of integers", value));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            as_int(item).ok_or_else(|| wrong_type(&format!("{key}[{i}]"), "integer", item))
        })
        .collect()
}

fn optional_id(
    metadata: &HashMap<String, Value>,
    key: &str,
) -> Result<Option<u32>, TokenizerError> {
    match metadata.get(key) {
        None => Ok(None),
        Some(value) => {
            let id = as_int(value).ok_or_else(|| wrong_type(key, "token id", value))?;
            u32::try_from(id)
                .map(Some)
                .map_err(|_| field_error(key, format!("expected token id, found {id}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary: every byte's character, a few merges, two control tokens.
    fn tiny_metadata(pre: &str) -> HashMap<String, Value> {
        let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
        // GPT-2's byte → char table (printable bytes map to themselves).
        let mut byte_chars = Vec::new();
        let mut n = 0u32;
        for b in 0u32..256 {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            };
            byte_chars.push(c);
        }
        tokens.extend(byte_chars.iter().map(|c| c.to_string()));
        let merges = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d",
        ];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        let mut token_type = vec![Value::I32(3), Value::I32(3)];
        token_type.extend(std::iter::repeat_n(Value::I32(1), tokens.len() - 2));

        let mut md = HashMap::new();
        md.insert(KEY_MODEL.into(), Value::String("gpt2".into()));
        md.insert(KEY_PRE.into(), Value::String(pre.into()));
        md.insert(
            KEY_TOKENS.into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        );
        md.insert(
            KEY_MERGES.into(),
            Value::Array(
                merges
                    .iter()
                    .map(|m| Value::String(m.to_string()))
                    .collect(),
            ),
        );
        md.insert(KEY_TOKEN_TYPE.into(), Value::Array(token_type));
        md.insert(KEY_BOS_ID.into(), Value::U32(1));
        md.insert(KEY_EOS_ID.into(), Value::U32(0));
        md.insert(KEY_ADD_BOS.into(), Value::Bool(false));
        md.insert(
            KEY_CHAT_TEMPLATE.into(),
            Value::String("{{ messages }}".into()),
        );
        md
    }

    fn err(md: &HashMap<String, Value>) -> String {
        tokenizer_from_gguf(md).unwrap_err().to_string()
    }

    #[test]
    fn round_trips_and_merges() {
        for pre in ["smollm", "llama-bpe", "gpt2", "default"] {
            let tok = tokenizer_from_gguf(&tiny_metadata(pre)).unwrap();
            let hello = tok.token_to_id("hello").unwrap();
            let world = tok.token_to_id("Ġworld").unwrap();
            assert_eq!(
                tok.encode("hello world", false).unwrap(),
                vec![hello, world],
                "{pre}"
            );
            for text in [
                "hello world",
                "café 42\n\tx",
                "日本 🦀👩‍👩‍👧",
                " lead  spaces  ",
            ] {
                let ids = tok.encode(text, false).unwrap();
                assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}: {text:?}");
            }
        }
    }

    #[test]
    fn smollm_splits_digits_and_adds_no_prefix_space() {
        let tok = tokenizer_from_gguf(&tiny_metadata("smollm")).unwrap();
        let ids = tok.encode("42", false).unwrap();
        assert_eq!(
            ids,
            vec![tok.token_to_id("4").unwrap(), tok.token_to_id("2").unwrap()]
        );
        let ids = tok.encode("hello", false).unwrap();
        assert_eq!(ids, vec![tok.token_to_id("hello").unwrap()]);
    }

    #[test]
    fn control_tokens_are_special() {
        let tok = tokenizer_from_gguf(&tiny_metadata("smollm")).unwrap();
        let ids = tok.encode("<|im_start|>hello", false).unwrap();
        assert_eq!(ids, vec![1, tok.token_to_id("hello").unwrap()]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello");
        assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>hello");
        assert_eq!(tok.bos_token.as_deref(), Some("<|im_start|>"));
        assert_eq!(tok.eos_token.as_deref(), Some("<|endoftext|>"));
        assert_eq!(tok.eos_token_ids, vec![0]);
        assert_eq!(tok.chat_template(), Some("{{ messages }}"));
        assert!(!tok.add_bos);
    }

    #[test]
    fn add_bos_token_prepends_bos() {
        let mut md = tiny_metadata("llama-bpe");
        md.insert(KEY_ADD_BOS.into(), Value::Bool(true));
        md.insert("tokenizer.ggml.eot_token_id".into(), Value::U32(1));
        let tok = tokenizer_from_gguf(&md).unwrap();
        assert!(tok.add_bos);
        let hello = tok.token_to_id("hello").unwrap();
        assert_eq!(tok.encode("hello", true).unwrap(), vec![1, hello]);
        assert_eq!(tok.encode("hello", false).unwrap(), vec![hello]);
        assert_eq!(tok.eos_token_ids, vec![0, 1]);
    }

    #[test]
    fn missing_field_is_named() {
        let mut md = tiny_metadata("smollm");
        md.remove(KEY_MERGES);
        assert_eq!(
            err(&md),
            "GGUF metadata: field `tokenizer.ggml.merges`: missing"
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let mut md = tiny_metadata("smollm");
        md.insert(KEY_TOKENS.into(), Value::U32(3));
        assert_eq!(
            err(&md),
            "GGUF metadata: field `tokenizer.ggml.tokens`: expected array of strings, found u32"
        );

        let mut md = tiny_metadata("smollm");
        md.insert(KEY_BOS_ID.into(), Value::String("1".into()));
        assert!(err(&md).contains("`tokenizer.ggml.bos_token_id`: expected token id, found string"));

        let mut md = tiny_metadata("smollm");
        md.insert(
            KEY_MERGES.into(),
            Value::Array(vec![Value::String("nospace".into())]),
        );
        assert!(
            err(&md).contains("`tokenizer.ggml.merges[0]`"),
            "{}",
            err(&md)
        );

        let mut md = tiny_metadata("smollm");
        md.insert(KEY_EOS_ID.into(), Value::U32(100_000));
        assert!(err(&md).contains("outside the vocabulary"), "{}", err(&md));
    }

    #[test]
    fn wrong_model_and_unknown_pre_are_clear() {
        let mut md = tiny_metadata("smollm");
        md.insert(KEY_MODEL.into(), Value::String("llama".into()));
        assert_eq!(
            err(&md),
            "GGUF metadata: field `tokenizer.ggml.model`: expected \"gpt2\" (byte-level BPE), \
             found \"llama\""
        );
        let md = tiny_metadata("qwen2");
        let e = err(&md);
        assert!(
            e.contains("`tokenizer.ggml.pre`: unsupported pre-tokenizer \"qwen2\""),
            "{e}"
        );
    }

    #[test]
    fn merge_split_rule() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("  a"), Some((" ".into(), "a".into())));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge("a "), None);
        assert_eq!(split_merge(""), None);
    }
}

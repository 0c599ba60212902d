//! Request bodies into wire structs, with the field a type error is in named as `param`.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::ValidationError;
use crate::api::wire::chat::{ChatContentPart, ChatMessageIn};
use crate::api::wire::common::StreamOptions;

/// Parses a JSON request body into `T` (a wire request type).
///
/// Invalid JSON (bad syntax, invalid UTF-8, nesting past serde_json's limit) and a body
/// that is not an object are 400s without `param`. A value of the wrong type is a 400
/// whose `param` names it, down to `messages[i].content[j].type`: the wire types have
/// only optional fields, so each key can be parsed alone to find the one that fails.
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, ValidationError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        ValidationError::bad_request_without_param(format!("Invalid JSON body: {err}"))
    })?;
    let Value::Object(map) = &value else {
        return Err(ValidationError::bad_request_without_param(
            "The request body must be a JSON object.",
        ));
    };
    T::deserialize(&value).map_err(|err| match failing_key::<T>(map) {
        Some((key, key_err)) => {
            let (param, detail) = map
                .get(&key)
                .and_then(|value| refine(&key, value))
                .unwrap_or((key, key_err));
            ValidationError::bad_request(
                param.clone(),
                format!("Invalid value for `{param}`: {detail}"),
            )
        }
        None => ValidationError::bad_request_without_param(format!("Invalid request: {err}")),
    })
}

/// The first key of `map` that `T` cannot parse on its own, with the error.
fn failing_key<T: DeserializeOwned>(map: &Map<String, Value>) -> Option<(String, String)> {
    map.iter().find_map(|(key, value)| {
        let mut single = Map::new();
        single.insert(key.clone(), value.clone());
        T::deserialize(&Value::Object(single))
            .err()
            .map(|err| (key.clone(), err.to_string()))
    })
}

/// A deeper path for the nested types that have one.
fn refine(key: &str, value: &Value) -> Option<(String, String)> {
    match (key, value) {
        ("messages", Value::Array(messages)) => {
            messages.iter().enumerate().find_map(|(i, message)| {
                let path = format!("messages[{i}]");
                let Value::Object(fields) = message else {
                    return ChatMessageIn::deserialize_err(message).map(|e| (path, e));
                };
                let (field, err) = failing_key::<ChatMessageIn>(fields)?;
                match (field.as_str(), fields.get(&field)) {
                    ("content", Some(Value::Array(parts))) => {
                        parts.iter().enumerate().find_map(|(j, part)| {
                            let path = format!("{path}.content[{j}]");
                            match part {
                                Value::Object(part_fields) => {
                                    failing_key::<ChatContentPart>(part_fields)
                                        .map(|(f, e)| (format!("{path}.{f}"), e))
                                }
                                _ => ChatContentPart::deserialize_err(part).map(|e| (path, e)),
                            }
                        })
                    }
                    _ => Some((format!("{path}.{field}"), err)),
                }
            })
        }
        ("stream_options", Value::Object(fields)) => failing_key::<StreamOptions>(fields)
            .map(|(field, err)| (format!("stream_options.{field}"), err)),
        _ => None,
    }
}

/// The error of parsing `value` as `Self`, if any.
trait DeserializeErr {
    fn deserialize_err(value: &Value) -> Option<String>;
}

impl<T: DeserializeOwned> DeserializeErr for T {
    fn deserialize_err(value: &Value) -> Option<String> {
        T::deserialize(value).err().map(|err| err.to_string())
    }
}

//! `/v1/models` wire types (vLLM's model card).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `owned_by` of every model surge serves.
pub const OWNED_BY: &str = "surge";

/// The answer of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The served model name.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    pub owned_by: String,
    /// What the model was loaded from (vLLM: the `--model` argument).
    pub root: String,
    pub max_model_len: usize,
    /// Always `null`: surge serves no adapters.
    pub parent: Option<String>,
    /// Always `[]`.
    pub permission: Vec<Value>,
}

impl ModelList {
    /// The list of the one model a server serves.
    pub fn single(id: String, root: String, created: u64, max_model_len: usize) -> Self {
        Self {
            object: "list".to_string(),
            data: vec![ModelCard {
                id,
                object: "model".to_string(),
                created,
                owned_by: OWNED_BY.to_string(),
                root,
                max_model_len,
                parent: None,
                permission: Vec::new(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_matches_vllm_json() {
        let list = ModelList::single("llama".into(), "/mnt/models".into(), 1_700_000_000, 8192);
        let expected = json!({
            "object": "list",
            "data": [{
                "id": "llama", "object": "model", "created": 1700000000u64, "owned_by": "surge",
                "root": "/mnt/models", "max_model_len": 8192, "parent": null, "permission": []
            }]
        });
        assert_eq!(serde_json::to_value(&list).unwrap(), expected);
        assert_eq!(serde_json::from_value::<ModelList>(expected).unwrap(), list);
    }
}

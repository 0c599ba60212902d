//! Registry credentials from docker / podman auth files (`config.json`, `auth.json`):
//! the registry's credential helper (`credHelpers`), else the default credential store
//! (`credsStore`), else basic credentials or an identity token inline (`auths`), else
//! anonymous. oci-client turns them into a bearer token when the registry asks for one.

mod cred_helper;

use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::error::OciError;

/// Where to look for credentials, first match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFiles {
    /// Given explicitly (`--registry-auth-file` / `REGISTRY_AUTH_FILE`): must exist.
    pub explicit: Option<PathBuf>,
    /// Default locations (podman's auth.json, docker's config.json): skipped when absent.
    pub defaults: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    /// Registry → helper name (`docker-credential-<name>`).
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    /// The helper for every registry without one of its own.
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

impl AuthFiles {
    /// The credentials for `registry` (`host[:port]`).
    pub fn resolve(&self, registry: &str) -> Result<RegistryAuth, OciError> {
        if let Some(file) = &self.explicit {
            if !file.is_file() {
                return Err(OciError::AuthFile {
                    file: file.clone(),
                    message: "no such file".into(),
                });
            }
        }
        for file in self.explicit.iter().chain(&self.defaults) {
            if !file.is_file() {
                continue;
            }
            if let Some(auth) = lookup(file, registry)? {
                tracing::debug!(file = %file.display(), registry, "registry credentials found");
                return Ok(auth);
            }
        }
        Ok(RegistryAuth::Anonymous)
    }
}

fn lookup(file: &Path, registry: &str) -> Result<Option<RegistryAuth>, OciError> {
    let err = |message: String| OciError::AuthFile {
        file: file.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| OciError::io(file, e))?;
    let parsed: AuthFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    // Docker's order: the registry's own helper, then the default store.
    let helper = parsed
        .cred_helpers
        .iter()
        .find(|(key, _)| normalize(key) == registry)
        .map(|(_, helper)| helper);
    for helper in helper.into_iter().chain(&parsed.creds_store) {
        if let Some(auth) = cred_helper::get(helper, registry).map_err(err)? {
            return Ok(Some(auth));
        }
    }
    let Some(entry) = parsed
        .auths
        .iter()
        .find(|(key, _)| normalize(key) == registry)
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    if let Some(token) = &entry.identitytoken {
        return Ok(Some(RegistryAuth::Bearer(token.clone())));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryAuth::Basic(user.clone(), password.clone())));
    }
    let Some(encoded) = &entry.auth else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| err(format!("`auth` of {registry} is not base64: {e}")))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| err(format!("`auth` of {registry} is not UTF-8")))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| err(format!("`auth` of {registry} is not user:password")))?;
    Ok(Some(RegistryAuth::Basic(user.into(), password.into())))
}

/// `https://host:port/v1/` → `host:port` (docker writes keys in several shapes).
fn normalize(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, json: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn finds_basic_credentials_in_docker_and_podman_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let docker = write(
            dir.path(),
            "config.json",
            &format!(r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{encoded}"}}}}}}"#),
        );
        let podman = write(
            dir.path(),
            "auth.json",
            r#"{"auths":{"other.example":{"username":"bob","password":"pw"}}}"#,
        );
        let files = AuthFiles {
            explicit: None,
            defaults: vec![dir.path().join("missing.json"), podman, docker],
        };
        assert_eq!(
            files.resolve("reg.example:5000").unwrap(),
            RegistryAuth::Basic("alice".into(), "s3cret".into())
        );
        assert_eq!(
            files.resolve("other.example").unwrap(),
            RegistryAuth::Basic("bob".into(), "pw".into())
        );
        assert_eq!(
            files.resolve("third.example").unwrap(),
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn a_missing_explicit_file_or_bad_json_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = AuthFiles {
            explicit: Some(dir.path().join("nope.json")),
            defaults: vec![],
        };
        assert!(files.resolve("r.example").is_err());
        let bad = write(dir.path(), "bad.json", "{not json");
        let files = AuthFiles {
            explicit: Some(bad),
            defaults: vec![],
        };
        let e = files.resolve("r.example").unwrap_err().to_string();
        assert!(e.contains("bad.json"), "{e}");
    }
}

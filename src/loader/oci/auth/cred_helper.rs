//! Docker credential helpers (`credHelpers` / `credsStore` in an auth file): the program
//! `docker-credential-<name>` on PATH, asked with `get` and the registry on stdin, answers
//! `{"Username": …, "Secret": …}` — or "credentials not found" when it has none.

use std::io::Write;
use std::process::{Command, Stdio};

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// The username by which a helper says that the secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// What helpers print (on stdout, exiting non-zero) for a registry they hold nothing for.
const NOT_FOUND: &str = "credentials not found";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reply {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// The credentials helper `name` holds for `registry`, or `None` when it holds none. An
/// error names the helper program: it is missing, failed, or answered nonsense.
pub fn get(name: &str, registry: &str) -> Result<Option<RegistryAuth>, String> {
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("the credential helper `{program}` could not run: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper may exit without reading its input; its exit status tells then.
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("the credential helper `{program}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains(NOT_FOUND) {
            return Ok(None);
        }
        let said = format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(format!(
            "`{program} get` for {registry} failed ({}): {}",
            out.status,
            said.trim()
        ));
    }
    parse_reply(&stdout)
        .map_err(|e| format!("`{program} get` for {registry} answered no credentials JSON: {e}"))
}

/// A helper's answer: basic credentials, an identity token, or none (an empty secret).
fn parse_reply(stdout: &str) -> Result<Option<RegistryAuth>, serde_json::Error> {
    let reply: Reply = serde_json::from_str(stdout)?;
    Ok(match (reply.username.as_str(), reply.secret) {
        (_, secret) if secret.is_empty() => None,
        (TOKEN_USERNAME, token) => Some(RegistryAuth::Bearer(token)),
        (user, password) => Some(RegistryAuth::Basic(user.to_string(), password)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_give_basic_credentials_an_identity_token_or_none() {
        let basic = parse_reply(r#"{"ServerURL":"r","Username":"u","Secret":"p"}"#).unwrap();
        assert_eq!(basic, Some(RegistryAuth::Basic("u".into(), "p".into())));
        let token = parse_reply(r#"{"Username":"<token>","Secret":"t"}"#).unwrap();
        assert_eq!(token, Some(RegistryAuth::Bearer("t".into())));
        assert_eq!(
            parse_reply(r#"{"Username":"u","Secret":""}"#).unwrap(),
            None
        );
        assert!(parse_reply("credentials not found").is_err());
    }
}

//! Docker credential helpers (`credHelpers` / `credsStore` in an auth file): the program
//! `docker-credential-<name>` on PATH, asked with `get` and the registry on stdin, answers
//! `{"Username": …, "Secret": …}` — or "credentials not found" when it has none. A helper
//! that does not answer in [`TIMEOUT`] (one waiting on an interactive login, say) is
//! killed and named in the error, so a start never hangs on it.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// The username by which a helper says that the secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// What helpers print (on stdout, exiting non-zero) for a registry they hold nothing for.
const NOT_FOUND: &str = "credentials not found";
/// How long a helper may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reply {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// The credentials helper `name` holds for `registry`, or `None` when it holds none. An
/// error names the helper program: it is missing, failed, timed out or answered nonsense.
pub fn get(name: &str, registry: &str) -> Result<Option<RegistryAuth>, String> {
    ask(&format!("docker-credential-{name}"), registry, TIMEOUT)
}

/// Runs `program get` for `registry`, for at most `timeout`.
fn ask(program: &str, registry: &str, timeout: Duration) -> Result<Option<RegistryAuth>, String> {
    let mut child = Command::new(program)
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
    let (status, stdout, stderr) = wait_with_output(&mut child, timeout)
        .map_err(|e| format!("the credential helper `{program}`: {e}"))?
        .ok_or_else(|| {
            format!(
                "`{program} get` for {registry} did not answer within {}s; it was stopped",
                timeout.as_secs()
            )
        })?;
    if !status.success() {
        if stdout.contains(NOT_FOUND) {
            return Ok(None);
        }
        let said = format!("{} {}", stdout.trim(), stderr.trim());
        return Err(format!(
            "`{program} get` for {registry} failed ({status}): {}",
            said.trim()
        ));
    }
    parse_reply(&stdout)
        .map_err(|e| format!("`{program} get` for {registry} answered no credentials JSON: {e}"))
}

/// The child's exit status, stdout and stderr, or `None` (the child killed) when it has
/// not exited within `timeout`. The pipes are read meanwhile, so a chatty child never
/// blocks on a full pipe.
fn wait_with_output(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<(ExitStatus, String, String)>> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match wait_timeout::ChildExt::wait_timeout(child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
    };
    let text = |reader: std::thread::JoinHandle<String>| reader.join().unwrap_or_default();
    Ok(Some((status, text(stdout), text(stderr))))
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

    /// A helper script in a temp dir (the dir is kept alive by the returned guard).
    fn helper(body: &str) -> (tempfile::TempDir, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker-credential-test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = path.to_str().unwrap().to_string();
        (dir, program)
    }

    #[test]
    fn a_helper_that_does_not_answer_in_time_is_stopped_and_named() {
        let (_dir, program) = helper("exec sleep 30");
        let started = std::time::Instant::now();
        let err = ask(&program, "r.example", Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert!(
            err.contains(&program) && err.contains("did not answer"),
            "{err}"
        );
    }

    #[test]
    fn a_helper_that_answers_in_time_gives_its_credentials() {
        let reply = r#"{"Username":"u","Secret":"p"}"#;
        let (_dir, program) = helper(&format!("read registry; echo '{reply}'"));
        let auth = ask(&program, "r.example", Duration::from_secs(20)).unwrap();
        assert_eq!(auth, Some(RegistryAuth::Basic("u".into(), "p".into())));
    }
}

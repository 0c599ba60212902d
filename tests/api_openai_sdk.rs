//! The official OpenAI Python SDK drives `surge serve` (SmolLM2): tests/support/openai_sdk_check.py.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::server::Server;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

/// The venv's python (tests/support/fetch-models.sh installs `openai` there), or $SURGE_PYTHON.
fn python() -> PathBuf {
    let python = std::env::var_os("SURGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run tests/support/fetch-models.sh first (or set SURGE_PYTHON)",
        python.display()
    );
    python
}

#[test]
fn openai_python_sdk_drives_the_server() {
    let hf = support::smollm2_hf();
    let key = "sk-surge-sdk-test";
    let server = Server::start(&[
        "--model",
        hf.to_str().unwrap(),
        "--served-model-name",
        "smollm2",
        "--api-key",
        key,
        "--max-model-len",
        "2048",
        "--kv-cache-memory",
        "256MiB",
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/openai_sdk_check.py");
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("sdk.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(python())
        .arg(&script)
        .args(["--base-url", &format!("{}/v1", server.base_url())])
        .args(["--model", "smollm2", "--api-key", key])
        .env("NO_PROXY", "127.0.0.1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("cannot run the SDK script");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => eprintln!("{output}"),
        Some(s) => panic!("the SDK script failed ({s}):\n{output}"),
        None => panic!("the SDK script ran past {SCRIPT_TIMEOUT:?}:\n{output}"),
    }
}

//! The 2-minute soak (tests/support/soak.py --duration 120): mixed chat and completions,
//! streaming and not, 10 % of clients dropping mid-stream, 5 % malformed requests and
//! bursts past the queue limit against SmolLM2. It fails unless, at the end, nothing is
//! running or waiting, every KV block is free, the RSS grew by under 5 % after warm-up,
//! and the server's request counts equal the clients'. The 20-minute run is the same
//! script with its default duration (not part of `cargo test`).

mod support;

use std::process::Command;

#[test]
fn two_minutes_of_mixed_rude_and_malformed_clients_leave_nothing_behind() {
    let report = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/soak.py"
        ))
        .args(["--surge", env!("CARGO_BIN_EXE_surge"), "--duration", "120"])
        .arg("--model")
        .arg(support::smollm2_hf())
        .arg("--report")
        .arg(report.path())
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the soak failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.path()).unwrap()).unwrap();
    for kind in ["dropped stream", "malformed", "chat stream", "completion"] {
        assert!(
            report["by_kind"][kind].as_u64().unwrap_or(0) > 0,
            "no `{kind}` request was sent: {report}"
        );
    }
    assert!(
        report["statuses"]["429"].as_u64().unwrap_or(0) > 0,
        "no burst went past the queue limit: {report}"
    );
}

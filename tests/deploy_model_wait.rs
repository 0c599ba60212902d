//! KServe's ModelCar with `MODEL_INIT_MODE=async`: the sidecar links /mnt/models only once
//! it runs, maybe after surge started. With `--model-wait-timeout`, `surge serve` waits
//! for the path (answering /health 503 in the pull phase), loads the model once the link
//! appears, and fails with an error naming the sidecar when it never does.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::server::{wait_until, Server};

#[test]
fn serve_waits_for_a_model_link_that_appears_later() {
    let model = support::tiny_llama();
    let mnt = tempfile::tempdir().unwrap();
    let link = mnt.path().join("models");
    let link_arg = link.to_str().unwrap().to_string();
    let mut server = Server::spawn(
        &[
            "--model",
            &link_arg,
            "--model-wait-timeout",
            "2m",
            "--served-model-name",
            "tiny",
        ],
        &[],
    );

    // Waiting: not ready, in the pull phase, alive.
    std::thread::sleep(Duration::from_millis(1500));
    server.assert_alive("while waiting for the model link");
    let health = server.get("/health");
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(health.body.contains("pull"), "{}", health.body);
    assert_eq!(server.get("/ping").status, 200);

    // The sidecar's `ln -sf`: now the model loads.
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let linked = Instant::now();
    wait_until(
        "/health 200 after the link appeared",
        Duration::from_secs(60),
        || server.get("/health").status == 200,
    );
    eprintln!("ready {:.1?} after the link appeared", linked.elapsed());
    let models = server.get("/v1/models");
    assert!(models.body.contains("\"tiny\""), "{}", models.body);
    assert!(
        server.log().contains("model path present"),
        "{}",
        server.log_tail()
    );
}

#[test]
fn serve_fails_with_a_clear_error_when_the_model_never_appears() {
    let mnt = tempfile::tempdir().unwrap();
    // A dangling link, as /proc/<pid>/root/models is once the sidecar died.
    let link = mnt.path().join("models");
    std::os::unix::fs::symlink(mnt.path().join("gone"), &link).unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
        .arg(&link)
        .args(["--model-wait-timeout", "2s"])
        .env_remove("SURGE_MODEL_WAIT_TIMEOUT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit {}: {stderr}", output.status);
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(60),
        "exited after {elapsed:?}"
    );
    for needle in [
        "did not appear within 2s",
        "--model-wait-timeout",
        "modelcar",
        "which does not exist",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
}

#[test]
fn without_a_wait_timeout_a_missing_model_fails_at_once() {
    let mnt = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
        .arg(mnt.path().join("models"))
        .env_remove("SURGE_MODEL_WAIT_TIMEOUT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("did not appear"), "{stderr}");
}

#[test]
fn sigterm_while_waiting_exits_promptly() {
    let mnt = tempfile::tempdir().unwrap();
    let link = mnt.path().join("models");
    let link_arg = link.to_str().unwrap().to_string();
    let mut server = Server::spawn(&["--model", &link_arg, "--model-wait-timeout", "10m"], &[]);
    std::thread::sleep(Duration::from_millis(500));
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("surge did not exit within 20 s of SIGTERM while waiting for the model");
    assert!(status.success(), "{status}: {}", server.log_tail());
}

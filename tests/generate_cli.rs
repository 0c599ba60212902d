//! `surge generate` end to end, as a user runs it.

mod support;

use std::process::Command;

fn surge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_surge"))
}

#[test]
fn chat_answers_the_capital_of_france() {
    let out = surge()
        .args([
            "generate",
            "--chat",
            "--max-tokens",
            "32",
            "--prompt",
            "What is the capital of France?",
        ])
        .arg("--model")
        .arg(support::smollm2_hf())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Paris"), "answer: {stdout}");
}

#[test]
fn prompts_file_prints_one_json_line_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    std::fs::write(
        &file,
        "{\"prompt\": \"The capital of Italy is\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"Say hi\"}]}\n",
    )
    .unwrap();
    let out = surge()
        .args(["generate", "--max-tokens", "5", "--prompts-file"])
        .arg(&file)
        .arg("--model")
        .arg(support::smollm2_gguf())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i);
        let ids = line["token_ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 5, "{line}");
        assert!(
            line["finish_reason"] == "length" || line["finish_reason"] == "stop",
            "{line}"
        );
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    std::fs::write(&file, "{\"promt\": \"typo\"}\n").unwrap();
    let out = surge()
        .args(["generate", "--prompts-file"])
        .arg(&file)
        .arg("--model")
        .arg(support::smollm2_gguf())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prompts.jsonl:1") && stderr.contains("promt"),
        "{stderr}"
    );

    let out = surge()
        .args(["generate", "--prompt", "x", "--model", "/no/such/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model"));
}

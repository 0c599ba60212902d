//! The container images are built the way the README says: `containers/build.sh` is the
//! one place that holds the build commands, the Containerfiles call it for the binary,
//! and the README shows the same commands it prints. Plus the properties the deploy
//! manifests rely on: a non-root user, `surge serve` as the entrypoint, the CUDA build on
//! CUDA's devel image and the runtime on CUDA's runtime image, a ModelCar under /models
//! on a base with a shell.

mod support;

use std::process::Command;

use support::deploy::repo;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `containers/build.sh print ARGS…`, with a fixed engine so the output is stable.
fn print(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(repo().join("containers/build.sh"))
        .arg("print")
        .args(args)
        .env("ENGINE", "podman")
        .env_remove("CUDA_COMPUTE_CAP")
        .env_remove("BUILD_IMAGE")
        .env_remove("CUDA_DEVEL_IMAGE")
        .env_remove("CUDA_RUNTIME_IMAGE")
        .env_remove("RUNTIME_IMAGE")
        .env_remove("MODELCAR_BASE_IMAGE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "build.sh print {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The non-comment instruction lines of a Containerfile, continuation lines joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(start) = line.strip_suffix('\\') {
            current.push_str(start.trim_end());
            current.push(' ');
        } else {
            current.push_str(line);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

#[test]
fn build_script_is_valid_bash_and_refuses_unknown_variants() {
    let status = Command::new("bash")
        .args(["-n"])
        .arg(repo().join("containers/build.sh"))
        .status()
        .unwrap();
    assert!(status.success());
    let output = Command::new("bash")
        .arg(repo().join("containers/build.sh"))
        .args(["print", "binary", "rocm"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "an unknown variant must fail");
}

#[test]
fn check_script_is_valid_bash_and_wants_a_model_dir() {
    let script = repo().join("containers/check.sh");
    let status = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    let output = Command::new("bash").arg(&script).output().unwrap();
    assert!(!output.status.success(), "no MODEL_DIR must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("usage: containers/check.sh MODEL_DIR"),
        "{stderr}"
    );
}

#[test]
fn containerfiles_build_the_binary_with_the_shared_script() {
    for (file, variant) in [
        ("containers/Containerfile", "cuda"),
        ("containers/Containerfile.cpu", "cpu"),
    ] {
        let lines = instructions(&read(file));
        let builds: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("RUN") && l.contains("cargo build"))
            .collect();
        assert!(builds.is_empty(), "{file} runs cargo itself: {builds:?}");
        let script = format!("containers/build.sh binary {variant}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("RUN") && l.contains(&script)),
            "{file} does not run `{script}`"
        );
        let froms = lines.iter().filter(|l| l.starts_with("FROM")).count();
        assert!(froms >= 2, "{file}: not a multi-stage build");
        assert!(
            lines
                .iter()
                .any(|l| l == r#"ENTRYPOINT ["/usr/local/bin/surge", "serve"]"#),
            "{file}: ENTRYPOINT is not surge serve"
        );
        let user = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{file}: no USER"));
        let uid: u32 = user.parse().unwrap_or_else(|_| {
            panic!("{file}: USER {user} is not numeric (runAsNonRoot needs a UID)")
        });
        assert_ne!(uid, 0, "{file} runs as root");
        assert!(
            lines.iter().any(|l| l.contains("SURGE_MODEL=/mnt/models")),
            "{file}: /mnt/models is not the default model"
        );
    }
    assert_eq!(
        print(&["binary", "cuda"]),
        "cargo build --release --locked --features cuda"
    );
    assert_eq!(print(&["binary", "cpu"]), "cargo build --release --locked");
}

#[test]
fn cuda_image_builds_on_cuda_devel_and_runs_on_cuda_runtime() {
    let text = read("containers/Containerfile");
    let lines = instructions(&text);
    let arg = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("no ARG {name}"))
            .to_string()
    };
    assert!(
        arg("CUDA_DEVEL_IMAGE").starts_with("nvidia/cuda:")
            && arg("CUDA_DEVEL_IMAGE").contains("-devel-")
    );
    assert!(
        arg("CUDA_RUNTIME_IMAGE").starts_with("nvidia/cuda:")
            && arg("CUDA_RUNTIME_IMAGE").contains("-runtime-")
    );
    // The same CUDA release in both stages (13.0: what the drivers in use load).
    let version = |image: &str| {
        image
            .split(':')
            .nth(1)
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        version(&arg("CUDA_DEVEL_IMAGE")),
        version(&arg("CUDA_RUNTIME_IMAGE"))
    );
    assert!(version(&arg("CUDA_DEVEL_IMAGE")).starts_with("13.0."));
    let froms: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM")).collect();
    assert_eq!(
        froms.last().unwrap().as_str(),
        "FROM ${CUDA_RUNTIME_IMAGE}",
        "the final stage"
    );
    assert!(froms
        .iter()
        .any(|l| l.starts_with("FROM ${CUDA_DEVEL_IMAGE} AS build")));
    assert!(
        print(&["image", "cuda"]).contains("--build-arg CUDA_COMPUTE_CAP=80"),
        "the default compute capability"
    );
}

#[test]
fn modelcar_puts_the_model_under_models_on_a_base_with_a_shell() {
    let lines = instructions(&read("containers/modelcar/Containerfile"));
    let base = lines
        .iter()
        .find_map(|l| l.strip_prefix("ARG MODELCAR_BASE_IMAGE="))
        .expect("no ARG MODELCAR_BASE_IMAGE");
    assert!(
        base.starts_with("busybox:"),
        "{base}: KServe's sidecar needs sh, ln and sleep"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("COPY") && l.ends_with(" /models/")));
    assert_eq!(
        print(&["modelcar", "/srv/llama", "models/llama:1"]),
        "podman build -f containers/modelcar/Containerfile -t models/llama:1 /srv/llama"
    );
}

#[test]
fn readme_shows_the_commands_the_script_runs() {
    let readme = read("README.md");
    for args in [
        ["image", "cuda"].as_slice(),
        ["image", "cpu"].as_slice(),
        ["binary", "cuda"].as_slice(),
        ["binary", "cpu"].as_slice(),
    ] {
        let invocation = format!("containers/build.sh {}", args.join(" "));
        assert!(
            readme.contains(&invocation),
            "the README does not show `{invocation}`"
        );
    }
    assert!(
        readme.contains("containers/build.sh modelcar"),
        "the README does not show the ModelCar build"
    );
    // What the script runs for them, spelled out in the README, must be what it prints.
    for args in [
        ["binary", "cuda"],
        ["binary", "cpu"],
        ["image", "cuda"],
        ["image", "cpu"],
    ] {
        let command = print(&args);
        assert!(
            readme.contains(&command),
            "the README does not show `{command}` (build.sh print {args:?})"
        );
    }
}

#[test]
fn containerignore_keeps_build_outputs_out_of_the_context() {
    let ignore = read(".containerignore");
    for entry in ["target/", ".cache/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".containerignore lacks {entry}"
        );
    }
    // docker reads .dockerignore: the same file.
    assert_eq!(read(".dockerignore"), ignore);
}

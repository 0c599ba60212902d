//! `--write-overlay DIR`: copies the deploy/ manifests and writes the advisor's values
//! into the copies, line by line, so that every comment stays where it was.

use std::path::Path;

use anyhow::{bail, Context};

use super::advisor::Advice;

/// One value to set: in `file`, the first line starting with `key:` after the first
/// line containing `anchor` (or after the file's start).
struct Edit {
    file: &'static str,
    anchor: Option<&'static str>,
    key: &'static str,
    value: String,
}

/// Where a Knative InferenceService gets `containerConcurrency`: under `predictor:`.
const KNATIVE_ISVCS: [&str; 2] = [
    "kserve/isvc-knative.yaml",
    "kserve/isvc-knative-scale-to-zero.yaml",
];

/// Copies `deploy_dir` to `out` (which must not exist, or be empty) and writes the
/// values of `advice` into the copies; returns one line per file changed.
pub fn write_overlay(
    deploy_dir: &Path,
    out: &Path,
    advice: &Advice,
) -> anyhow::Result<Vec<String>> {
    let (Some(target), Some(cc)) = (advice.knative_target, advice.container_concurrency) else {
        bail!("--write-overlay: the advisor found no concurrency that meets the objectives, so there is nothing to write");
    };
    if !deploy_dir.join("kserve").is_dir() {
        bail!(
            "--write-overlay: {} is not surge's deploy/ directory (no kserve/ in it); pass --deploy-dir",
            deploy_dir.display()
        );
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("--write-overlay: {} exists and is not empty", out.display());
    }
    copy_dir(deploy_dir, out)?;

    let mut edits = Vec::new();
    for file in KNATIVE_ISVCS {
        edits.push(Edit {
            file,
            anchor: None,
            key: "autoscaling.knative.dev/target",
            value: format!("\"{target}\""),
        });
    }
    edits.push(Edit {
        file: "keda-http/interceptorroute.yaml",
        anchor: Some("concurrency:"),
        key: "targetValue",
        value: target.to_string(),
    });
    if let Some(s) = advice.keda_saturation_threshold {
        for (file, key) in [
            ("kserve/isvc-standard-keda.yaml", "value"),
            ("plain/keda-prometheus.yaml", "threshold"),
        ] {
            edits.push(Edit {
                file,
                anchor: Some("query: sum(surge_saturation"),
                key,
                value: format!("\"{s}\""),
            });
        }
    }
    if let Some(w) = advice.keda_waiting_threshold {
        edits.push(Edit {
            file: "kserve/isvc-standard-keda-waiting.yaml",
            anchor: Some("query: sum(vllm:num_requests_waiting"),
            key: "value",
            value: format!("\"{w}\""),
        });
    }

    let mut changed = Vec::new();
    for edit in &edits {
        let path = out.join(edit.file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--write-overlay: cannot read {}", path.display()))?;
        let text = set_value(&text, edit)
            .with_context(|| format!("--write-overlay: {}", path.display()))?;
        std::fs::write(&path, text)?;
        changed.push(format!("{}: {} = {}", edit.file, edit.key, edit.value));
    }
    for file in KNATIVE_ISVCS {
        let path = out.join(file);
        let text = std::fs::read_to_string(&path)?;
        let text = set_container_concurrency(&text, cc)
            .with_context(|| format!("--write-overlay: {}", path.display()))?;
        std::fs::write(&path, text)?;
        changed.push(format!("{file}: containerConcurrency = {cc}"));
    }
    Ok(changed)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)
        .with_context(|| format!("--write-overlay: cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// `text` with the value of `edit.key` replaced (indentation kept).
fn set_value(text: &str, edit: &Edit) -> anyhow::Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = match edit.anchor {
        None => 0,
        Some(anchor) => lines
            .iter()
            .position(|l| l.contains(anchor))
            .with_context(|| format!("no line contains {anchor:?}"))?,
    };
    let prefix = format!("{}:", edit.key);
    let at = (start..lines.len())
        .find(|&i| lines[i].trim_start().starts_with(&prefix))
        .with_context(|| format!("no `{}:` line after {:?}", edit.key, edit.anchor))?;
    let indent = &lines[at][..lines[at].len() - lines[at].trim_start().len()];
    let new_line = format!("{indent}{}: {}", edit.key, edit.value);
    Ok(replace_line(&lines, at, &[new_line]))
}

/// `text` with `containerConcurrency: cc` under `predictor:` (replaced if present).
fn set_container_concurrency(text: &str, cc: u32) -> anyhow::Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    if let Some(at) = lines
        .iter()
        .position(|l| l.trim_start().starts_with("containerConcurrency:"))
    {
        let indent = &lines[at][..lines[at].len() - lines[at].trim_start().len()];
        return Ok(replace_line(
            &lines,
            at,
            &[format!("{indent}containerConcurrency: {cc}")],
        ));
    }
    let at = lines
        .iter()
        .position(|l| l.trim_end() == "  predictor:")
        .context("no `  predictor:` line")?;
    let new = [
        lines[at].to_string(),
        "    # Hard limit of requests in flight per replica, from `surge bench` (the knee)."
            .to_string(),
        format!("    containerConcurrency: {cc}"),
    ];
    Ok(replace_line(&lines, at, &new))
}

fn replace_line(lines: &[&str], at: usize, new: &[String]) -> String {
    let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
    out.extend(new.iter().cloned());
    out.extend(lines[at + 1..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::advisor::Slos;

    fn advice() -> Advice {
        Advice {
            slos: Slos::default(),
            knee_concurrency: Some(12.4),
            knee_above_sweep: false,
            knative_target: Some(12),
            container_concurrency: Some(12),
            keda_saturation_threshold: Some(0.6),
            keda_waiting_threshold: Some(3),
            reasoning: vec![],
        }
    }

    fn yaml(path: &Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        serde_norway::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .collect()
    }

    #[test]
    fn the_overlay_carries_the_values_into_the_real_manifests() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("overlay");
        let changed = write_overlay(&deploy, &out, &advice()).unwrap();
        assert_eq!(changed.len(), 8, "{changed:#?}");

        for file in KNATIVE_ISVCS {
            let docs = yaml(&out.join(file));
            let isvc = &docs[0];
            assert_eq!(
                isvc["metadata"]["annotations"]["autoscaling.knative.dev/target"], "12",
                "{file}"
            );
            assert_eq!(
                isvc["spec"]["predictor"]["containerConcurrency"], 12,
                "{file}"
            );
            // The rest is untouched.
            assert_eq!(isvc["spec"]["predictor"]["model"]["runtime"], "surge");
        }
        let keda = &yaml(&out.join("kserve/isvc-standard-keda.yaml"))[0];
        let metric = &keda["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"];
        assert_eq!(metric["target"]["value"], "0.6");
        let waiting = &yaml(&out.join("kserve/isvc-standard-keda-waiting.yaml"))[0];
        let metric = &waiting["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"];
        assert_eq!(metric["target"]["value"], "3");
        let plain = yaml(&out.join("plain/keda-prometheus.yaml"));
        let scaled = plain.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
        assert_eq!(
            scaled["spec"]["triggers"][0]["metadata"]["threshold"],
            "0.6"
        );
        let http = yaml(&out.join("keda-http/interceptorroute.yaml"));
        let route = http
            .iter()
            .find(|d| d["kind"] == "InterceptorRoute")
            .unwrap();
        assert_eq!(
            route["spec"]["scalingMetric"]["concurrency"]["targetValue"],
            12
        );
        // Files the advisor has nothing for are copied as they are.
        assert_eq!(
            std::fs::read(out.join("README.md")).unwrap(),
            std::fs::read(deploy.join("README.md")).unwrap()
        );
        // The source is untouched.
        let original = &yaml(&deploy.join("kserve/isvc-knative.yaml"))[0];
        assert!(original["spec"]["predictor"]
            .get("containerConcurrency")
            .is_none());

        // A second run refuses to overwrite, and a run twice over a copy is idempotent.
        assert!(write_overlay(&deploy, &out, &advice()).is_err());
        let again = tmp.path().join("again");
        write_overlay(&out, &again, &advice()).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.join("kserve/isvc-knative.yaml")).unwrap(),
            std::fs::read_to_string(out.join("kserve/isvc-knative.yaml")).unwrap()
        );
    }

    #[test]
    fn nothing_to_write_is_an_error() {
        let mut a = advice();
        a.knative_target = None;
        a.container_concurrency = None;
        let tmp = tempfile::tempdir().unwrap();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let err = write_overlay(&deploy, &tmp.path().join("o"), &a).unwrap_err();
        assert!(err.to_string().contains("nothing to write"), "{err}");
    }
}

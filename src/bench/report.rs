//! The JSON report and the summary table. The fleet simulator reads the report as a
//! capacity curve: `url`, `model` and each level's `concurrency`, `requests`,
//! `completed`, `errors`, token counts, `duration_s`, `output_tokens_per_s`,
//! `requests_per_s` and `ttft_s` / `itl_s` / `e2e_s` (`p50`, `p90`, `p99`, `mean`) keep
//! their names; fields may be added.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::advisor::{fmt_s, Advice};
use super::stats::LevelStats;

/// A whole benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    pub model: String,
    /// `completions` or `chat`.
    pub api: String,
    /// surge's version that produced the report.
    pub surge_version: String,
    /// When the run started (RFC 3339).
    pub started_at: String,
    pub levels: Vec<LevelStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<Advice>,
}

impl Report {
    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write the report {}", path.display()))
    }

    /// Reads a report written by `write`.
    pub fn read(path: &Path) -> anyhow::Result<Report> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a bench report", path.display()))
    }

    /// A table of the levels, one line each.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} ({}, {})\n{:>11} {:>6} {:>6} {:>6} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            self.url,
            self.model,
            self.api,
            "concurrency",
            "reqs",
            "ok",
            "errors",
            "out tok/s",
            "req/s",
            "TTFT p50",
            "TTFT p90",
            "ITL p50",
            "ITL p90",
            "e2e p90",
            "sat",
        );
        for l in &self.levels {
            let sat = l
                .server
                .and_then(|s| s.saturation_mean)
                .map_or("-".to_string(), |s| format!("{s:.2}"));
            out += &format!(
                "{:>11.1} {:>6} {:>6} {:>6} {:>9.1} {:>7.2} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                l.concurrency,
                l.requests,
                l.completed,
                l.num_errors(),
                l.output_tokens_per_s,
                l.requests_per_s,
                fmt_s(l.ttft_s.p50),
                fmt_s(l.ttft_s.p90),
                fmt_s(l.itl_s.p50),
                fmt_s(l.itl_s.p90),
                fmt_s(l.e2e_s.p90),
                sat,
            );
            if !l.errors.is_empty() {
                let kinds: Vec<String> =
                    l.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
                out += &format!("{:>11} errors: {}\n", "", kinds.join(", "));
            }
        }
        out
    }
}

/// The advisor's answer as text: the values, then the reasoning.
pub fn advice_text(a: &Advice) -> String {
    let mut out = String::from("Autoscaling advice\n");
    let opt = |v: Option<String>| v.unwrap_or_else(|| "- (see below)".into());
    match a.knee_concurrency {
        Some(k) => {
            out += &format!(
                "  knee: {k:.2} requests in flight per replica{}\n",
                if a.knee_above_sweep {
                    " (at least: every level met the objectives)"
                } else {
                    ""
                }
            )
        }
        None => out += "  knee: none (the lowest level misses the objectives)\n",
    }
    out += &format!(
        "  autoscaling.knative.dev/target: {}\n  containerConcurrency: {}\n  KEDA surge_saturation threshold: {}\n  KEDA vllm:num_requests_waiting threshold: {}\nWhy:\n",
        opt(a.knative_target.map(|v| v.to_string())),
        opt(a.container_concurrency.map(|v| v.to_string())),
        opt(a.keda_saturation_threshold.map(|v| v.to_string())),
        opt(a.keda_waiting_threshold.map(|v| v.to_string())),
    );
    for line in &a.reasoning {
        out += &format!("  - {line}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{Outcome, RequestRecord};

    #[test]
    fn the_report_keeps_the_simulators_field_names_and_round_trips() {
        let outcomes = vec![Outcome::Ok(RequestRecord {
            ttft_s: 0.1,
            itl_s: vec![0.02],
            e2e_s: 0.5,
            prompt_tokens: 4,
            output_tokens: 2,
            has_usage: true,
        })];
        let report = Report {
            url: "http://127.0.0.1:1".into(),
            model: "m".into(),
            api: "completions".into(),
            surge_version: "0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            levels: vec![LevelStats::from_outcomes(Some(2.0), &outcomes, 0, 1.0)],
            advice: None,
        };
        let v = serde_json::to_value(&report).unwrap();
        for key in ["url", "model", "levels"] {
            assert!(v.get(key).is_some(), "{key}: {v}");
        }
        assert!(v.get("advice").is_none(), "no advice, no field: {v}");
        let level = &v["levels"][0];
        for key in [
            "concurrency",
            "requests",
            "completed",
            "errors",
            "output_tokens",
            "prompt_tokens",
            "duration_s",
            "output_tokens_per_s",
            "requests_per_s",
        ] {
            assert!(level.get(key).is_some(), "{key}: {level}");
        }
        for key in ["ttft_s", "itl_s", "e2e_s"] {
            for p in ["p50", "p90", "p99", "mean"] {
                assert!(level[key][p].is_number(), "{key}.{p}: {level}");
            }
        }
        assert_eq!(level["concurrency"], 2.0);
        assert_eq!(level["errors"], serde_json::json!({}));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/report.json");
        report.write(&path).unwrap();
        assert_eq!(Report::read(&path).unwrap(), report);
        assert!(report.summary().contains("out tok/s"));
    }
}

//! Request-arrival traces: the CSV and JSONL formats `surge bench simulate` replays.
//!
//! CSV (`*.csv`, or any name not ending in `.jsonl`): one request a line,
//! `t_seconds[,prompt_tokens,output_tokens]`, where `t_seconds` is the arrival time in
//! seconds from the start of the trace. Blank lines, lines starting with `#` and a
//! header line starting with `t_seconds` are skipped.
//!
//! JSONL (`*.jsonl`): one object a line, `{"t_seconds": 1.5, "prompt_tokens": 300,
//! "output_tokens": 120}`, the token counts optional.
//!
//! A request without token counts costs the average request of the capacity report.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct TraceRequest {
    /// Arrival time, seconds from the start of the trace.
    pub t_seconds: f64,
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    #[serde(default)]
    pub output_tokens: Option<u32>,
}

/// The requests of a trace, sorted by arrival time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    pub requests: Vec<TraceRequest>,
}

impl Trace {
    /// Reads a trace file; the format follows the extension (see the module docs).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading trace {}", path.display()))?;
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        let parsed = if jsonl {
            Self::parse_jsonl(&text)
        } else {
            Self::parse_csv(&text)
        };
        parsed.with_context(|| format!("trace {}", path.display()))
    }

    /// Parses the CSV format.
    pub fn parse_csv(text: &str) -> anyhow::Result<Self> {
        let mut requests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("t_seconds") {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let request = match fields.as_slice() {
                [t] => TraceRequest {
                    t_seconds: parse_field(t, i)?,
                    prompt_tokens: None,
                    output_tokens: None,
                },
                [t, p, o] => TraceRequest {
                    t_seconds: parse_field(t, i)?,
                    prompt_tokens: Some(parse_field(p, i)?),
                    output_tokens: Some(parse_field(o, i)?),
                },
                _ => bail!(
                    "line {}: expected t_seconds[,prompt_tokens,output_tokens], got {line:?}",
                    i + 1
                ),
            };
            requests.push(request);
        }
        Self::new(requests)
    }

    /// Parses the JSONL format.
    pub fn parse_jsonl(text: &str) -> anyhow::Result<Self> {
        let mut requests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let request: TraceRequest =
                serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
            requests.push(request);
        }
        Self::new(requests)
    }

    /// A trace from requests in any order; arrival times must be finite and ≥ 0.
    pub fn new(mut requests: Vec<TraceRequest>) -> anyhow::Result<Self> {
        if let Some(bad) = requests
            .iter()
            .find(|r| !r.t_seconds.is_finite() || r.t_seconds < 0.0)
        {
            bail!("arrival time {} is not a time ≥ 0", bad.t_seconds);
        }
        requests.sort_by(|a, b| a.t_seconds.total_cmp(&b.t_seconds));
        Ok(Self { requests })
    }

    /// The last arrival, 0 for an empty trace.
    pub fn duration_s(&self) -> f64 {
        self.requests.last().map_or(0.0, |r| r.t_seconds)
    }

    /// Writes the trace as CSV with a leading comment, arrival times to the millisecond.
    pub fn to_csv(&self, comment: &str) -> String {
        let mut out = String::new();
        for line in comment.lines() {
            let _ = writeln!(out, "# {line}");
        }
        out.push_str("t_seconds,prompt_tokens,output_tokens\n");
        for r in &self.requests {
            let _ = write!(out, "{:.3}", r.t_seconds);
            if let (Some(p), Some(o)) = (r.prompt_tokens, r.output_tokens) {
                let _ = write!(out, ",{p},{o}");
            }
            out.push('\n');
        }
        out
    }
}

fn parse_field<T: std::str::FromStr>(field: &str, line_index: usize) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    field
        .parse()
        .with_context(|| format!("line {}: {field:?} is not a number", line_index + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_with_comments_header_and_both_shapes() {
        let t = Trace::parse_csv("# c\nt_seconds,prompt_tokens,output_tokens\n2.5,10,20\n\n1\n")
            .unwrap();
        assert_eq!(t.requests.len(), 2);
        assert_eq!(t.requests[0].t_seconds, 1.0);
        assert_eq!(t.requests[0].output_tokens, None);
        assert_eq!(t.requests[1].prompt_tokens, Some(10));
        assert_eq!(t.duration_s(), 2.5);
    }

    #[test]
    fn parses_jsonl() {
        let t =
            Trace::parse_jsonl("{\"t_seconds\": 3, \"output_tokens\": 7}\n{\"t_seconds\": 0.5}\n")
                .unwrap();
        assert_eq!(t.requests[0].t_seconds, 0.5);
        assert_eq!(t.requests[1].output_tokens, Some(7));
    }

    #[test]
    fn rejects_bad_lines_and_times() {
        assert!(Trace::parse_csv("1,2\n").is_err());
        assert!(Trace::parse_csv("x\n").is_err());
        assert!(Trace::parse_csv("-1\n").is_err());
        assert!(Trace::parse_jsonl("{\"t\": 1}\n").is_err());
    }

    #[test]
    fn csv_round_trips() {
        let t = Trace::parse_csv("0.125,10,20\n1.5,1,2\n").unwrap();
        assert_eq!(Trace::parse_csv(&t.to_csv("a\nb")).unwrap(), t);
    }
}

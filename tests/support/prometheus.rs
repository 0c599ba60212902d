//! A real Prometheus server (Debian package `prometheus`, installed by
//! `tests/support/setup.sh`) on 127.0.0.1 that scrapes one target every second, with a
//! blocking PromQL client.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;

/// How long Prometheus may take to answer /-/ready and to see its target up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one PromQL query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `poll` queries.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The `prometheus` binary: /usr/bin/prometheus, else the first on PATH. Panics when
/// there is none: the tests that need it never skip silently.
pub fn binary() -> PathBuf {
    let debian = Path::new("/usr/bin/prometheus");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("prometheus");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the `prometheus` binary is missing (neither /usr/bin/prometheus nor on PATH): \
         run tests/support/setup.sh first (it installs the Debian package `prometheus`)"
    );
}

/// A running Prometheus, killed on drop; its log is printed when the test panics.
pub struct Prometheus {
    child: Child,
    base_url: String,
    job: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    client: Client,
}

impl Prometheus {
    /// Starts Prometheus scraping `http://{target}/metrics` (`target` is `127.0.0.1:PORT`)
    /// as job `job` every second, and waits until it is ready and `up{job}` is 1.
    pub fn start(job: &str, target: &str) -> Prometheus {
        assert!(
            target.starts_with("127.0.0.1:"),
            "the scrape target must be on 127.0.0.1, not {target}"
        );
        let binary = binary();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {job}\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("prometheus.log");
        let log = File::create(&log_path).unwrap();
        let listen = format!("127.0.0.1:{}", super::free_port());
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", binary.display()));
        let mut prometheus = Prometheus {
            child,
            base_url: format!("http://{listen}"),
            job: job.to_string(),
            log_path,
            _dir: dir,
            client: Client::builder()
                .no_proxy()
                .timeout(QUERY_TIMEOUT)
                .build()
                .unwrap(),
        };
        // A panic in here drops `prometheus`, which kills the child and prints its log.
        prometheus.wait_ready();
        prometheus
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let ready_url = format!("{}/-/ready", self.base_url);
        loop {
            let status = self
                .client
                .get(&ready_url)
                .send()
                .map(|r| r.status().as_u16());
            if status.as_ref().is_ok_and(|s| *s == 200) {
                break;
            }
            self.assert_alive("before GET /-/ready answered 200");
            assert!(
                Instant::now() < deadline,
                "GET {ready_url} did not answer 200 within {START_TIMEOUT:?} (last: {status:?})"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
        let up = format!("up{{job=\"{}\"}}", self.job);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(last) = self.poll(&up, |v| v == 1.0, remaining) {
            panic!(
                "Prometheus did not see its target up within {START_TIMEOUT:?}: {up} is {last:?}"
            );
        }
    }

    /// Panics (with the log) if the child has exited.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "prometheus exited ({status}) {when}; log:\n{}",
                self.log_tail()
            );
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Everything Prometheus logged so far.
    pub fn log(&self) -> String {
        super::read_log(&self.log_path)
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        super::last_lines(&self.log(), 60)
    }

    /// Evaluates an instant PromQL query now: the value of its only sample, `None` when
    /// the answer is empty. Panics on an error answer (a bad query), on an answer with
    /// more than one series, and when Prometheus cannot be reached.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base_url),
            &[("query", promql)],
        )
        .unwrap();
        let response = self
            .client
            .get(url)
            .send()
            .unwrap_or_else(|e| panic!("PromQL {promql}: request failed: {e}"));
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .unwrap_or_else(|e| panic!("PromQL {promql}: status {status}, body not JSON: {e}"));
        assert!(
            status == 200 && body["status"] == "success",
            "PromQL {promql}: status {status}: {body}"
        );
        let data = &body["data"];
        let value = match data["resultType"].as_str() {
            Some("vector") => {
                let result = data["result"].as_array().expect("vector result");
                assert!(
                    result.len() <= 1,
                    "PromQL {promql}: {} series, expected at most one: {data}",
                    result.len()
                );
                match result.first() {
                    Some(sample) => &sample["value"],
                    None => return None,
                }
            }
            Some("scalar") => &data["result"],
            _ => panic!("PromQL {promql}: unexpected result {data}"),
        };
        // `[unix time, "value"]`
        let text = value[1]
            .as_str()
            .unwrap_or_else(|| panic!("PromQL {promql}: bad sample {value}"));
        Some(
            text.parse()
                .unwrap_or_else(|e| panic!("PromQL {promql}: bad value {text:?}: {e}")),
        )
    }

    /// Queries every `POLL_INTERVAL` until `pred` holds for the value (an empty answer
    /// never does), at most `timeout`: `Ok(value)`, or `Err(last answer)`.
    pub fn poll(
        &self,
        promql: &str,
        pred: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> Result<f64, Option<f64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.query(promql);
            if let Some(v) = value.filter(|v| pred(*v)) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(value);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- prometheus log ({}) -----\n{}\n----- end of log -----",
                self.base_url,
                self.log_tail()
            );
        }
    }
}

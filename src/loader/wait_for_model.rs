//! Waits, for a bounded time, for a model path that another container provides: under
//! KServe's ModelCar with `MODEL_INIT_MODE=async` the sidecar links `/mnt/models` only
//! once it runs, which may be after surge starts.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the path is looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often a wait still in progress is logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the model path is not usable.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(
        "model path {} did not appear within {} (--model-wait-timeout): {state}. Under KServe \
         with a ModelCar (oci:// storageUri, MODEL_INIT_MODE=async) the `modelcar` sidecar \
         links it when it starts: check that container's status and logs; raise \
         --model-wait-timeout if the sidecar is only slow",
        path.display(),
        humantime::format_duration(*timeout)
    )]
    TimedOut {
        path: PathBuf,
        timeout: Duration,
        /// What is at the path now (nothing, or a link to a missing target).
        state: String,
    },
    #[error(
        "model path {} exists but cannot be read: {source}. A ModelCar's files are reached \
         through /proc/<sidecar pid>/root, which only the sidecar's own user may enter: run \
         surge and the ModelCar image as the same user (the images here both use UID 1001; \
         OpenShift gives every container of a pod the same UID)",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Blocks until `path` resolves (a dangling link counts as absent), checking every
/// 200 ms for at most `timeout`; returns how long it waited.
pub fn wait_for_model(path: &Path, timeout: Duration) -> Result<Duration, WaitError> {
    let started = Instant::now();
    let mut last_log = started;
    loop {
        match std::fs::metadata(path) {
            Ok(_) => return Ok(started.elapsed()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WaitError::Unreadable {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(WaitError::TimedOut {
                path: path.to_path_buf(),
                timeout,
                state: describe_absent(path),
            });
        }
        if last_log.elapsed() >= LOG_INTERVAL {
            last_log = Instant::now();
            tracing::info!(
                path = %path.display(),
                waited_s = waited.as_secs(),
                timeout_s = timeout.as_secs(),
                "waiting for the model path to appear"
            );
        }
        std::thread::sleep(POLL_INTERVAL.min(timeout - waited));
    }
}

/// Says what stands at an absent path: a link to a missing target, or nothing.
fn describe_absent(path: &Path) -> String {
    match std::fs::read_link(path) {
        Ok(target) => format!("it is a link to {}, which does not exist", target.display()),
        Err(_) => "nothing is there".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_path_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let waited = wait_for_model(dir.path(), Duration::from_secs(5)).unwrap();
        assert!(waited < POLL_INTERVAL, "waited {waited:?}");
    }

    #[test]
    fn path_that_appears_later_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("models");
        let maker = {
            let target = target.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                std::fs::create_dir(&target).unwrap();
            })
        };
        let waited = wait_for_model(&target, Duration::from_secs(30)).unwrap();
        maker.join().unwrap();
        assert!(waited >= Duration::from_millis(500), "waited {waited:?}");
    }

    #[test]
    fn dangling_link_times_out_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("models");
        std::os::unix::fs::symlink(dir.path().join("missing"), &link).unwrap();
        let err = wait_for_model(&link, Duration::from_millis(300)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, WaitError::TimedOut { .. }), "{message}");
        assert!(message.contains("which does not exist"), "{message}");
        assert!(message.contains("--model-wait-timeout"), "{message}");
    }

    #[test]
    fn unreadable_path_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // A path through a regular file: the lookup fails with ENOTDIR, not ENOENT.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let started = Instant::now();
        let err = wait_for_model(&file.join("models"), Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, WaitError::Unreadable { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

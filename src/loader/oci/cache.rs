//! The content-addressed cache under `$SURGE_CACHE/oci/`: `sha256/<hex>/` is a complete
//! model dir (it only appears by an atomic rename), `tmp/<hex>/` holds downloads and the
//! unpacking in progress, `locks/<hex>.lock` serializes processes pulling one image.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::OciError;

pub struct Cache {
    root: PathBuf,
}

/// An exclusive lock on one manifest digest, released on drop (or when the process dies).
pub struct PullLock {
    _file: File,
}

impl Cache {
    /// `cache_dir` is `$SURGE_CACHE`.
    pub fn new(cache_dir: &Path) -> Self {
        Self {
            root: cache_dir.join("oci"),
        }
    }

    /// The model dir of a manifest digest (`hex` of `sha256:<hex>`).
    pub fn model_dir(&self, hex: &str) -> PathBuf {
        self.root.join("sha256").join(hex)
    }

    /// Scratch space for one manifest: downloads and the unpacking in progress.
    pub fn work_dir(&self, hex: &str) -> PathBuf {
        self.root.join("tmp").join(hex)
    }

    /// Blocks until this process is the only one pulling `hex`.
    pub fn lock(&self, hex: &str) -> Result<PullLock, OciError> {
        let dir = self.root.join("locks");
        std::fs::create_dir_all(&dir).map_err(|e| OciError::io(&dir, e))?;
        let path = dir.join(format!("{hex}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| OciError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(lock = %path.display(), "another process is pulling this image; waiting for it");
                file.lock().map_err(|e| OciError::io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(OciError::io(&path, e)),
        }
        Ok(PullLock { _file: file })
    }

    /// Makes `unpacked` the model dir of `hex`, atomically.
    pub fn publish(&self, unpacked: &Path, hex: &str) -> Result<PathBuf, OciError> {
        let dest = self.model_dir(hex);
        let parent = dest.parent().expect("model dirs have a parent");
        std::fs::create_dir_all(parent).map_err(|e| OciError::io(parent, e))?;
        std::fs::rename(unpacked, &dest).map_err(|e| OciError::io(&dest, e))?;
        // The rename is durable only once the parent directory is synced.
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(dest)
    }
}

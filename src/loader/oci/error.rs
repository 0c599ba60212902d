//! The OCI source's error type: every variant names the image reference, and the layer or
//! tar entry when one is at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("`{input}` is not an OCI reference (expected oci://host[:port]/repo:tag or oci://host[:port]/repo@sha256:…): {message}")]
    BadReference { input: String, message: String },
    #[error("{reference}: unauthorized (HTTP 401) at {registry}: check the credentials (--registry-auth-file, REGISTRY_AUTH_FILE or ~/.docker/config.json)")]
    Unauthorized { reference: String, registry: String },
    #[error("{reference}: access denied (HTTP 403) at {registry}")]
    Denied { reference: String, registry: String },
    #[error("{reference}: not found (HTTP 404): {what}")]
    NotFound { reference: String, what: String },
    #[error("{reference}: registry error: {message}")]
    Registry { reference: String, message: String },
    #[error("{reference}: gave up after {attempts} attempts: {message}")]
    Transient {
        reference: String,
        attempts: u32,
        message: String,
    },
    #[error(
        "{reference}: layer {digest}: digest mismatch, the content received hashes to {actual}"
    )]
    DigestMismatch {
        reference: String,
        digest: String,
        actual: String,
    },
    #[error(
        "{reference}: layer {digest}: size mismatch, expected {expected} bytes, received {actual}"
    )]
    SizeMismatch {
        reference: String,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{reference}: layer {digest}: refused tar entry `{entry}`: {why}")]
    UnsafeEntry {
        reference: String,
        digest: String,
        entry: String,
        why: String,
    },
    #[error("{reference}: layer {digest}: unsupported or corrupt layer: {message}")]
    BadLayer {
        reference: String,
        digest: String,
        message: String,
    },
    #[error("{reference}: the image has no files under /models (not a ModelCar image?)")]
    NoModelFiles { reference: String },
    #[error("{reference}: unsupported image: {message}")]
    Unsupported { reference: String, message: String },
    #[error("registry auth file {file}: {message}")]
    AuthFile { file: PathBuf, message: String },
    #[error("no space left on device while writing {0}")]
    DiskFull(PathBuf),
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    /// An I/O error on `file`; a full disk becomes [`OciError::DiskFull`].
    pub(crate) fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let file = file.into();
        if is_disk_full(&source) {
            return Self::DiskFull(file);
        }
        Self::Io { file, source }
    }
}

/// ENOSPC (or a quota) on Linux.
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_reported_as_such() {
        let e = OciError::io("/cache/oci/x", std::io::Error::from_raw_os_error(28));
        assert!(matches!(e, OciError::DiskFull(_)), "{e}");
        assert!(e.to_string().contains("no space left on device"), "{e}");
        let e = OciError::io("/cache/oci/x", std::io::Error::from_raw_os_error(13));
        assert!(matches!(e, OciError::Io { .. }), "{e}");
    }
}

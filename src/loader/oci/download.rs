//! Downloads one blob to a file, hashing while it streams: resumes a partial file with an
//! HTTP Range request (also after a restart), retries cut connections and 5xx with
//! backoff, and keeps the file only when its sha256 matches the layer's digest.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::OciError;
use super::progress::Progress;
use super::registry::{error_chain, is_transient, Registry, MAX_ATTEMPTS};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `sha256:<hex>` → `<hex>`, checked (it becomes a file name).
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `layer` into `dir/<hex>` (via `dir/<hex>.partial`) and returns its path.
pub async fn fetch_blob(
    registry: &Registry,
    layer: &OciDescriptor,
    dir: &Path,
    progress: &Progress,
) -> Result<PathBuf, OciError> {
    let reference = registry.image.to_string();
    let hex = digest_hex(&layer.digest).ok_or_else(|| OciError::Unsupported {
        reference: reference.clone(),
        message: format!("layer digest `{}` is not sha256", layer.digest),
    })?;
    let done = dir.join(hex);
    let partial = dir.join(format!("{hex}.partial"));
    let expected_size = u64::try_from(layer.size).ok().filter(|&s| s > 0);

    // A partial file from an earlier run: hash what is there and go on from its end.
    let (mut hasher, mut offset) = rehash(&partial).await?;
    if expected_size.is_some_and(|size| offset > size) {
        (hasher, offset) = (Sha256::new(), 0);
    }
    progress.add(offset);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await
        .map_err(|e| OciError::io(&partial, e))?;
    file.set_len(offset)
        .await
        .map_err(|e| OciError::io(&partial, e))?;

    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        if expected_size == Some(offset) {
            break;
        }
        match fetch_from(
            registry,
            layer,
            offset,
            &mut file,
            &partial,
            &mut hasher,
            progress,
        )
        .await
        {
            Ok(Fetched::Complete(end)) => {
                offset = end;
                break;
            }
            Ok(Fetched::Restarted) => {
                progress.sub(offset);
                (hasher, offset) = (Sha256::new(), 0);
                continue;
            }
            Err(Failure::Cut { at, message }) => {
                offset = at;
                if attempt >= MAX_ATTEMPTS {
                    return Err(OciError::Transient {
                        reference,
                        attempts: attempt,
                        message: format!("layer {}: {message}", layer.digest),
                    });
                }
                tracing::warn!(
                    layer = %layer.digest,
                    attempt,
                    resume_at = at,
                    "blob download interrupted: {message}; resuming in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
    file.flush().await.map_err(|e| OciError::io(&partial, e))?;
    drop(file);

    let actual = format!("sha256:{}", to_hex(&hasher.finalize()));
    if let Some(expected) = expected_size.filter(|&s| s != offset) {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(OciError::SizeMismatch {
            reference,
            digest: layer.digest.clone(),
            expected,
            actual: offset,
        });
    }
    if actual != layer.digest {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(OciError::DigestMismatch {
            reference,
            digest: layer.digest.clone(),
            actual,
        });
    }
    tokio::fs::rename(&partial, &done)
        .await
        .map_err(|e| OciError::io(&done, e))?;
    Ok(done)
}

enum Fetched {
    /// The blob ended; the byte count so far.
    Complete(u64),
    /// The registry ignored the Range request and sent the whole blob: start over.
    Restarted,
}

enum Failure {
    /// The connection failed after `at` bytes were safely on disk.
    Cut {
        at: u64,
        message: String,
    },
    Fatal(OciError),
}

async fn fetch_from(
    registry: &Registry,
    layer: &OciDescriptor,
    offset: u64,
    file: &mut tokio::fs::File,
    path: &Path,
    hasher: &mut Sha256,
    progress: &Progress,
) -> Result<Fetched, Failure> {
    let what = format!("layer {}", layer.digest);
    let response = registry
        .client
        .pull_blob_stream_partial(registry.image.reference(), layer, offset, None)
        .await;
    let mut stream = match response {
        Ok(BlobResponse::Partial(stream)) => stream,
        Ok(BlobResponse::Full(stream)) if offset == 0 => stream,
        Ok(BlobResponse::Full(_)) => {
            file.set_len(0)
                .await
                .map_err(|e| Failure::Fatal(OciError::io(path, e)))?;
            return Ok(Fetched::Restarted);
        }
        Err(e) if is_transient(&e) => {
            return Err(Failure::Cut {
                at: offset,
                message: error_chain(&e),
            })
        }
        Err(e) => return Err(Failure::Fatal(registry.error(&what, e))),
    };
    let mut at = offset;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                return Err(Failure::Cut {
                    at,
                    message: error_chain(&e),
                })
            }
        };
        file.write_all(&chunk)
            .await
            .map_err(|e| Failure::Fatal(OciError::io(path, e)))?;
        hasher.update(&chunk);
        at += chunk.len() as u64;
        progress.add(chunk.len() as u64);
    }
    Ok(Fetched::Complete(at))
}

/// The hash state and length of what `path` holds (empty when it does not exist).
async fn rehash(path: &Path) -> Result<(Sha256, u64), OciError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((hasher, 0)),
            Err(e) => return Err(OciError::io(&path, e)),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| OciError::io(&path, e))?;
            if n == 0 {
                return Ok((hasher, len));
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
    })
    .await
    .expect("the hashing task panicked")
}

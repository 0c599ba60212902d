//! Streams one blob to its layer's unpacker, hashing on the way: a cut connection (or a
//! 5xx) is retried with backoff and resumed where it stopped with an HTTP Range request;
//! the layer counts only when the blob's size and sha256 match its descriptor. Nothing
//! of the compressed blob is written to disk: a pull needs the model's size in disk, not
//! twice that.

use std::time::Duration;

use futures::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use sha2::{Digest, Sha256};

use super::chunks::ChunkSender;
use super::error::OciError;
use super::registry::{error_chain, is_transient, Registry, MAX_ATTEMPTS};
use crate::loader::progress::Progress;

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

/// Streams `layer` into `sink`, every byte once and in order, and checks its digest.
pub async fn fetch_blob(
    registry: &Registry,
    layer: &OciDescriptor,
    progress: &Progress,
    mut sink: ChunkSender,
) -> Result<(), OciError> {
    let reference = registry.image.to_string();
    let expected_size = u64::try_from(layer.size).ok().filter(|&s| s > 0);
    let mut to = Destination {
        hasher: Sha256::new(),
        at: 0,
        expected_size,
        sink: &mut sink,
        progress,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    while expected_size != Some(to.at) {
        match fetch_from(registry, layer, &mut to).await {
            Ok(()) => break,
            Err(Failure::Cut(message)) => {
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
                    resume_at = to.at,
                    "blob download interrupted: {message}; resuming in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
    if let Some(expected) = expected_size.filter(|&s| s != to.at) {
        return Err(size_mismatch(registry, layer, expected, to.at));
    }
    let actual = format!("sha256:{}", to_hex(&to.hasher.finalize()));
    if actual != layer.digest {
        return Err(OciError::DigestMismatch {
            reference,
            digest: layer.digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// Where a blob's bytes go, and how far it has come.
struct Destination<'a> {
    hasher: Sha256,
    at: u64,
    expected_size: Option<u64>,
    sink: &'a mut ChunkSender,
    progress: &'a Progress,
}

enum Failure {
    /// The connection failed; what arrived so far is kept.
    Cut(String),
    Fatal(OciError),
}

/// Fetches the blob from `to.at` on, to its end.
async fn fetch_from(
    registry: &Registry,
    layer: &OciDescriptor,
    to: &mut Destination<'_>,
) -> Result<(), Failure> {
    let what = format!("layer {}", layer.digest);
    let response = registry
        .client
        .pull_blob_stream_partial(registry.image.reference(), layer, to.at, None)
        .await;
    // A registry that ignores the Range request sends the whole blob: skip what we have.
    let (mut stream, mut skip) = match response {
        Ok(BlobResponse::Partial(stream)) => (stream, 0),
        Ok(BlobResponse::Full(stream)) => (stream, to.at),
        Err(e) if is_transient(&e) => return Err(Failure::Cut(error_chain(&e))),
        Err(e) => return Err(Failure::Fatal(registry.error(&what, e))),
    };
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| Failure::Cut(error_chain(&e)))?;
        if skip > 0 {
            let skipped = skip.min(chunk.len() as u64);
            bytes::Buf::advance(&mut chunk, skipped as usize);
            skip -= skipped;
        }
        to.at += chunk.len() as u64;
        if let Some(expected) = to.expected_size.filter(|&s| to.at > s) {
            // A registry sending more than the descriptor says: stop, don't stream forever.
            return Err(Failure::Fatal(size_mismatch(
                registry, layer, expected, to.at,
            )));
        }
        to.hasher.update(&chunk);
        to.progress.add(chunk.len() as u64);
        to.sink.send(chunk).await;
    }
    Ok(())
}

fn size_mismatch(
    registry: &Registry,
    layer: &OciDescriptor,
    expected: u64,
    actual: u64,
) -> OciError {
    OciError::SizeMismatch {
        reference: registry.image.to_string(),
        digest: layer.digest.clone(),
        expected,
        actual,
    }
}

//! ModelCar OCI images as a model source: pull `oci://host/repo:tag` (or `@sha256:…`)
//! into the content-addressed cache and hand back a local model dir; and write ModelCar
//! images from a local dir (`writer`).

pub mod auth;
pub mod cache;
pub mod chunks;
pub mod download;
pub mod error;
pub mod gzip_members;
pub mod merge;
pub mod reference;
pub mod registry;
pub mod unpack;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use oci_client::RegistryOperation;

pub use auth::AuthFiles;
pub use error::OciError;
pub use reference::OciReference;

use super::progress::Progress;
use cache::Cache;
use download::digest_hex;
use registry::Registry;

/// How to reach registries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOptions {
    /// `host:port`s spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub auth: AuthFiles,
}

/// Where and how to pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// `$SURGE_CACHE`; images go to `oci/sha256/<manifest hex>/` under it.
    pub cache_dir: PathBuf,
    pub registry: RegistryOptions,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Draw a progress bar (stderr is a terminal) instead of periodic log lines.
    pub progress_bar: bool,
}

/// Layers downloaded at once unless told otherwise.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 4;

impl Default for PullOptions {
    /// The cache dir is left empty: the caller (config) knows `$SURGE_CACHE` and `$HOME`.
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::new(),
            registry: RegistryOptions::default(),
            max_concurrent_downloads: DEFAULT_CONCURRENT_DOWNLOADS,
            progress_bar: false,
        }
    }
}

/// A pulled image.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The model dir (the image's /models).
    pub dir: PathBuf,
    /// The platform manifest's digest: the cache key.
    pub digest: String,
    /// Whether the cache already had it (no blob was fetched).
    pub cached: bool,
}

/// Pulls `image` unless the cache has its manifest digest already.
pub async fn pull(image: &OciReference, options: &PullOptions) -> Result<Pulled, OciError> {
    let registry = Registry::connect(image, &options.registry, false)?;
    registry.login(RegistryOperation::Pull).await?;
    let resolved = registry.resolve().await?;
    let reference = image.to_string();
    let hex = digest_hex(&resolved.digest)
        .ok_or_else(|| OciError::Unsupported {
            reference: reference.clone(),
            message: format!("manifest digest `{}` is not sha256", resolved.digest),
        })?
        .to_string();
    let cache = Cache::new(&options.cache_dir);
    let found = |dir: PathBuf| Pulled {
        dir,
        digest: resolved.digest.clone(),
        cached: true,
    };
    if cache.model_dir(&hex).is_dir() {
        tracing::info!(image = %image, digest = %resolved.digest, "image already in the cache");
        return Ok(found(cache.model_dir(&hex)));
    }
    let _lock = {
        let (cache, hex) = (Cache::new(&options.cache_dir), hex.clone());
        tokio::task::spawn_blocking(move || cache.lock(&hex))
            .await
            .expect("the lock task panicked")?
    };
    if cache.model_dir(&hex).is_dir() {
        tracing::info!(image = %image, "another process pulled the image meanwhile");
        return Ok(found(cache.model_dir(&hex)));
    }

    let work = cache.work_dir(&hex);
    let staging = work.join("layers");
    let unpacked = work.join("unpacked");
    remove_dir_if_exists(&unpacked)?;
    std::fs::create_dir_all(&unpacked).map_err(|e| OciError::io(&unpacked, e))?;

    let layers = &resolved.manifest.layers;
    let total: u64 = layers.iter().map(|l| l.size.max(0) as u64).sum();
    tracing::info!(
        image = %image,
        digest = %resolved.digest,
        layers = layers.len(),
        bytes = total,
        "pulling"
    );
    let progress = Progress::new(&reference, total, options.progress_bar);
    let logger = progress.spawn_logger();
    let applied =
        download_and_unpack(&registry, options, &staging, &unpacked, layers, &progress).await;
    if let Some(logger) = logger {
        logger.abort();
    }
    if let Err(e) = applied {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    progress.finish();
    let empty = std::fs::read_dir(&unpacked)
        .map_err(|e| OciError::io(&unpacked, e))?
        .next()
        .is_none();
    if empty {
        let _ = std::fs::remove_dir_all(&work);
        return Err(OciError::NoModelFiles { reference });
    }
    let dir = cache.publish(&unpacked, &hex)?;
    let _ = std::fs::remove_dir_all(&work);
    tracing::info!(image = %image, dir = %dir.display(), "image pulled");
    Ok(Pulled {
        dir,
        digest: resolved.digest,
        cached: false,
    })
}

/// Downloads the layers (several at once), each unpacked into its own staging dir while
/// it streams in, and stacks them in order as soon as each and those below it are in.
async fn download_and_unpack(
    registry: &Registry,
    options: &PullOptions,
    staging: &Path,
    unpacked: &Path,
    layers: &[oci_client::manifest::OciDescriptor],
    progress: &Progress,
) -> Result<(), OciError> {
    remove_dir_if_exists(staging)?;
    let reference = registry.image.to_string();
    // Each unpacker holds a read guard: after a failure, taking the write lock waits until
    // every unpacker has stopped writing (dropping a download ends its unpacker's input).
    let unpackers = Arc::new(tokio::sync::RwLock::new(()));
    let at_once = options.max_concurrent_downloads.max(1);
    let threads = inflate_threads(layers.len().min(at_once));
    let mut staged = futures::stream::iter(layers.iter().enumerate())
        .map(|(index, layer)| {
            let dir = staging.join(index.to_string());
            let running = unpackers.clone();
            async move {
                let guard = running.read_owned().await;
                fetch_and_unpack(registry, layer, dir, progress, threads, guard).await
            }
        })
        .buffered(at_once);
    let outcome = stack_in_order(&reference, layers, &mut staged, unpacked).await;
    drop(staged);
    let _stopped = unpackers.write().await;
    outcome
}

/// Threads to inflate each gzip layer's framed members on, when `at_once` layers unpack
/// at once: the cores shared among them (a layer on its own gets them all).
fn inflate_threads(at_once: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / at_once.max(1)).max(1)
}

/// Stacks the layers that `staged` yields, in order, onto `unpacked`.
async fn stack_in_order(
    reference: &str,
    layers: &[oci_client::manifest::OciDescriptor],
    staged: &mut (impl futures::Stream<Item = Result<unpack::Staged, OciError>> + Unpin),
    unpacked: &Path,
) -> Result<(), OciError> {
    for layer in layers {
        let next = staged.next().await.expect("one result per layer")?;
        let (reference, digest, unpacked) = (
            reference.to_string(),
            layer.digest.clone(),
            unpacked.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            let layer = unpack::Layer {
                reference: &reference,
                digest: &digest,
            };
            merge::stack(&layer, &next, &unpacked)
        })
        .await
        .expect("the stacking task panicked")?;
    }
    Ok(())
}

/// One layer: its download and its unpacking into `staging`, side by side. The layer
/// counts only when both succeed (the digest is checked at the end of the download).
async fn fetch_and_unpack(
    registry: &Registry,
    layer: &oci_client::manifest::OciDescriptor,
    staging: PathBuf,
    progress: &Progress,
    inflate_threads: usize,
    running: tokio::sync::OwnedRwLockReadGuard<()>,
) -> Result<unpack::Staged, OciError> {
    let (sink, mut source) = chunks::channel();
    let (reference, digest) = (registry.image.to_string(), layer.digest.clone());
    let mut unpacking = tokio::task::spawn_blocking(move || {
        let _running = running;
        let layer = unpack::Layer {
            reference: &reference,
            digest: &digest,
        };
        let encoding = unpack::Encoding::sniff(source.peek(unpack::Encoding::MAGIC_LEN));
        unpack::unpack_layer_inflating_on(&layer, encoding, source, &staging, inflate_threads)
    });
    let fetching = download::fetch_blob(registry, layer, progress, sink);
    tokio::pin!(fetching);
    let staged = tokio::select! {
        fetched = &mut fetching => {
            // On a failed download the unpacker sees the stream end; wait for it to stop
            // writing before the caller removes its dir.
            let staged = (&mut unpacking).await.expect("the unpack task panicked");
            fetched?;
            staged?
        }
        staged = &mut unpacking => {
            // A bad layer stops its download at once; a good one lets it finish.
            let staged = staged.expect("the unpack task panicked")?;
            fetching.await?;
            staged
        }
    };
    Ok(staged)
}

/// [`pull`] from synchronous code (on a runtime's blocking thread, or with no runtime).
pub fn pull_blocking(image: &OciReference, options: &PullOptions) -> Result<Pulled, OciError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(pull(image, options)),
        Err(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| OciError::io("tokio runtime", e))?
            .block_on(pull(image, options)),
    }
}

fn remove_dir_if_exists(path: &Path) -> Result<(), OciError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(OciError::io(path, e)),
        _ => Ok(()),
    }
}

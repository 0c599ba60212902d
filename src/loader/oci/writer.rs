//! Writes a ModelCar image from a local model dir and pushes it, no container engine
//! needed: the files go under /models, spread over several tar layers (gzip, zstd or
//! uncompressed), with an OCI image manifest per platform and, for more than one
//! platform, an image index. Layers are deterministic (sorted names, zero times and ids),
//! so the same dir gives the same digests.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::RegistryOperation;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::download::to_hex;
use super::error::OciError;
use super::gzip_members::MemberWriter;
use super::reference::OciReference;
use super::registry::Registry;
use super::unpack::MODELS_DIR;
use super::RegistryOptions;

const IMAGE_LAYER_ZSTD_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => IMAGE_LAYER_GZIP_MEDIA_TYPE,
            Self::Zstd => IMAGE_LAYER_ZSTD_MEDIA_TYPE,
            Self::None => IMAGE_LAYER_MEDIA_TYPE,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ModelCarSpec {
    /// The local model dir; its files become /models/….
    pub dir: PathBuf,
    /// At most this many layers (files are spread over them by size).
    pub max_layers: usize,
    pub compression: Compression,
    /// `os/arch` pairs, e.g. `linux/amd64`; more than one writes an image index.
    pub platforms: Vec<String>,
    /// Where layers are staged before the push (a temp dir of the caller's).
    pub work_dir: PathBuf,
}

/// One staged blob.
struct Blob {
    media_type: &'static str,
    digest: String,
    size: u64,
    path: PathBuf,
}

/// Builds the image and pushes it to `image`; returns the digest the tag now points to.
pub async fn build_and_push(
    spec: &ModelCarSpec,
    image: &OciReference,
    options: &RegistryOptions,
) -> Result<String, OciError> {
    let reference = image.to_string();
    let unsupported = |message: String| OciError::Unsupported {
        reference: reference.clone(),
        message,
    };
    if spec.platforms.is_empty() {
        return Err(unsupported("no platform given".into()));
    }
    let files = list_files(&spec.dir)?;
    if files.is_empty() {
        return Err(unsupported(format!("{} has no files", spec.dir.display())));
    }
    let groups = spread(files, spec.max_layers.max(1));
    std::fs::create_dir_all(&spec.work_dir).map_err(|e| OciError::io(&spec.work_dir, e))?;

    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let (spec, group) = (spec.clone(), group.clone());
        let (blob, diff_id) = tokio::task::spawn_blocking(move || write_layer(&spec, i, &group))
            .await
            .expect("the layer task panicked")?;
        tracing::info!(layer = %blob.digest, bytes = blob.size, "layer written");
        layers.push(blob);
        diff_ids.push(diff_id);
    }

    let registry = Registry::connect(image, options, true)?;
    registry.login(RegistryOperation::Push).await?;
    for layer in &layers {
        push_file(&registry, layer).await?;
    }
    let mut manifests = Vec::new();
    for platform in &spec.platforms {
        let (os, arch) = platform
            .split_once('/')
            .ok_or_else(|| unsupported(format!("platform `{platform}` is not os/arch")))?;
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string()
        .into_bytes();
        let config_digest = sha256(&config);
        let config_size = config.len();
        push_bytes(&registry, config, &config_digest).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {
                "mediaType": IMAGE_CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        manifests.push((os.to_string(), arch.to_string(), manifest));
    }

    if let [(_, _, manifest)] = &manifests[..] {
        return push_manifest(&registry, image.reference(), manifest, OCI_IMAGE_MEDIA_TYPE).await;
    }
    let mut entries = Vec::new();
    for (os, arch, manifest) in &manifests {
        let digest = sha256(manifest);
        push_manifest(
            &registry,
            &image.with_digest(&digest),
            manifest,
            OCI_IMAGE_MEDIA_TYPE,
        )
        .await?;
        entries.push(json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "digest": digest,
            "size": manifest.len(),
            "platform": {"os": os, "architecture": arch},
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": entries,
    })
    .to_string()
    .into_bytes();
    push_manifest(
        &registry,
        image.reference(),
        &index,
        OCI_IMAGE_INDEX_MEDIA_TYPE,
    )
    .await
}

/// Every regular file under `dir` (symlinks followed), relative, with its size.
fn list_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>, OciError> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let path = dir.join(&rel);
        for entry in std::fs::read_dir(&path).map_err(|e| OciError::io(&path, e))? {
            let entry = entry.map_err(|e| OciError::io(&path, e))?;
            let child = rel.join(entry.file_name());
            let meta =
                std::fs::metadata(entry.path()).map_err(|e| OciError::io(entry.path(), e))?;
            if meta.is_dir() {
                pending.push(child);
            } else if meta.is_file() {
                out.push((child, meta.len()));
            }
        }
    }
    Ok(out)
}

/// Spreads files over at most `n` groups, largest first onto the lightest group; each
/// group sorted by name. Empty groups are dropped.
fn spread(mut files: Vec<(PathBuf, u64)>, n: usize) -> Vec<Vec<PathBuf>> {
    files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut groups: Vec<(u64, Vec<PathBuf>)> = vec![(0, Vec::new()); n];
    for (path, size) in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(total, files)| (*total, files.len()))
            .expect("n ≥ 1");
        lightest.0 += size;
        lightest.1.push(path);
    }
    groups
        .into_iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(_, mut files)| {
            files.sort();
            files
        })
        .collect()
}

/// Writes layer `i` (a tar of `files` under models/) compressed into the work dir; returns
/// the blob and the uncompressed tar's digest (the config's diff_id).
fn write_layer(
    spec: &ModelCarSpec,
    i: usize,
    files: &[PathBuf],
) -> Result<(Blob, String), OciError> {
    let path = spec.work_dir.join(format!("layer-{i}"));
    let out = std::fs::File::create(&path).map_err(|e| OciError::io(&path, e))?;
    let compressed = Hashing::new(BufWriter::with_capacity(1 << 20, out));
    let io = |e| OciError::io(&path, e);
    let finish = |tar: Hashing<Box<dyn FinishWrite>>| -> std::io::Result<(String, String, u64)> {
        let diff_id = tar.digest();
        let compressed = tar.inner.finish()?;
        Ok((diff_id, compressed.digest(), compressed.len))
    };
    let encoder: Box<dyn FinishWrite> = match spec.compression {
        Compression::Gzip => Box::new(MemberWriter::new(compressed)),
        Compression::Zstd => {
            Box::new(zstd::stream::write::Encoder::new(compressed, 3).map_err(io)?)
        }
        Compression::None => Box::new(compressed),
    };
    let mut tar = tar::Builder::new(Hashing::new(encoder));
    let mut dirs = std::collections::BTreeSet::new();
    dirs.insert(PathBuf::from(MODELS_DIR));
    for file in files {
        let mut parent = file.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(Path::new(MODELS_DIR).join(p));
            parent = p.parent();
        }
    }
    for dir in &dirs {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        tar.append_data(&mut header, dir, std::io::empty())
            .map_err(io)?;
    }
    for file in files {
        let source = spec.dir.join(file);
        let reader = std::fs::File::open(&source).map_err(|e| OciError::io(&source, e))?;
        let len = reader
            .metadata()
            .map_err(|e| OciError::io(&source, e))?
            .len();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(len);
        header.set_mtime(0);
        tar.append_data(&mut header, Path::new(MODELS_DIR).join(file), reader)
            .map_err(io)?;
    }
    let tar = tar.into_inner().map_err(io)?;
    let (diff_id, digest, size) = finish(tar).map_err(io)?;
    Ok((
        Blob {
            media_type: spec.compression.media_type(),
            digest,
            size,
            path,
        },
        diff_id,
    ))
}

/// A writer that can be finished (flushing a compressor's trailer) and hashed.
trait FinishWrite: Write + Send {
    fn finish(self: Box<Self>) -> std::io::Result<Hashing<BufWriter<std::fs::File>>>;
}

type Sink = Hashing<BufWriter<std::fs::File>>;

impl FinishWrite for MemberWriter<Sink> {
    fn finish(self: Box<Self>) -> std::io::Result<Sink> {
        let mut sink = (*self).finish()?;
        sink.flush()?;
        Ok(sink)
    }
}

impl FinishWrite for zstd::stream::write::Encoder<'static, Sink> {
    fn finish(self: Box<Self>) -> std::io::Result<Sink> {
        let mut sink = (*self).finish()?;
        sink.flush()?;
        Ok(sink)
    }
}

impl FinishWrite for Sink {
    fn finish(mut self: Box<Self>) -> std::io::Result<Sink> {
        self.flush()?;
        Ok(*self)
    }
}

/// Passes bytes through, hashing and counting them.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", to_hex(&self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", to_hex(&Sha256::digest(bytes)))
}

async fn push_file(registry: &Registry, blob: &Blob) -> Result<(), OciError> {
    let reference = registry.image.reference();
    let what = format!("pushing layer {}", blob.digest);
    if registry
        .retry(&what, || {
            registry.client.blob_exists(reference, &blob.digest)
        })
        .await?
    {
        tracing::info!(layer = %blob.digest, "layer already in the registry");
        return Ok(());
    }
    registry
        .retry(&what, || async {
            let file = tokio::fs::File::open(&blob.path).await?;
            let stream = futures::stream::unfold(file, |mut file| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(bytes::Bytes::from(buf)), file))
                    }
                    Err(e) => Some((Err(e.into()), file)),
                }
            })
            .boxed();
            registry
                .client
                .push_blob_stream(reference, stream, &blob.digest, Some(blob.size))
                .await
        })
        .await?;
    tracing::info!(layer = %blob.digest, bytes = blob.size, "layer pushed");
    Ok(())
}

async fn push_bytes(registry: &Registry, bytes: Vec<u8>, digest: &str) -> Result<(), OciError> {
    let reference = registry.image.reference();
    let bytes = bytes::Bytes::from(bytes);
    registry
        .retry("pushing the config", || {
            registry.client.push_blob(reference, bytes.clone(), digest)
        })
        .await
        .map(|_| ())
}

async fn push_manifest(
    registry: &Registry,
    target: &oci_client::Reference,
    body: &[u8],
    media_type: &'static str,
) -> Result<String, OciError> {
    let body = bytes::Bytes::copy_from_slice(body);
    registry
        .retry("pushing the manifest", || {
            registry.client.push_manifest_raw(
                target,
                body.clone(),
                reqwest::header::HeaderValue::from_static(media_type),
            )
        })
        .await?;
    Ok(sha256(&body))
}

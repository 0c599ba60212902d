//! Unpacks one tar layer (gzip, zstd or uncompressed: the magic bytes decide) into a
//! staging dir of its own, while it downloads: only entries under `models/` are kept, and
//! anything that could write or point outside the dir (`..`, absolute paths, links out of
//! /models, writes through symlinks, device files) is refused with the entry's name. What
//! acts on lower layers (whiteouts, hard links to their files) is recorded in [`Staged`]
//! and done by [`super::merge`] when the layers are stacked in order.

use std::io::{BufRead, Read, Write};
use std::path::{Component, Path, PathBuf};

use super::error::{is_disk_full, OciError};
use super::gzip_members::MemberReader;

/// The ModelCar convention: the model's files live under /models in the image.
pub const MODELS_DIR: &str = "models";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The size of each read from the layer into an unpacked file, and of each write to it.
pub const COPY_BUFFER: usize = 1 << 20;

/// Which layer is being unpacked, for errors.
pub struct Layer<'a> {
    pub reference: &'a str,
    pub digest: &'a str,
}

/// A layer's compression, told by the first bytes of its blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Zstd,
    Plain,
}

impl Encoding {
    /// Magic bytes to read before deciding.
    pub const MAGIC_LEN: usize = 4;

    pub fn sniff(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::Plain
        }
    }
}

/// One layer unpacked into its own dir, with what it does to the layers below it.
#[derive(Debug)]
pub struct Staged {
    pub dir: PathBuf,
    /// In tar order.
    pub below: Vec<Below>,
}

/// What a layer does to the layers below it, applied when it is stacked on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Below {
    /// `.wh.<name>`: hide `path`.
    Whiteout { path: PathBuf, entry: String },
    /// `.wh..wh..opq`: hide everything in `dir`.
    Opaque { dir: PathBuf, entry: String },
    /// A hard link to a file of a lower layer.
    HardLink {
        path: PathBuf,
        source: PathBuf,
        entry: String,
    },
}

/// Unpacks the tar stream `reader` (compressed as `encoding`) into `staging`.
pub fn unpack_layer<R: BufRead>(
    layer: &Layer,
    encoding: Encoding,
    reader: R,
    staging: &Path,
) -> Result<Staged, OciError> {
    unpack_layer_inflating_on(layer, encoding, reader, staging, 1)
}

/// [`unpack_layer`], inflating a gzip layer's framed members on `threads` threads.
pub fn unpack_layer_inflating_on<R: BufRead>(
    layer: &Layer,
    encoding: Encoding,
    reader: R,
    staging: &Path,
    threads: usize,
) -> Result<Staged, OciError> {
    std::fs::create_dir_all(staging).map_err(|e| OciError::io(staging, e))?;
    let decoded: Box<dyn Read + '_> = match encoding {
        Encoding::Gzip => Box::new(MemberReader::with_threads(reader, threads)),
        Encoding::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| bad(layer, format!("zstd: {e}")))?,
        ),
        Encoding::Plain => Box::new(reader),
    };
    let mut unpacker = Unpacker {
        layer,
        root: staging,
        below: Vec::new(),
        buffer: vec![0; COPY_BUFFER],
    };
    let mut archive = tar::Archive::new(decoded);
    let entries = archive
        .entries()
        .map_err(|e| bad(layer, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(layer, format!("reading the tar stream: {e}")))?;
        unpacker.entry(entry)?;
    }
    Ok(Staged {
        dir: staging.to_path_buf(),
        below: unpacker.below,
    })
}

/// Copies `from` to its end into `to` through `buffer`. Every read asks for the whole
/// buffer, so that a gzip member can inflate straight into it (see [`MemberReader`]).
fn copy_whole(from: &mut impl Read, to: &mut impl Write, buffer: &mut [u8]) -> std::io::Result<()> {
    loop {
        match from.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buffer[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn bad(layer: &Layer, message: String) -> OciError {
    OciError::BadLayer {
        reference: layer.reference.to_string(),
        digest: layer.digest.to_string(),
        message,
    }
}

struct Unpacker<'a> {
    layer: &'a Layer<'a>,
    /// The layer's staging dir.
    root: &'a Path,
    below: Vec<Below>,
    /// Between the layer and the file being written.
    buffer: Vec<u8>,
}

impl Unpacker<'_> {
    fn refuse(&self, entry: &str, why: &str) -> OciError {
        OciError::UnsafeEntry {
            reference: self.layer.reference.to_string(),
            digest: self.layer.digest.to_string(),
            entry: entry.to_string(),
            why: why.to_string(),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<R>) -> Result<(), OciError> {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = self.model_path(&name)? else {
            return Ok(()); // outside /models: not part of the model
        };
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_name == OPAQUE_WHITEOUT {
            let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            self.check_parents(&dir.join("x"), &name)?;
            self.below.push(Below::Opaque { dir, entry: name });
            return Ok(());
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let path = rel.with_file_name(hidden);
            self.check_parents(&path, &name)?;
            self.below.push(Below::Whiteout { path, entry: name });
            return Ok(());
        }
        let dest = self.root.join(&rel);
        self.check_parents(&rel, &name)?;
        // A later entry replaces an earlier hard link to a lower layer's file.
        self.below
            .retain(|b| !matches!(b, Below::HardLink { path, .. } if *path == rel));
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    remove_any(&dest)?;
                }
                std::fs::create_dir_all(&dest).map_err(|e| OciError::io(&dest, e))?;
            }
            T::Regular | T::Continuous => {
                remove_any(&dest)?;
                create_parent(&dest)?;
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file = std::fs::File::create(&dest).map_err(|e| OciError::io(&dest, e))?;
                copy_whole(&mut entry, &mut file, &mut self.buffer).map_err(|e| {
                    if is_disk_full(&e) {
                        OciError::DiskFull(dest.clone())
                    } else {
                        bad(self.layer, format!("entry `{name}`: {e}"))
                    }
                })?;
                set_mode(&dest, mode)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let relative = self.symlink_target(&rel, &target, &name)?;
                remove_any(&dest)?;
                create_parent(&dest)?;
                std::os::unix::fs::symlink(&relative, &dest).map_err(|e| OciError::io(&dest, e))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let Some(source_rel) = self.model_path(&target)? else {
                    return Err(
                        self.refuse(&name, &format!("hard link to `{target}`, outside /models"))
                    );
                };
                self.check_parents(&source_rel, &name)?;
                let source = self.root.join(&source_rel);
                match std::fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Not in this layer: a file of a lower one, linked when stacking.
                        remove_any(&dest)?;
                        self.below.push(Below::HardLink {
                            path: rel,
                            source: source_rel,
                            entry: name,
                        });
                        return Ok(());
                    }
                    _ => return Err(not_a_model_file(self, &name, &target)),
                }
                remove_any(&dest)?;
                create_parent(&dest)?;
                std::fs::hard_link(&source, &dest).map_err(|e| OciError::io(&dest, e))?;
            }
            T::Char | T::Block => return Err(self.refuse(&name, "device file")),
            T::Fifo => return Err(self.refuse(&name, "named pipe")),
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => return Err(self.refuse(&name, &format!("unsupported entry type {other:?}"))),
        }
        Ok(())
    }

    /// The entry's path inside /models (`models/a/b` → `a/b`), None for other entries;
    /// absolute paths and `..` are refused wherever they are.
    fn model_path(&self, name: &str) -> Result<Option<PathBuf>, OciError> {
        if name.starts_with('/') {
            return Err(self.refuse(name, "absolute path"));
        }
        let mut parts = Vec::new();
        for part in name.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(self.refuse(name, "`..` in the path")),
                part => parts.push(part),
            }
        }
        match parts.split_first() {
            Some((&first, rest)) if first == MODELS_DIR => Ok(Some(rest.iter().collect())),
            _ => Ok(None),
        }
    }

    /// A symlink target that stays inside /models, made relative to the link's directory.
    fn symlink_target(&self, link: &Path, target: &str, name: &str) -> Result<PathBuf, OciError> {
        let outside = || self.refuse(name, &format!("symlink to `{target}`, outside /models"));
        let link_dir = link.parent().unwrap_or(Path::new(""));
        // Where the target lands, as components under /models.
        let mut resolved: Vec<String> = Vec::new();
        if let Some(absolute) = target.strip_prefix('/') {
            let mut parts = absolute.split('/').filter(|p| !p.is_empty() && *p != ".");
            if parts.next() != Some(MODELS_DIR) {
                return Err(outside());
            }
            for part in parts {
                if part == ".." {
                    resolved.pop().ok_or_else(outside)?;
                } else {
                    resolved.push(part.to_string());
                }
            }
        } else {
            resolved.extend(link_dir.iter().map(|c| c.to_string_lossy().into_owned()));
            for part in target.split('/').filter(|p| !p.is_empty() && *p != ".") {
                if part == ".." {
                    resolved.pop().ok_or_else(outside)?;
                } else {
                    resolved.push(part.to_string());
                }
            }
        }
        let depth = link_dir.components().count();
        let mut relative = PathBuf::new();
        for _ in 0..depth {
            relative.push("..");
        }
        relative.extend(resolved);
        if relative.as_os_str().is_empty() {
            relative.push(".");
        }
        Ok(relative)
    }

    /// Refuses to write through a symlink (a link inside /models could lead anywhere).
    fn check_parents(&self, rel: &Path, name: &str) -> Result<(), OciError> {
        if has_symlink_parent(self.root, rel) {
            return Err(self.refuse(name, SYMLINK_PARENT));
        }
        Ok(())
    }
}

pub const SYMLINK_PARENT: &str = "a parent directory is a symlink";

/// Whether a directory on the way from `root` to `root/rel` is a symlink.
pub fn has_symlink_parent(root: &Path, rel: &Path) -> bool {
    let mut path = root.to_path_buf();
    let parts: Vec<Component> = rel.components().collect();
    parts
        .iter()
        .take(parts.len().saturating_sub(1))
        .any(|part| {
            path.push(part);
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
        })
}

fn not_a_model_file(unpacker: &Unpacker, name: &str, target: &str) -> OciError {
    unpacker.refuse(
        name,
        &format!("hard link to `{target}`, which is not a regular file of the model"),
    )
}

/// Removes a file, link or directory tree; nothing there is fine.
pub fn remove_any(path: &Path) -> Result<(), OciError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(|e| OciError::io(path, e))
}

pub fn create_parent(path: &Path) -> Result<(), OciError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| OciError::io(parent, e))?;
    }
    Ok(())
}

/// Keeps the executable bit; always readable and writable by the owner.
fn set_mode(path: &Path, mode: u32) -> Result<(), OciError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| OciError::io(path, e))
}

#[cfg(test)]
mod tests;

//! Unpacks one tar layer (gzip, zstd or uncompressed: the magic bytes decide) into the
//! model dir: only entries under `models/` are kept, OCI whiteouts are applied, and
//! anything that could write or point outside the dir (`..`, absolute paths, links out of
//! /models, writes through symlinks, device files) is refused with the entry's name.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::error::{is_disk_full, OciError};

/// The ModelCar convention: the model's files live under /models in the image.
pub const MODELS_DIR: &str = "models";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// One downloaded, verified layer blob.
pub struct Layer<'a> {
    pub reference: &'a str,
    pub digest: &'a str,
    pub blob: &'a Path,
}

/// Applies `layer` on top of `root` (the image's /models so far).
pub fn unpack_layer(layer: &Layer, root: &Path) -> Result<(), OciError> {
    let file = std::fs::File::open(layer.blob).map_err(|e| OciError::io(layer.blob, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let magic = reader
        .fill_buf()
        .map_err(|e| OciError::io(layer.blob, e))?
        .to_vec();
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| bad(layer, format!("zstd: {e}")))?,
        )
    } else {
        Box::new(reader)
    };
    let mut unpacker = Unpacker {
        layer,
        root,
        written: HashSet::new(),
    };
    let mut archive = tar::Archive::new(decoded);
    let entries = archive
        .entries()
        .map_err(|e| bad(layer, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(layer, format!("reading the tar stream: {e}")))?;
        unpacker.entry(entry)?;
    }
    Ok(())
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
    root: &'a Path,
    /// Paths this layer wrote: whiteouts only hide what lower layers wrote.
    written: HashSet<PathBuf>,
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
            return self.opaque(rel.parent().unwrap_or(Path::new("")), &name);
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let target = rel.with_file_name(hidden);
            if !self.written.contains(&target) {
                self.check_parents(&target, &name)?;
                remove_any(&self.root.join(&target))?;
            }
            return Ok(());
        }
        let dest = self.root.join(&rel);
        self.check_parents(&rel, &name)?;
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
                let mut out = std::fs::File::create(&dest).map_err(|e| OciError::io(&dest, e))?;
                std::io::copy(&mut entry, &mut out).map_err(|e| {
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
                if !std::fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                    return Err(self.refuse(
                        &name,
                        &format!(
                            "hard link to `{target}`, which is not a regular file of the model"
                        ),
                    ));
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
        self.written.insert(rel);
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
        let mut path = self.root.to_path_buf();
        let parents: Vec<Component> = rel.components().collect();
        for part in parents.iter().take(parents.len().saturating_sub(1)) {
            path.push(part);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(self.refuse(name, "a parent directory is a symlink"));
            }
        }
        Ok(())
    }

    /// `.wh..wh..opq` in `dir`: hide what lower layers put there.
    fn opaque(&self, dir: &Path, name: &str) -> Result<(), OciError> {
        self.check_parents(&dir.join("x"), name)?;
        let path = self.root.join(dir);
        let Ok(children) = std::fs::read_dir(&path) else {
            return Ok(());
        };
        for child in children {
            let child = child.map_err(|e| OciError::io(&path, e))?;
            if !self.written.contains(&dir.join(child.file_name())) {
                remove_any(&child.path())?;
            }
        }
        Ok(())
    }
}

/// Removes a file, link or directory tree; nothing there is fine.
fn remove_any(path: &Path) -> Result<(), OciError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(|e| OciError::io(path, e))
}

fn create_parent(path: &Path) -> Result<(), OciError> {
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

//! Stacks an unpacked layer ([`Staged`]) on the layers below it, as an overlay filesystem
//! would flatten them: first its whiteouts hide lower files, then its tree moves in
//! (renames, no copies; a directory over a directory merges, anything else replaces),
//! then its hard links to lower files are made. Symlinks are never followed.

use std::path::Path;

use super::error::OciError;
use super::unpack::{
    create_parent, has_symlink_parent, remove_any, Below, Layer, Staged, SYMLINK_PARENT,
};

/// Applies `staged` (a layer of `layer`) on top of `merged`, and removes its staging dir.
pub fn stack(layer: &Layer, staged: &Staged, merged: &Path) -> Result<(), OciError> {
    let refuse = |entry: &str, why: &str| OciError::UnsafeEntry {
        reference: layer.reference.to_string(),
        digest: layer.digest.to_string(),
        entry: entry.to_string(),
        why: why.to_string(),
    };
    for below in &staged.below {
        match below {
            Below::Whiteout { path, entry } => {
                if has_symlink_parent(merged, path) {
                    return Err(refuse(entry, SYMLINK_PARENT));
                }
                remove_any(&merged.join(path))?;
            }
            Below::Opaque { dir, entry } => {
                if has_symlink_parent(merged, &dir.join("x")) {
                    return Err(refuse(entry, SYMLINK_PARENT));
                }
                clear_dir(&merged.join(dir))?;
            }
            Below::HardLink { .. } => {}
        }
    }
    move_tree(&staged.dir, merged)?;
    for below in &staged.below {
        let Below::HardLink {
            path,
            source,
            entry,
        } = below
        else {
            continue;
        };
        if has_symlink_parent(merged, path) || has_symlink_parent(merged, source) {
            return Err(refuse(entry, SYMLINK_PARENT));
        }
        let (dest, source_path) = (merged.join(path), merged.join(source));
        if !std::fs::symlink_metadata(&source_path).is_ok_and(|m| m.is_file()) {
            let why = format!(
                "hard link to `{}`, which is not a regular file of the model",
                source.display()
            );
            return Err(refuse(entry, &why));
        }
        remove_any(&dest)?;
        create_parent(&dest)?;
        std::fs::hard_link(&source_path, &dest).map_err(|e| OciError::io(&dest, e))?;
    }
    remove_any(&staged.dir)
}

/// Moves every entry of `from` into `to` (a real directory).
fn move_tree(from: &Path, to: &Path) -> Result<(), OciError> {
    let entries = std::fs::read_dir(from).map_err(|e| OciError::io(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| OciError::io(from, e))?;
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        let source_is_dir = entry
            .file_type()
            .map_err(|e| OciError::io(&source, e))?
            .is_dir();
        let dest_is_dir = std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
        if source_is_dir && dest_is_dir {
            move_tree(&source, &dest)?;
        } else {
            remove_any(&dest)?;
            std::fs::rename(&source, &dest).map_err(|e| OciError::io(&dest, e))?;
        }
    }
    Ok(())
}

/// Removes what `dir` holds (nothing there, or not a directory: nothing to hide).
fn clear_dir(dir: &Path) -> Result<(), OciError> {
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let children = std::fs::read_dir(dir).map_err(|e| OciError::io(dir, e))?;
    for child in children {
        let child = child.map_err(|e| OciError::io(dir, e))?;
        remove_any(&child.path())?;
    }
    Ok(())
}

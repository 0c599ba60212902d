//! Unpacking rules on hand-made tar layers: whiteouts, kept entries, refused entries.

use super::*;

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Device(&'a str),
}

/// A tar of `entries`, written with raw names (the tar crate's safe setters refuse `..`).
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, kind, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match entry {
            E::File(n, d) => (n, tar::EntryType::Regular, None, d),
            E::Dir(n) => (n, tar::EntryType::Directory, None, b""),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, Some(t), b""),
            E::HardLink(n, t) => (n, tar::EntryType::Link, Some(t), b""),
            E::Device(n) => (n, tar::EntryType::Char, None, b""),
        };
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            let raw = &mut header.as_old_mut().linkname;
            raw[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn unpack(root: &Path, layers: &[Vec<u8>]) -> Result<(), OciError> {
    let staging = tempfile::tempdir().unwrap();
    for (i, bytes) in layers.iter().enumerate() {
        let digest = format!("sha256:layer{i}");
        let layer = Layer {
            reference: "oci://r.example/m:t",
            digest: &digest,
        };
        let dir = staging.path().join(i.to_string());
        let staged = unpack_layer(&layer, Encoding::sniff(bytes), &bytes[..], &dir)?;
        super::super::merge::stack(&layer, &staged, root)?;
    }
    Ok(())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn keeps_models_only_and_applies_whiteouts_across_compressions() {
    let root = tempfile::tempdir().unwrap();
    let lower = tar_of(&[
        E::File("etc/passwd", b"root"),
        E::Dir("models/"),
        E::File("models/config.json", b"{}"),
        E::File("models/old.bin", b"old"),
        E::File("models/sub/a", b"a"),
        E::File("models/sub/b", b"b"),
    ]);
    let upper = tar_of(&[
        E::File("models/.wh.old.bin", b""),
        E::File("models/sub/.wh..wh..opq", b""),
        E::File("models/sub/c", b"c"),
        E::Symlink("models/link.json", "config.json"),
        E::Symlink("models/sub/abs", "/models/config.json"),
        E::HardLink("models/hard.json", "models/config.json"),
    ]);
    let zstd_upper = zstd::encode_all(&upper[..], 1).unwrap();
    unpack(root.path(), &[gzip(&lower), zstd_upper]).unwrap();
    let r = root.path();
    assert!(!r.join("etc").exists() && !r.join("passwd").exists());
    assert_eq!(std::fs::read(r.join("config.json")).unwrap(), b"{}");
    assert!(!r.join("old.bin").exists());
    assert!(!r.join("sub/a").exists() && !r.join("sub/b").exists());
    assert_eq!(std::fs::read(r.join("sub/c")).unwrap(), b"c");
    assert_eq!(std::fs::read(r.join("link.json")).unwrap(), b"{}");
    assert_eq!(
        std::fs::read_link(r.join("sub/abs")).unwrap(),
        Path::new("../config.json")
    );
    assert_eq!(std::fs::read(r.join("sub/abs")).unwrap(), b"{}");
    assert_eq!(std::fs::read(r.join("hard.json")).unwrap(), b"{}");
}

#[test]
fn refuses_entries_that_escape_naming_them() {
    let cases: Vec<(Vec<E>, &str)> = vec![
        (
            vec![E::File("models/../../etc/evil", b"x")],
            "models/../../etc/evil",
        ),
        (vec![E::File("/models/abs", b"x")], "/models/abs"),
        (
            vec![E::Symlink("models/up", "../../etc/passwd")],
            "models/up",
        ),
        (vec![E::Symlink("models/abs", "/etc/passwd")], "models/abs"),
        (vec![E::HardLink("models/h", "etc/passwd")], "models/h"),
        (vec![E::Device("models/null")], "models/null"),
        (
            vec![
                E::Symlink("models/d", "sub"),
                E::Dir("models/sub"),
                E::File("models/d/x", b"x"),
            ],
            "models/d/x",
        ),
    ];
    for (entries, named) in cases {
        let root = tempfile::tempdir().unwrap();
        let e = unpack(root.path(), &[tar_of(&entries)]).unwrap_err();
        assert!(
            matches!(&e, OciError::UnsafeEntry { entry, .. } if entry == named),
            "{named}: {e}"
        );
        assert!(e.to_string().contains("layer0"), "{e}");
    }
}

#[test]
fn a_truncated_layer_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let layer = gzip(&tar_of(&[E::File("models/w.bin", &[7u8; 100_000])]));
    let e = unpack(root.path(), &[layer[..layer.len() / 2].to_vec()]).unwrap_err();
    assert!(matches!(e, OciError::BadLayer { .. }), "{e}");
}

#[test]
fn upper_layers_replace_lower_links_and_link_to_lower_files() {
    let root = tempfile::tempdir().unwrap();
    let lower = tar_of(&[
        E::File("models/config.json", b"{}"),
        E::Dir("models/sub"),
        E::Symlink("models/d", "sub"),
        E::Symlink("models/cfg", "config.json"),
    ]);
    let upper = tar_of(&[
        E::File("models/d/x", b"x"),
        E::HardLink("models/copy.json", "models/config.json"),
    ]);
    unpack(root.path(), &[lower, gzip(&upper)]).unwrap();
    let r = root.path();
    assert!(r.join("d").symlink_metadata().unwrap().is_dir());
    assert_eq!(std::fs::read(r.join("d/x")).unwrap(), b"x");
    assert!(!r.join("sub/x").exists(), "wrote through the lower symlink");
    assert_eq!(std::fs::read(r.join("copy.json")).unwrap(), b"{}");

    let through_link = tar_of(&[E::File("models/cfg/.wh.x", b"")]);
    let e = unpack(root.path(), &[through_link]).unwrap_err();
    assert!(
        matches!(&e, OciError::UnsafeEntry { entry, .. } if entry == "models/cfg/.wh.x"),
        "{e}"
    );
    let to_a_link = tar_of(&[E::HardLink("models/h", "models/cfg")]);
    let e = unpack(root.path(), &[to_a_link]).unwrap_err();
    assert!(
        matches!(&e, OciError::UnsafeEntry { entry, .. } if entry == "models/h"),
        "{e}"
    );
}

#[test]
fn files_across_gzip_member_boundaries_unpack_byte_exact() {
    use std::io::Write;
    let big: Vec<u8> = (0..5 * COPY_BUFFER / 2)
        .map(|i| (i * 7 / 3) as u8)
        .collect();
    let exact: Vec<u8> = (0..COPY_BUFFER).map(|i| (i % 251) as u8).collect();
    let layer = tar_of(&[
        E::File("models/config.json", b"{}"),
        E::File("models/big.bin", &big),
        E::File("models/small.txt", b"small"),
        E::File("models/exact.bin", &exact),
    ]);
    let mut members = super::super::gzip_members::MemberWriter::new(Vec::new());
    members.write_all(&layer).unwrap();
    let framed = members.finish().unwrap();
    let root = tempfile::tempdir().unwrap();
    unpack(root.path(), &[framed]).unwrap();
    let r = root.path();
    assert_eq!(std::fs::read(r.join("config.json")).unwrap(), b"{}");
    assert_eq!(std::fs::read(r.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read(r.join("small.txt")).unwrap(), b"small");
    assert_eq!(std::fs::read(r.join("exact.bin")).unwrap(), exact);
}

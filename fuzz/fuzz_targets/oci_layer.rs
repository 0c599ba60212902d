//! What a registry sends: an image manifest or index (parsed, the linux/amd64 entry
//! picked, layer digests checked), or a layer blob (gzip, zstd or plain tar) unpacked and
//! stacked on a model dir. Nothing may be written outside the model dir.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_client::manifest::OciManifest;
use surge::loader::oci::download::digest_hex;
use surge::loader::oci::merge;
use surge::loader::oci::unpack::{unpack_layer, Encoding, Layer};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        manifest(bytes);
    } else {
        layer(bytes);
    }
});

fn manifest(bytes: &[u8]) {
    match serde_json::from_slice::<OciManifest>(bytes) {
        Ok(OciManifest::Image(image)) => {
            for layer in &image.layers {
                let _ = digest_hex(&layer.digest);
            }
        }
        Ok(OciManifest::ImageIndex(index)) => {
            let _ = oci_client::client::linux_amd64_resolver(&index.manifests);
        }
        Err(_) => {}
    }
}

fn layer(bytes: &[u8]) {
    let sandbox = tempfile::tempdir().expect("a temp dir");
    let (root, staging) = (sandbox.path().join("root"), sandbox.path().join("staging"));
    std::fs::create_dir(&root).expect("the model dir");
    let layer = Layer {
        reference: "oci://fuzz/model:1",
        digest: "sha256:fuzz",
    };
    // The same bytes twice: the second copy stacks on what the first one left.
    for _ in 0..2 {
        let Ok(staged) = unpack_layer(&layer, Encoding::sniff(bytes), bytes, &staging) else {
            break;
        };
        if merge::stack(&layer, &staged, &root).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    let outside: Vec<_> = std::fs::read_dir(sandbox.path())
        .expect("the sandbox")
        .map(|e| e.expect("an entry").file_name())
        .filter(|name| name != "root")
        .collect();
    assert!(
        outside.is_empty(),
        "written outside the model dir: {outside:?}"
    );
    for entry in walk(&root) {
        if let Ok(target) = std::fs::canonicalize(&entry) {
            assert!(
                target.starts_with(std::fs::canonicalize(&root).expect("the root")),
                "{} leads outside the model dir to {}",
                entry.display(),
                target.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

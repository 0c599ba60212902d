//! `surge pull` against a real registry (Debian docker-registry on 127.0.0.1) with small
//! hand-made ModelCar images: layer formats and whiteouts, the cache, faults (corrupt blob,
//! cut connections, credentials, unknown tag, path traversal) and concurrent pulls.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use support::registry::{run_surge, run_surge_under, Proxy, Registry, Run};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A tar layer; entries are (path, contents), or a path ending in `/` for a directory.
fn tar_layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
        }
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A tar layer with one symlink.
fn symlink_layer(path: &str, target: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    header.set_cksum();
    builder.append(&header, &[][..]).unwrap();
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// gzip as `surge modelcar build` writes it: 1 MiB members that state their size.
fn gzip_members(bytes: &[u8]) -> Vec<u8> {
    let mut members = surge::loader::oci::gzip_members::MemberWriter::new(Vec::new());
    members.write_all(bytes).unwrap();
    members.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// `surge pull oci://HOST/REF` with plain HTTP to `host`, caching into `cache`.
fn pull(host: &str, reference: &str, cache: &Path, extra: &[&str]) -> Run {
    let image = format!("oci://{host}/{reference}");
    let mut args = vec!["pull", &image, "--insecure-registry", host];
    args.extend_from_slice(extra);
    run_surge(&args, &[("SURGE_CACHE", cache.to_str().unwrap())])
}

/// The model dir a successful pull printed.
fn pulled_dir(run: &Run) -> PathBuf {
    assert!(run.success, "surge pull failed:\n{}", run.stderr);
    PathBuf::from(run.stdout.trim().lines().last().expect("a path on stdout"))
}

/// Regular files under `dir` with non-zero size (lock files are empty).
fn non_empty_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.len() > 0 {
                out.push(entry.path());
            }
        }
    }
    out
}

fn assert_failed_with(run: &Run, needles: &[&str]) {
    assert!(
        !run.success,
        "surge pull should have failed; stdout:\n{}",
        run.stdout
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "the error should mention {needle:?}; stderr:\n{}",
            run.stderr
        );
    }
}

#[test]
fn layers_in_every_compression_apply_in_order_with_whiteouts_and_cache_hits() {
    let registry = Registry::start();
    let weights = random_bytes(3 << 20, 1);
    let lower = tar_layer(&[
        ("models/", b""),
        ("models/config.json", b"{\"v\":1}"),
        ("models/stale.bin", b"gone"),
        ("models/sub/old", b"old"),
        ("etc/os-release", b"not a model file"),
    ]);
    let middle = tar_layer(&[("models/model.safetensors", &weights)]);
    let upper = tar_layer(&[
        ("models/.wh.stale.bin", b""),
        ("models/sub/.wh..wh..opq", b""),
        ("models/sub/new", b"new"),
        ("models/config.json", b"{\"v\":2}"),
    ]);
    registry.push_raw_image(
        "org/tiny",
        "v1",
        &[(GZIP, gzip(&lower)), (ZSTD, zstd(&middle)), (TAR, upper)],
    );

    let proxy = Proxy::start(registry.addr());
    let cache = tempfile::tempdir().unwrap();
    let first = pull(&proxy.host(), "org/tiny:v1", cache.path(), &[]);
    let dir = pulled_dir(&first);
    assert!(
        dir.starts_with(cache.path().join("oci/sha256")),
        "{}",
        dir.display()
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        b"{\"v\":2}"
    );
    assert_eq!(std::fs::read(dir.join("sub/new")).unwrap(), b"new");
    assert!(
        !dir.join("stale.bin").exists(),
        "a whiteout was not applied"
    );
    assert!(
        !dir.join("sub/old").exists(),
        "an opaque whiteout was not applied"
    );
    assert!(!dir.join("etc").exists() && !dir.join("os-release").exists());
    assert_eq!(proxy.blob_gets().len(), 3, "{:?}", proxy.requests());
    // Nothing left behind but the model dir and the (empty) lock file.
    let leftovers: Vec<_> = non_empty_files(cache.path())
        .into_iter()
        .filter(|p| !p.starts_with(&dir))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    assert!(
        first.stderr.contains("pulled ") && first.stderr.contains(" of "),
        "no progress line in the log:\n{}",
        first.stderr
    );

    let second = pull(&proxy.host(), "org/tiny:v1", cache.path(), &[]);
    assert_eq!(pulled_dir(&second), dir);
    // By digest: the same cache entry.
    let digest = format!("sha256:{}", dir.file_name().unwrap().to_str().unwrap());
    let by_digest = pull(
        &proxy.host(),
        &format!("org/tiny@{digest}"),
        cache.path(),
        &[],
    );
    assert_eq!(pulled_dir(&by_digest), dir);
    assert_eq!(
        proxy.blob_gets().len(),
        3,
        "the second pull fetched blobs: {:?}",
        proxy.requests()
    );
}

#[test]
fn registry_5xx_answers_are_retried() {
    let registry = Registry::start();
    let weights = random_bytes(1 << 20, 5);
    registry.push_raw_image(
        "org/flaky",
        "v1",
        &[(GZIP, gzip(&tar_layer(&[("models/w.bin", &weights)])))],
    );
    let proxy = Proxy::start_failing(registry.addr(), 2);
    let cache = tempfile::tempdir().unwrap();
    let run = pull(&proxy.host(), "org/flaky:v1", cache.path(), &[]);
    let dir = pulled_dir(&run);
    assert_eq!(std::fs::read(dir.join("w.bin")).unwrap(), weights);
    assert_eq!(proxy.failures_left(), 0, "{:?}", proxy.requests());
    assert!(
        run.stderr.contains("503"),
        "no retry logged:\n{}",
        run.stderr
    );
}

#[test]
fn a_registry_denying_the_blobs_is_a_clear_error_without_retries() {
    let registry = Registry::start();
    registry.push_raw_image(
        "org/private",
        "v1",
        &[(GZIP, gzip(&tar_layer(&[("models/w.bin", b"w")])))],
    );
    let proxy = Proxy::start_denying(registry.addr());
    let cache = tempfile::tempdir().unwrap();
    let run = pull(&proxy.host(), "org/private:v1", cache.path(), &[]);
    let full = format!("oci://{}/org/private:v1", proxy.host());
    assert_failed_with(&run, &[&full, "access denied (HTTP 403)"]);
    // A 403 is an answer, not a hiccup: one request, no retries.
    assert_eq!(proxy.blob_gets().len(), 1, "{:?}", proxy.requests());
    let left = non_empty_files(cache.path());
    assert!(left.is_empty(), "files left in the cache: {left:?}");
}

#[test]
fn a_corrupted_blob_is_a_digest_error_naming_the_layer_and_nothing_is_cached() {
    let registry = Registry::start();
    let good = gzip(&tar_layer(&[("models/config.json", b"{}")]));
    let bad = gzip(&tar_layer(&[("models/w.bin", &random_bytes(1 << 20, 2))]));
    let bad_digest = support::registry::sha256_digest(&bad);
    registry.push_raw_image("org/corrupt", "v1", &[(GZIP, good), (GZIP, bad)]);
    let data = registry.blob_data_path(&bad_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let run = pull(&registry.host(), "org/corrupt:v1", cache.path(), &[]);
    assert_failed_with(&run, &["digest mismatch", &bad_digest, "org/corrupt:v1"]);
    assert!(
        !cache.path().join("oci/sha256").exists(),
        "a model dir was published"
    );
    let left = non_empty_files(cache.path());
    assert!(left.is_empty(), "files left in the cache: {left:?}");
}

#[test]
fn a_connection_cut_mid_blob_is_resumed_with_a_range_request() {
    let registry = Registry::start();
    let weights = random_bytes(4 << 20, 3);
    let layer = tar_layer(&[("models/model.safetensors", &weights)]);
    registry.push_raw_image("org/cut", "v1", &[(TAR, layer)]);
    let proxy = Proxy::start_cutting(registry.addr(), 2, 512 * 1024);
    let cache = tempfile::tempdir().unwrap();
    let run = pull(&proxy.host(), "org/cut:v1", cache.path(), &[]);
    let dir = pulled_dir(&run);
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        proxy.cuts_left(),
        0,
        "the proxy cut nothing: {:?}",
        proxy.requests()
    );
    let resumed: Vec<_> = proxy
        .blob_gets()
        .into_iter()
        .filter(|r| r.contains("range=bytes=") && !r.contains("range=bytes=0-"))
        .collect();
    assert!(
        !resumed.is_empty(),
        "no blob GET resumed from an offset: {:?}",
        proxy.requests()
    );
}

/// A registry that takes only surge / "correct horse", holding `org/private:v1` (a
/// model dir with just `config.json`, `{}`).
fn private_registry() -> Registry {
    let registry = Registry::start_with_htpasswd("surge", "correct horse");
    registry.push_raw_image(
        "org/private",
        "v1",
        &[(TAR, tar_layer(&[("models/config.json", b"{}")]))],
    );
    registry
}

#[test]
fn credentials_wrong_and_right_against_an_htpasswd_registry() {
    let registry = private_registry();
    let dir = tempfile::tempdir().unwrap();
    let auth_file = |name: &str, user: &str, password: &str| {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
                registry.host()
            ),
        )
        .unwrap();
        path
    };
    let wrong = auth_file("wrong.json", "surge", "battery staple");
    let right = auth_file("right.json", "surge", "correct horse");
    let cache = tempfile::tempdir().unwrap();
    let reference = format!("oci://{}/org/private:v1", registry.host());

    let anonymous = pull(&registry.host(), "org/private:v1", cache.path(), &[]);
    assert_failed_with(&anonymous, &["401", &reference]);
    let run = pull(
        &registry.host(),
        "org/private:v1",
        cache.path(),
        &["--registry-auth-file", wrong.to_str().unwrap()],
    );
    assert_failed_with(&run, &["401", &reference]);
    // The env var REGISTRY_AUTH_FILE works as the flag does.
    let image = reference.clone();
    let run = run_surge(
        &["pull", &image, "--insecure-registry", &registry.host()],
        &[
            ("SURGE_CACHE", cache.path().to_str().unwrap()),
            ("REGISTRY_AUTH_FILE", right.to_str().unwrap()),
        ],
    );
    let pulled = pulled_dir(&run);
    assert_eq!(std::fs::read(pulled.join("config.json")).unwrap(), b"{}");
}

/// A credential helper `docker-credential-NAME` in `bin` that holds `user`/`password` for
/// `registry` and nothing for any other registry.
fn fake_credential_helper(bin: &Path, name: &str, registry: &str, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = bin.join(format!("docker-credential-{name}"));
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
         if [ \"$server\" = '{registry}' ]; then\n  \
         printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n\
         else\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn credential_helpers_and_stores_of_a_docker_config_are_asked() {
    let registry = private_registry();
    let host = registry.host();
    let bin = tempfile::tempdir().unwrap();
    fake_credential_helper(bin.path(), "surgetest", &host, "surge", "correct horse");
    fake_credential_helper(bin.path(), "other", "elsewhere.example", "surge", "x");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let image = format!("oci://{host}/org/private:v1");
    let pull_with_config = |config: String| {
        let docker = tempfile::tempdir().unwrap();
        std::fs::write(docker.path().join("config.json"), config).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let run = run_surge(
            &["pull", &image, "--insecure-registry", &host],
            &[
                ("SURGE_CACHE", cache.path().to_str().unwrap()),
                ("DOCKER_CONFIG", docker.path().to_str().unwrap()),
                ("PATH", &path),
            ],
        );
        (run, cache) // the pulled dir lives in the cache
    };

    // The registry's own helper; its `auths` entry is the empty one docker writes.
    let (run, _cache) = pull_with_config(format!(
        r#"{{"auths":{{"{host}":{{}}}},"credHelpers":{{"{host}":"surgetest"}}}}"#
    ));
    assert_eq!(
        std::fs::read(pulled_dir(&run).join("config.json")).unwrap(),
        b"{}"
    );
    // The default store.
    let (run, _cache) = pull_with_config(r#"{"credsStore":"surgetest"}"#.to_string());
    assert_eq!(
        std::fs::read(pulled_dir(&run).join("config.json")).unwrap(),
        b"{}"
    );
    // A store holding nothing for this registry: anonymous, which the registry refuses.
    let (run, _) = pull_with_config(r#"{"credsStore":"other"}"#.to_string());
    assert_failed_with(&run, &["401", &image]);
    // A helper that is not installed is an error naming it.
    let (run, _) = pull_with_config(format!(r#"{{"credHelpers":{{"{host}":"absent"}}}}"#));
    assert_failed_with(&run, &["docker-credential-absent", "could not run"]);
}

#[test]
fn an_unknown_tag_or_repository_is_an_error_naming_the_reference() {
    let registry = Registry::start();
    registry.push_raw_image(
        "org/known",
        "v1",
        &[(TAR, tar_layer(&[("models/config.json", b"{}")]))],
    );
    let cache = tempfile::tempdir().unwrap();
    let unknown_digest = format!("org/known@sha256:{}", "0".repeat(64));
    for reference in ["org/known:nope", "org/unknown:v1", unknown_digest.as_str()] {
        let run = pull(&registry.host(), reference, cache.path(), &[]);
        let full = format!("oci://{}/{reference}", registry.host());
        assert_failed_with(&run, &[&full, "not found"]);
    }
}

#[test]
fn layers_with_path_traversal_are_refused_naming_the_entry() {
    let registry = Registry::start();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_layer(&[("models/../../../tmp/surge-evil", b"x")]),
            "models/../../../tmp/surge-evil",
        ),
        (
            "absolute",
            tar_layer(&[("/models/abs.bin", b"x")]),
            "/models/abs.bin",
        ),
        (
            "symlink",
            symlink_layer("models/passwd", "../../../etc/passwd"),
            "models/passwd",
        ),
    ];
    for (tag, layer, entry) in cases {
        registry.push_raw_image(
            "org/evil",
            tag,
            &[
                (TAR, tar_layer(&[("models/config.json", b"{}")])),
                (GZIP, gzip(&layer)),
            ],
        );
        let cache = tempfile::tempdir().unwrap();
        let run = pull(
            &registry.host(),
            &format!("org/evil:{tag}"),
            cache.path(),
            &[],
        );
        assert_failed_with(&run, &[&format!("`{entry}`"), "refused"]);
        assert!(
            !cache.path().join("oci/sha256").exists(),
            "{tag}: published"
        );
        assert!(
            non_empty_files(cache.path()).is_empty(),
            "{tag}: files left"
        );
    }
    assert!(!Path::new("/tmp/surge-evil").exists());
}

#[test]
fn two_processes_pulling_one_image_download_it_once() {
    let registry = Registry::start();
    let weights = random_bytes(8 << 20, 4);
    registry.push_raw_image(
        "org/shared",
        "v1",
        &[
            (TAR, tar_layer(&[("models/a.bin", &weights[..4 << 20])])),
            (TAR, tar_layer(&[("models/b.bin", &weights[4 << 20..])])),
        ],
    );
    let proxy = Proxy::start(registry.addr());
    let cache = tempfile::tempdir().unwrap();
    let (host, cache_path) = (proxy.host(), cache.path().to_path_buf());
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            let (host, cache_path) = (host.clone(), cache_path.clone());
            std::thread::spawn(move || pull(&host, "org/shared:v1", &cache_path, &[]))
        })
        .collect();
    let dirs: Vec<PathBuf> = pulls
        .into_iter()
        .map(|p| pulled_dir(&p.join().unwrap()))
        .collect();
    assert_eq!(dirs[0], dirs[1]);
    assert_eq!(
        std::fs::read(dirs[0].join("a.bin")).unwrap(),
        &weights[..4 << 20]
    );
    assert_eq!(
        std::fs::read(dirs[0].join("b.bin")).unwrap(),
        &weights[4 << 20..]
    );
    assert_eq!(
        proxy.blob_gets().len(),
        2,
        "each layer should be fetched once: {:?}",
        proxy.requests()
    );
}

/// Mounts an 8 MiB tmpfs over the cache in a mount namespace of its own, then pulls the
/// image `$4` (which does not fit), lists the files left in the cache, and pulls `$5`.
const FULL_DISK_PULLS: &str = r#"
cache=$1 host=$2 surge=$3
mount -t tmpfs -o size=8m surge-full-disk "$cache" || { echo "no tmpfs"; exit 90; }
"$surge" pull "oci://$host/$4" --insecure-registry "$host"
echo "big pull exit=$?"
echo "left in the cache:"
find "$cache" -type f -size +0c
echo "end of list"
"$surge" pull "oci://$host/$5" --insecure-registry "$host"
echo "small pull exit=$?"
"#;

#[test]
fn a_full_disk_is_reported_as_such_and_the_partial_pull_is_removed() {
    let registry = Registry::start();
    let weights = random_bytes(16 << 20, 5);
    registry.push_raw_image(
        "org/big",
        "v1",
        &[
            (GZIP, gzip(&tar_layer(&[("models/config.json", b"{}")]))),
            (GZIP, gzip(&tar_layer(&[("models/w.bin", &weights)]))),
        ],
    );
    registry.push_raw_image(
        "org/small",
        "v1",
        &[(
            GZIP,
            gzip(&tar_layer(&[("models/w.bin", &weights[..1 << 20])])),
        )],
    );
    let cache = tempfile::tempdir().unwrap();
    let (cache_dir, host) = (cache.path().to_str().unwrap(), registry.host());
    let wrapper = [
        "unshare",
        "-Urm",
        "sh",
        "-c",
        FULL_DISK_PULLS,
        "full-disk",
        cache_dir,
        &host,
    ];
    let run = run_surge_under(
        &wrapper,
        &["org/big:v1", "org/small:v1"],
        &[("SURGE_CACHE", cache_dir)],
    );
    let out = &run.stdout;
    assert!(
        run.success && !out.contains("no tmpfs"),
        "the tmpfs could not be mounted:\n{out}\n{}",
        run.stderr
    );
    assert!(out.contains("big pull exit=1"), "{out}\n{}", run.stderr);
    assert!(
        run.stderr.contains("no space left on device while writing")
            && run.stderr.contains("w.bin"),
        "the error should say the disk is full and name the file:\n{}",
        run.stderr
    );
    let left = out
        .split("left in the cache:\n")
        .nth(1)
        .and_then(|rest| rest.split("end of list").next())
        .unwrap_or("?");
    assert_eq!(left.trim(), "", "the failed pull left files behind:\n{out}");
    assert!(
        out.contains("small pull exit=0"),
        "a pull that fits should succeed after the failed one:\n{out}\n{}",
        run.stderr
    );
}

#[test]
fn one_framed_gzip_layer_inflates_on_every_core_byte_exact() {
    // One layer alone gets every core to inflate its members on (two or more here).
    let registry = Registry::start();
    let weights = random_bytes(9 << 20, 6);
    let layer = tar_layer(&[
        ("models/config.json", b"{}"),
        ("models/model.safetensors", &weights),
        ("models/tokenizer.json", b"{\"t\":1}"),
    ]);
    registry.push_raw_image("org/framed", "v1", &[(GZIP, gzip_members(&layer))]);
    let cache = tempfile::tempdir().unwrap();
    let dir = pulled_dir(&pull(&registry.host(), "org/framed:v1", cache.path(), &[]));
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), b"{}");
    assert_eq!(
        std::fs::read(dir.join("tokenizer.json")).unwrap(),
        b"{\"t\":1}"
    );
}

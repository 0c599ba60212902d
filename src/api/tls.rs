//! `--ssl-certfile` / `--ssl-keyfile`: the PEM files turned into a TLS acceptor (rustls
//! with the `ring` provider), with errors that name the file at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the certificate chain and its private key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--ssl-certfile {}: {why}", .path.display())]
    Cert { path: PathBuf, why: String },
    #[error("--ssl-keyfile {}: {why}", .path.display())]
    Key { path: PathBuf, why: String },
    #[error("--ssl-certfile {} with --ssl-keyfile {}: {why}", .files.certfile.display(), .files.keyfile.display())]
    Pair { files: TlsFiles, why: String },
}

/// Reads both files and builds the acceptor; HTTP/1.1 only (ALPN), TLS 1.2 and 1.3.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = read_certs(&files.certfile)?;
    let key = read_key(&files.keyfile)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair = |why: String| TlsError::Pair {
        files: files.clone(),
        why,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| pair(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::Cert {
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        why: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into()
            }
            e => pem_error(&e),
        },
    })
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not a valid PEM file ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let certfile = dir.join("cert.pem");
        let keyfile = dir.join("key.pem");
        std::fs::write(&certfile, cert).unwrap();
        std::fs::write(&keyfile, key).unwrap();
        TlsFiles { certfile, keyfile }
    }

    #[test]
    fn a_self_signed_pair_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = a.cert.pem();
        let key = a.signing_key.serialize_pem();
        assert!(acceptor(&files(dir.path(), &cert, &key)).is_ok());

        let missing = TlsFiles {
            certfile: dir.path().join("nope.pem"),
            keyfile: dir.path().join("key.pem"),
        };
        let e = acceptor(&missing).err().unwrap().to_string();
        assert!(
            e.contains("--ssl-certfile") && e.contains("nope.pem"),
            "{e}"
        );

        let e = acceptor(&files(dir.path(), "garbage", &key))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--ssl-certfile"), "{e}");
        let e = acceptor(&files(dir.path(), &cert, &cert))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--ssl-keyfile"), "{e}");
        let other_key = b.signing_key.serialize_pem();
        let e = acceptor(&files(dir.path(), &cert, &other_key))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--ssl-certfile") && e.contains("--ssl-keyfile"),
            "{e}"
        );
    }
}

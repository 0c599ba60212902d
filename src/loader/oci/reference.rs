//! `oci://host[:port]/repo:tag` and `oci://host[:port]/repo@sha256:…` references.

use std::fmt;

use oci_client::Reference;

use super::error::OciError;

pub const SCHEME: &str = "oci://";

/// A parsed ModelCar image reference; displays as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    input: String,
    reference: Reference,
}

impl OciReference {
    /// Parses `oci://…`; the registry host is required (no implicit default registry).
    pub fn parse(input: &str) -> Result<Self, OciError> {
        let bad = |message: &str| OciError::BadReference {
            input: input.to_string(),
            message: message.to_string(),
        };
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it must start with oci://"))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry host"))?;
        if host.is_empty() || path.is_empty() {
            return Err(bad("empty registry host or repository"));
        }
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad("the first path component must be a registry host"));
        }
        let reference: Reference = rest.parse().map_err(|e| bad(&format!("{e}")))?;
        if reference.registry() != host {
            return Err(bad("the registry host was not recognised"));
        }
        Ok(Self {
            input: input.to_string(),
            reference,
        })
    }

    /// The reference in oci-client's terms.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// `host[:port]`, as `--insecure-registry` and auth files name it.
    pub fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// The same repository at another tag or digest.
    pub fn with_digest(&self, digest: &str) -> Reference {
        self.reference.clone_with_digest(digest.to_string())
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tag_and_digest_references() {
        let r = OciReference::parse("oci://127.0.0.1:5000/models/smollm2:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.reference().repository(), "models/smollm2");
        assert_eq!(r.reference().tag(), Some("v1"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = OciReference::parse(&format!("oci://quay.example/org/m@{digest}")).unwrap();
        assert_eq!(r.reference().digest(), Some(digest.as_str()));
        assert_eq!(r.to_string(), format!("oci://quay.example/org/m@{digest}"));
    }

    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "127.0.0.1:5000/repo:tag",
            "oci://",
            "oci://host.example",
            "oci://repo:tag",
            "oci://host.example/Repo:tag",
            "oci://host.example/repo@sha256:short",
        ] {
            assert!(OciReference::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}

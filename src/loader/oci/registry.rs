//! The registry client: oci-client configured for plain-HTTP registries and credentials,
//! manifest resolution (tag → digest, image index → linux/amd64), retries with backoff,
//! and registry errors turned into ones that name the reference.

use std::future::Future;
use std::time::Duration;

use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use super::error::OciError;
use super::reference::OciReference;
use super::RegistryOptions;

/// Attempts per request before a transient failure becomes an error.
pub const MAX_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One image's registry connection: client, credentials, and the reference for errors.
#[derive(Clone)]
pub struct Registry {
    pub client: Client,
    pub auth: RegistryAuth,
    pub image: OciReference,
}

/// A resolved image: its platform manifest and that manifest's digest (the cache key).
pub struct Resolved {
    pub manifest: OciImageManifest,
    pub digest: String,
}

impl Registry {
    /// A client for `image`, plain HTTP for the registries in `insecure_registries`.
    /// Credentials come from `options.auth`; `monolithic_push` sends each blob in one PUT.
    pub fn connect(
        image: &OciReference,
        options: &RegistryOptions,
        monolithic_push: bool,
    ) -> Result<Self, OciError> {
        let auth = options.auth.resolve(image.registry())?;
        let config = client_config(&options.insecure_registries, monolithic_push);
        let client = Client::try_from(config).map_err(|e| OciError::Registry {
            reference: image.to_string(),
            message: format!("cannot create the HTTP client: {e}"),
        })?;
        Ok(Self {
            client,
            auth,
            image: image.clone(),
        })
    }

    /// Authenticates (bearer-token flow when the registry asks for it) for `operation`.
    pub async fn login(&self, operation: RegistryOperation) -> Result<(), OciError> {
        let reference = self.image.reference();
        self.retry("authenticating", || {
            self.client.auth(reference, &self.auth, operation)
        })
        .await
        .map(|_| ())
    }

    /// Fetches the manifest (following an image index to linux/amd64): no blob requests.
    pub async fn resolve(&self) -> Result<Resolved, OciError> {
        let reference = self.image.reference();
        let (manifest, digest) = self
            .retry("fetching the manifest", || {
                self.client.pull_image_manifest(reference, &self.auth)
            })
            .await?;
        Ok(Resolved { manifest, digest })
    }

    /// Runs `op` until it succeeds, retrying transient failures (5xx, connection errors)
    /// with exponential backoff; other failures become errors naming the reference.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, OciError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if is_transient(&e) && attempt < MAX_ATTEMPTS => {
                    tracing::warn!(reference = %self.image, attempt, "{what}: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(e) if is_transient(&e) => {
                    return Err(OciError::Transient {
                        reference: self.image.to_string(),
                        attempts: attempt,
                        message: format!("{what}: {}", error_chain(&e)),
                    })
                }
                Err(e) => return Err(self.error(what, e)),
            }
        }
    }

    /// A non-transient registry error, named by reference (401/403/404 spelled out).
    pub fn error(&self, what: &str, e: OciDistributionError) -> OciError {
        let reference = self.image.to_string();
        let registry = self.image.registry().to_string();
        match status_of(&e) {
            Some(401) => OciError::Unauthorized {
                reference,
                registry,
            },
            Some(403) => OciError::Denied {
                reference,
                registry,
            },
            Some(404) => OciError::NotFound {
                reference,
                what: format!("{what}: {}", error_chain(&e)),
            },
            _ if is_tls_failure(&e) => OciError::Registry {
                reference,
                message: format!(
                    "{what}: TLS failed (a plain-HTTP registry? then pass --insecure-registry {registry}): {}",
                    error_chain(&e)
                ),
            },
            _ => OciError::Registry {
                reference,
                message: format!("{what}: {}", error_chain(&e)),
            },
        }
    }
}

fn client_config(insecure: &[String], monolithic_push: bool) -> ClientConfig {
    ClientConfig {
        protocol: if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure.to_vec())
        },
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        max_concurrent_download: 4,
        use_monolithic_push: monolithic_push,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("surge/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    }
}

/// The HTTP status behind an oci-client error, where there is one.
pub fn status_of(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::AuthenticationFailure(_) => Some(401),
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::ImageManifestNotFoundError(_) => Some(404),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().find_map(|err| match err.code {
                OciErrorCode::Unauthorized => Some(401),
                OciErrorCode::Denied => Some(403),
                OciErrorCode::ManifestUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NotFound => Some(404),
                OciErrorCode::Toomanyrequests => Some(429),
                _ => None,
            })
        }
        OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

/// 5xx, 429, and failures to connect or to read a response: worth another try. A TLS
/// failure is not: another try fails the same way.
pub fn is_transient(e: &OciDistributionError) -> bool {
    if is_tls_failure(e) {
        return false;
    }
    match status_of(e) {
        Some(code) => code >= 500 || code == 429,
        None => matches!(
            e,
            OciDistributionError::RequestError(_) | OciDistributionError::IoError(_)
        ),
    }
}

/// A TLS handshake or certificate failure (the registry may speak plain HTTP).
fn is_tls_failure(e: &OciDistributionError) -> bool {
    let OciDistributionError::RequestError(e) = e else {
        return false;
    };
    let text = error_chain(e).to_ascii_lowercase();
    [
        "ssl routines",
        "certificate",
        "tls handshake",
        "wrong version number",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// The error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

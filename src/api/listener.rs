//! The HTTP/1.1 listener: accepts TCP (or TLS) connections and serves the router on each
//! with hyper, bounding what a slow or hostile client can hold — the time to send a
//! request's headers (which also closes idle keep-alive connections), the headers' size
//! and count, the TLS handshake's time — and closes gracefully on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::tls::{self, TlsError, TlsFiles};

/// hyper's read buffer when the header limit is small; it never goes below this.
const MIN_READ_BUFFER_BYTES: usize = 400 << 10;

/// How connections are taken and bounded.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// A request's headers must arrive within this after the connection is ready for
    /// them (new or idle keep-alive); then the connection is closed. `None`: no limit.
    /// Also bounds the TLS handshake.
    pub header_read_timeout: Option<Duration>,
    /// Largest request head (request line + headers); larger gets 431 and a close.
    pub max_header_bytes: usize,
    /// Most headers in one request; more gets 431 and a close.
    pub max_header_count: usize,
    /// Serve HTTPS with these files.
    pub tls: Option<TlsFiles>,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A bound socket, ready to serve.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    config: ListenerConfig,
}

impl Listener {
    /// Loads the TLS files (if any) first, so a bad file fails before the port is taken.
    pub async fn bind(host: &str, port: u16, config: ListenerConfig) -> Result<Self, ListenError> {
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let tcp = TcpListener::bind((host, port))
            .await
            .map_err(|source| ListenError::Bind {
                addr: format!("{host}:{port}"),
                source,
            })?;
        Ok(Self { tcp, tls, config })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Serves `router` until `shutdown` resolves; then stops accepting, lets every open
    /// connection finish its request in progress, and returns once all are closed.
    pub async fn serve(self, router: Router, shutdown: impl Future<Output = ()>) {
        let service = TowerToHyperService::new(
            router.map_request(|request: Request<Incoming>| request.map(Body::new)),
        );
        let http = self.http1();
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                http: http.clone(),
                tls: self.tls.clone(),
                handshake_timeout: self.config.header_read_timeout,
                watcher: graceful.watcher(),
            };
            let service = service.clone();
            tokio::spawn(async move { connection.run(stream, peer, service).await });
        }
        drop(self.tcp);
        graceful.shutdown().await;
    }

    fn http1(&self) -> http1::Builder {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .max_header_size(self.config.max_header_bytes)
            .max_headers(self.config.max_header_count)
            .max_buf_size(MIN_READ_BUFFER_BYTES.max(self.config.max_header_bytes + 8192));
        http
    }
}

/// One accepted connection and what it needs to be served.
struct Connection {
    http: http1::Builder,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Option<Duration>,
    /// Held from accept on, so that shutdown also waits for a handshake in progress.
    watcher: Watcher,
}

impl Connection {
    async fn run<S>(self, stream: TcpStream, peer: SocketAddr, service: S)
    where
        S: hyper::service::Service<Request<Incoming>, Response = axum::response::Response>
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let served = match self.tls {
            None => {
                let conn = self.http.serve_connection(TokioIo::new(stream), service);
                self.watcher.watch(conn).await
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                let stream = match self.handshake_timeout {
                    Some(limit) => match tokio::time::timeout(limit, handshake).await {
                        Ok(done) => done,
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    },
                    None => handshake.await,
                };
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let conn = self.http.serve_connection(TokioIo::new(stream), service);
                self.watcher.watch(conn).await
            }
        };
        if let Err(e) = served {
            // Slow, malformed or vanished clients: theirs to fix, not ours to shout about.
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

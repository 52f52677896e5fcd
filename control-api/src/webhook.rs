//! The HTTPS admission webhook (`:15017`): `POST /inject` answers AdmissionReviews with the
//! injection patch (`inject::review`), `GET /healthz` answers kubelet. The certificate and key
//! are read from files and re-read when they change (a renewed Secret, cert-manager), without
//! dropping connections; a bad new pair is logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::inject::{review, Values};

/// AdmissionReviews of pods are small; the API server caps requests at 3 MiB.
const MAX_BODY: usize = 3 * 1024 * 1024;
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The serving certificate, swapped whole when its files change.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl CertFiles {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let current = ArcSwap::from_pointee(read_pair(cert, key)?);
        Ok(Arc::new(Self { cert: cert.into(), key: key.into(), current }))
    }

    /// Re-reads the files every few seconds, for as long as the process runs.
    pub async fn watch(self: Arc<Self>) {
        let mut seen = fingerprint(&self.cert, &self.key);
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = fingerprint(&self.cert, &self.key);
            if now == seen {
                continue;
            }
            match read_pair(&self.cert, &self.key) {
                Ok(pair) => {
                    self.current.store(Arc::new(pair));
                    seen = now;
                    tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                }
                // A half-written pair (cert renewed, key not yet) reads as a mismatch: keep the
                // old one and try again at the next tick.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "webhook certificate not reloaded; keeping the one in use")
                }
            }
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn fingerprint(cert: &Path, key: &Path) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    (std::fs::read(cert).ok(), std::fs::read(key).ok())
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("{}: cannot read", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not PEM certificates", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no certificate in the file", cert.display());
    }
    let private =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}: no PEM private key", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private, &provider)
        .with_context(|| format!("{} and {} do not make a usable pair", cert.display(), key.display()))
}

/// Serves the webhook on `socket` until the process ends.
pub async fn serve(socket: TcpListener, certs: Arc<CertFiles>, values: Arc<Values>) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(certs.watch());
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let values = values.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |req| handle(values.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

async fn handle(
    values: Arc<Values>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, content_type: &'static str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        // `/inject/LEVEL`: the chart's webhook entries for namespaces whose Pod Security
        // level (baseline, restricted) refuses the init container name it in the path.
        (&Method::POST, path) if path == "/inject" || path.starts_with("/inject/") => {
            let level = path.strip_prefix("/inject/").map(str::to_owned);
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    tracing::warn!(error = %e, "admission review unreadable");
                    Bytes::new()
                }
            };
            let answer = review::answer(&values, &body, level.as_deref());
            if answer.allowed {
                tracing::info!("{}", answer.log);
            } else {
                tracing::warn!("admission denied: {}", answer.log);
            }
            reply(StatusCode::OK, "application/json", serde_json::to_vec(&answer.body).unwrap_or_default())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"endpoints: POST /inject, POST /inject/LEVEL, GET /healthz\n".to_vec(),
        ),
    })
}

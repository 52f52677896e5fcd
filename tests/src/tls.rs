//! Test certificates made with the `openssl` command, and an HTTPS client that trusts them and
//! reports the certificate the server presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether the `openssl` command is here; tests that need certificates skip (and say so)
/// without it.
pub fn available() -> bool {
    let found = Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: the openssl command is missing (scripts/deps.sh installs it as root)");
    }
    found
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl (is it installed?)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`NAME-ca.crt`) and a server pair (`NAME.crt`, `NAME.key`) for localhost and 127.0.0.1.
pub fn issue(dir: &Path, name: &str) -> Certs {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca_key, ca, key, csr, cert, ext) = (
        format!("{name}-ca.key"),
        format!("{name}-ca.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", "/CN=bulwark-test-ca"]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=bulwark-control.bulwark-system.svc"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    Certs { ca: dir.join(ca), cert: dir.join(cert), key: dir.join(key) }
}

/// The DER of the first certificate in a PEM file.
pub fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem).expect("read pem").next().expect("a certificate").expect("pem").to_vec()
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// The leaf certificate the server presented.
    pub server_cert: Vec<u8>,
}

/// One HTTPS request to `addr` as `localhost`, trusting only `ca`.
pub async fn request(addr: SocketAddr, ca: &Path, method: &str, path: &str, body: Vec<u8>) -> anyhow::Result<Reply> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    let server_cert =
        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok(Reply { status, body, server_cert })
}

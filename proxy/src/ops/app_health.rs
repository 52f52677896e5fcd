//! The app's own probes, run by the proxy on kubelet's behalf (`/app-health/CONTAINER/KIND` on
//! the health port). The injector rewrites a captured app's probes to these paths and passes the
//! originals in `BULWARK_APP_PROBES`; see `bulwark_policy::app_probe` for why.
//!
//! Checks go to the app over loopback from the proxy's UID, which the redirect never captures.
//! An HTTP check answers with the app's own status; TCP and gRPC checks answer 200 or 503.

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_policy::app_probe::{AppProbe, AppProbes, Check};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::ops::server::{self, Reply};

#[derive(Default)]
pub struct AppHealth {
    probes: AppProbes,
}

impl AppHealth {
    pub fn new(probes: AppProbes) -> Self {
        Self { probes }
    }

    /// From `BULWARK_APP_PROBES`, when set. A malformed value is an error: the pod would
    /// otherwise never become ready, with nothing saying why.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(bulwark_policy::app_probe::ENV) {
            Ok(json) if !json.trim().is_empty() => {
                Ok(Self::new(bulwark_policy::app_probe::parse(&json).map_err(anyhow::Error::msg)?))
            }
            _ => Ok(Self::default()),
        }
    }

    /// `rest` is the path after `/app-health/`.
    pub fn check(&self, rest: &str) -> Reply {
        let path = format!("{}{rest}", bulwark_policy::app_probe::PATH_PREFIX);
        let Some(probe) = self.probes.get(&path).cloned() else {
            return server::ready(server::text(StatusCode::NOT_FOUND, format!("no app probe at {path}\n")));
        };
        Box::pin(async move {
            // Answer before kubelet gives up, so that it sees our reason rather than a timeout.
            let budget = Duration::from_millis(u64::from(probe.timeout_seconds.max(1)) * 1000 * 9 / 10);
            match tokio::time::timeout(budget, run(&probe)).await {
                Ok(Ok(status)) => server::text(status, format!("app answered {}\n", status.as_u16())),
                Ok(Err(e)) => server::text(StatusCode::SERVICE_UNAVAILABLE, format!("app probe failed: {e}\n")),
                Err(_) => {
                    server::text(StatusCode::SERVICE_UNAVAILABLE, format!("app probe timed out after {budget:?}\n"))
                }
            }
        })
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn run(probe: &AppProbe) -> anyhow::Result<StatusCode> {
    match &probe.check {
        Check::TcpSocket { port } => {
            TcpStream::connect(loopback(*port)).await?;
            Ok(StatusCode::OK)
        }
        Check::HttpGet { path, port, headers } => http_get(*port, path, headers).await,
        Check::Grpc { port, service } => grpc_health(*port, service.as_deref().unwrap_or_default()).await,
    }
}

async fn http_get(port: u16, path: &str, headers: &[(String, String)]) -> anyhow::Result<StatusCode> {
    let stream = TcpStream::connect(loopback(port)).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(probe_request(port, path, headers)?).await?;
    Ok(resp.status())
}

/// The probe's GET, with its headers. Like kubelet, the probe's own Host and User-Agent win over
/// the defaults (and are sent once).
fn probe_request(port: u16, path: &str, headers: &[(String, String)]) -> anyhow::Result<Request<Empty<Bytes>>> {
    let mut req = Request::get(path).body(Empty::<Bytes>::new())?;
    for (name, value) in headers {
        req.headers_mut()
            .append(http::HeaderName::try_from(name.as_str())?, http::HeaderValue::try_from(value.as_str())?);
    }
    let h = req.headers_mut();
    h.entry(http::header::HOST).or_insert(http::HeaderValue::try_from(format!("127.0.0.1:{port}"))?);
    h.entry(http::header::USER_AGENT).or_insert(http::HeaderValue::from_static("kube-probe (bulwark)"));
    Ok(req)
}

/// `grpc.health.v1.Health/Check` over h2c: 200 when the app says SERVING.
async fn grpc_health(port: u16, service: &str) -> anyhow::Result<StatusCode> {
    let stream = TcpStream::connect(loopback(port)).await?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    // HealthCheckRequest { service = 1 }, in a gRPC length-prefixed frame.
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a);
        message.put_u8(u8::try_from(service.len()).map_err(|_| anyhow::anyhow!("service name too long"))?);
        message.put_slice(service.as_bytes());
    }
    let frame = crate::http::respond::grpc_frame(&message.freeze())
        .ok_or_else(|| anyhow::anyhow!("health check request too long"))?;
    let req = Request::post(format!("http://127.0.0.1:{port}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame))?;
    let resp = send.send_request(req).await?;
    let header_status = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await?;
    let status = collected.trailers().and_then(|t| t.get("grpc-status").cloned()).or(header_status);
    if status.as_ref().map(|s| s.as_bytes()) != Some(b"0") {
        anyhow::bail!("grpc-status {:?}", status.map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()));
    }
    // HealthCheckResponse { status = 1 (varint) }; SERVING is 1.
    let mut body = collected.to_bytes();
    if body.len() < 5 {
        anyhow::bail!("no health response message");
    }
    body.advance(5);
    Ok(if body.as_ref() == [0x08, 0x01] { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_own_host_and_user_agent_win_and_are_sent_once() {
        let req = probe_request(8080, "/healthz", &[]).unwrap();
        assert_eq!(req.headers()[http::header::HOST], "127.0.0.1:8080");
        assert_eq!(req.headers()[http::header::USER_AGENT], "kube-probe (bulwark)");

        let own = [("Host".to_string(), "web.shop".to_string()), ("X-Probe".to_string(), "1".to_string())];
        let req = probe_request(8080, "/healthz", &own).unwrap();
        let hosts: Vec<_> = req.headers().get_all(http::header::HOST).iter().collect();
        assert_eq!(hosts, ["web.shop"]);
        assert_eq!(req.headers()["x-probe"], "1");
    }
}

//! SIGTERM: readiness fails at once; for the drain period new connections are still served
//! (HTTP/1 responses say `Connection: close`, HTTP/2 clients get GOAWAY); then new connections
//! are refused, in-flight requests finish, and the process exits 0.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::StatusCode;

#[tokio::test]
async fn in_flight_request_completes_and_new_connections_are_refused_after_the_drain_period() {
    let up = Upstream::start().await;
    let mut proxy =
        ProxyBuilder::new().listener("web", up.addr).extra("drainTimeout: 15s\ndrainPeriod: 1500ms").start().await;
    let addr = proxy.listener("web");

    // An HTTP/2 connection that is open when the drain starts.
    let (mut h2_send, h2_task) = client::connect_h2(addr).await.unwrap();
    let mut req = client::request(http::Method::GET, &format!("http://{addr}/"), &[]);
    *req.version_mut() = http::Version::HTTP_2;
    assert_eq!(h2_send.send_request(req).await.unwrap().status(), StatusCode::OK);

    let slow = tokio::spawn(async move { client::get(addr, "/slow", &[("x-delay", "2s")]).await });
    let in_flight = || async { up.stats.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 };
    bulwark_e2e::wait_for("the slow request to reach the upstream", Duration::from_secs(10), in_flight).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ready = client::get(proxy.health, "/ready", &[]).await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "readiness fails while draining");
    tokio::time::timeout(Duration::from_secs(5), h2_task).await.expect("h2 connection closed by GOAWAY").unwrap().ok();
    let late = client::get(addr, "/", &[]).await.expect("a new client in the drain period is served");
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(late.headers["connection"], "close", "and told to reconnect");
    bulwark_e2e::wait_for("the listener to close after the drain period", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;

    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request finished");
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("exits after draining");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn drain_deadline_bounds_the_wait() {
    let up = Upstream::start().await;
    let mut proxy =
        ProxyBuilder::new().listener("web", up.addr).extra("drainTimeout: 1s\ndrainPeriod: 5s").start().await;
    let addr = proxy.listener("web");
    let _hung = tokio::spawn(async move { client::get(addr, "/", &[("x-hang", "1")]).await });
    let in_flight = || async { up.stats.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 };
    bulwark_e2e::wait_for("the hung request to reach the upstream", Duration::from_secs(10), in_flight).await;
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("exits at the drain deadline");
    assert!(status.success());
}

/// A client that keeps sending, as Kubernetes clients do until the endpoint is removed a
/// while after readiness fails: not one request fails across the drain.
#[tokio::test]
async fn a_client_that_keeps_sending_through_the_drain_loses_nothing() {
    let up = Upstream::start().await;
    let mut proxy =
        ProxyBuilder::new().listener("web", up.addr).extra("drainTimeout: 10s\ndrainPeriod: 3s").start().await;
    let (addr, health) = (proxy.listener("web"), proxy.health);
    let sender = tokio::spawn(async move {
        let (mut sent, mut failed, mut after_unready) = (0, Vec::new(), 0);
        let mut unready_since = None;
        let mut conn = None;
        loop {
            // The endpoint is removed one second after readiness fails: no new requests then.
            if unready_since.is_none()
                && client::get(health, "/ready", &[]).await.map(|r| r.status).ok() != Some(StatusCode::OK)
            {
                unready_since = Some(tokio::time::Instant::now());
            }
            if unready_since.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                return (sent, failed, after_unready);
            }
            if conn.is_none() {
                conn = client::connect_h1(addr).await.ok();
            }
            sent += 1;
            after_unready += usize::from(unready_since.is_some());
            let answer = match conn.as_mut() {
                Some(c) => {
                    c.send_request(client::request(http::Method::GET, "/", &[])).await.map_err(|e| e.to_string())
                }
                None => Err("connect refused".into()),
            };
            match answer {
                Ok(r) if r.status() == StatusCode::OK => {
                    let close = r.headers().get("connection").is_some_and(|v| v == "close");
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    if close {
                        conn = None;
                    }
                }
                Ok(r) => failed.push(format!("status {}", r.status())),
                Err(e) => {
                    failed.push(e);
                    conn = None;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.signal("TERM");
    let (sent, failed, after_unready) = sender.await.unwrap();
    assert!(failed.is_empty(), "{} of {sent} requests failed: {failed:?}", failed.len());
    assert!(after_unready > 10, "requests kept being served after readiness failed: {after_unready}");
    let status = proxy.wait_exit(Duration::from_secs(15)).await.expect("exits after the drain");
    assert!(status.success(), "{status:?}");
}

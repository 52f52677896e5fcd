//! SIGTERM: readiness fails at once, new connections are refused, in-flight requests finish,
//! HTTP/2 clients are told to go away, then the process exits 0.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::StatusCode;

#[tokio::test]
async fn in_flight_request_completes_and_new_connections_are_refused() {
    let up = Upstream::start().await;
    let mut proxy = ProxyBuilder::new().listener("web", up.addr).extra("drainTimeout: 15s").start().await;
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
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "new connections are refused");
    tokio::time::timeout(Duration::from_secs(5), h2_task).await.expect("h2 connection closed by GOAWAY").unwrap().ok();

    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request finished");
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("exits after draining");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn drain_deadline_bounds_the_wait() {
    let up = Upstream::start().await;
    let mut proxy = ProxyBuilder::new().listener("web", up.addr).extra("drainTimeout: 1s").start().await;
    let addr = proxy.listener("web");
    let _hung = tokio::spawn(async move { client::get(addr, "/", &[("x-hang", "1")]).await });
    let in_flight = || async { up.stats.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 };
    bulwark_e2e::wait_for("the hung request to reach the upstream", Duration::from_secs(10), in_flight).await;
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("exits at the drain deadline");
    assert!(status.success());
}

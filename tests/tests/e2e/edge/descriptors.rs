//! Out of file descriptors: the accept loop backs off (no busy loop), counts it, and the
//! connections already open keep being served.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::legit::cpu_seconds;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::StatusCode;
use tokio::net::TcpStream;

async fn get(send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>) -> StatusCode {
    let r = send.send_request(client::request(http::Method::GET, "/", &[])).await.unwrap();
    let status = r.status();
    http_body_util::BodyExt::collect(r.into_body()).await.unwrap();
    status
}

#[tokio::test]
async fn emfile_backs_off_and_open_connections_keep_working() {
    let up = Upstream::start().await;
    let proxy =
        ProxyBuilder::new().listener("web", up.addr).command_prefix(&["prlimit", "--nofile=96:96", "--"]).start().await;
    let web = proxy.listener("web");
    // A keep-alive client whose upstream connection is already pooled.
    let mut legit = client::connect_h1(web).await.unwrap();
    assert_eq!(get(&mut legit).await, StatusCode::OK);

    let mut held = Vec::new();
    for _ in 0..200 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(web)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    bulwark_e2e::wait_for("accept errors counted", Duration::from_secs(10), || async {
        proxy.metric("bulwark_downstream_accept_errors_total", &[("listener", "web")]).await > 0.0
    })
    .await;
    let pid = proxy.child.id();
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(pid) - before;
    assert!(used < 1.0, "out of descriptors, the proxy spun: {used} CPU s in 2 s");
    for _ in 0..5 {
        assert_eq!(get(&mut legit).await, StatusCode::OK, "an open connection is still served");
    }
    drop(held);
    assert!(client::wait_ok(web, "/", Duration::from_secs(10)).await, "new connections are accepted again");
}

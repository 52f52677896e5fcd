//! The admin port against a browser on the same host: cross-site writes (CSRF) and DNS
//! rebinding are refused; command-line clients keep working.

use bulwark_e2e::client::{self, request};
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::{Method, StatusCode};

type Headers<'a> = &'a [(&'a str, &'a str)];

#[tokio::test]
async fn a_browser_cannot_flip_faults_change_logging_or_stop_the_proxy() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&crate::web_policy("")).start().await;
    let admin = proxy.admin;
    let own = format!("{admin}");
    let attacks: [(&str, &str, Headers<'_>); 5] = [
        ("/quitquitquit", "foreign Origin", &[("origin", "http://evil.example"), ("host", own.as_str())]),
        ("/quitquitquit", "rebinding Host", &[("host", "evil.example:15000")]),
        ("/quitquitquit", "form post", &[("host", own.as_str()), ("content-type", "text/plain")]),
        ("/logging?level=trace", "form post", &[("content-type", "application/x-www-form-urlencoded")]),
        (
            "/faults?policy=default/web&route=default",
            "multipart",
            &[("content-type", "multipart/form-data; boundary=x")],
        ),
    ];
    for (path, what, headers) in attacks {
        let r = client::send(admin, request(Method::POST, path, headers)).await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what} on {path}: {}", r.text());
    }
    let read = client::get(admin, "/config", &[("host", "evil.example")]).await.unwrap();
    assert_eq!(read.status, StatusCode::FORBIDDEN, "a rebinding name cannot read the config either");
    assert_eq!(
        client::get(admin, "/logging", &[]).await.unwrap().text().trim(),
        "bulwark_proxy=debug,info",
        "the log filter is unchanged"
    );
    assert_eq!(client::get(proxy.health, "/ready", &[]).await.unwrap().status, StatusCode::OK, "still serving");

    // What tools send is accepted: no Origin, and no content type or a real one.
    let curl = client::send(admin, request(Method::POST, "/logging?level=warn", &[("host", "localhost:15000")]))
        .await
        .unwrap();
    assert_eq!(curl.status, StatusCode::OK, "{}", curl.text());
    let tool = client::send(
        admin,
        request(Method::POST, "/logging?level=info", &[("content-type", "text/plain"), ("x-bulwark-admin", "1")]),
    )
    .await
    .unwrap();
    assert_eq!(tool.status, StatusCode::OK, "{}", tool.text());
    let same_origin = client::send(
        admin,
        request(Method::POST, "/logging?level=info", &[("host", own.as_str()), ("origin", &format!("http://{own}"))]),
    )
    .await
    .unwrap();
    assert_eq!(same_origin.status, StatusCode::OK, "{}", same_origin.text());
}

//! One HTTP/1.1 GET, printed as JSON (`status`, `reason`, `body`), for tests that run the app
//! side inside a network namespace. Usage: bulwark-test-client ADDR PATH [HEADER:VALUE ...]
//! With BULWARK_RETRY_FOR=10s it retries until a 200 or the time passes (readiness waits).
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr =
        args.next().ok_or_else(|| anyhow::anyhow!("usage: ADDR PATH [H:V ...]"))?.parse()?;
    let path = args.next().unwrap_or_else(|| "/".into());
    let headers: Vec<(String, String)> =
        args.filter_map(|h| h.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Ok(d) = std::env::var("BULWARK_RETRY_FOR") {
        let secs: u64 = d.trim_end_matches('s').parse().unwrap_or(10);
        if !bulwark_e2e::client::wait_ok(addr, &path, Duration::from_secs(secs)).await {
            anyhow::bail!("{addr}{path} did not answer 200 within {secs}s");
        }
    }
    let r = bulwark_e2e::client::get(addr, &path, &refs).await?;
    let out = serde_json::json!({ "status": r.status.as_u16(), "reason": r.reason(), "body": r.text() });
    println!("{out}");
    Ok(())
}

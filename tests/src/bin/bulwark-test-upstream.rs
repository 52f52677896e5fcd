//! The misbehaving test upstream as a process, for tests that need it in another network
//! namespace and for `make demo`. Usage: bulwark-test-upstream ADDR
use bulwark_e2e::upstream::serve;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bulwark-test-upstream listening on {}", listener.local_addr()?);
    serve(listener, Default::default()).await;
    Ok(())
}

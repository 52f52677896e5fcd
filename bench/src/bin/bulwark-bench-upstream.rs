//! The benchmark's upstream: answers every HTTP/1.1 or h2c request with a small 200 at once, and
//! serves the gRPC Echo service on a second port. Prints `http=ADDR grpc=ADDR` when listening.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc = bulwark_e2e::grpc::GrpcUpstream::start().await;
    println!("http={} grpc={}", http.local_addr()?, grpc.addr);
    loop {
        let (stream, _) = http.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header("content-type", "text/plain")
                        .body(Full::new(Bytes::from_static(b"hello from the bench upstream\n")))
                        .expect("static response"),
                )
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

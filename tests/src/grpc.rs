//! A tonic gRPC server implementing the test `Echo` service, on h2c.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest};

/// Answers `flaky` with UNAVAILABLE on every other call (counted across the server).
#[derive(Default)]
pub struct EchoService {
    pub calls: std::sync::atomic::AtomicUsize,
}

type ReplyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let r = req.into_inner();
        tokio::time::sleep(Duration::from_millis(r.delay_ms)).await;
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if r.message == "fail" {
            return Err(Status::internal("asked to fail"));
        }
        if r.message == "flaky" && n % 2 == 0 {
            return Err(Status::unavailable("flaky: try again"));
        }
        Ok(Response::new(EchoReply { message: r.message }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(&self, req: Request<Streaming<EchoRequest>>) -> Result<Response<ReplyStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if tx.send(Ok(EchoReply { message: format!("echo: {}", m.message) })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

pub struct GrpcUpstream {
    pub addr: SocketAddr,
    pub service: std::sync::Arc<EchoService>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    pub async fn start() -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc upstream");
        let addr = listener.local_addr().expect("addr");
        let service = std::sync::Arc::new(EchoService::default());
        let shared = service.clone();
        let task = tokio::spawn(async move {
            let service = shared;
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer::from_arc(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        GrpcUpstream { addr, service, task }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! A tonic gRPC server implementing the test `Echo` service and gRPC health checking, on h2c.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::health_pb::health_check_response::ServingStatus;
use crate::health_pb::health_server::{Health, HealthServer};
use crate::health_pb::{HealthCheckRequest, HealthCheckResponse};
use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest};

/// Answers `fail` with INTERNAL, `unavailable` with UNAVAILABLE, and `flaky` with UNAVAILABLE on
/// every other call (counted across the server).
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
        if r.message == "unavailable" {
            return Err(Status::unavailable("asked to be unavailable"));
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

/// grpc.health.v1: answers what `status` holds (SERVING by default) for every service name.
pub struct HealthService {
    pub status: std::sync::atomic::AtomicI32,
}

impl Default for HealthService {
    fn default() -> Self {
        Self { status: std::sync::atomic::AtomicI32::new(ServingStatus::Serving as i32) }
    }
}

impl HealthService {
    pub fn set(&self, status: ServingStatus) {
        self.status.store(status as i32, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { status: self.status.load(std::sync::atomic::Ordering::SeqCst) }))
    }
}

pub struct GrpcUpstream {
    pub addr: SocketAddr,
    pub service: std::sync::Arc<EchoService>,
    pub health: std::sync::Arc<HealthService>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    pub async fn start() -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc upstream");
        let addr = listener.local_addr().expect("addr");
        let service = std::sync::Arc::new(EchoService::default());
        let health = std::sync::Arc::new(HealthService::default());
        let (shared, shared_health) = (service.clone(), health.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(EchoServer::from_arc(shared))
                .add_service(HealthServer::from_arc(shared_health))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        GrpcUpstream { addr, service, health, task }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

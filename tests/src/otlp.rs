//! A real OTLP/gRPC trace receiver, built from the opentelemetry-proto definitions with tonic:
//! it records what it receives, or (hanging) never answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    hang: bool,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        self.received.lock().expect("lock").push(req.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// A receiver that records every export; with `hang`, one that never answers.
    pub async fn start(hang: bool) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let collector = Collector { hang, ..Default::default() };
        let received = collector.received.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        OtlpReceiver { addr, received, task }
    }

    /// Every span received, with its resource's attributes.
    pub fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let received = self.received.lock().expect("lock");
        received
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| {
                let resource = rs.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
                rs.scope_spans.iter().flat_map(move |ss| {
                    ss.spans.iter().map({
                        let resource = resource.clone();
                        move |s| (resource.clone(), s.clone())
                    })
                })
            })
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An attribute's value as text.
pub fn attribute(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match v {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

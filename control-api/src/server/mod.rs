//! What bulwark-control serves: the gRPC services, and its metrics.

pub mod admin;
pub mod discovery;
pub mod metrics;
pub mod token;

use tonic::{Request, Status};

/// Refuses calls without `authorization: Bearer TOKEN` when a token is set; `what` names the
/// token in the refusal, so a client learns which one it lacks.
#[derive(Clone)]
pub struct RequireToken {
    pub token: Option<String>,
    pub what: &'static str,
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(req) };
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match given.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated(format!("invalid {}", self.what))),
            None => Err(Status::unauthenticated(format!(
                "this control plane requires \"authorization: Bearer TOKEN\" with the {}",
                self.what
            ))),
        }
    }
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

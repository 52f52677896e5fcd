//! The gRPC services bulwark-control serves.

pub mod admin;
pub mod discovery;

use tonic::{Request, Status};

/// Refuses calls without `authorization: Bearer TOKEN` when a token is configured.
#[derive(Clone)]
pub struct RequireToken(pub Option<String>);

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else { return Ok(req) };
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match given.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(t) if t == token => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated("this control plane requires \"authorization: Bearer TOKEN\"")),
        }
    }
}

//! HTTP/1.1 upgrades (WebSocket): after the upstream's 101, the downstream and upstream
//! connections become one opaque tunnel, relayed like TCP (`tcp::relay`). A tunnel is a task
//! of the connection tracker, so a drain waits for it up to the drain deadline, and it closes
//! after the route's idle timeout of silence in both directions.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::shared::Shared;
use crate::tcp::relay;

pub fn tunnel(shared: &Shared, down: OnUpgrade, up: OnUpgrade, idle: Duration) {
    shared.tasks.spawn(async move {
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match relay::forward(&mut down, &mut up, idle, relay::Faults::default()).await {
            Ok((sent, received)) => tracing::debug!(sent, received, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
        }
    });
}

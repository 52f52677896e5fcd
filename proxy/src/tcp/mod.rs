//! Opaque TCP: a connection that is not HTTP gets the connection-level subset of its policy
//! (connect timeout, idle timeout, TCP faults) and is relayed byte for byte (`relay`).

pub mod relay;

use tokio::net::TcpStream;

/// The route label of a policy's TCP fault series (opaque TCP has no routes).
pub const FAULT_ROUTE: &str = "tcp";

use crate::downstream::Downstream;
use crate::listener::detect::Prefixed;
use crate::shared::Shared;

pub async fn forward(
    mut down: Prefixed<TcpStream>,
    downstream: &Downstream,
    shared: &Shared,
    silent: Option<crate::listener::idle::Waiting>,
) {
    let (connect_timeout, idle, policy_id, tcp_faults) = {
        let installed = shared.store.installed();
        let config = &installed.config;
        let policy = installed.snapshot.select(&downstream.destination(None));
        (
            policy.and_then(|p| p.upstream.connect_timeout).unwrap_or(config.upstream.connect_timeout.get()),
            policy.and_then(|p| p.default_route.timeouts.idle).unwrap_or(config.upstream.tcp_idle_timeout.get()),
            policy.map(|p| p.id.clone()),
            policy.and_then(|p| p.tcp_faults),
        )
    };
    let drawn = tcp_faults.map(|f| draw_tcp_faults(&f)).unwrap_or_default();
    let count = |kind| {
        if let Some(id) = &policy_id {
            shared.metrics.stages.fault.counter(id, FAULT_ROUTE, kind).inc();
        }
    };
    if drawn.reset_now {
        count("tcp-reset");
        reset(down.inner());
        return;
    }
    if drawn.blackhole {
        count("tcp-blackhole");
        // Accept and never answer: read and drop until the client gives up or goes idle.
        let mut sink = tokio::io::sink();
        let _ = tokio::time::timeout(idle, tokio::io::copy(&mut down, &mut sink)).await;
        return;
    }
    for (hit, kind) in [
        (drawn.faults.delay.is_some(), "tcp-delay"),
        (drawn.faults.bandwidth.is_some(), "tcp-bandwidth"),
        (drawn.faults.reset_after.is_some(), "tcp-reset"),
    ] {
        if hit {
            count(kind);
        }
    }
    let addrs = match downstream.addrs().await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(upstream = %downstream.authority(), error = %e, "tcp: resolution failed; closing");
            return;
        }
    };
    let mut up = match crate::upstream::connect::connect(&addrs, connect_timeout).await {
        Ok((up, _)) => {
            shared.metrics.upstream.connection("opened");
            up
        }
        Err(e) => {
            shared.metrics.upstream.connection("failed");
            tracing::info!(error = %e, "tcp: upstream connect failed; closing");
            return;
        }
    };
    // Relay buffers are allocated when there is something to relay: a connection silent on
    // both sides (an idle client, a server that has not greeted yet) holds none.
    // Until then it can still be shed at a connection cap.
    if !down.has_prefix() {
        let shed = async {
            match &silent {
                Some(w) => w.shed.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let either = async {
            tokio::select! { r = down.inner().readable() => r, r = up.readable() => r }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(idle, either) => r,
            _ = shed => {
                tracing::debug!(client = %downstream.client, "silent tcp connection shed for a new one at the connection cap");
                return;
            }
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(client = %downstream.client, error = %e, "tcp connection ended");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %downstream.client, ?idle, "tcp connection idle; closing");
                return;
            }
        }
    }
    drop(silent);
    match relay::forward(&mut down, &mut up, idle, drawn.faults).await {
        Ok((sent, received)) => tracing::debug!(client = %downstream.client, sent, received, "tcp connection closed"),
        Err(e) => {
            tracing::debug!(client = %downstream.client, error = %e, "tcp connection ended");
            if e.kind() == std::io::ErrorKind::ConnectionReset {
                reset(down.inner());
                reset(&up);
            }
        }
    }
}

#[derive(Default)]
struct DrawnTcpFaults {
    reset_now: bool,
    blackhole: bool,
    faults: relay::Faults,
}

/// Each TCP fault drawn on its own for this connection.
fn draw_tcp_faults(f: &bulwark_policy::faults::TcpFaultPolicy) -> DrawnTcpFaults {
    let hit = |c: bulwark_policy::faults::Chance| c.hit(fastrand::u64(..));
    let reset = f.reset.filter(|(_, c)| hit(*c));
    DrawnTcpFaults {
        reset_now: reset.is_some_and(|(after, _)| after.is_none()),
        blackhole: f.blackhole.is_some_and(hit),
        faults: relay::Faults {
            delay: f.delay.filter(|(_, c)| hit(*c)).map(|(d, _)| d),
            bandwidth: f.bandwidth.filter(|b| hit(b.chance)).map(|b| b.bytes_per_second),
            reset_after: reset.and_then(|(after, _)| after),
        },
    }
}

/// Closes with RST rather than FIN: zero linger, then the caller drops the socket.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

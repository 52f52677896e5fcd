//! Starts the real `bulwark-control` binary on a free port with a data directory of its own,
//! and gives tests a gRPC client of its public API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulwark_proto::v1::policy_admin_client::PolicyAdminClient;
use tonic::transport::Channel;

use crate::TempDir;

pub struct ControlPlane {
    pub addr: SocketAddr,
    /// Where PolicyAdmin is served: `addr`, or a separate port.
    pub admin_addr: SocketAddr,
    pub data: TempDir,
    token: Option<String>,
    /// Without a token: false serves PolicyAdmin open (`--insecure-no-auth`), true lets the
    /// control plane generate its token as it does by default.
    generated_token: bool,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl ControlPlane {
    /// With `token`, PolicyAdmin requires it; without, PolicyAdmin is open
    /// (`--insecure-no-auth`).
    pub async fn start(token: Option<&str>) -> ControlPlane {
        Self::start_with(token, false).await
    }

    /// As a user starts it: no token given, so one is generated into the data directory.
    pub async fn start_default_auth(args: Vec<String>) -> ControlPlane {
        let mut cp = Self::prepare(None, false, args);
        cp.generated_token = true;
        cp.spawn().await;
        cp
    }

    /// With `separate_admin`, PolicyAdmin listens on a port of its own.
    pub async fn start_with(token: Option<&str>, separate_admin: bool) -> ControlPlane {
        Self::launch(token, separate_admin, Vec::new()).await
    }

    /// With extra command-line arguments (e.g. the webhook's).
    pub async fn start_with_args(args: Vec<String>) -> ControlPlane {
        Self::launch(None, false, args).await
    }

    async fn launch(token: Option<&str>, separate_admin: bool, args: Vec<String>) -> ControlPlane {
        let mut cp = Self::prepare(token, separate_admin, args);
        cp.spawn().await;
        cp
    }

    fn prepare(token: Option<&str>, separate_admin: bool, args: Vec<String>) -> ControlPlane {
        let data = TempDir::new("control");
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::proxy::free_port()).parse().expect("addr");
        let admin_addr = if separate_admin {
            format!("127.0.0.1:{}", crate::proxy::free_port()).parse().expect("addr")
        } else {
            addr
        };
        let log = data.path().join("control.log");
        ControlPlane {
            addr,
            admin_addr,
            data,
            token: token.map(str::to_string),
            generated_token: false,
            args,
            child: None,
            log,
        }
    }

    /// The admin token the control plane generated (with `start_default_auth`).
    pub fn generated_token_file(&self) -> PathBuf {
        self.data.path().join("store").join("admin-token")
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut cmd = Command::new(crate::workspace_bin("bulwark-control"));
        cmd.arg("--listen").arg(self.addr.to_string()).arg("--data-dir").arg(self.data.path().join("store"));
        match (&self.token, self.generated_token) {
            (Some(t), _) => {
                cmd.arg("--token").arg(t);
            }
            (None, false) => {
                cmd.arg("--insecure-no-auth");
            }
            (None, true) => {}
        }
        cmd.args(&self.args);
        if self.admin_addr != self.addr {
            cmd.arg("--admin-listen").arg(self.admin_addr.to_string());
        }
        self.child = Some(cmd.stdout(Stdio::null()).stderr(log).spawn().expect("spawn bulwark-control"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(self.addr).await.is_err()
            || tokio::net::TcpStream::connect(self.admin_addr).await.is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "bulwark-control did not start:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills with SIGKILL (no chance to clean up), then starts again on the same data.
    pub async fn kill9_and_restart(&mut self) {
        self.kill9_and_restart_with(|| {}).await;
    }

    /// Like `kill9_and_restart`, running `meanwhile` while it is down.
    pub async fn kill9_and_restart_with(&mut self, meanwhile: impl FnOnce()) {
        self.stop();
        meanwhile();
        self.spawn().await;
    }

    /// Kills it (SIGKILL): an outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// Starts it again after `stop`, on the same address and data.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }

    pub async fn admin(&self) -> PolicyAdminClient<Channel> {
        let channel =
            Channel::from_shared(format!("http://{}", self.admin_addr)).expect("uri").connect().await.expect("connect");
        PolicyAdminClient::new(channel)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

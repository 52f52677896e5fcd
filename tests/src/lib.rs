//! Test harness for Bulwark: servers that misbehave on command, the real `bulwark-proxy`
//! binary started from a config the test writes, HTTP clients, and network namespaces for
//! transparent-capture tests. Every server binds port 0 and reports its address.

pub mod client;
pub mod control;
pub mod grpc;
pub mod helm;
pub mod legit;
pub mod netns;
pub mod otlp;
pub mod proxy;
pub mod raw;
pub mod tcp;
pub mod thirdparty;
pub mod tls;
pub mod upstream;

pub mod pb {
    tonic::include_proto!("bulwark.test.v1");
}

pub mod health_pb {
    tonic::include_proto!("grpc.health.v1");
}

/// Directory of the workspace's build output for the current profile (`target/debug`).
pub fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A binary of this workspace, built by `cargo build --workspace --bins` (what `make test` runs first).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let var = format!("BULWARK_{}_BIN", name.trim_start_matches("bulwark-").replace('-', "_").to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return p.into();
    }
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} not found; build it first with `cargo build --workspace --bins` (make test does), or set {var}",
        p.display()
    );
    p
}

/// A program of the test virtualenv `.venv` that `scripts/deps.sh` builds (python, the
/// kubernetes-validate command...).
pub fn venv_bin(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin").join(name)
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("bulwark-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `cond` holds, checking every 10 ms; panics naming `what` after `within`. Tests
/// wait on what they can observe (a count, a metric, a state) rather than sleeping.
pub async fn wait_for<F, Fut>(what: &str, within: std::time::Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

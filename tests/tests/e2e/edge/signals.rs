//! Signals that arrive while the proxy starts are handled, not fatal. The SIGHUP handler is
//! the first thing `main` installs: before the config is read, a port bound or the runtime
//! started. (A signal that arrives while the dynamic loader is still mapping the binary, before
//! any of its code runs, takes the kernel's default action for any program; the test starts
//! counting when the process can first run code of its own, which /proc shows as the handler.)

use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_e2e::TempDir;

/// True once process `pid` catches SIGHUP (bit 0 of /proc's SigCgt mask).
fn catches_sighup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?.trim().to_string();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|m| m & 1 == 1)
}

#[tokio::test]
async fn sighup_in_the_first_milliseconds_is_survived() {
    let dir = TempDir::new("sighup");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, "admin: 127.0.0.1:0\nhealth: 127.0.0.1:0\n").unwrap();
    // Seen before the listeners were bound, in how many of the runs: a busy machine can let the
    // proxy get that far before this thread looks, so one run alone proves nothing either way.
    let mut handler_first = 0;
    for delay_ms in [0, 1, 2, 5] {
        let ready = dir.path().join(format!("ready-{delay_ms}.json"));
        let log = dir.path().join(format!("proxy-{delay_ms}.log"));
        let mut child = Command::new(bulwark_e2e::workspace_bin("bulwark-proxy"))
            .args(["run", "--config"])
            .arg(&config)
            .env("BULWARK_READY_FILE", &ready)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let started = Instant::now();
        while !catches_sighup(pid) && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(100));
        }
        assert!(catches_sighup(pid), "the proxy never installed a SIGHUP handler");
        handler_first += usize::from(!ready.exists());
        std::thread::sleep(Duration::from_millis(delay_ms));
        assert!(Command::new("kill").args(["-s", "HUP", &pid.to_string()]).status().unwrap().success());
        let mut status = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while status.is_none() && !ready.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            status = child.try_wait().unwrap();
        }
        let became_ready = ready.exists();
        let _ = child.kill();
        let _ = child.wait();
        let logs = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status, None, "SIGHUP {delay_ms} ms into the start ended the proxy: {logs}");
        assert!(became_ready, "the proxy went on to serve: {logs}");
    }
    assert!(handler_first > 0, "the handler was never seen before a listener was bound");
}

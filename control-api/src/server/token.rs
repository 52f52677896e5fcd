//! The admin and discovery tokens when none is given: generated on first start into the data
//! directory, readable by its owner only, and kept across restarts, so a control plane is never
//! open to whoever can reach its port by default. `bulwarkctl` and a proxy on the same host find
//! them there; the injection webhook hands the discovery token to the proxies it injects.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// PolicyAdmin's token.
pub const ADMIN: &str = "admin-token";
/// The bootstrap token proxies present on discovery streams.
pub const DISCOVERY: &str = "discovery-token";

/// Where token `name` of the control plane with data directory `data_dir` lives.
pub fn path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(name)
}

/// The token `what` requires: `given`, else none with `insecure`, else token `name` of
/// `data_dir` (made if missing). Says in the log which it is.
pub fn resolve(
    given: Option<&str>,
    insecure: bool,
    data_dir: &Path,
    name: &str,
    what: &str,
) -> anyhow::Result<Option<String>> {
    match (given, insecure) {
        (Some(t), _) => Ok(Some(t.to_string())),
        (None, true) => {
            tracing::warn!("--insecure-no-auth: {what} accept every caller");
            Ok(None)
        }
        (None, false) => {
            let t = load_or_create(data_dir, name)?;
            tracing::info!(file = %path(data_dir, name).display(), "{what} require the token in this file");
            Ok(Some(t))
        }
    }
}

/// Token `name` in `data_dir`, created (32 random bytes, hex) if there is none yet.
pub fn load_or_create(data_dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = path(data_dir, name);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => anyhow::bail!("{} is empty: remove it to have a new token made", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .with_context(|| format!("reading /dev/urandom for a new {name}"))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_owner_only_and_kept() {
        let dir = std::env::temp_dir().join(format!("bulwark-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [ADMIN, DISCOVERY] {
            let _ = std::fs::remove_file(path(&dir, name));
        }
        let first = load_or_create(&dir, ADMIN).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(std::fs::metadata(path(&dir, ADMIN)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&dir, ADMIN).unwrap(), first, "kept across restarts");
        assert_ne!(load_or_create(&dir, DISCOVERY).unwrap(), first, "each token is its own");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

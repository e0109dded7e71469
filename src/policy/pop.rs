//! POP-before-SMTP: a client address that logged in to the POP server recently may relay.
//!
//! The POP server leaves a file per address in a drop folder (named by the address, with or
//! without a `.pbs` extension, as MailEnable writes them); a file modified within the window
//! counts. The lookup is a `stat`, so it sits behind [`PopLookup`]: the session asks the
//! trait, tests give it a map, and a cluster can answer from a shared store.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Did `ip` log in to the POP server within the window, as of `now_unix`?
pub trait PopLookup: Send + Sync + std::fmt::Debug {
    fn recent(&self, ip: IpAddr, now_unix: u64) -> bool;
}

/// The drop folder of files named by address.
#[derive(Debug, Clone)]
pub struct DropFolder {
    pub dir: PathBuf,
    pub window: Duration,
}

impl PopLookup for DropFolder {
    fn recent(&self, ip: IpAddr, now_unix: u64) -> bool {
        let ip = super::iplist::canonical(ip).to_string();
        [ip.clone(), format!("{ip}.pbs")].iter().any(|name| {
            std::fs::metadata(self.dir.join(name))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .is_some_and(|t| t.as_secs() + self.window.as_secs() >= now_unix)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_named_by_address_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("192.0.2.5"), "").unwrap();
        std::fs::write(dir.path().join("2001:db8::5.pbs"), "").unwrap();
        // "Now" is the newer file's own time: the clock read separately could already be a
        // second past it, and the window is counted in whole seconds.
        let modified = std::fs::metadata(dir.path().join("2001:db8::5.pbs")).unwrap().modified().unwrap();
        let now = modified.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let f = DropFolder { dir: dir.path().into(), window: Duration::from_secs(600) };
        assert!(f.recent("192.0.2.5".parse().unwrap(), now));
        assert!(f.recent("2001:db8::5".parse().unwrap(), now + 600));
        assert!(!f.recent("192.0.2.5".parse().unwrap(), now + 700));
        assert!(!f.recent("192.0.2.6".parse().unwrap(), now));
    }
}

//! [`BanList`]: client addresses banned automatically after too many failures, each until an
//! expiry, kept across restarts in a small file under the data directory.
//!
//! The file has one line per ban, `ADDRESS EXPIRY` with the expiry in Unix seconds (0 for
//! never); it is rewritten whole and atomically (temporary file, fsync, rename, fsync of the
//! directory) when a ban is added. Expired bans are dropped on load and on save.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};

/// Errors of the ban file; each carries the operation and the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BanError {
    /// Reading, writing or renaming the file failed.
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    /// A line that is not `ADDRESS EXPIRY`.
    #[error("{path}:{line}: expected `ADDRESS EXPIRY_UNIX_SECONDS`")]
    BadLine { path: PathBuf, line: usize },
}

/// The bans in force, as the saver thread writes them.
type Snapshot = Vec<(IpAddr, u64)>;

/// See the module documentation. Shared by every shard; reads take a read lock (bans are
/// rare, lookups happen once per connection).
#[derive(Debug, Default)]
pub struct BanList {
    bans: RwLock<HashMap<IpAddr, u64>>,
    /// Where the list is saved; `None` keeps it in memory only.
    path: Option<PathBuf>,
    /// The saver thread's channel, once started.
    saver: OnceLock<Mutex<std::sync::mpsc::Sender<Snapshot>>>,
}

impl BanList {
    /// An in-memory list (tests, or no data directory).
    pub fn in_memory() -> Self {
        BanList::default()
    }

    /// Loads `path` (a missing file is an empty list), dropping bans expired at `now_unix`.
    pub fn load(path: &Path, now_unix: u64) -> Result<Self, BanError> {
        let mut bans = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let bad = || BanError::BadLine { path: path.to_path_buf(), line: i + 1 };
                    let (ip, until) = line.split_once(' ').ok_or_else(bad)?;
                    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                    let until: u64 = until.trim().parse().map_err(|_| bad())?;
                    if until == 0 || until > now_unix {
                        bans.insert(ip, until);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(BanError::Io { op: "read", path: path.to_path_buf(), source }),
        }
        Ok(BanList { bans: RwLock::new(bans), path: Some(path.to_path_buf()), saver: OnceLock::new() })
    }

    /// True when `ip` is banned at `now_unix`.
    pub fn is_banned(&self, ip: IpAddr, now_unix: u64) -> bool {
        let bans = self.bans.read().unwrap_or_else(|e| e.into_inner());
        bans.get(&super::iplist::canonical(ip)).is_some_and(|&until| until == 0 || until > now_unix)
    }

    /// Bans `ip` until `until_unix` (0: for ever). The list is saved by a background
    /// thread (started on the first ban), so a shard never waits for the disk.
    pub fn ban(&self, ip: IpAddr, until_unix: u64, now_unix: u64) {
        {
            let mut bans = self.bans.write().unwrap_or_else(|e| e.into_inner());
            bans.insert(super::iplist::canonical(ip), until_unix);
            bans.retain(|_, &mut u| u == 0 || u > now_unix);
        }
        self.changed(now_unix);
    }

    /// Lifts the ban of `ip`; false when it was not banned.
    pub fn lift(&self, ip: IpAddr, now_unix: u64) -> bool {
        let was = {
            let mut bans = self.bans.write().unwrap_or_else(|e| e.into_inner());
            bans.remove(&super::iplist::canonical(ip)).is_some_and(|u| u == 0 || u > now_unix)
        };
        if was {
            self.changed(now_unix);
        }
        was
    }

    /// Has the saver thread write the list (started on the first change).
    fn changed(&self, now_unix: u64) {
        let Some(path) = &self.path else { return };
        let tx = self.saver.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Snapshot>();
            let path = path.clone();
            let spawned = std::thread::Builder::new().name("ban-saver".into()).spawn(move || {
                while let Ok(mut snapshot) = rx.recv() {
                    // Only the latest list matters.
                    while let Ok(newer) = rx.try_recv() {
                        snapshot = newer;
                    }
                    if let Err(e) = save(&path, &snapshot) {
                        log::error!("auto-bans: {e}");
                    }
                }
            });
            if let Err(e) = spawned {
                log::error!("auto-bans: cannot start the saver thread: {e}");
            }
            Mutex::new(tx)
        });
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(self.list(now_unix));
    }

    /// Writes the list now (tests, shutdown).
    pub fn save(&self, now_unix: u64) -> Result<(), BanError> {
        match &self.path {
            Some(p) => save(p, &self.list(now_unix)),
            None => Ok(()),
        }
    }

    /// Bans in force, sorted by address.
    pub fn list(&self, now_unix: u64) -> Vec<(IpAddr, u64)> {
        let bans = self.bans.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(IpAddr, u64)> =
            bans.iter().filter(|(_, u)| **u == 0 || **u > now_unix).map(|(a, u)| (*a, *u)).collect();
        v.sort();
        v
    }
}

fn save(path: &Path, bans: &[(IpAddr, u64)]) -> Result<(), BanError> {
    fn io<'p>(op: &'static str, p: &'p Path) -> impl FnOnce(std::io::Error) -> BanError + 'p {
        move |source| BanError::Io { op, path: p.to_path_buf(), source }
    }
    // The saver thread and an explicit save (shutdown) may run at once: one at a time, each
    // through its own temporary file.
    static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SAVING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut text = String::from("# ringmx auto-bans: ADDRESS EXPIRY_UNIX_SECONDS (0 = never)\n");
    for (ip, until) in bans {
        text.push_str(&format!("{ip} {until}\n"));
    }
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_expire_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bans");
        let l = BanList::load(&path, 1000).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        l.ban(a, 2000, 1000);
        l.ban(b, 0, 1000);
        l.save(1000).unwrap();
        assert!(l.is_banned(a, 1999) && !l.is_banned(a, 2000));
        assert!(l.is_banned("::ffff:192.0.2.1".parse().unwrap(), 1500));
        let again = BanList::load(&path, 1500).unwrap();
        assert_eq!(again.list(1500), vec![(a, 2000), (b, 0)]);
        let later = BanList::load(&path, 3000).unwrap();
        assert_eq!(later.list(3000), vec![(b, 0)]);
        // (Another file: the saver thread of `l` may still rewrite `path`.)
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "nonsense\n").unwrap();
        assert!(matches!(BanList::load(&bad, 0), Err(BanError::BadLine { line: 1, .. })));
    }
}

//! What a list keeps beside the directory, in `<data_dir>/lists/<list address>/`:
//!
//! - `held/<code>.eml`: posts waiting for a moderator, `Return-Path: <poster>` first;
//! - `confirm/<code>.json`: subscriptions and unsubscriptions waiting for their code;
//! - `digest/<time>-<n>.eml` and `digest.json`: posts waiting for the next digest, and the
//!   digest's volume, issue and when it last went;
//! - `archive/`: a Maildir of every distributed post, when the list keeps an archive.
//!
//! Every file is written to a temporary name, synced, renamed and its directory synced, so
//! that a crash leaves it whole or absent. [`ListStore`] is what the list manager asks;
//! [`FileStore`] answers from these files, tests answer from memory.

use crate::directory::store::sync_dir;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A subscription or unsubscription waiting for its confirmation code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// `subscribe` or `unsubscribe`.
    pub action: String,
    pub address: String,
    /// After this (Unix ms) the code no longer works.
    pub expires_ms: u64,
}

/// A held post as the moderation commands show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPost {
    pub code: String,
    pub from: String,
    pub subject: String,
    pub size: u64,
    /// When it was held (the file's modification time, Unix seconds).
    pub held_s: u64,
}

/// A digest's numbering and last sending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestState {
    pub volume: u32,
    pub issue: u32,
    /// When the last digest went (Unix ms); 0: never.
    pub last_ms: u64,
}

/// The state the list manager reads and writes.
pub trait ListStore {
    /// Keeps a post for the moderators under `code`.
    fn hold(&mut self, list: &str, code: &str, from: &str, post: &[u8]) -> std::io::Result<()>;
    /// A held post: its poster and content.
    fn held(&mut self, list: &str, code: &str) -> std::io::Result<Option<(String, Vec<u8>)>>;
    fn drop_held(&mut self, list: &str, code: &str) -> std::io::Result<()>;
    fn ask_confirm(&mut self, list: &str, code: &str, p: &Pending) -> std::io::Result<()>;
    /// Takes the pending request of `code` (it works once).
    fn take_confirm(&mut self, list: &str, code: &str) -> std::io::Result<Option<Pending>>;
    /// Keeps a distributed post for the next digest.
    fn digest_add(&mut self, list: &str, post: &[u8]) -> std::io::Result<()>;
    /// Keeps a distributed post in the list's archive.
    fn archive(&mut self, list: &str, post: &[u8]) -> std::io::Result<()>;
    /// A new code: 16 hexadecimal digits nobody can guess.
    fn new_code(&mut self) -> String;
}

/// A code from the operating system's randomness (std's hasher keys are drawn from it once
/// per thread), the clock and a counter.
pub fn random_code() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The files of every list under `<data_dir>/lists/`.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        FileStore { root: data_dir.join("lists") }
    }

    /// The directory of a list.
    pub fn dir(&self, list: &str) -> PathBuf {
        self.root.join(list.to_ascii_lowercase())
    }

    fn file(&self, list: &str, sub: &str, name: &str) -> PathBuf {
        self.dir(list).join(sub).join(name)
    }

    /// The held posts of a list, oldest first.
    pub fn held_posts(&self, list: &str) -> std::io::Result<Vec<HeldPost>> {
        let dir = self.dir(list).join("held");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(code) = name.strip_suffix(".eml").filter(|c| super::commands::is_code(c)) else { continue };
            let Ok(data) = std::fs::read(e.path()) else { continue };
            let (from, post) = split_held(&data);
            let md = e.metadata()?;
            let held_s = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            out.push(HeldPost {
                code: code.to_string(),
                from,
                subject: super::message::header(post, "Subject").unwrap_or_default(),
                size: post.len() as u64,
                held_s,
            });
        }
        out.sort_by(|a, b| (a.held_s, &a.code).cmp(&(b.held_s, &b.code)));
        Ok(out)
    }

    /// The posts waiting for the digest, oldest first, with their files.
    pub fn digest_posts(&self, list: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
        let dir = self.dir(list).join("digest");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect();
        names.sort();
        names.into_iter().map(|p| std::fs::read(&p).map(|d| (p, d))).collect()
    }

    /// Bytes of the posts waiting for the digest (from the file sizes).
    pub fn digest_bytes(&self, list: &str) -> u64 {
        let Ok(rd) = std::fs::read_dir(self.dir(list).join("digest")) else { return 0 };
        rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
    }

    pub fn digest_state(&self, list: &str) -> DigestState {
        std::fs::read(self.dir(list).join("digest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn set_digest_state(&self, list: &str, s: &DigestState) -> std::io::Result<()> {
        let data = serde_json::to_vec(s).map_err(std::io::Error::other)?;
        write_durably(&self.dir(list), "digest.json", &data)
    }

    /// Removes the files of a digest that went out.
    pub fn digest_sent(&self, files: &[PathBuf]) -> std::io::Result<()> {
        for f in files {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(dir) = files.first().and_then(|f| f.parent()) {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// A held file's poster (its `Return-Path`) and post.
fn split_held(data: &[u8]) -> (String, &[u8]) {
    let Some(rest) = data.strip_prefix(b"Return-Path: <") else { return (String::new(), data) };
    let Some(end) = rest.windows(3).position(|w| w == b">\r\n") else { return (String::new(), data) };
    (String::from_utf8_lossy(&rest[..end]).into_owned(), &rest[end + 3..])
}

/// Writes `dir/name` whole or not at all.
fn write_durably(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => path.parent().map_or(Ok(()), sync_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl ListStore for FileStore {
    fn hold(&mut self, list: &str, code: &str, from: &str, post: &[u8]) -> std::io::Result<()> {
        let mut data = Vec::with_capacity(post.len() + from.len() + 20);
        data.extend_from_slice(format!("Return-Path: <{from}>\r\n").as_bytes());
        data.extend_from_slice(post);
        write_durably(&self.dir(list).join("held"), &format!("{code}.eml"), &data)
    }

    fn held(&mut self, list: &str, code: &str) -> std::io::Result<Option<(String, Vec<u8>)>> {
        match std::fs::read(self.file(list, "held", &format!("{code}.eml"))) {
            Ok(d) => {
                let (from, post) = split_held(&d);
                Ok(Some((from, post.to_vec())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn drop_held(&mut self, list: &str, code: &str) -> std::io::Result<()> {
        remove_durably(&self.file(list, "held", &format!("{code}.eml")))
    }

    fn ask_confirm(&mut self, list: &str, code: &str, p: &Pending) -> std::io::Result<()> {
        let data = serde_json::to_vec(p).map_err(std::io::Error::other)?;
        write_durably(&self.dir(list).join("confirm"), &format!("{code}.json"), &data)
    }

    fn take_confirm(&mut self, list: &str, code: &str) -> std::io::Result<Option<Pending>> {
        let path = self.file(list, "confirm", &format!("{code}.json"));
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        remove_durably(&path)?;
        Ok(serde_json::from_slice(&data).ok())
    }

    fn digest_add(&mut self, list: &str, post: &[u8]) -> std::io::Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = format!("{:020}-{}.eml", now.as_nanos(), &random_code()[..8]);
        write_durably(&self.dir(list).join("digest"), &name, post)
    }

    fn archive(&mut self, list: &str, post: &[u8]) -> std::io::Result<()> {
        let md = crate::delivery::maildir::Maildir::open(&self.dir(list).join("archive"))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        md.deliver("", list, post).map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn new_code(&mut self) -> String {
        random_code()
    }
}

/// A [`ListStore`] in memory, for tests of the list manager.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub held: std::collections::BTreeMap<(String, String), (String, Vec<u8>)>,
    pub confirm: std::collections::BTreeMap<(String, String), Pending>,
    pub digest: Vec<(String, Vec<u8>)>,
    pub archived: Vec<(String, Vec<u8>)>,
    /// Codes handed out, in order: `000…1`, `000…2`, …
    pub codes: u64,
}

impl ListStore for MemoryStore {
    fn hold(&mut self, list: &str, code: &str, from: &str, post: &[u8]) -> std::io::Result<()> {
        self.held.insert((list.into(), code.into()), (from.into(), post.to_vec()));
        Ok(())
    }
    fn held(&mut self, list: &str, code: &str) -> std::io::Result<Option<(String, Vec<u8>)>> {
        Ok(self.held.get(&(list.into(), code.into())).cloned())
    }
    fn drop_held(&mut self, list: &str, code: &str) -> std::io::Result<()> {
        self.held.remove(&(list.into(), code.into()));
        Ok(())
    }
    fn ask_confirm(&mut self, list: &str, code: &str, p: &Pending) -> std::io::Result<()> {
        self.confirm.insert((list.into(), code.into()), p.clone());
        Ok(())
    }
    fn take_confirm(&mut self, list: &str, code: &str) -> std::io::Result<Option<Pending>> {
        Ok(self.confirm.remove(&(list.into(), code.into())))
    }
    fn digest_add(&mut self, list: &str, post: &[u8]) -> std::io::Result<()> {
        self.digest.push((list.into(), post.to_vec()));
        Ok(())
    }
    fn archive(&mut self, list: &str, post: &[u8]) -> std::io::Result<()> {
        self.archived.push((list.into(), post.to_vec()));
        Ok(())
    }
    fn new_code(&mut self) -> String {
        self.codes += 1;
        format!("{:016x}", self.codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_posts_round_trip_through_files() {
        let tmp = std::env::temp_dir().join(format!("ringmx-lists-{}", random_code()));
        let mut s = FileStore::in_data_dir(&tmp);
        let code = s.new_code();
        s.hold("dev@example.org", &code, "ann@example.net", b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        let listed = s.held_posts("dev@example.org").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].code.as_str(), listed[0].from.as_str(), listed[0].subject.as_str()),
            (code.as_str(), "ann@example.net", "hi")
        );
        let (from, post) = s.held("dev@example.org", &code).unwrap().unwrap();
        assert_eq!((from.as_str(), post.as_slice()), ("ann@example.net", &b"Subject: hi\r\n\r\nbody\r\n"[..]));
        s.drop_held("dev@example.org", &code).unwrap();
        assert!(s.held("dev@example.org", &code).unwrap().is_none());
        let p = Pending { action: "subscribe".into(), address: "bob@example.net".into(), expires_ms: 9 };
        s.ask_confirm("dev@example.org", &code, &p).unwrap();
        assert_eq!(s.take_confirm("dev@example.org", &code).unwrap(), Some(p));
        assert_eq!(s.take_confirm("dev@example.org", &code).unwrap(), None, "a code works once");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn codes_are_ours_and_differ() {
        let (a, b) = (random_code(), random_code());
        assert!(super::super::commands::is_code(&a) && a != b);
    }
}

//! Delivery into a Maildir, with Maildir++ quota accounting.
//!
//! A message is written to `tmp/<unique>`, synced, renamed into `new/`, and `new/` synced:
//! only then is it durable, and only then may the caller mark the spool. A crash before the
//! rename leaves at most a file in `tmp/`, which readers ignore; the message is delivered
//! again (a duplicate, never a loss).
//!
//! Names follow the Maildir convention, `<secs>.M<usec>P<pid>Q<n>.<host>,S=<size>`, `S=`
//! being the size on disk so that quota code (Dovecot's, Courier's and ours) need not stat
//! every file. Files are stored with LF line ends, as local delivery agents write them.
//!
//! Quota usage is kept in `maildirsize` (the Maildir++ format Dovecot and Courier use): a
//! first line `<bytes>S` with the limit, then lines `<bytes> <count>` added per delivery. A
//! missing file, one over 5120 bytes, one with another limit or with a negative total is
//! rebuilt by counting `new/` and `cur/`. Mailboxes without a quota have no `maildirsize`.
//! Two deliveries at once may both pass the check and overshoot the limit by one message, as
//! in Maildir++.

use crate::directory::QuotaView;
use crate::wire::Reply;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The Maildir++ size past which `maildirsize` is rebuilt rather than appended to.
const MAILDIRSIZE_LIMIT: u64 = 5120;

/// Tries at a unique name before giving up (a collision needs the same pid, microsecond and
/// counter, so more than one try means something else is wrong).
const NAME_TRIES: u32 = 8;

/// The `Q<n>` part of unique names: a per-process delivery counter, as the Maildir
/// convention asks (several [`Maildir`] values may deliver to one directory).
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// Errors of a Maildir delivery. [`MaildirError::is_permanent`] tells a bounce from a retry.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MaildirError {
    /// The message would take the mailbox over its quota; nothing was written.
    #[error("mailbox {root} over quota: {used} + {size} bytes > {quota}")]
    QuotaExceeded { root: PathBuf, used: u64, size: u64, quota: u64 },
    /// A file operation failed; transient (disk full, permissions being fixed, …).
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: Arc<std::io::Error> },
}

impl MaildirError {
    fn io(op: &'static str, path: &Path, e: std::io::Error) -> Self {
        MaildirError::Io { op, path: path.to_path_buf(), source: Arc::new(e) }
    }

    /// Over quota is permanent for this message (SPEC §6: an NDR); an I/O failure is
    /// retried.
    pub fn is_permanent(&self) -> bool {
        matches!(self, MaildirError::QuotaExceeded { .. })
    }

    /// The status a bounce or a reply reports.
    pub fn smtp_reply(&self) -> Reply {
        match self {
            MaildirError::QuotaExceeded { .. } => Reply::new(552, "5.2.2", "Error: mailbox full"),
            MaildirError::Io { .. } => Reply::new(451, "4.3.0", "Error: local delivery failed"),
        }
    }
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredFile {
    /// The file in `new/`.
    pub path: PathBuf,
    /// Bytes on disk (the `S=` of the name), what counts against the quota.
    pub size: u64,
}

/// Bytes and messages in a Maildir, as quota counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub messages: u64,
}

/// One Maildir: `tmp/`, `new/`, `cur/` under a root.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    /// Bytes allowed; 0 for no limit.
    quota: u64,
    /// This host's name, escaped for file names.
    host: String,
}

/// The Maildir of a mailbox: `<maildir_root>/<postoffice>/<mailbox>/Maildir`, from the
/// directory's `<postoffice>/<mailbox>`.
pub fn mailbox_path(maildir_root: &Path, maildir: &str) -> PathBuf {
    maildir_root.join(maildir).join("Maildir")
}

impl Maildir {
    /// Opens (creating what is missing) the Maildir at `root`, with the quota recorded in its
    /// `maildirsize`, if any.
    pub fn open(root: &Path) -> Result<Maildir, MaildirError> {
        for sub in ["tmp", "new", "cur"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| MaildirError::io("create", &p, e))?;
        }
        let path = root.join("maildirsize");
        let quota = match std::fs::read_to_string(&path) {
            Ok(text) => parse_quota(text.lines().next().unwrap_or("")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(MaildirError::io("read", &path, e)),
        };
        Ok(Maildir { root: root.to_path_buf(), quota, host: hostname() })
    }

    /// Sets the quota in bytes (0: none), as the directory says. No I/O: a `maildirsize`
    /// with another limit is rebuilt at the next [`Maildir::usage`] or delivery.
    pub fn with_quota(mut self, quota: u64) -> Maildir {
        self.quota = quota;
        self
    }

    /// Opens the Maildir with `quota` bytes (0: none), rewriting its `maildirsize` now when
    /// the limit changed.
    pub fn open_with_quota(root: &Path, quota: u64) -> Result<Maildir, MaildirError> {
        let md = Maildir::open(root)?;
        if md.quota == quota {
            return Ok(md);
        }
        let md = md.with_quota(quota);
        if quota == 0 {
            let p = md.root.join("maildirsize");
            std::fs::remove_file(&p).or_else(ignore_missing).map_err(|e| MaildirError::io("remove", &p, e))?;
        } else {
            md.recalculate()?;
        }
        Ok(md)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes allowed; 0 for no limit.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Current usage: from `maildirsize` when there is a quota (rebuilding it if needed), else
    /// by counting the files.
    pub fn usage(&self) -> Result<Usage, MaildirError> {
        if self.quota == 0 {
            return self.count();
        }
        let path = self.root.join("maildirsize");
        let mut text = String::new();
        let read = File::open(&path).and_then(|mut f| {
            let len = f.metadata()?.len();
            f.read_to_string(&mut text)?;
            Ok(len)
        });
        match read {
            Ok(len) if len <= MAILDIRSIZE_LIMIT => {
                let mut lines = text.lines();
                if parse_quota(lines.next().unwrap_or("")) == self.quota {
                    let mut u = (0i64, 0i64);
                    // A torn last line (no newline) is left out; the next rebuild fixes it.
                    for l in lines.take(text.matches('\n').count().saturating_sub(1)) {
                        let mut f = l.split_whitespace().map(|x| x.parse::<i64>());
                        if let (Some(Ok(b)), Some(Ok(c))) = (f.next(), f.next()) {
                            u = (u.0 + b, u.1 + c);
                        }
                    }
                    if u.0 >= 0 && u.1 >= 0 {
                        return Ok(Usage { bytes: u.0 as u64, messages: u.1 as u64 });
                    }
                }
                self.recalculate()
            }
            Ok(_) => self.recalculate(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.recalculate(),
            Err(e) => Err(MaildirError::io("read", &path, e)),
        }
    }

    /// Counts `new/` and `cur/` and rewrites `maildirsize` (via `tmp/` and a rename).
    fn recalculate(&self) -> Result<Usage, MaildirError> {
        let u = self.count()?;
        if self.quota == 0 {
            return Ok(u);
        }
        let text = format!("{}S\n{} {}\n", self.quota, u.bytes, u.messages);
        let tmp = self.root.join("tmp").join(format!("maildirsize.{}", std::process::id()));
        let path = self.root.join("maildirsize");
        std::fs::write(&tmp, text).map_err(|e| MaildirError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| MaildirError::io("rename", &path, e))?;
        Ok(u)
    }

    /// Sizes of the messages in `new/` and `cur/`, from `S=` in the names, else the files'.
    fn count(&self) -> Result<Usage, MaildirError> {
        let mut u = Usage::default();
        for sub in ["new", "cur"] {
            let dir = self.root.join(sub);
            let entries = std::fs::read_dir(&dir).map_err(|e| MaildirError::io("list", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| MaildirError::io("list", &dir, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    continue;
                }
                let size = match size_from_name(&name) {
                    Some(s) => s,
                    None => match entry.metadata() {
                        Ok(m) => m.len(),
                        // Moved or expunged by a reader meanwhile.
                        Err(_) => continue,
                    },
                };
                u.bytes += size;
                u.messages += 1;
            }
        }
        Ok(u)
    }

    /// Delivers `content` (CRLF or LF lines) with `Return-Path: <return_path>` (RFC 5321
    /// §4.4) and `Delivered-To: delivered_to` in front. Returns once the file is durable in
    /// `new/`; with a quota, refuses ([`MaildirError::QuotaExceeded`]) a message that would
    /// exceed it, writing nothing.
    pub fn deliver(
        &self,
        return_path: &str,
        delivered_to: &str,
        content: &[u8],
    ) -> Result<DeliveredFile, MaildirError> {
        let data = message_bytes(return_path, delivered_to, content);
        let size = data.len() as u64;
        if self.quota > 0 {
            let used = self.usage()?.bytes;
            if used + size > self.quota {
                return Err(MaildirError::QuotaExceeded { root: self.root.clone(), used, size, quota: self.quota });
            }
        }
        let (tmp, mut file, name) = self.create_tmp(size)?;
        let written = file.write_all(&data).and_then(|_| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(MaildirError::io("write", &tmp, e));
        }
        let new_dir = self.root.join("new");
        let path = new_dir.join(&name);
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(MaildirError::io("rename", &path, e));
        }
        File::open(&new_dir).and_then(|d| d.sync_all()).map_err(|e| MaildirError::io("fsync", &new_dir, e))?;
        if self.quota > 0 {
            self.add_usage(size)?;
        }
        Ok(DeliveredFile { path, size })
    }

    /// The first half of a batched delivery ([`commit`] is the second): checks the quota
    /// (counting `pending` bytes already staged for this Maildir in the batch) and writes the
    /// message to `tmp/` without syncing it. Nothing is visible or durable yet.
    pub fn stage(
        &self,
        return_path: &str,
        delivered_to: &str,
        content: &[u8],
        pending: u64,
    ) -> Result<Staged, MaildirError> {
        let data = message_bytes(return_path, delivered_to, content);
        let size = data.len() as u64;
        if self.quota > 0 {
            let used = self.usage()?.bytes + pending;
            if used + size > self.quota {
                return Err(MaildirError::QuotaExceeded { root: self.root.clone(), used, size, quota: self.quota });
            }
        }
        let (tmp, mut file, name) = self.create_tmp(size)?;
        if let Err(e) = file.write_all(&data) {
            let _ = std::fs::remove_file(&tmp);
            return Err(MaildirError::io("write", &tmp, e));
        }
        Ok(Staged { maildir: self.clone(), tmp, name, size })
    }

    /// Appends `<size> 1` to `maildirsize` in one write (O_APPEND), so that concurrent
    /// deliveries do not interleave within a line.
    fn add_usage(&self, size: u64) -> Result<(), MaildirError> {
        let path = self.root.join("maildirsize");
        let line = format!("{size} 1\n");
        match OpenOptions::new().append(true).open(&path) {
            Ok(mut f) => f.write_all(line.as_bytes()).map_err(|e| MaildirError::io("append", &path, e)),
            // Removed meanwhile: a rebuild counts the new message too.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.recalculate().map(|_| ()),
            Err(e) => Err(MaildirError::io("open", &path, e)),
        }
    }

    /// Creates `tmp/<unique>`; returns its path, the open file and the name.
    fn create_tmp(&self, size: u64) -> Result<(PathBuf, File, String), MaildirError> {
        let mut last = None;
        for _ in 0..NAME_TRIES {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let q = DELIVERIES.fetch_add(1, Ordering::Relaxed);
            let (secs, usec, pid, host) = (now.as_secs(), now.subsec_micros(), std::process::id(), &self.host);
            let name = format!("{secs}.M{usec}P{pid}Q{q}.{host},S={size}");
            let tmp = self.root.join("tmp").join(&name);
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => return Ok((tmp, f, name)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
                Err(e) => return Err(MaildirError::io("create", &tmp, e)),
            }
        }
        let (tmp, e) = last.expect("NAME_TRIES > 0");
        Err(MaildirError::io("create", &tmp, e))
    }
}

/// A message written to a Maildir's `tmp/` by [`Maildir::stage`], not yet durable.
#[derive(Debug)]
pub struct Staged {
    maildir: Maildir,
    tmp: PathBuf,
    name: String,
    size: u64,
}

impl Staged {
    /// Bytes it will take against the quota.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The second half of a batched delivery: one `syncfs(2)` per file system makes every staged
/// file durable at once (instead of one fsync per file), each is renamed into `new/`, and a
/// second `syncfs` makes the renames durable (instead of one fsync per `new/` directory).
/// Only when this returns `Ok` for a message may the caller mark it delivered.
pub fn commit(staged: Vec<Staged>) -> Vec<Result<DeliveredFile, MaildirError>> {
    // One descriptor per file system the batch touches (Maildirs on one volume share it).
    let mut roots: Vec<&Path> = Vec::new();
    for s in &staged {
        if !roots.contains(&s.maildir.root.as_path()) {
            roots.push(&s.maildir.root);
        }
    }
    let sync_all = |_: &[Staged], what: &'static str| -> Result<(), MaildirError> {
        let mut devices = Vec::new();
        for root in &roots {
            let f = File::open(root).map_err(|e| MaildirError::io("open", root, e))?;
            let dev =
                std::os::unix::fs::MetadataExt::dev(&f.metadata().map_err(|e| MaildirError::io("stat", root, e))?);
            if devices.contains(&dev) {
                continue;
            }
            devices.push(dev);
            // SAFETY: syncfs takes any descriptor on the file system.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
                return Err(MaildirError::io(what, root, std::io::Error::last_os_error()));
            }
        }
        Ok(())
    };
    if let Err(e) = sync_all(&staged, "syncfs") {
        let text = e.to_string();
        return staged
            .into_iter()
            .map(|s| {
                let _ = std::fs::remove_file(&s.tmp);
                Err(MaildirError::io("syncfs", &s.tmp, std::io::Error::other(text.clone())))
            })
            .collect();
    }
    let mut out: Vec<Result<DeliveredFile, MaildirError>> = staged
        .iter()
        .map(|s| {
            let path = s.maildir.root.join("new").join(&s.name);
            match std::fs::rename(&s.tmp, &path) {
                Ok(()) => Ok(DeliveredFile { path, size: s.size }),
                Err(e) => {
                    let _ = std::fs::remove_file(&s.tmp);
                    Err(MaildirError::io("rename", &path, e))
                }
            }
        })
        .collect();
    if let Err(e) = sync_all(&staged, "syncfs") {
        let text = e.to_string();
        for r in out.iter_mut().filter(|r| r.is_ok()) {
            // Renamed but not known durable: retried, which may deliver a duplicate.
            *r = Err(MaildirError::io("syncfs", Path::new(""), std::io::Error::other(text.clone())));
        }
        return out;
    }
    for (s, r) in staged.iter().zip(&mut out) {
        if r.is_ok()
            && s.maildir.quota > 0
            && let Err(e) = s.maildir.add_usage(s.size)
        {
            log::warn!("maildir {}: quota accounting: {e}", s.maildir.root.display());
        }
    }
    out
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

/// The limit of a Maildir++ quota line (`<bytes>S[,<count>C]`); 0 when it has none.
fn parse_quota(line: &str) -> u64 {
    line.split(',').find_map(|p| p.trim().strip_suffix('S')?.parse().ok()).unwrap_or(0)
}

/// `S=<size>` from a Maildir file name (before any `:2,` flags).
fn size_from_name(name: &str) -> Option<u64> {
    let base = name.split(':').next()?;
    base.split(',').find_map(|p| p.strip_prefix("S=")?.parse().ok())
}

/// The headers then the content, CRLF turned into LF; header values lose any CR or LF so
/// that an address cannot add a header.
fn message_bytes(return_path: &str, delivered_to: &str, content: &[u8]) -> Vec<u8> {
    let clean = |s: &str| s.chars().filter(|&c| c != '\r' && c != '\n').collect::<String>();
    let mut out = Vec::with_capacity(content.len() + 64 + return_path.len() + delivered_to.len());
    let head = format!("Return-Path: <{}>\nDelivered-To: {}\n", clean(return_path), clean(delivered_to));
    out.extend_from_slice(head.as_bytes());
    let mut rest = content;
    while let Some(i) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..i]);
        out.push(b'\n');
        rest = &rest[i + 2..];
    }
    out.extend_from_slice(rest);
    out
}

/// This host's name with `/`, `:` and `,` escaped as the Maildir convention asks.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = if ok && end > 0 { String::from_utf8_lossy(&buf[..end]).into_owned() } else { "localhost".into() };
    name.replace('/', "\\057").replace(':', "\\072").replace(',', "\\054")
}

/// Mailbox usage in memory, for the RCPT check ([`QuotaView`]): the router records each
/// mailbox's usage after a delivery (or at start), and the sessions read it.
#[derive(Debug, Default)]
pub struct UsageCache {
    bytes: RwLock<HashMap<String, u64>>,
}

impl UsageCache {
    pub fn new() -> Self {
        UsageCache::default()
    }

    /// Records the usage of the mailbox `maildir` (`<postoffice>/<mailbox>`).
    pub fn set(&self, maildir: &str, bytes: u64) {
        let mut map = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(maildir) {
            Some(b) => *b = bytes,
            None => {
                map.insert(maildir.to_string(), bytes);
            }
        }
    }

    /// Forgets a mailbox (e.g. removed from the directory).
    pub fn remove(&self, maildir: &str) {
        self.bytes.write().unwrap_or_else(|e| e.into_inner()).remove(maildir);
    }
}

impl QuotaView for UsageCache {
    fn usage_bytes(&self, maildir: &str) -> Option<u64> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).get(maildir).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quota_lines() {
        assert_eq!(size_from_name("1700000000.M12P3Q4.mx,S=1234"), Some(1234));
        assert_eq!(size_from_name("1700000000.M12P3Q4.mx,S=1234,W=1260:2,S"), Some(1234));
        assert_eq!(size_from_name("1700000000.M12P3Q4.mx:2,S"), None);
        assert_eq!(parse_quota("1000000S"), 1_000_000);
        assert_eq!(parse_quota("1000S,20C"), 1000);
        assert_eq!(parse_quota("20C"), 0);
        assert_eq!(parse_quota(""), 0);
    }

    #[test]
    fn message_bytes_headers_and_line_ends() {
        let got = message_bytes("a@x.test", "b@y.test", b"Subject: hi\r\n\r\nbody\r\nlone\rcr\r\n");
        assert_eq!(got, b"Return-Path: <a@x.test>\nDelivered-To: b@y.test\nSubject: hi\n\nbody\nlone\rcr\n");
        let got = message_bytes("", "b@y.test\r\nX-Evil: 1", b"x");
        assert_eq!(got, b"Return-Path: <>\nDelivered-To: b@y.testX-Evil: 1\nx");
    }

    /// Staged copies are invisible until the commit; the quota counts what the batch
    /// already staged.
    #[test]
    fn staged_batch_commit() {
        let d = tempfile::tempdir().unwrap();
        let m = Maildir::open(&d.path().join("Maildir")).unwrap().with_quota(600);
        let a = m.stage("s@r.example", "u@example.net", &[b'a'; 200], 0).unwrap();
        let b = m.stage("s@r.example", "u@example.net", &[b'b'; 200], a.size()).unwrap();
        let over = m.stage("s@r.example", "u@example.net", &[b'c'; 200], a.size() + b.size()).unwrap_err();
        assert!(over.is_permanent());
        assert_eq!(std::fs::read_dir(d.path().join("Maildir/new")).unwrap().count(), 0);
        let done = commit(vec![a, b]);
        assert!(done.iter().all(|r| r.is_ok()));
        assert_eq!(std::fs::read_dir(d.path().join("Maildir/new")).unwrap().count(), 2);
        assert_eq!(std::fs::read_dir(d.path().join("Maildir/tmp")).unwrap().count(), 0);
        assert_eq!(m.usage().unwrap().messages, 2);
    }
}

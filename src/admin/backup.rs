//! `ringmx backup DIR` and `ringmx restore DIR`.
//!
//! A backup holds the configuration file (when there is one), the directory, the bans and
//! the auto-reply state, and the spool: every segment with records, the shards' first and
//! the control thread's (the delivery marks) last. It can be taken while the server runs:
//! a segment being written is copied as far as it was written, and recovery stops at a
//! record that was cut short, as after a crash. So every message acknowledged before the
//! backup began is in it; its marks may be older than the message's last attempt, so a
//! restored server may deliver a copy again (at least once, never lost). Spare segments
//! (written through with zeros, no record yet) are not copied.
//!
//! Restore goes onto a stopped server (it takes the spool lock) whose spool holds no
//! segment, then syncs what it wrote.

use crate::config::Config;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a backup or a restore copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: usize,
    pub bytes: u64,
    pub segments: usize,
}

/// Files of the data directory that a backup takes besides the spool.
const DATA_FILES: [&str; 2] = ["bans", "autoreply.json"];

fn is_spare(path: &Path) -> std::io::Result<bool> {
    let mut f = fs::File::open(path)?;
    let mut head = [0u8; 4096];
    let n = f.read(&mut head)?;
    Ok(head[..n].iter().all(|&b| b == 0))
}

fn copy(from: &Path, to: &Path, c: &mut Copied) -> std::io::Result<()> {
    if let Some(d) = to.parent() {
        fs::create_dir_all(d)?;
    }
    let n = fs::copy(from, to)?;
    fs::File::open(to)?.sync_all()?;
    c.files += 1;
    c.bytes += n;
    Ok(())
}

fn sync_dir(d: &Path) -> std::io::Result<()> {
    fs::File::open(d)?.sync_all()
}

/// The spool's shard directories, data shards first and the control thread's last.
fn shard_dirs(spool: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<(u16, PathBuf)> = Vec::new();
    let Ok(rd) = fs::read_dir(spool) else { return Ok(v.into_iter().map(|(_, p)| p).collect()) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir()
            && let Ok(n) = name.parse::<u16>()
        {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// Copies the segments with records from `spool` into `to` (same layout).
fn copy_spool(spool: &Path, to: &Path, c: &mut Copied) -> std::io::Result<()> {
    for dir in shard_dirs(spool)? {
        let shard = dir.file_name().unwrap_or_default().to_owned();
        let mut segs: Vec<PathBuf> = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        for s in segs {
            // A segment retired meanwhile is simply not there any more.
            match is_spare(&s) {
                Ok(true) | Err(_) => continue,
                Ok(false) => {}
            }
            let dest = to.join(&shard).join(s.file_name().unwrap_or_default());
            match copy(&s, &dest, c) {
                Ok(()) => c.segments += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if to.join(&shard).exists() {
            sync_dir(&to.join(&shard))?;
        }
    }
    Ok(())
}

/// `backup`: `cfg` (read from `config_file`, if any) into `dest`, which must not exist or
/// be empty.
pub fn backup(cfg: &Config, config_file: Option<&Path>, dest: &Path) -> std::io::Result<Copied> {
    if dest.exists() && fs::read_dir(dest)?.next().is_some() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("{} is not empty", dest.display())));
    }
    fs::create_dir_all(dest)?;
    let mut c = Copied::default();
    if let Some(f) = config_file {
        copy(f, &dest.join("ringmx.toml"), &mut c)?;
    }
    let data = &cfg.data_dir;
    let directory = data.join("directory/directory.json");
    if directory.exists() {
        copy(&directory, &dest.join("data/directory/directory.json"), &mut c)?;
    }
    for f in DATA_FILES {
        if data.join(f).exists() {
            copy(&data.join(f), &dest.join("data").join(f), &mut c)?;
        }
    }
    copy_spool(&cfg.spool_dir(), &dest.join("data/spool"), &mut c)?;
    sync_dir(dest)?;
    Ok(c)
}

/// `restore`: the backup in `src` into `cfg`'s data directory, the server stopped and its
/// spool empty.
pub fn restore(cfg: &Config, src: &Path) -> Result<Copied, String> {
    let spool = cfg.spool_dir();
    let _lock = crate::spool::lock_spool(&spool)
        .map_err(|e| format!("locking {}: {e}", spool.display()))?
        .ok_or_else(|| format!("a server runs on {}: stop it first", spool.display()))?;
    let has_segments = shard_dirs(&spool).map_err(|e| e.to_string())?.iter().any(|d| {
        fs::read_dir(d).is_ok_and(|mut r| r.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))))
    });
    if has_segments {
        return Err(format!("{} already holds a spool: restore goes into an empty one", spool.display()));
    }
    let from = src.join("data");
    if !from.join("spool").is_dir() {
        return Err(format!("{} is not a backup (no data/spool)", src.display()));
    }
    let mut c = Copied::default();
    let io = |e: std::io::Error| e.to_string();
    let directory = from.join("directory/directory.json");
    if directory.exists() {
        copy(&directory, &cfg.data_dir.join("directory/directory.json"), &mut c).map_err(io)?;
    }
    for f in DATA_FILES {
        if from.join(f).exists() {
            copy(&from.join(f), &cfg.data_dir.join(f), &mut c).map_err(io)?;
        }
    }
    copy_spool(&from.join("spool"), &spool, &mut c).map_err(io)?;
    sync_dir(&spool).map_err(io)?;
    Ok(c)
}

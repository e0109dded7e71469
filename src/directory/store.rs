//! Where the directory is kept: the [`DirectoryStore`] trait, and [`JsonFileStore`], one
//! human-readable JSON file that needs no service.
//!
//! A save never leaves a half-written file behind: the new contents go to a temporary file
//! in the same directory, which is synced, renamed over the old one, and the directory
//! synced, so that a crash leaves either the old file or the new one.

use super::DirectoryError;
use super::model::DirectoryData;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A place the directory is loaded from and saved to. Another backend (a shared database
/// for several nodes) implements the same two calls.
pub trait DirectoryStore: Send + Sync {
    /// The stored directory; an empty one when nothing was ever saved.
    fn load(&self) -> Result<DirectoryData, DirectoryError>;
    /// Replaces the stored directory, atomically.
    fn save(&self, data: &DirectoryData) -> Result<(), DirectoryError>;
    /// A stamp that changes whenever the stored directory does (for reloading a running
    /// server); `None` when the store cannot tell.
    fn stamp(&self) -> Option<u64> {
        None
    }
}

/// The directory as one JSON file, by default `<data_dir>/directory/directory.json`.
#[derive(Debug, Clone)]
pub struct JsonFileStore {
    path: PathBuf,
}

/// An exclusive lock on a [`JsonFileStore`] held by a writer between its load and its save,
/// so that two admin commands at once do not lose each other's change. Released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl JsonFileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonFileStore { path: path.into() }
    }

    /// The store of a data directory: `<data_dir>/directory/directory.json`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        JsonFileStore::new(data_dir.join("directory").join("directory.json"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Takes the writers' lock (`directory.lock` next to the file), waiting for another
    /// writer to finish. Readers (the server) do not take it: they only ever see whole files.
    pub fn lock(&self) -> Result<StoreLock, DirectoryError> {
        let dir = self.dir();
        std::fs::create_dir_all(dir).map_err(|e| DirectoryError::io("create", dir, e))?;
        let path = dir.join("directory.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DirectoryError::io("open", &path, e))?;
        // SAFETY: flock on a descriptor we own; it is released when `file` is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(DirectoryError::io("lock", &path, std::io::Error::last_os_error()));
        }
        Ok(StoreLock { _file: file })
    }
}

impl DirectoryStore for JsonFileStore {
    fn load(&self) -> Result<DirectoryData, DirectoryError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirectoryData::default()),
            Err(e) => return Err(DirectoryError::io("read", &self.path, e)),
        };
        serde_json::from_str(&text)
            .map_err(|e| DirectoryError::Corrupt { path: self.path.clone(), what: e.to_string() })
    }

    /// The file's inode, size and modification time: a save renames a new file over it.
    fn stamp(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(
            m.ino().rotate_left(40)
                ^ m.size().rotate_left(20)
                ^ (m.mtime() as u64).wrapping_mul(1_000_000_007)
                ^ m.mtime_nsec() as u64,
        )
    }

    fn save(&self, data: &DirectoryData) -> Result<(), DirectoryError> {
        let dir = self.dir();
        std::fs::create_dir_all(dir).map_err(|e| DirectoryError::io("create", dir, e))?;
        let mut text = serde_json::to_vec_pretty(data)
            .map_err(|e| DirectoryError::Corrupt { path: self.path.clone(), what: e.to_string() })?;
        text.push(b'\n');
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("directory.json");
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(DirectoryError::io("write", &tmp, e));
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            DirectoryError::io("rename", &self.path, e)
        })?;
        sync_dir(dir).map_err(|e| DirectoryError::io("fsync", dir, e))
    }
}

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

//! [`DirectoryHandle`]: the current directory, swapped whole on reload.

use super::store::DirectoryStore;
use super::{Directory, DirectoryError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The directory in use and the store it comes from. Readers take the current
/// `Arc<Directory>` once per connection or message ([`DirectoryHandle::current`]) and keep
/// using it; a reload replaces it for later readers without disturbing them.
pub struct DirectoryHandle {
    current: RwLock<Arc<Directory>>,
    store: Box<dyn DirectoryStore>,
    /// The store's stamp when it was last loaded (0: unknown).
    stamp: AtomicU64,
}

impl std::fmt::Debug for DirectoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryHandle").finish_non_exhaustive()
    }
}

impl DirectoryHandle {
    /// Loads and indexes the store.
    pub fn open(store: Box<dyn DirectoryStore>) -> Result<Self, DirectoryError> {
        let stamp = store.stamp().unwrap_or(0);
        let dir = Directory::build(store.load()?)?;
        Ok(DirectoryHandle { current: RwLock::new(Arc::new(dir)), store, stamp: AtomicU64::new(stamp) })
    }

    /// The directory in use.
    pub fn current(&self) -> Arc<Directory> {
        // A poisoned lock still holds a whole Arc: a writer cannot leave it half-changed.
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the store again and, if it is valid, makes it current. On error the directory
    /// in use stays.
    pub fn reload(&self) -> Result<Arc<Directory>, DirectoryError> {
        let stamp = self.store.stamp().unwrap_or(0);
        self.stamp.store(stamp, Ordering::Relaxed);
        let dir = Arc::new(Directory::build(self.store.load()?)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = dir.clone();
        Ok(dir)
    }

    /// Reloads when the store changed since the last load (`ringmx directory …` saved it);
    /// `None` when it did not. A bad store is reported once per change.
    pub fn reload_if_changed(&self) -> Option<Result<Arc<Directory>, DirectoryError>> {
        let stamp = self.store.stamp()?;
        if stamp == self.stamp.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.reload())
    }
}

//! The directory: postoffices, domains, mailboxes, groups and blocked addresses (SPEC §6).
//!
//! The directory is data kept apart from the configuration: the admin commands change it
//! while the server runs, and the server reloads it. It is read far more often (at every
//! RCPT) than it is written, so it lives as an immutable in-memory index, swapped whole on
//! reload.
//!
//! # Layout
//!
//! - [`model`]: the stored records ([`DirectoryData`], [`Postoffice`], [`Domain`], [`Mailbox`],
//!   [`Group`]) as serde types, and the address and name rules.
//! - [`index`]: [`Directory`], the validated in-memory index, and the RCPT-time lookup
//!   [`Directory::check_recipient`] with its [`RcptVerdict`] and [`Refusal`] replies.
//! - [`expand`]: [`Directory::expand`], recipient → final delivery targets for the router
//!   (redirects, groups, catch-alls, smart hosts), loops detected.
//! - [`store`]: the [`DirectoryStore`] trait and its first backend, one JSON file written
//!   atomically ([`JsonFileStore`]).
//! - [`handle`]: [`DirectoryHandle`], the current `Arc<Directory>` and its reload.
//!
//! Lookups do no I/O and, on the common path, allocate nothing: keys are lower case and the
//! looked-up address is lower-cased into a stack buffer.

pub mod expand;
pub mod handle;
pub mod index;
pub mod model;
pub mod store;
#[cfg(test)]
mod tests;

pub use expand::{Destination, ExpandProblem, Expansion, Target};
pub use handle::DirectoryHandle;
pub use index::{Directory, NoUsage, PostmasterRoute, QuotaView, RcptTarget, RcptVerdict, Refusal, may_post};
pub use model::{AutoResponder, DirectoryData, Domain, Group, List, ListRole, Mailbox, Member, Postoffice};
pub use store::{DirectoryStore, JsonFileStore, StoreLock};

use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the directory: a record that breaks a rule, or a store that cannot be read or
/// written.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// An address that is not `local@domain` (or is too long, RFC 5321 §4.5.3.1.3).
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// A postoffice or mailbox name that cannot name a directory on disk.
    #[error("invalid name {0:?}: use letters, digits, '.', '-', '_' or '+', not starting with '.'")]
    InvalidName(String),
    /// A domain name that is not a host name.
    #[error("invalid domain {0:?}")]
    InvalidDomain(String),
    /// A smart host that is not `host:port`.
    #[error("invalid smart host {0:?}: expected HOST:PORT")]
    InvalidSmartHost(String),
    /// A record names a postoffice that does not exist.
    #[error("unknown postoffice {0:?}")]
    UnknownPostoffice(String),
    /// An address or record names a domain that is not in the directory.
    #[error("unknown domain {0:?}: add it first with `ringmx directory domain add`")]
    UnknownDomain(String),
    /// No mailbox has this address.
    #[error("no mailbox with address {0:?}")]
    UnknownMailbox(String),
    /// No group has this address.
    #[error("no group with address {0:?}")]
    UnknownGroup(String),
    /// No list has this address.
    #[error("no list with address {0:?}")]
    UnknownList(String),
    /// A list's settings that do not go together.
    #[error("list {0}: {1}")]
    InvalidList(String, String),
    /// The address already belongs to a mailbox or group.
    #[error("address {0:?} is already in use")]
    DuplicateAddress(String),
    /// A postoffice of this name exists.
    #[error("postoffice {0:?} already exists")]
    DuplicatePostoffice(String),
    /// A domain of this name exists.
    #[error("domain {0:?} already exists")]
    DuplicateDomain(String),
    /// A mailbox of this name exists in the postoffice.
    #[error("mailbox {0:?} already exists")]
    DuplicateMailbox(String),
    /// A mailbox address on a domain of another postoffice.
    #[error("address {address:?} is on a domain of postoffice {domain_postoffice:?}, not {postoffice:?}")]
    WrongPostoffice { address: String, postoffice: String, domain_postoffice: String },
    /// Removing this would leave records pointing at nothing.
    #[error("{0} is still in use: {1}")]
    InUse(String, String),
    /// Reading or writing the store failed.
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: Arc<std::io::Error> },
    /// The store's contents do not parse.
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

impl DirectoryError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, e: std::io::Error) -> Self {
        DirectoryError::Io { op, path: path.to_path_buf(), source: Arc::new(e) }
    }

    /// True when the error is the operator's (a bad name, an unknown or duplicate record),
    /// false when the store itself failed.
    pub fn is_usage(&self) -> bool {
        !matches!(self, DirectoryError::Io { .. } | DirectoryError::Corrupt { .. })
    }
}

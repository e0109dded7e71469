//! What the queue manager asks its driver to do ([`Action`]) and what the driver reports
//! back ([`Outcome`]). The manager decides; the driver (rt/control/) reads the spool,
//! writes Maildirs, talks to servers and runs programs, then feeds the results back in.

use crate::delivery::client::{DsnParams, Response};
use crate::delivery::dsn::RecipientReport;
pub use crate::queue::outcome::RcptOutcome;
use crate::routing::Route;
use crate::spool::{Envelope, Location, Mark, NewMessage, QueueId};
use std::path::PathBuf;
use std::sync::Arc;

/// Where a message's record is in the spool: segment and offset, packed in 9 bytes of
/// 1-byte alignment (the queue keeps one per queued message, beside its own small fields).
/// Segments are at most 4 GiB (`spool.segment_size`) and their sequences below 2^32; a
/// record's length is in its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
pub struct At {
    seq: u32,
    offset: u32,
    shard: u8,
}

impl At {
    pub fn new(shard: u8, l: Location) -> Self {
        At::of_record(shard, l.seq, l.record_offset)
    }

    pub fn of_record(shard: u8, seq: u64, offset: u64) -> Self {
        debug_assert!(seq <= u32::MAX as u64 && offset <= u32::MAX as u64);
        At { seq: seq as u32, offset: offset as u32, shard }
    }

    pub fn shard(&self) -> u8 {
        self.shard
    }

    pub fn seq(&self) -> u64 {
        self.seq as u64
    }

    /// The record's first byte in its segment.
    pub fn offset(&self) -> u64 {
        self.offset as u64
    }
}

/// One thing for the driver to do.
#[derive(Debug)]
pub enum Action {
    /// Read a message's record (envelope and content): it is due for delivery, or an
    /// operator bounced it. Answer with [`super::manager::QueueManager::handle_message`].
    ReadMessage { id: QueueId, at: At },
    /// Send a message to the recipients that share a route (the delivery runtime).
    SubmitRemote(RemoteJob),
    /// Write one copy into a Maildir's `tmp/`. Copies of a turn are committed together;
    /// each result goes back as [`Outcome::Maildir`].
    StageMaildir(MaildirCopy),
    /// Hand copies to the LMTP server (the delivery runtime); [`Outcome::Lmtp`].
    DeliverLmtp(LmtpBatch),
    /// Append a recipient's (or the message's) state to the control log; the driver makes
    /// the marks of a turn durable in one sync, with the messages generated in that turn.
    AppendMark(Mark),
    /// Append a message of our own to the control log; once durable it comes back through
    /// [`super::manager::QueueManager::handle_accepted`].
    Generate(Generate),
    /// Keep a report that cannot be sent (its message came from the null sender) in the
    /// bad-mail folder.
    KeepBadmail { id: QueueId, content: Arc<[u8]> },
    /// Run a mailbox's delivery-event program on the file just delivered.
    RunEvent { program: String, postoffice: String, mailbox: String, file: PathBuf },
    /// The auto-responders' memory changed: save it
    /// ([`super::manager::QueueManager::replies`]).
    SaveReplies,
    /// Hand a message to the list manager (a post, a command, a bounce, mail to the owners);
    /// [`Outcome::List`].
    ListMail(ListJob),
}

/// A message for one of a list's addresses.
#[derive(Debug, Clone)]
pub struct ListJob {
    pub id: QueueId,
    /// Which copy of the message's attempt (for the outcome).
    pub copy: u16,
    /// The list's posting address.
    pub list: String,
    pub role: crate::directory::ListRole,
    /// The envelope sender.
    pub from: String,
    pub content: Arc<[u8]>,
}

/// A message the list manager wants sent (a post's distribution, a reply to a command, a
/// notice): the queue manager gives it an id and queues it in the same sync as the marks
/// of the message that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The reverse path (empty: the null sender).
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
    /// For the activity log: `list`, `list-notice`, `list-digest`.
    pub kind: &'static str,
}

/// A message the manager generates.
#[derive(Debug)]
pub enum Generate {
    /// A delivery status notification (RFC 3464) about `original`, built by the driver
    /// from its content ([`crate::delivery::dsn::build`]; nothing when no recipient's
    /// NOTIFY asks for one).
    Dsn { id: QueueId, original: Box<Envelope>, content: Arc<[u8]>, reports: Vec<RecipientReport>, now_ms: u64 },
    /// A whole message: an automatic reply, or a copy forwarded by a redirect.
    Message(NewMessage),
}

/// One message to send to the recipients that share `route`.
#[derive(Debug)]
pub struct RemoteJob {
    pub id: QueueId,
    pub from: String,
    /// Each recipient in a transaction of its own, from `from` with the recipient encoded
    /// in it (VERP: `bounces+local=host@domain`), so that a bounce names it.
    pub verp: bool,
    /// A list's distribution with one-click unsubscription: each recipient's copy gets its
    /// own link ([`crate::lists::OneClick::personalize`]); the list's address.
    pub personal: Option<(Arc<crate::lists::OneClick>, String)>,
    /// Recipient index in the envelope, and address.
    pub rcpts: Vec<(u16, String)>,
    pub content: Arc<[u8]>,
    pub smtputf8: bool,
    /// RFC 3461 parameters (NOTIFY/ORCPT in the order of `rcpts`) and the RFC 4954 §5
    /// submitter, relayed to next hops that take them.
    pub dsn: DsnParams,
    pub auth: Option<String>,
    pub route: Route,
    /// Seed for the order of equal-preference MX hosts.
    pub seed: u64,
}

/// The answer to a [`RemoteJob`].
#[derive(Debug)]
pub struct RemoteOutcome {
    pub id: QueueId,
    /// The host that answered last (for `Remote-MTA`), if any did.
    pub remote_mta: Option<String>,
    /// That host offers DSN (RFC 3461): it reports success itself if asked.
    pub peer_dsn: bool,
    pub results: Vec<(u16, RcptOutcome)>,
}

/// One copy for a Maildir: `maildir` is `<postoffice>/<mailbox>` under the Maildir root.
#[derive(Debug, Clone)]
pub struct MaildirCopy {
    pub id: QueueId,
    /// Which copy of the message's attempt (for the outcome).
    pub copy: u16,
    pub maildir: String,
    /// The mailbox's quota in bytes, 0 for none.
    pub quota: u64,
    pub from: String,
    pub delivered_to: String,
    pub body: Arc<[u8]>,
}

/// One LMTP transaction (RFC 2033).
#[derive(Debug, Clone)]
pub struct LmtpBatch {
    pub id: QueueId,
    /// Which batch of the message's attempt (for the outcome).
    pub batch: u16,
    pub from: String,
    pub rcpts: Vec<String>,
    pub body: Arc<[u8]>,
}

/// A local copy that did not make it: the reply the sender sees, and whether it is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFailure {
    pub permanent: bool,
    pub reply: Response,
}

/// What the driver reports back about an action.
#[derive(Debug)]
pub enum Outcome {
    Remote(RemoteOutcome),
    /// A staged copy committed (the file it became) or not.
    Maildir {
        id: QueueId,
        copy: u16,
        result: Result<PathBuf, LocalFailure>,
    },
    /// An LMTP transaction: one result per recipient, or the server could not be reached
    /// (every recipient of the batch deferred with that reason).
    Lmtp {
        id: QueueId,
        batch: u16,
        result: Result<Vec<Result<(), LocalFailure>>, String>,
    },
    /// The list manager took the message (and wants these messages sent), or refused it.
    List {
        id: QueueId,
        copy: u16,
        result: Result<Vec<Draft>, LocalFailure>,
    },
}

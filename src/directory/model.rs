//! The stored records and the rules for names and addresses.
//!
//! Addresses, domains and names are kept in lower case: domains compare without regard to
//! case (RFC 5321 §2.4), and although a local part may in principle be case-sensitive, no
//! mailbox here is told apart from another by case alone.

use super::DirectoryError;
use serde::{Deserialize, Serialize};

/// The format version written in the store; a store from a newer version is refused.
pub const FORMAT_VERSION: u32 = 1;

/// Longest address accepted: RFC 5321 §4.5.3.1.3 limits a path to 256 octets with its angle
/// brackets.
pub const MAX_ADDRESS: usize = 254;

/// Everything the directory stores. This is what a [`super::DirectoryStore`] loads and saves;
/// [`super::Directory`] is the index built from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryData {
    /// [`FORMAT_VERSION`] when written; lets a later version convert an older file.
    #[serde(default = "format_version")]
    pub version: u32,
    /// The postoffice whose mailboxes may log in with a bare mailbox name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_postoffice: Option<String>,
    #[serde(default)]
    pub postoffices: Vec<Postoffice>,
    #[serde(default)]
    pub domains: Vec<Domain>,
    #[serde(default)]
    pub mailboxes: Vec<Mailbox>,
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Recipient addresses answered 550 5.1.1 as if they did not exist (SPEC §5).
    #[serde(default)]
    pub blocked: Vec<String>,
    /// Mailing lists ([`List`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<List>,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

/// A postoffice: holds domains and mailboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postoffice {
    /// Lower case; also the directory of its mailboxes under the Maildir root.
    pub name: String,
    /// Mail to this postoffice only from authenticated connections (internal-only
    /// postoffices, SPEC §5): 530 5.7.0 otherwise.
    #[serde(default)]
    pub require_auth_inbound: bool,
    /// What `mailbox add` gives a new mailbox of this postoffice (SPEC §6).
    #[serde(default, skip_serializing_if = "MailboxDefaults::is_empty")]
    pub mailbox_defaults: MailboxDefaults,
}

/// A postoffice's defaults for its new mailboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxDefaults {
    /// Quota when `mailbox add` gives none; 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quota_bytes: u64,
    /// The new mailbox also gets `name@` every other domain of the postoffice.
    #[serde(default, skip_serializing_if = "is_false")]
    pub address_every_domain: bool,
    /// A message placed in the new mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome_body: Option<String>,
}

impl MailboxDefaults {
    pub fn is_empty(&self) -> bool {
        *self == MailboxDefaults::default()
    }
}

impl Postoffice {
    pub fn new(name: String, require_auth_inbound: bool) -> Self {
        Postoffice { name, require_auth_inbound, mailbox_defaults: MailboxDefaults::default() }
    }
}

/// A domain whose mail is accepted here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    /// Lower case.
    pub name: String,
    /// The postoffice whose mailboxes the domain's addresses name.
    pub postoffice: String,
    /// A disabled domain stays local (no relaying for it) but refuses its mail: 550 5.2.1.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where abuse reports go (`abuse@`), if not to a mailbox of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abuse: Option<String>,
    /// Where `postmaster@` goes, if not to a mailbox of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postmaster: Option<String>,
    /// Address that receives mail for unknown local parts, when catch-alls are enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_all: Option<String>,
    /// `host:port` to relay all of this domain's mail to (e.g. as its backup MX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_host: Option<String>,
    /// Sender domains whose mail this domain refuses (550 5.7.1), lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sender_blacklist: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A mailbox: a Maildir under `<postoffice>/<name>` and the addresses that reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub postoffice: String,
    /// Lower case; unique in its postoffice; the directory of its Maildir.
    pub name: String,
    /// Argon2 hash in PHC string format; `None`: no login possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Bytes of mail the mailbox may hold; 0 for no limit.
    #[serde(default)]
    pub quota_bytes: u64,
    /// A disabled mailbox refuses mail (550 5.2.1) and logins.
    #[serde(default)]
    pub disabled: bool,
    /// Full addresses, lower case, each on a domain of the mailbox's postoffice.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Addresses that mail to this mailbox is sent on to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect: Vec<String>,
    /// With a redirect: also deliver a copy here.
    #[serde(default)]
    pub redirect_keep_copy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoresponder: Option<AutoResponder>,
    /// Program run after each delivery to this mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_event: Option<String>,
}

/// An automatic reply (RFC 3834); never sent to bulk, list or auto-submitted mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoResponder {
    pub subject: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// A group: an address that expands to its members (which may be groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Lower case, on a local domain.
    pub address: String,
    /// Full addresses, local or remote.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A mailing list (SPEC §6 "Lists"): `name@domain` takes posts; `name-request@domain`
/// takes commands (help, subscribe, unsubscribe, confirm, approve, reject);
/// `name-owner@domain` reaches the owners; `name-bounces@domain` (with VERP,
/// `name-bounces+member=host@domain`) takes the bounces of its distribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// Lower case, on a hosted domain.
    pub address: String,
    #[serde(default)]
    pub description: String,
    /// Told about subscriptions, bounces that disable a member, and list errors; reached at
    /// `name-owner@`.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Approve or reject held posts; with `posting = "moderators"`, the only posters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moderators: Vec<String>,
    /// A disabled list refuses posts (550 5.2.1 at RCPT); its commands still work.
    #[serde(default)]
    pub disabled: bool,
    /// Answer `help` (with `help_text` and the commands).
    #[serde(default = "yes")]
    pub help: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help_text: Option<String>,
    /// The From of the list's own messages (help, confirmations, notices) and of posts
    /// whose From is rewritten.
    #[serde(default)]
    pub send_from: SendFrom,
    /// Posts are held until a moderator approves them.
    #[serde(default)]
    pub moderated: bool,
    #[serde(default)]
    pub subscription: Subscription,
    /// `unsubscribe` by mail needs a confirmation code as `subscribe` does.
    #[serde(default)]
    pub unsubscribe_confirm: bool,
    #[serde(default)]
    pub posting: Posting,
    /// The password of `posting = "password"`, written `[:password:]` in a post's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub reply_to: ReplyToMode,
    /// The address of `reply_to = "address"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_address: Option<String>,
    #[serde(default)]
    pub prefix: SubjectPrefix,
    /// The text of `prefix = "custom"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_text: Option<String>,
    /// Text put before each post's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_text: Option<String>,
    /// Text put after each post's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer_text: Option<String>,
    /// Largest post in bytes; 0: the server's message size limit only.
    #[serde(default)]
    pub max_message_bytes: u64,
    #[serde(default)]
    pub from_rewrite: FromRewrite,
    /// Keep every distributed post in the list's archive Maildir.
    #[serde(default)]
    pub archive: bool,
    /// `List-Archive` URL, if the archive is published somewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_url: Option<String>,
    /// A digest is sent this many hours after the previous one (when it holds a post).
    #[serde(default = "digest_hours")]
    pub digest_hours: u32,
    /// …or as soon as the posts waiting for it reach this many bytes (0: by time only).
    #[serde(default = "digest_bytes")]
    pub digest_max_bytes: u64,
    /// A member whose address bounces this many times within `bounce_window_days` is
    /// disabled and the owners told; 0: never.
    #[serde(default = "bounce_limit")]
    pub bounce_limit: u32,
    #[serde(default = "bounce_window")]
    pub bounce_window_days: u32,
    #[serde(default)]
    pub members: Vec<Member>,
}

fn digest_hours() -> u32 {
    24
}
fn digest_bytes() -> u64 {
    512 * 1024
}
fn bounce_limit() -> u32 {
    5
}
fn bounce_window() -> u32 {
    30
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A list member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Lower case.
    pub address: String,
    /// Gets digests instead of each post.
    #[serde(default, skip_serializing_if = "is_false")]
    pub digest: bool,
    /// Gets nothing (set by an operator, or by bounces); still counts as a member for
    /// `posting = "members"`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// Bounces counted in the current window, which started at `first_bounce_ms`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bounces: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_bounce_ms: u64,
}

impl Member {
    pub fn new(address: String) -> Self {
        Member { address, digest: false, disabled: false, bounces: 0, first_bounce_ms: 0 }
    }
}

/// Who may subscribe by mail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subscription {
    /// At once, on `subscribe`.
    Anyone,
    /// Only an operator adds members (`ringmx directory member add`).
    Closed,
    /// `subscribe` sends a code; `confirm CODE` from the same address subscribes.
    #[default]
    Confirm,
}

/// Who may post.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Posting {
    Anyone,
    /// Members (and moderators and owners); others are refused at RCPT: 550 5.7.1.
    #[default]
    Members,
    /// Moderators and owners only; others 550 5.7.1 at RCPT.
    Moderators,
    /// Anyone whose subject holds `[:password:]`; the token is removed before distribution.
    Password,
}

/// Where replies to a post go (its `Reply-To`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyToMode {
    List,
    /// The poster's own From or Reply-To: the post's `Reply-To` is left alone.
    #[default]
    Poster,
    /// The first moderator (or owner).
    Moderator,
    /// `reply_to_address`.
    Address,
}

/// The subject prefix of distributed posts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectPrefix {
    /// `[name]`.
    #[default]
    Name,
    None,
    /// `prefix_text`.
    Custom,
}

/// The From of the list's own messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendFrom {
    #[default]
    List,
    /// The first moderator (or owner).
    Moderator,
}

/// When a post's From is replaced by the list's (DMARC mitigation, as Mailman 3 and mlmmj
/// do): the poster goes to `Reply-To` and `X-Original-From`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromRewrite {
    /// When the poster's domain publishes DMARC `p=reject` or `p=quarantine` (asked of
    /// DNS, or listed in `[lists] dmarc_domains`).
    #[default]
    Dmarc,
    Always,
    Never,
}

/// The addresses of a list and what each is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListRole {
    /// `name@domain`: posts (and MailEnable's commands in the subject).
    Post,
    /// `name-request@domain`: commands.
    Request,
    /// `name-owner@domain`: the owners.
    Owner,
    /// `name-bounces@domain`, and with VERP `name-bounces+member=host@domain`: the member.
    Bounces(Option<String>),
}

impl List {
    /// The local part and domain of the list address.
    pub fn parts(&self) -> (&str, &str) {
        split(&self.address).unwrap_or((&self.address, ""))
    }

    /// `name-suffix@domain`.
    pub fn role_address(&self, suffix: &str) -> String {
        let (l, d) = self.parts();
        format!("{l}-{suffix}@{d}")
    }

    /// The subject prefix, rendered.
    pub fn prefix(&self) -> Option<String> {
        match self.prefix {
            SubjectPrefix::Name => Some(format!("[{}]", self.parts().0)),
            SubjectPrefix::None => None,
            SubjectPrefix::Custom => self.prefix_text.clone().filter(|t| !t.is_empty()),
        }
    }

    /// The moderator the list speaks as, or answers for (first moderator, else owner).
    pub fn moderator(&self) -> Option<&str> {
        self.moderators.first().or(self.owners.first()).map(|s| s.as_str())
    }

    pub fn member(&self, address: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.address.eq_ignore_ascii_case(address))
    }

    /// True for a moderator or owner.
    pub fn is_moderator(&self, address: &str) -> bool {
        self.moderators.iter().chain(&self.owners).any(|m| m.eq_ignore_ascii_case(address))
    }
}

impl Mailbox {
    /// The mailbox's Maildir relative to the Maildir root: `<postoffice>/<name>`.
    pub fn maildir(&self) -> String {
        format!("{}/{}", self.postoffice, self.name)
    }

    /// `<name>@<domain>` when it is one of its addresses, else its first address.
    pub fn primary_address(&self) -> Option<&str> {
        self.addresses
            .iter()
            .find(|a| split(a).is_some_and(|(l, _)| l == self.name))
            .or(self.addresses.first())
            .map(|s| s.as_str())
    }
}

/// Splits `local@domain` at its last `@`.
pub fn split(address: &str) -> Option<(&str, &str)> {
    let at = address.rfind('@')?;
    Some((&address[..at], &address[at + 1..]))
}

/// Lower-cases `s` into `buf` (ASCII only, so UTF-8 stays valid); `None` when it does not fit,
/// in which case it cannot be a stored address either.
pub fn lower<'b>(s: &str, buf: &'b mut [u8; MAX_ADDRESS]) -> Option<&'b str> {
    let out = buf.get_mut(..s.len())?;
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    // ASCII case mapping leaves every multi-byte sequence as it was.
    std::str::from_utf8(out).ok()
}

/// Checks and lower-cases an address: `local@domain`, a non-empty local part without
/// spaces, controls or angle brackets, a valid domain, at most [`MAX_ADDRESS`] octets.
pub fn normalize_address(address: &str) -> Result<String, DirectoryError> {
    let bad = || DirectoryError::InvalidAddress(address.to_string());
    let a = address.trim();
    if a.len() > MAX_ADDRESS {
        return Err(bad());
    }
    let (local, domain) = split(a).ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || local.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | '@' | ',' | '"'))
    {
        return Err(bad());
    }
    normalize_domain(domain).map_err(|_| bad())?;
    Ok(a.to_ascii_lowercase())
}

/// Checks and lower-cases a domain name: dot-separated labels of letters, digits and
/// hyphens (or UTF-8 letters, RFC 6531), none empty or longer than 63, hyphen not at an end.
pub fn normalize_domain(domain: &str) -> Result<String, DirectoryError> {
    let d = domain.trim().trim_end_matches('.');
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric()))
        });
    if ok { Ok(d.to_ascii_lowercase()) } else { Err(DirectoryError::InvalidDomain(domain.to_string())) }
}

/// Checks and lower-cases a postoffice or mailbox name: it becomes a directory name, so
/// letters, digits, `.`, `-`, `_`, `+` only, not starting with `.`, at most 64 octets.
pub fn normalize_name(name: &str) -> Result<String, DirectoryError> {
    let n = name.trim();
    let ok = !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
    if ok { Ok(n.to_ascii_lowercase()) } else { Err(DirectoryError::InvalidName(name.to_string())) }
}

/// Checks a smart host: `host:port` (or `[v6]:port`) with a port from 1 to 65535.
pub fn check_smart_host(s: &str) -> Result<String, DirectoryError> {
    let bad = || DirectoryError::InvalidSmartHost(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok() || normalize_domain(host).is_ok()
    };
    if port_ok && host_ok { Ok(s.to_ascii_lowercase()) } else { Err(bad()) }
}

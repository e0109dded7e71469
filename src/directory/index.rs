//! [`Directory`]: the validated, immutable in-memory index, and the RCPT-time check.
//!
//! # Invariants
//!
//! A `Directory` exists only if its data passed [`Directory::build`]: names are valid and
//! lower case, every domain's postoffice exists, every address belongs to at most one
//! mailbox or group and is on a domain of the directory, every mailbox address is on a
//! domain of the mailbox's own postoffice.

use super::DirectoryError;
use super::model::{
    DirectoryData, Domain, FORMAT_VERSION, List, ListRole, MAX_ADDRESS, Mailbox, Posting, Postoffice, check_smart_host,
    lower, normalize_address, normalize_domain, normalize_name, split,
};
use crate::wire::Reply;
use std::collections::{HashMap, HashSet};

/// What an address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// Index into `DirectoryData::mailboxes`.
    Mailbox(usize),
    /// Index into `DirectoryData::groups`.
    Group(usize),
    /// Index into `DirectoryData::lists`, and which of the list's addresses.
    List(usize, ListAddr),
}

/// Which address of a list (see [`ListRole`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListAddr {
    Post,
    Request,
    Owner,
    Bounces,
}

/// The suffixes of a list's own addresses.
const LIST_SUFFIXES: [(&str, ListAddr); 3] =
    [("request", ListAddr::Request), ("owner", ListAddr::Owner), ("bounces", ListAddr::Bounces)];

/// The directory, indexed for lookups. Cheap to share behind an `Arc`; never changed after
/// [`Directory::build`].
#[derive(Debug, Default)]
pub struct Directory {
    pub(super) data: DirectoryData,
    /// Domain name → index into `data.domains`.
    pub(super) domains: HashMap<String, usize>,
    /// Postoffice name → index into `data.postoffices`.
    postoffices: HashMap<String, usize>,
    /// Address → mailbox or group.
    pub(super) addresses: HashMap<String, Entry>,
    /// `<postoffice>/<mailbox>` → index into `data.mailboxes`.
    maildirs: HashMap<String, usize>,
    /// `maildir_of[i]` is `data.mailboxes[i].maildir()`, computed once so that lookups can
    /// hand out `&str`.
    pub(super) maildir_of: Vec<String>,
    blocked: HashSet<String>,
}

/// The usage side of quotas, which the Maildir delivery keeps. The RCPT check asks it, so an
/// implementation must answer from memory.
pub trait QuotaView {
    /// Bytes used by the mailbox whose Maildir is `maildir` (`<postoffice>/<mailbox>`), when
    /// known.
    fn usage_bytes(&self, maildir: &str) -> Option<u64>;
}

/// A [`QuotaView`] that knows nothing: no mailbox is ever known to be full at RCPT.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUsage;

impl QuotaView for NoUsage {
    fn usage_bytes(&self, _: &str) -> Option<u64> {
        None
    }
}

/// The answer to a RCPT: accept (and what the address names), refuse (and why), or the
/// domain is not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptVerdict<'d> {
    Accept(RcptTarget<'d>),
    Refuse(Refusal),
    /// Not a local domain: the session decides whether this is permitted relaying.
    NotLocal,
}

/// What an accepted recipient names. Borrowed from the [`Directory`]; the router expands it
/// again with [`Directory::expand`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptTarget<'d> {
    /// A mailbox, and its Maildir relative to the Maildir root.
    Mailbox { mailbox: &'d Mailbox, maildir: &'d str },
    /// A group address.
    Group { address: &'d str },
    /// An unknown local part of a domain with a catch-all.
    CatchAll { domain: &'d str, target: &'d str },
    /// `postmaster` (RFC 5321 §4.5.1), accepted for every local domain; `domain` is `None` for
    /// the bare `postmaster`.
    Postmaster { domain: Option<&'d str>, route: PostmasterRoute<'d> },
    /// A domain whose mail is relayed to its smart host.
    Relayed { domain: &'d str, host_port: &'d str },
    /// An address of a mailing list.
    List { list: &'d List },
    /// `abuse@` a domain with an abuse address set and no mailbox or group of that name.
    Abuse { domain: &'d str, to: &'d str },
}

/// Where mail for `postmaster@domain` goes when no mailbox or group has that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostmasterRoute<'d> {
    /// A mailbox or group has the address itself.
    Own,
    /// The domain's configured postmaster address.
    Address(&'d str),
    /// The postoffice's mailbox named `postmaster`.
    Mailbox { mailbox: &'d Mailbox, maildir: &'d str },
    /// Nowhere configured: the router decides (e.g. holds it for the operator).
    Unresolved,
}

/// Why a local recipient is refused. Each has one exact reply ([`Refusal::reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No mailbox, group or catch-all for the address: 550 5.1.1.
    UnknownUser,
    /// A blocked address: 550 5.1.1, the same as an unknown one so as not to tell them apart.
    Blocked,
    /// The mailbox is disabled: 550 5.2.1.
    MailboxDisabled,
    /// The domain is disabled: 550 5.2.1.
    DomainDisabled,
    /// The mailbox is known to be at or over its quota: 552 5.2.2.
    MailboxFull,
    /// The sender's domain is on the recipient domain's blacklist: 550 5.7.1.
    SenderBlacklisted,
    /// A post to a disabled list: 550 5.2.1.
    ListDisabled,
    /// A post from a sender the list's posting rule does not admit (`members`,
    /// `moderators`, or the null reverse path): 550 5.7.1.
    ListPostingRestricted,
}

impl Refusal {
    /// How the activity log names it (`rule=`).
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown_user",
            Refusal::Blocked => "blocked_address",
            Refusal::MailboxDisabled => "mailbox_disabled",
            Refusal::DomainDisabled => "domain_disabled",
            Refusal::MailboxFull => "mailbox_full",
            Refusal::SenderBlacklisted => "sender_blacklisted",
            Refusal::ListDisabled => "list_disabled",
            Refusal::ListPostingRestricted => "list_posting",
        }
    }

    /// The RCPT reply (RFC 5321 §4.2.2, RFC 3463 status codes).
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::UnknownUser | Refusal::Blocked => {
                Reply::new(550, "5.1.1", "Error: recipient address rejected: user unknown")
            }
            Refusal::MailboxDisabled => Reply::new(550, "5.2.1", "Error: recipient address rejected: mailbox disabled"),
            Refusal::DomainDisabled => Reply::new(550, "5.2.1", "Error: recipient address rejected: domain disabled"),
            Refusal::MailboxFull => Reply::new(552, "5.2.2", "Error: recipient address rejected: mailbox full"),
            Refusal::SenderBlacklisted => {
                Reply::new(550, "5.7.1", "Error: recipient address rejected: sender domain refused")
            }
            Refusal::ListDisabled => Reply::new(550, "5.2.1", "Error: recipient address rejected: list disabled"),
            Refusal::ListPostingRestricted => Reply::new(
                550,
                "5.7.1",
                "Error: recipient address rejected: this list takes posts from its members only",
            ),
        }
    }
}

impl Directory {
    /// Validates `data` and builds the index. `data` should already be lower case (the admin
    /// commands store it so); keys are lower-cased regardless.
    pub fn build(data: DirectoryData) -> Result<Directory, DirectoryError> {
        if data.version > FORMAT_VERSION {
            return Err(DirectoryError::Corrupt {
                path: "directory".into(),
                what: format!("format version {} is newer than this program's {FORMAT_VERSION}", data.version),
            });
        }
        let mut d = Directory { data, ..Directory::default() };
        for (i, po) in d.data.postoffices.iter().enumerate() {
            let name = normalize_name(&po.name)?;
            if d.postoffices.insert(name, i).is_some() {
                return Err(DirectoryError::DuplicatePostoffice(po.name.clone()));
            }
        }
        if let Some(po) = &d.data.default_postoffice
            && !d.postoffices.contains_key(&po.to_ascii_lowercase())
        {
            return Err(DirectoryError::UnknownPostoffice(po.clone()));
        }
        for (i, dom) in d.data.domains.iter().enumerate() {
            let name = normalize_domain(&dom.name)?;
            if !d.postoffices.contains_key(&dom.postoffice.to_ascii_lowercase()) {
                return Err(DirectoryError::UnknownPostoffice(dom.postoffice.clone()));
            }
            for a in [&dom.abuse, &dom.postmaster, &dom.catch_all].into_iter().flatten() {
                normalize_address(a)?;
            }
            if let Some(s) = &dom.smart_host {
                check_smart_host(s)?;
            }
            for s in &dom.sender_blacklist {
                normalize_domain(s)?;
            }
            if d.domains.insert(name, i).is_some() {
                return Err(DirectoryError::DuplicateDomain(dom.name.clone()));
            }
        }
        for (i, mb) in d.data.mailboxes.iter().enumerate() {
            let po = mb.postoffice.to_ascii_lowercase();
            if !d.postoffices.contains_key(&po) {
                return Err(DirectoryError::UnknownPostoffice(mb.postoffice.clone()));
            }
            let maildir = format!("{po}/{}", normalize_name(&mb.name)?);
            if d.maildirs.insert(maildir.clone(), i).is_some() {
                return Err(DirectoryError::DuplicateMailbox(maildir));
            }
            d.maildir_of.push(maildir);
            for a in &mb.addresses {
                let a = normalize_address(a)?;
                let dom_po = d.domain_postoffice(&a)?;
                if dom_po != po {
                    return Err(DirectoryError::WrongPostoffice {
                        address: a,
                        postoffice: po,
                        domain_postoffice: dom_po.to_string(),
                    });
                }
                if d.addresses.insert(a.clone(), Entry::Mailbox(i)).is_some() {
                    return Err(DirectoryError::DuplicateAddress(a));
                }
            }
            for a in &mb.redirect {
                normalize_address(a)?;
            }
        }
        for (i, g) in d.data.groups.iter().enumerate() {
            let a = normalize_address(&g.address)?;
            d.domain_postoffice(&a)?;
            for m in &g.members {
                normalize_address(m)?;
            }
            if d.addresses.insert(a.clone(), Entry::Group(i)).is_some() {
                return Err(DirectoryError::DuplicateAddress(a));
            }
        }
        for a in &d.data.blocked {
            let a = normalize_address(a)?;
            d.blocked.insert(a);
        }
        for (i, l) in d.data.lists.iter().enumerate() {
            let a = normalize_address(&l.address)?;
            d.domain_postoffice(&a)?;
            if l.posting == Posting::Password && l.password.as_deref().is_none_or(str::is_empty) {
                return Err(DirectoryError::InvalidList(a, "posting = \"password\" needs a password".into()));
            }
            for m in l.owners.iter().chain(&l.moderators).chain(&l.reply_to_address) {
                normalize_address(m)?;
            }
            for m in &l.members {
                normalize_address(&m.address)?;
            }
            let (local, domain) = split(&a).unwrap_or_default();
            let mut own = vec![(a.clone(), ListAddr::Post)];
            own.extend(LIST_SUFFIXES.iter().map(|(s, r)| (format!("{local}-{s}@{domain}"), *r)));
            for (addr, role) in own {
                if d.addresses.insert(addr.clone(), Entry::List(i, role)).is_some() {
                    return Err(DirectoryError::DuplicateAddress(addr));
                }
            }
        }
        Ok(d)
    }

    /// The postoffice of the domain of `address` (lower case).
    fn domain_postoffice(&self, address: &str) -> Result<&str, DirectoryError> {
        let (_, domain) = split(address).ok_or_else(|| DirectoryError::InvalidAddress(address.to_string()))?;
        let i = self.domains.get(domain).ok_or_else(|| DirectoryError::UnknownDomain(domain.to_string()))?;
        Ok(&self.data.domains[*i].postoffice)
    }

    /// The stored records this index was built from.
    pub fn data(&self) -> &DirectoryData {
        &self.data
    }

    /// Gives back the stored records, e.g. to change and save them.
    pub fn into_data(self) -> DirectoryData {
        self.data
    }

    /// True when mail for `domain` is accepted here (whatever case it is written in).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domain(domain).is_some()
    }

    /// The domain record, looked up without regard to case.
    pub fn domain(&self, domain: &str) -> Option<&Domain> {
        let mut buf = [0; MAX_ADDRESS];
        let key = lower(domain.trim_end_matches('.'), &mut buf)?;
        self.domains.get(key).map(|&i| &self.data.domains[i])
    }

    pub fn postoffice(&self, name: &str) -> Option<&Postoffice> {
        let mut buf = [0; MAX_ADDRESS];
        let key = lower(name, &mut buf)?;
        self.postoffices.get(key).map(|&i| &self.data.postoffices[i])
    }

    /// The mailbox with this address, and its Maildir (`<postoffice>/<mailbox>`).
    pub fn mailbox_by_address(&self, address: &str) -> Option<(&Mailbox, &str)> {
        match self.entry(address)? {
            Entry::Mailbox(i) => Some((&self.data.mailboxes[i], &self.maildir_of[i])),
            Entry::Group(_) | Entry::List(..) => None,
        }
    }

    /// The list with this address (its posting address).
    pub fn list(&self, address: &str) -> Option<&List> {
        match self.entry(address)? {
            Entry::List(i, ListAddr::Post) => Some(&self.data.lists[i]),
            _ => None,
        }
    }

    /// The list an address belongs to and what it is for: posts, commands, owners, or
    /// bounces (`name-bounces+member=host@domain` names the member, VERP).
    pub fn list_role(&self, address: &str) -> Option<(&List, ListRole)> {
        if let Some(Entry::List(i, r)) = self.entry(address) {
            let role = match r {
                ListAddr::Post => ListRole::Post,
                ListAddr::Request => ListRole::Request,
                ListAddr::Owner => ListRole::Owner,
                ListAddr::Bounces => ListRole::Bounces(None),
            };
            return Some((&self.data.lists[i], role));
        }
        let (local, domain) = split(address)?;
        let (base, verp) = local.split_once('+')?;
        if !base.to_ascii_lowercase().ends_with("-bounces") {
            return None;
        }
        let Some(Entry::List(i, ListAddr::Bounces)) = self.entry(&format!("{base}@{domain}")) else { return None };
        let member = verp.rsplit_once('=').map(|(l, h)| format!("{l}@{h}").to_ascii_lowercase());
        Some((&self.data.lists[i], ListRole::Bounces(member)))
    }

    /// The list whose bounce address `sender` is (its distribution's reverse path).
    pub fn list_of_bounces(&self, sender: &str) -> Option<&List> {
        match self.entry(sender)? {
            Entry::List(i, ListAddr::Bounces) => Some(&self.data.lists[i]),
            _ => None,
        }
    }

    /// The mailbox whose Maildir is `maildir` (`<postoffice>/<mailbox>`).
    pub fn mailbox_by_maildir(&self, maildir: &str) -> Option<&Mailbox> {
        self.maildirs.get(maildir).map(|&i| &self.data.mailboxes[i])
    }

    /// The mailbox a login name names: a full address, or a bare mailbox name in the default
    /// postoffice.
    pub fn mailbox_for_login(&self, login: &str) -> Option<(&Mailbox, &str)> {
        if login.contains('@') {
            return self.mailbox_by_address(login);
        }
        let po = self.data.default_postoffice.as_deref()?;
        let key = format!("{po}/{}", login.to_ascii_lowercase());
        let &i = self.maildirs.get(&key)?;
        Some((&self.data.mailboxes[i], &self.maildir_of[i]))
    }

    /// True when mail to `domain` must come from an authenticated connection (its
    /// postoffice's `require_auth_inbound`).
    pub fn domain_requires_auth(&self, domain: &str) -> bool {
        self.domain(domain).and_then(|d| self.postoffice(&d.postoffice)).is_some_and(|p| p.require_auth_inbound)
    }

    pub fn is_blocked(&self, address: &str) -> bool {
        let mut buf = [0; MAX_ADDRESS];
        lower(address, &mut buf).is_some_and(|k| self.blocked.contains(k))
    }

    pub(super) fn entry(&self, address: &str) -> Option<Entry> {
        let mut buf = [0; MAX_ADDRESS];
        let key = lower(address, &mut buf)?;
        self.addresses.get(key).copied()
    }

    /// [`Directory::check_recipient_with`] without usage figures: no mailbox is known full.
    pub fn check_recipient(&self, sender: Option<&str>, rcpt: &str, catch_alls_enabled: bool) -> RcptVerdict<'_> {
        self.check_recipient_with(sender, rcpt, catch_alls_enabled, &NoUsage)
    }

    /// The RCPT-time decision for `rcpt` from `sender` (`None` for the null reverse path), in
    /// this order:
    ///
    /// 1. not a local domain: [`RcptVerdict::NotLocal`];
    /// 2. `postmaster` (bare, or at any local domain): accepted (RFC 5321 §4.5.1);
    /// 3. domain disabled: 550 5.2.1;
    /// 4. the sender's domain on the domain's blacklist (exact match): 550 5.7.1;
    /// 5. blocked address: 550 5.1.1;
    /// 6. domain with a smart host: accepted, relayed;
    /// 7. a mailbox: disabled 550 5.2.1, known full (usage ≥ quota) 552 5.2.2, else accepted;
    /// 8. a group: accepted;
    /// 9. `abuse` with the domain's abuse address set: accepted, for that address;
    /// 10. the domain's catch-all, when `catch_alls_enabled`: accepted;
    /// 11. otherwise 550 5.1.1.
    ///
    /// Pure and in memory: nothing is allocated and no file is read.
    pub fn check_recipient_with<'d>(
        &'d self,
        sender: Option<&str>,
        rcpt: &str,
        catch_alls_enabled: bool,
        usage: &dyn QuotaView,
    ) -> RcptVerdict<'d> {
        let Some((local, domain_part)) = split(rcpt) else {
            if rcpt.eq_ignore_ascii_case("postmaster") {
                return RcptVerdict::Accept(RcptTarget::Postmaster { domain: None, route: self.default_postmaster() });
            }
            return RcptVerdict::Refuse(Refusal::UnknownUser);
        };
        let mut buf = [0; MAX_ADDRESS];
        let Some(domain_key) = lower(domain_part, &mut buf) else { return RcptVerdict::NotLocal };
        let Some((domain_key, &di)) = self.domains.get_key_value(domain_key) else { return RcptVerdict::NotLocal };
        let domain = &self.data.domains[di];
        let name = domain_key.as_str();

        if local.eq_ignore_ascii_case("postmaster") {
            if let Some(hp) = &domain.smart_host {
                return RcptVerdict::Accept(RcptTarget::Relayed { domain: name, host_port: hp });
            }
            let route = self.postmaster_route(rcpt, domain);
            return RcptVerdict::Accept(RcptTarget::Postmaster { domain: Some(name), route });
        }
        if !domain.enabled {
            return RcptVerdict::Refuse(Refusal::DomainDisabled);
        }
        if let Some(s) = sender.and_then(split).map(|(_, d)| d)
            && domain.sender_blacklist.iter().any(|b| b.eq_ignore_ascii_case(s.trim_end_matches('.')))
        {
            return RcptVerdict::Refuse(Refusal::SenderBlacklisted);
        }
        if self.is_blocked(rcpt) {
            return RcptVerdict::Refuse(Refusal::Blocked);
        }
        if let Some(hp) = &domain.smart_host {
            return RcptVerdict::Accept(RcptTarget::Relayed { domain: name, host_port: hp });
        }
        let entry = self.entry(rcpt);
        // A VERP bounce address, `name-bounces+member=host@domain`.
        if entry.is_none()
            && local.contains('+')
            && let Some((list, _)) = self.list_role(rcpt)
        {
            return RcptVerdict::Accept(RcptTarget::List { list });
        }
        match entry {
            Some(Entry::Mailbox(i)) => {
                let mb = &self.data.mailboxes[i];
                let maildir = self.maildir_of[i].as_str();
                if mb.disabled {
                    return RcptVerdict::Refuse(Refusal::MailboxDisabled);
                }
                if mb.quota_bytes > 0 && usage.usage_bytes(maildir).is_some_and(|u| u >= mb.quota_bytes) {
                    return RcptVerdict::Refuse(Refusal::MailboxFull);
                }
                RcptVerdict::Accept(RcptTarget::Mailbox { mailbox: mb, maildir })
            }
            Some(Entry::Group(i)) => RcptVerdict::Accept(RcptTarget::Group { address: &self.data.groups[i].address }),
            Some(Entry::List(i, role)) => {
                let list = &self.data.lists[i];
                if role == ListAddr::Post {
                    if list.disabled {
                        return RcptVerdict::Refuse(Refusal::ListDisabled);
                    }
                    if !may_post(list, sender.unwrap_or_default()) {
                        return RcptVerdict::Refuse(Refusal::ListPostingRestricted);
                    }
                }
                RcptVerdict::Accept(RcptTarget::List { list })
            }
            None if local.eq_ignore_ascii_case("abuse") && domain.abuse.is_some() => {
                RcptVerdict::Accept(RcptTarget::Abuse { domain: name, to: domain.abuse.as_deref().unwrap_or_default() })
            }
            None => match &domain.catch_all {
                Some(target) if catch_alls_enabled => {
                    RcptVerdict::Accept(RcptTarget::CatchAll { domain: name, target })
                }
                _ => RcptVerdict::Refuse(Refusal::UnknownUser),
            },
        }
    }

    /// Hosted domains (enabled, delivered here) where mail for `postmaster@` has nowhere to
    /// go: no entry for it, no postmaster address set, no `postmaster` mailbox in the
    /// postoffice. RFC 5321 §4.5.1 wants postmaster to work everywhere.
    pub fn domains_without_postmaster(&self) -> Vec<String> {
        self.data
            .domains
            .iter()
            .filter(|d| d.enabled && d.smart_host.is_none())
            .filter(|d| {
                let a = format!("postmaster@{}", d.name);
                matches!(self.postmaster_route(&a, d), PostmasterRoute::Unresolved)
            })
            .map(|d| d.name.clone())
            .collect()
    }

    /// Where `postmaster@domain` goes: its own mailbox or group, the domain's postmaster
    /// address, the postoffice's `postmaster` mailbox, or nowhere yet.
    pub(super) fn postmaster_route<'d>(&'d self, rcpt: &str, domain: &'d Domain) -> PostmasterRoute<'d> {
        if self.entry(rcpt).is_some() {
            return PostmasterRoute::Own;
        }
        if let Some(a) = &domain.postmaster {
            return PostmasterRoute::Address(a);
        }
        self.postoffice_postmaster(&domain.postoffice)
    }

    fn postoffice_postmaster(&self, postoffice: &str) -> PostmasterRoute<'_> {
        let mut buf = [0u8; MAX_ADDRESS];
        let n = postoffice.len() + "/postmaster".len();
        if n > MAX_ADDRESS {
            return PostmasterRoute::Unresolved;
        }
        buf[..postoffice.len()].copy_from_slice(postoffice.as_bytes());
        buf[postoffice.len()..n].copy_from_slice(b"/postmaster");
        let key = std::str::from_utf8(&buf[..n]).unwrap_or_default();
        match self.maildirs.get(key) {
            Some(&i) => PostmasterRoute::Mailbox { mailbox: &self.data.mailboxes[i], maildir: &self.maildir_of[i] },
            None => PostmasterRoute::Unresolved,
        }
    }

    /// The bare `postmaster`: the default postoffice's, else the first postoffice's.
    fn default_postmaster(&self) -> PostmasterRoute<'_> {
        let po = self.data.default_postoffice.as_deref().or(self.data.postoffices.first().map(|p| p.name.as_str()));
        po.map_or(PostmasterRoute::Unresolved, |po| self.postoffice_postmaster(po))
    }
}

/// Whether `sender` may post to `list` as far as RCPT can tell (the password of
/// `posting = "password"` is in the subject, checked at delivery).
pub fn may_post(list: &List, sender: &str) -> bool {
    if sender.is_empty() {
        // A bounce or report is never a post.
        return false;
    }
    match list.posting {
        Posting::Anyone | Posting::Password => true,
        Posting::Members => list.member(sender).is_some() || list.is_moderator(sender),
        Posting::Moderators => list.is_moderator(sender),
    }
}

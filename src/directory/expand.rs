//! Recipient → final delivery targets, for the router.
//!
//! Redirects and groups are followed (nested groups included) with the chain of addresses
//! kept: an address already on the chain is a loop, reported and not followed again. Each
//! target appears once however many ways lead to it, with the envelope recipients that led
//! there; a catch-all target is marked, so that the router writes one copy per message and
//! names the original recipients in a header (SPEC §5).

use super::index::{Directory, Entry, PostmasterRoute};
use super::model::{ListRole, split};
use std::collections::HashSet;

/// Redirects and groups followed deeper than this are reported as [`ExpandProblem::TooDeep`].
pub const MAX_DEPTH: usize = 32;

/// The targets of one message's recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Each destination once, in the order first reached.
    pub targets: Vec<Target>,
    /// Addresses that lead nowhere; the router bounces or logs them.
    pub problems: Vec<ExpandProblem>,
}

/// One place a copy of the message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub destination: Destination,
    /// Reached through a domain's catch-all: one copy, with `original_recipients` recorded
    /// in a header.
    pub catch_all: bool,
    /// The envelope recipients that lead here, lower case, in order.
    pub original_recipients: Vec<String>,
}

/// Where a copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A local mailbox: `maildir` is `<postoffice>/<mailbox>` under the Maildir root;
    /// `delivered_to` is the address that reached it (for the `Delivered-To` header).
    Mailbox { maildir: String, delivered_to: String },
    /// An address outside the local domains (a redirect or group member elsewhere).
    Remote(String),
    /// An address of a domain relayed to its smart host.
    Relay { host_port: String, address: String },
    /// A mailing list's address (`list` is its posting address): the list manager takes
    /// the message.
    List { list: String, role: ListRole },
}

/// Why an address led nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpandProblem {
    /// Following redirects or groups came back to an address on the way: the chain, the
    /// repeated address last.
    Loop { chain: Vec<String> },
    /// Redirects or groups nested deeper than [`MAX_DEPTH`].
    TooDeep { address: String },
    /// A local address with no mailbox, group or catch-all.
    Unknown { address: String },
    /// A disabled mailbox, or an address of a disabled domain.
    Disabled { address: String },
    /// A blocked address.
    Blocked { address: String },
    /// `postmaster` with nowhere configured to go.
    UnresolvedPostmaster { address: String },
}

impl Directory {
    /// The delivery targets of one recipient, catch-alls applied.
    pub fn expand(&self, rcpt: &str) -> Expansion {
        self.expand_all(&[rcpt], true)
    }

    /// The delivery targets of all of a message's recipients, de-duplicated across them.
    pub fn expand_all(&self, rcpts: &[&str], catch_alls_enabled: bool) -> Expansion {
        let mut ex =
            Expander { dir: self, catch_alls: catch_alls_enabled, out: Expansion::default(), chain: Vec::new() };
        for rcpt in rcpts {
            let original = rcpt.to_ascii_lowercase();
            let mut visited = HashSet::new();
            ex.visit(rcpt, &original, false, &mut visited);
        }
        ex.out
    }
}

struct Expander<'d> {
    dir: &'d Directory,
    catch_alls: bool,
    out: Expansion,
    /// The addresses being followed, outermost first.
    chain: Vec<String>,
}

impl Expander<'_> {
    /// Follows `address`, reached from the envelope recipient `original`. `visited` holds
    /// the addresses already followed for `original`, so that two paths to one group do not
    /// expand it twice.
    fn visit(&mut self, address: &str, original: &str, catch_all: bool, visited: &mut HashSet<String>) {
        let a = address.to_ascii_lowercase();
        if self.chain.contains(&a) {
            let mut chain = self.chain.clone();
            chain.push(a);
            self.out.problems.push(ExpandProblem::Loop { chain });
            return;
        }
        if !visited.insert(a.clone()) {
            return;
        }
        if self.chain.len() >= MAX_DEPTH {
            self.out.problems.push(ExpandProblem::TooDeep { address: a });
            return;
        }
        let dir = self.dir;
        let Some((local, domain_name)) = split(&a) else {
            self.out.problems.push(ExpandProblem::Unknown { address: a });
            return;
        };
        let Some(domain) = dir.domain(domain_name) else {
            self.push(Destination::Remote(a.clone()), original, catch_all);
            return;
        };
        if let Some(hp) = &domain.smart_host {
            self.push(Destination::Relay { host_port: hp.clone(), address: a.clone() }, original, catch_all);
            return;
        }
        if local == "postmaster" && dir.entry(&a).is_none() {
            match dir.postmaster_route(&a, domain) {
                PostmasterRoute::Address(to) => {
                    self.follow(&a, std::slice::from_ref(&to.to_string()), original, catch_all, visited)
                }
                PostmasterRoute::Mailbox { maildir, .. } => {
                    let d = Destination::Mailbox { maildir: maildir.to_string(), delivered_to: a.clone() };
                    self.push(d, original, catch_all);
                }
                PostmasterRoute::Own | PostmasterRoute::Unresolved => {
                    self.out.problems.push(ExpandProblem::UnresolvedPostmaster { address: a })
                }
            }
            return;
        }
        if !domain.enabled {
            self.out.problems.push(ExpandProblem::Disabled { address: a });
            return;
        }
        // `abuse@` with the domain's abuse address set and no mailbox or group of its own.
        if local == "abuse"
            && dir.entry(&a).is_none()
            && let Some(to) = &domain.abuse
        {
            self.follow(&a, std::slice::from_ref(to), original, catch_all, visited);
            return;
        }
        if dir.is_blocked(&a) {
            self.out.problems.push(ExpandProblem::Blocked { address: a });
            return;
        }
        match dir.entry(&a) {
            Some(Entry::Mailbox(i)) => {
                let mb = &dir.data.mailboxes[i];
                if mb.disabled {
                    self.out.problems.push(ExpandProblem::Disabled { address: a });
                    return;
                }
                if !mb.redirect.is_empty() {
                    self.follow(&a, &mb.redirect, original, catch_all, visited);
                }
                if mb.redirect.is_empty() || mb.redirect_keep_copy {
                    let d = Destination::Mailbox { maildir: dir.maildir_of[i].clone(), delivered_to: a };
                    self.push(d, original, catch_all);
                }
            }
            Some(Entry::Group(i)) => self.follow(&a, &dir.data.groups[i].members, original, catch_all, visited),
            Some(Entry::List(..)) => self.push_list(&a, original, catch_all),
            None if local.contains('+') && dir.list_role(&a).is_some() => self.push_list(&a, original, catch_all),
            None => match &domain.catch_all {
                Some(target) if self.catch_alls => {
                    self.follow(&a, std::slice::from_ref(target), original, true, visited)
                }
                _ => self.out.problems.push(ExpandProblem::Unknown { address: a }),
            },
        }
    }

    /// Follows each of `next` with `from` on the chain.
    fn follow(&mut self, from: &str, next: &[String], original: &str, catch_all: bool, visited: &mut HashSet<String>) {
        self.chain.push(from.to_string());
        for n in next {
            self.visit(n, original, catch_all, visited);
        }
        self.chain.pop();
    }

    fn push_list(&mut self, address: &str, original: &str, catch_all: bool) {
        if let Some((list, role)) = self.dir.list_role(address) {
            self.push(Destination::List { list: list.address.clone(), role }, original, catch_all);
        }
    }

    fn push(&mut self, destination: Destination, original: &str, catch_all: bool) {
        let same = |t: &&mut Target| match (&t.destination, &destination) {
            (Destination::Mailbox { maildir: a, .. }, Destination::Mailbox { maildir: b, .. }) => a == b,
            (a, b) => a == b,
        };
        if let Some(t) = self.out.targets.iter_mut().find(same) {
            t.catch_all |= catch_all;
            if !t.original_recipients.iter().any(|o| o == original) {
                t.original_recipients.push(original.to_string());
            }
            return;
        }
        self.out.targets.push(Target { destination, catch_all, original_recipients: vec![original.to_string()] });
    }
}

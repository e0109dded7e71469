//! Local delivery for the control thread: the Maildir copies the queue manager asks for in
//! one turn are staged in their `tmp/` directories and committed together
//! ([`maildir::commit`]: two `syncfs` calls for the whole batch, not two fsyncs per copy);
//! only then do their outcomes go back to the manager, so a recipient's mark is never
//! written before its copy is durable.

use crate::delivery::client::Response;
use crate::delivery::maildir::{self, Maildir, Staged, UsageCache, mailbox_path};
use crate::directory::Directory;
use crate::queue::actions::{LocalFailure, MaildirCopy, Outcome};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Maildirs kept open (each open creates `tmp/`, `new/`, `cur/` as needed).
const MAX_OPEN_MAILDIRS: usize = 4096;

pub(super) struct LocalDelivery {
    maildir_root: PathBuf,
    usage: Arc<UsageCache>,
    /// Opened Maildirs, by `<postoffice>/<mailbox>`.
    open: HashMap<String, Maildir>,
    /// Staged this turn, with what their outcome names.
    staged: Vec<(Staged, MaildirCopy)>,
    /// Bytes staged per Maildir this turn (the quota check counts them).
    pending: HashMap<String, u64>,
    /// Copies that could not even be staged, reported with the batch.
    failed: Vec<Outcome>,
}

impl LocalDelivery {
    pub(super) fn new(maildir_root: PathBuf, usage: Arc<UsageCache>) -> Self {
        LocalDelivery {
            maildir_root,
            usage,
            open: HashMap::new(),
            staged: Vec::new(),
            pending: HashMap::new(),
            failed: Vec::new(),
        }
    }

    /// The usage of every mailbox with a quota, so that RCPT can refuse a full one; how many
    /// were read.
    pub(super) fn load_usage(&self, dir: &Directory) -> usize {
        let mut n = 0;
        for m in dir.data().mailboxes.iter().filter(|m| m.quota_bytes > 0) {
            let maildir = m.maildir();
            if let Ok(md) = Maildir::open(&mailbox_path(&self.maildir_root, &maildir))
                && let Ok(u) = md.usage()
            {
                self.usage.set(&maildir, u.bytes);
                n += 1;
            }
        }
        n
    }

    /// Writes a copy into its Maildir's `tmp/` (not yet durable, not yet visible).
    pub(super) fn stage(&mut self, c: MaildirCopy) {
        let md = match self.open.get(&c.maildir) {
            Some(m) => Ok(m.clone()),
            None => Maildir::open(&mailbox_path(&self.maildir_root, &c.maildir)).inspect(|m| {
                if self.open.len() >= MAX_OPEN_MAILDIRS {
                    self.open.clear();
                }
                self.open.insert(c.maildir.clone(), m.clone());
            }),
        };
        let already = self.pending.get(&c.maildir).copied().unwrap_or(0);
        match md.and_then(|m| m.with_quota(c.quota).stage(&c.from, &c.delivered_to, &c.body, already)) {
            Ok(st) => {
                *self.pending.entry(c.maildir.clone()).or_default() += st.size();
                self.staged.push((st, c));
            }
            Err(e) => {
                if !e.is_permanent() {
                    log::warn!("control: {}: delivery to {}: {e}", c.id, c.maildir);
                }
                let failure = LocalFailure { permanent: e.is_permanent(), reply: Response::from(&e.smtp_reply()) };
                self.failed.push(Outcome::Maildir { id: c.id, copy: c.copy, result: Err(failure) });
            }
        }
    }

    /// Commits what was staged since the last call; one outcome per copy asked for.
    pub(super) fn commit(&mut self) -> Vec<Outcome> {
        let mut out = std::mem::take(&mut self.failed);
        self.pending.clear();
        if self.staged.is_empty() {
            return out;
        }
        let (staged, copies): (Vec<Staged>, Vec<MaildirCopy>) = std::mem::take(&mut self.staged).into_iter().unzip();
        for (r, c) in maildir::commit(staged).into_iter().zip(copies) {
            let result = match r {
                Ok(f) => {
                    if c.quota > 0
                        && let Ok(u) =
                            Maildir::open(&mailbox_path(&self.maildir_root, &c.maildir)).and_then(|m| m.usage())
                    {
                        self.usage.set(&c.maildir, u.bytes);
                    }
                    Ok(f.path)
                }
                Err(e) => {
                    if !e.is_permanent() {
                        log::warn!("control: {}: delivery to {}: {e}", c.id, c.maildir);
                    }
                    Err(LocalFailure { permanent: e.is_permanent(), reply: Response::from(&e.smtp_reply()) })
                }
            };
            out.push(Outcome::Maildir { id: c.id, copy: c.copy, result });
        }
        out
    }
}

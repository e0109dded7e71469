//! Which queued messages an operator means: the filters of `ringmx queue list|retry|…` and
//! of the admin API's `/v1/queue`, and one page of what they select.
//!
//! A selection reads the spool (as `queue list` always did), so it is the same whether the
//! server runs or not: the admin API answers from the running server's spool, the command
//! line from a stopped one's. Messages come in queue-id order (ids grow with time), so a
//! page's last id is where the next page starts (`after`): none is listed twice. The admin
//! API keeps one reading of the spool ([`Listing`]) for the pages that follow a first one
//! (see `rt/admin_http.rs`), so paging through a queue costs one replay, not one a page.

use super::AdminError;
use crate::spool::{MarkStatus, QueueId, RecordReader, StoredMessage};
use std::path::Path;
use std::time::Duration;

/// A message's state as `queue list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for its first attempt, or being delivered.
    Queued,
    /// A recipient waits for its next attempt.
    Deferred,
    /// Quarantined at acceptance (a milter or script), until released.
    Quarantined,
    /// Put on hold by an operator, until released.
    Held,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Deferred => "deferred",
            State::Quarantined => "quarantined",
            State::Held => "held",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Queued, State::Deferred, State::Quarantined, State::Held].into_iter().find(|st| st.name() == s)
    }

    pub fn of(m: &StoredMessage) -> State {
        if m.is_on_hold() {
            State::Held
        } else if m.is_quarantined() {
            State::Quarantined
        } else if m.latest_marks().into_iter().flatten().any(|k| k.status == MarkStatus::Deferred) {
            State::Deferred
        } else {
            State::Queued
        }
    }
}

/// What selects messages; every criterion given must hold. Addresses compare without case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFilter {
    /// The sender contains this (`<>`: the null sender only).
    pub sender: Option<String>,
    /// An unfinished recipient contains this.
    pub recipient: Option<String>,
    /// An unfinished recipient is in this domain (the destination).
    pub domain: Option<String>,
    pub state: Option<State>,
    /// Received at least this long ago.
    pub older_than: Option<Duration>,
    /// Received at most this long ago.
    pub newer_than: Option<Duration>,
    /// Content (Received header included) of at least / at most so many bytes.
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
}

/// The query keys of a filter (the admin API's and the command line's `--KEY`).
pub const FILTER_KEYS: [&str; 8] =
    ["sender", "recipient", "domain", "state", "older_than", "newer_than", "min_size", "max_size"];

impl QueueFilter {
    /// True when it selects every message.
    pub fn is_empty(&self) -> bool {
        *self == QueueFilter::default()
    }

    /// Sets criterion `key` from its text (`older_than=2h`, `max_size=10M`, `state=held`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let duration = |v: &str| {
            crate::util::units::parse_duration(v).ok_or_else(|| format!("{key}: {v:?} is not a duration (30m, 2h, 5d)"))
        };
        let size = |v: &str| {
            crate::util::units::parse_size(v).ok_or_else(|| format!("{key}: {v:?} is not a size (512K, 10M)"))
        };
        let text = |v: &str| match v.trim() {
            "" => Err(format!("{key}: empty")),
            t => Ok(Some(t.to_ascii_lowercase())),
        };
        match key {
            "sender" => self.sender = text(value)?,
            "recipient" => self.recipient = text(value)?,
            "domain" => self.domain = text(value)?.map(|d| d.trim_end_matches('.').to_string()),
            "state" => {
                self.state = Some(
                    State::parse(value)
                        .ok_or_else(|| format!("state: {value:?} is not one of queued, deferred, quarantined, held"))?,
                )
            }
            "older_than" => self.older_than = Some(duration(value)?),
            "newer_than" => self.newer_than = Some(duration(value)?),
            "min_size" => self.min_size = Some(size(value)?),
            "max_size" => self.max_size = Some(size(value)?),
            other => return Err(format!("unknown filter {other:?} (one of {})", FILTER_KEYS.join(", "))),
        }
        Ok(())
    }

    /// The filter as query pairs (what [`QueueFilter::set`] takes back).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let secs = |d: &Duration| format!("{}s", d.as_secs());
        let mut v = Vec::new();
        let mut add = |k, x: Option<String>| {
            if let Some(x) = x {
                v.push((k, x));
            }
        };
        add("sender", self.sender.clone());
        add("recipient", self.recipient.clone());
        add("domain", self.domain.clone());
        add("state", self.state.map(|s| s.name().to_string()));
        add("older_than", self.older_than.as_ref().map(secs));
        add("newer_than", self.newer_than.as_ref().map(secs));
        add("min_size", self.min_size.map(|n| n.to_string()));
        add("max_size", self.max_size.map(|n| n.to_string()));
        v
    }

    /// Does `m` (as read at `now_ms`) meet every criterion?
    pub fn matches(&self, m: &StoredMessage, now_ms: u64) -> bool {
        let e = &m.envelope;
        let age = Duration::from_millis(now_ms.saturating_sub(e.received_ms));
        if self.older_than.is_some_and(|d| age < d) || self.newer_than.is_some_and(|d| age > d) {
            return false;
        }
        if self.min_size.is_some_and(|n| m.content_len < n) || self.max_size.is_some_and(|n| m.content_len > n) {
            return false;
        }
        if let Some(s) = &self.sender {
            let ok = match s.as_str() {
                "<>" => e.from.is_empty(),
                s => e.from.to_ascii_lowercase().contains(s),
            };
            if !ok {
                return false;
            }
        }
        if self.state.is_some_and(|s| State::of(m) != s) {
            return false;
        }
        if self.recipient.is_none() && self.domain.is_none() {
            return true;
        }
        let latest = m.latest_marks();
        e.rcpts.iter().enumerate().any(|(i, r)| {
            let open = !latest.get(i).copied().flatten().is_some_and(|k| k.status.is_final());
            let a = r.address.to_ascii_lowercase();
            open && self.recipient.as_ref().is_none_or(|x| a.contains(x.as_str()))
                && self.domain.as_ref().is_none_or(|d| a.rsplit_once('@').is_some_and(|(_, ad)| ad == d))
        })
    }
}

/// One page of a selection: the messages (as `queue list --json` prints them) and the id to
/// start the next page after, when there are more.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Page {
    pub messages: Vec<serde_json::Value>,
    pub next: Option<String>,
}

/// The most a page holds.
pub const MAX_PAGE: usize = 1000;

/// Walks the queued messages in id order, from after `after`, loading each; `visit` returns
/// false to stop.
pub fn each_after(
    spool: &Path,
    after: Option<QueueId>,
    visit: impl FnMut(&StoredMessage) -> Result<bool, AdminError>,
) -> Result<(), AdminError> {
    each_in(&Listing::read(spool)?, spool, after, visit)
}

/// One reading of the spool: every queued message's place and latest marks, in id order
/// (the envelopes stay on disk until a page loads them).
#[derive(Debug)]
pub struct Listing {
    messages: Vec<crate::spool::Listed>,
}

impl Listing {
    /// Replays the spool.
    pub fn read(spool: &Path) -> Result<Listing, AdminError> {
        let mut rec = crate::spool::recover_listing(spool)?;
        rec.messages.sort_unstable_by_key(|l| l.id);
        Ok(Listing { messages: rec.messages })
    }
}

/// [`each_after`] on a listing read before.
pub fn each_in(
    listing: &Listing,
    spool: &Path,
    after: Option<QueueId>,
    mut visit: impl FnMut(&StoredMessage) -> Result<bool, AdminError>,
) -> Result<(), AdminError> {
    let start = after.map_or(0, |a| listing.messages.partition_point(|l| l.id <= a));
    let mut reader = RecordReader::new(spool);
    for listed in &listing.messages[start..] {
        // A running server may have retired the segment meanwhile: the message is finished.
        let Ok(m) = listed.load(&mut reader) else { continue };
        if !visit(&m)? {
            break;
        }
    }
    Ok(())
}

/// Up to `limit` (at most [`MAX_PAGE`]) messages `filter` selects, after `after`, from a
/// reading of the spool ([`Listing::read`]).
pub fn page_in(
    listing: &Listing,
    spool: &Path,
    filter: &QueueFilter,
    after: Option<QueueId>,
    limit: usize,
    now_ms: u64,
) -> Result<Page, AdminError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut page = Page::default();
    let mut last = None;
    each_in(listing, spool, after, |m| {
        if !filter.matches(m, now_ms) {
            return Ok(true);
        }
        if page.messages.len() == limit {
            page.next = last.map(|id: QueueId| id.to_string());
            return Ok(false);
        }
        page.messages.push(super::message_json(m));
        last = Some(m.envelope.id);
        Ok(true)
    })?;
    Ok(page)
}

/// Every message `filter` selects, as `visit` takes them (`queue list` without paging).
pub fn each(
    spool: &Path,
    filter: &QueueFilter,
    now_ms: u64,
    mut visit: impl FnMut(&StoredMessage) -> Result<(), AdminError>,
) -> Result<(), AdminError> {
    each_after(spool, None, |m| {
        if filter.matches(m, now_ms) {
            visit(m)?;
        }
        Ok(true)
    })
}

/// The ids of every message `filter` selects (what a bulk operation applies to).
pub fn ids(spool: &Path, filter: &QueueFilter, now_ms: u64) -> Result<Vec<QueueId>, AdminError> {
    let mut v = Vec::new();
    each(spool, filter, now_ms, |m| {
        v.push(m.envelope.id);
        Ok(())
    })?;
    Ok(v)
}

/// The wall clock in Unix milliseconds (what ages are measured from).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_round_trip_through_their_pairs() {
        let mut f = QueueFilter::default();
        for (k, v) in [
            ("sender", "A@X.test"),
            ("domain", "Dest.test."),
            ("state", "held"),
            ("older_than", "2h"),
            ("max_size", "10K"),
        ] {
            f.set(k, v).unwrap();
        }
        assert_eq!(f.sender.as_deref(), Some("a@x.test"));
        assert_eq!(f.domain.as_deref(), Some("dest.test"));
        let mut g = QueueFilter::default();
        for (k, v) in f.pairs() {
            g.set(k, &v).unwrap();
        }
        assert_eq!(f, g);
        assert!(f.set("colour", "red").unwrap_err().contains("unknown filter"));
        assert!(f.set("state", "lost").unwrap_err().contains("not one of"));
        assert!(f.set("older_than", "soon").unwrap_err().contains("not a duration"));
    }
}

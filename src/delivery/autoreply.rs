//! Automatic replies (RFC 3834): whether a message may be answered, and the answer.
//!
//! Pure: the caller passes the time and ids in, and keeps the "once per sender per period"
//! memory ([`ReplyMemory`]).

use crate::spool::header_value;
use crate::util::time::rfc5322;
use std::collections::HashMap;
use std::time::Duration;

/// Why no automatic reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The reverse path is null (RFC 3834 §2: never reply to it).
    NullSender,
    /// `Auto-Submitted` other than `no` (§2, §5).
    AutoSubmitted,
    /// A mailing list or bulk message: `List-*` fields or `Precedence: bulk|list|junk` (§2).
    ListOrBulk,
    /// A sender that is itself an automaton (`MAILER-DAEMON`, `owner-*`, `*-request`, …).
    AutomatonSender,
    /// This sender was answered within the period.
    RecentlyAnswered,
}

/// Decides whether a message to a mailbox with an auto-responder gets a reply.
/// `head` is the start of the message (its header section).
pub fn should_reply(envelope_sender: &str, head: &[u8]) -> Result<(), Skip> {
    if envelope_sender.is_empty() {
        return Err(Skip::NullSender);
    }
    if header_value(head, "Auto-Submitted").is_some_and(|v| !v.trim().eq_ignore_ascii_case("no")) {
        return Err(Skip::AutoSubmitted);
    }
    for list in ["List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe", "List-Post", "List-Owner"] {
        if header_value(head, list).is_some() {
            return Err(Skip::ListOrBulk);
        }
    }
    if header_value(head, "Precedence")
        .is_some_and(|v| ["bulk", "list", "junk"].iter().any(|p| v.trim().eq_ignore_ascii_case(p)))
    {
        return Err(Skip::ListOrBulk);
    }
    let local = envelope_sender.rsplit_once('@').map_or(envelope_sender, |(l, _)| l).to_ascii_lowercase();
    if ["mailer-daemon", "postmaster", "listserv", "majordomo", "noreply", "no-reply"].contains(&local.as_str())
        || local.starts_with("owner-")
        || local.ends_with("-request")
        || local.ends_with("-owner")
    {
        return Err(Skip::AutomatonSender);
    }
    Ok(())
}

/// What the reply says.
#[derive(Debug, Clone)]
pub struct ReplyInput<'a> {
    /// The mailbox's address (From).
    pub from: &'a str,
    /// The original envelope sender (To).
    pub to: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub reply_to: Option<&'a str>,
    /// The original header section, for In-Reply-To and References.
    pub original_head: &'a [u8],
    pub now_ms: u64,
    /// Without angle brackets.
    pub message_id: &'a str,
}

/// The reply message, CRLF line ends. Its envelope sender should be null (RFC 3834 §3.3).
pub fn build(r: &ReplyInput<'_>) -> Vec<u8> {
    let clean = |s: &str| s.chars().filter(|&c| c != '\r' && c != '\n').collect::<String>();
    let mut m = String::with_capacity(512 + r.body.len());
    m.push_str(&format!("From: <{}>\r\n", clean(r.from)));
    m.push_str(&format!("To: <{}>\r\n", clean(r.to)));
    let subject = if r.subject.is_empty() {
        let original = header_value(r.original_head, "Subject").unwrap_or_default();
        format!("Auto: {}", clean(&original))
    } else {
        clean(r.subject)
    };
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", rfc5322(r.now_ms / 1000)));
    m.push_str(&format!("Message-ID: <{}>\r\n", clean(r.message_id)));
    if let Some(id) = header_value(r.original_head, "Message-ID") {
        let id = clean(&id);
        m.push_str(&format!("In-Reply-To: {id}\r\n"));
        let refs = header_value(r.original_head, "References").map(|v| clean(&v));
        match refs {
            Some(refs) => m.push_str(&format!("References: {refs} {id}\r\n")),
            None => m.push_str(&format!("References: {id}\r\n")),
        }
    }
    if let Some(rt) = r.reply_to {
        m.push_str(&format!("Reply-To: <{}>\r\n", clean(rt)));
    }
    // RFC 3834 §5: marks the message as an automatic response.
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str(
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    for line in r.body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// "Once per sender per period" (RFC 3834 §2: SHOULD NOT reply more than once within a
/// period): when each (mailbox, sender) pair was last answered.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReplyMemory {
    last: HashMap<String, u64>,
}

impl ReplyMemory {
    /// Records a reply now unless one went to this sender within `period`.
    pub fn try_record(&mut self, mailbox: &str, sender: &str, now_ms: u64, period: Duration) -> Result<(), Skip> {
        let key = format!("{}\n{}", mailbox.to_ascii_lowercase(), sender.to_ascii_lowercase());
        if let Some(&t) = self.last.get(&key)
            && now_ms < t + period.as_millis() as u64
        {
            return Err(Skip::RecentlyAnswered);
        }
        self.last.insert(key, now_ms);
        // Forget what is older than the period, so the memory stays small.
        let horizon = now_ms.saturating_sub(period.as_millis() as u64);
        self.last.retain(|_, t| *t >= horizon);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_gets_no_reply() {
        let plain = b"Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nbody";
        assert_eq!(should_reply("x@remote.example", plain), Ok(()));
        assert_eq!(should_reply("", plain), Err(Skip::NullSender));
        assert_eq!(should_reply("x@r.example", b"Auto-Submitted: auto-replied\r\n\r\n"), Err(Skip::AutoSubmitted));
        assert_eq!(should_reply("x@r.example", b"Auto-Submitted: no\r\n\r\n"), Ok(()));
        assert_eq!(should_reply("x@r.example", b"List-Id: <l.example>\r\n\r\n"), Err(Skip::ListOrBulk));
        assert_eq!(should_reply("x@r.example", b"Precedence: bulk\r\n\r\n"), Err(Skip::ListOrBulk));
        assert_eq!(should_reply("MAILER-DAEMON@r.example", plain), Err(Skip::AutomatonSender));
        assert_eq!(should_reply("owner-list@r.example", plain), Err(Skip::AutomatonSender));
        assert_eq!(should_reply("list-request@r.example", plain), Err(Skip::AutomatonSender));
        // A List- header in the body does not count.
        assert_eq!(should_reply("x@r.example", b"Subject: s\r\n\r\nList-Id: <x>\r\n"), Ok(()));
    }

    #[test]
    fn reply_message() {
        let m = build(&ReplyInput {
            from: "bob@example.net",
            to: "x@remote.example",
            subject: "",
            body: "I am away.\nBack Monday.",
            reply_to: Some("desk@example.net"),
            original_head: b"Subject: Lunch?\r\nMessage-ID: <m1@remote.example>\r\n\r\n",
            now_ms: 1_795_321_697_000,
            message_id: "r1@example.net",
        });
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "From: <bob@example.net>\r\nTo: <x@remote.example>\r\nSubject: Auto: Lunch?\r\n\
             Date: Sun, 22 Nov 2026 04:28:17 +0000\r\nMessage-ID: <r1@example.net>\r\n\
             In-Reply-To: <m1@remote.example>\r\nReferences: <m1@remote.example>\r\n\
             Reply-To: <desk@example.net>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             I am away.\r\nBack Monday.\r\n"
        );
    }

    #[test]
    fn once_per_sender_per_period() {
        let mut m = ReplyMemory::default();
        let day = Duration::from_secs(86_400);
        assert_eq!(m.try_record("bob@x", "a@r", 1_000, day), Ok(()));
        assert_eq!(m.try_record("bob@x", "A@R", 2_000, day), Err(Skip::RecentlyAnswered));
        assert_eq!(m.try_record("bob@x", "c@r", 2_000, day), Ok(()));
        assert_eq!(m.try_record("bob@x", "a@r", 1_000 + 86_400_000, day), Ok(()));
    }
}

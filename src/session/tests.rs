//! Session tests on a simulated clock: a scripted client against the state machine, with
//! the spool answered in-line.

use super::*;
use crate::spool::QueueId;

/// A session plus a simulated clock and a spool that answers when told to.
struct Harness {
    s: Session,
    now: Now,
    /// Messages spooled so far.
    spooled: Vec<SpoolRequest>,
    /// Answer spool requests at once (else they wait for `complete_spool`).
    auto_spool: bool,
    waiting: Option<Box<SpoolRequest>>,
    closed: bool,
    starttls: bool,
}

/// A directory with one postoffice: example.net has mailbox `alice` (and a disabled `bob`);
/// example.test stays an accept-all domain of the configuration.
fn directory() -> Arc<Directory> {
    let data = serde_json::from_value(serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.net", "postoffice": "po"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "bob", "disabled": true, "addresses": ["bob@example.net"]}
        ]
    }))
    .unwrap();
    Arc::new(Directory::build(data).unwrap())
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example.test".into(),
        local_domains: ["example.test".to_string()].into_iter().collect(),
        ..SessionConfig::default()
    }
}

impl Harness {
    fn new(cfg: SessionConfig) -> Self {
        let now = Now::system();
        let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
        let s = Session::new(Arc::new(cfg), ids, directory(), "192.0.2.7:40000".parse().unwrap(), None, now);
        let mut h =
            Harness { s, now, spooled: Vec::new(), auto_spool: true, waiting: None, closed: false, starttls: false };
        let greeting = h.take_output();
        assert!(greeting.starts_with("220 mx.example.test "), "{greeting}");
        h
    }

    fn take_output(&mut self) -> String {
        let out = std::mem::take(self.s.output());
        self.drain_actions();
        String::from_utf8(out).unwrap()
    }

    fn drain_actions(&mut self) {
        while let Some(a) = self.s.poll_action() {
            match a {
                Action::Spool(req) => {
                    if self.auto_spool {
                        let id = req.envelope.id;
                        let data = req.data.clone();
                        self.spooled.push(*req);
                        self.s.spool_done(self.now, Ok(id), data);
                    } else {
                        self.waiting = Some(req);
                    }
                }
                Action::Close => self.closed = true,
                Action::StartTls => self.starttls = true,
            }
        }
    }

    /// Sends bytes; returns every reply they caused.
    fn send(&mut self, input: &str) -> String {
        self.send_bytes(input.as_bytes())
    }

    fn send_bytes(&mut self, input: &[u8]) -> String {
        self.s.handle_input(self.now, input);
        let mut all = self.take_output();
        // Spool answers can release further pipelined replies.
        all.push_str(&self.take_output());
        all
    }

    fn complete_spool(&mut self, result: Result<QueueId, Reply>) -> String {
        let req = self.waiting.take().expect("a spool request");
        let data = req.data.clone();
        if result.is_ok() {
            self.spooled.push(*req);
        }
        self.s.spool_done(self.now, result, data);
        self.take_output()
    }

    fn ehlo(&mut self) {
        let r = self.send("EHLO client.example\r\n");
        assert!(r.starts_with("250-mx.example.test\r\n"), "{r}");
    }
}

/// Reply codes in order, e.g. `["250", "354"]`.
fn codes(replies: &str) -> Vec<&str> {
    replies.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| &l[..3]).collect()
}

#[test]
fn ehlo_advertises_extensions() {
    let mut h = Harness::new(cfg());
    let r = h.send("EHLO client.example\r\n");
    for ext in ["PIPELINING", "SIZE 10485760", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"] {
        assert!(r.contains(&format!("250-{ext}\r\n")) || r.contains(&format!("250 {ext}\r\n")), "{ext} in {r}");
    }
    assert!(!r.contains("STARTTLS"));
    let mut h = Harness::new(SessionConfig { starttls: true, ..cfg() });
    assert!(h.send("EHLO c\r\n").contains("250 STARTTLS\r\n"));
    // HELO gets a one-line reply and no extensions.
    let mut h = Harness::new(cfg());
    assert_eq!(h.send("HELO c\r\n"), "250 mx.example.test\r\n");
}

#[test]
fn one_message_with_received_header() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    assert_eq!(h.send("MAIL FROM:<alice@remote.example>\r\n"), "250 2.1.0 Ok\r\n");
    assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), "250 2.1.5 Ok\r\n");
    assert_eq!(h.send("DATA\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n");
    let r = h.send("Subject: hi\r\n\r\n..dotted\r\nbody\r\n.\r\n");
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let m = &h.spooled[0];
    assert_eq!(r.trim_end().rsplit(' ').next().unwrap(), m.envelope.id.to_string());
    assert_eq!(m.envelope.from, "alice@remote.example");
    assert_eq!(m.envelope.rcpts[0].address, "bob@example.test");
    let text = String::from_utf8(m.data.clone()).unwrap();
    assert!(
        text.starts_with(
            "Received: from client.example (unknown [192.0.2.7])\r\n\tby mx.example.test (ringmx) with ESMTP id "
        ),
        "{text}"
    );
    assert!(text.contains("\r\n\tfor <bob@example.test>; "), "{text}");
    assert!(text.ends_with(" +0000\r\nSubject: hi\r\n\r\n.dotted\r\nbody\r\n"), "{text}");
    assert_eq!(h.s.messages_accepted(), 1);
}

#[test]
fn sequencing_errors_are_503() {
    let mut h = Harness::new(cfg());
    assert_eq!(h.send("MAIL FROM:<a@b.example>\r\n"), "503 5.5.1 Error: send HELO/EHLO first\r\n");
    h.ehlo();
    assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
    assert_eq!(h.send("DATA\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
    h.send("MAIL FROM:<a@b.example>\r\n");
    assert_eq!(h.send("MAIL FROM:<a@b.example>\r\n"), "503 5.5.1 Error: nested MAIL command\r\n");
    assert_eq!(h.send("DATA\r\n"), "554 5.5.1 Error: no valid recipients\r\n");
    assert_eq!(h.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
    assert_eq!(h.send("FOO\r\n"), "500 5.5.2 Syntax error, command unrecognized\r\n");
    assert_eq!(h.send("VRFY bob\r\n"), "502 5.5.1 Error: command not implemented\r\n");
    assert_eq!(h.send("QUIT\r\n"), "221 2.0.0 mx.example.test Bye\r\n");
    assert!(h.closed);
}

/// RFC 2920: all replies of a pipelined group come back in order, in one output.
#[test]
fn pipelined_group_replies_in_order() {
    let mut h = Harness::new(cfg());
    let r = h.send(
        "EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@elsewhere.example>\r\nRCPT TO:<z@example.test>\r\nDATA\r\n",
    );
    assert_eq!(codes(&r), ["250", "250", "250", "550", "250", "354"]);
    assert!(r.contains("550 5.7.1 Error: relay access denied\r\n"));
    // End of data, then the next transaction pipelined behind it while the spool works.
    h.auto_spool = false;
    let r = h.send("hello\r\n.\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\n");
    assert_eq!(r, "", "nothing may be answered before the message is durable");
    let r = h.complete_spool(Ok(QueueId(42)));
    assert_eq!(codes(&r), ["250", "250", "250"]);
    assert!(r.starts_with("250 2.0.0 Ok: queued as 000000000000002A\r\n"), "{r}");
    assert_eq!(h.spooled[0].envelope.rcpts.len(), 2);
}

#[test]
fn spool_failure_is_a_temporary_error() {
    let mut h = Harness::new(cfg());
    h.auto_spool = false;
    h.send("EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    h.send("x\r\n.\r\n");
    let r = h.complete_spool(Err(Reply::new(451, "4.3.0", "Error: queue file write error")));
    assert_eq!(r, "451 4.3.0 Error: queue file write error\r\n");
    assert!(h.spooled.is_empty());
    // The session goes on.
    assert_eq!(h.send("MAIL FROM:<a@remote.example>\r\n"), "250 2.1.0 Ok\r\n");
}

/// RFC 5321 §4.5.3.2: an idle client is dropped with 421 when its time-out passes.
#[test]
fn command_and_data_timeouts() {
    let c = SessionConfig { command_timeout: Duration::from_secs(10), data_timeout: Duration::from_secs(3), ..cfg() };
    let mut h = Harness::new(c.clone());
    let deadline = h.s.poll_timeout().unwrap();
    assert_eq!(deadline, h.now.mono + Duration::from_secs(10));
    h.now = h.now.advance(Duration::from_secs(9));
    h.s.handle_timeout(h.now);
    assert_eq!(h.take_output(), "");
    h.now = h.now.advance(Duration::from_secs(1));
    h.s.handle_timeout(h.now);
    assert_eq!(h.take_output(), "421 4.4.2 mx.example.test Error: timeout exceeded\r\n");
    assert!(h.closed);

    // In DATA the (shorter) data time-out applies, renewed by every block received.
    let mut h = Harness::new(c);
    h.send("EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    h.now = h.now.advance(Duration::from_secs(2));
    h.send("partial content\r\n");
    assert_eq!(h.s.poll_timeout(), Some(h.now.mono + Duration::from_secs(3)));
    h.now = h.now.advance(Duration::from_secs(3));
    h.s.handle_timeout(h.now);
    assert!(h.take_output().starts_with("421 4.4.2"));
    assert!(h.spooled.is_empty());
}

#[test]
fn line_too_long_then_recovers() {
    let mut h = Harness::new(SessionConfig { max_line: 512, ..cfg() });
    h.ehlo();
    let long = format!("MAIL FROM:<{}@example.test>\r\n", "a".repeat(600));
    assert_eq!(h.send(&long), "500 5.5.2 Error: line too long\r\n");
    // Also when the long line arrives in pieces.
    assert_eq!(h.send(&"x".repeat(300)), "");
    assert_eq!(h.send(&"x".repeat(300)), "500 5.5.2 Error: line too long\r\n");
    assert_eq!(h.send("still the long line\r\nNOOP\r\n"), "250 2.0.0 Ok\r\n");
}

#[test]
fn too_many_recipients_452() {
    let mut h = Harness::new(SessionConfig { max_recipients: 2, max_errors: 0, ..cfg() });
    h.ehlo();
    let r = h.send(
        "MAIL FROM:<a@r.example>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n",
    );
    assert_eq!(codes(&r), ["250", "250", "250", "452"]);
    assert!(r.ends_with("452 4.5.3 Error: too many recipients\r\n"));
}

/// RFC 1870: SIZE above the limit is refused at MAIL; a body over the limit is read to the
/// end and refused, nothing kept.
#[test]
fn size_limits_552() {
    let mut h = Harness::new(SessionConfig { max_message_size: 100, ..cfg() });
    h.ehlo();
    assert_eq!(
        h.send("MAIL FROM:<a@r.example> SIZE=101\r\n"),
        "552 5.3.4 Error: message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(h.send("MAIL FROM:<a@r.example> SIZE=100\r\n"), "250 2.1.0 Ok\r\n");
    h.send("RCPT TO:<x@example.test>\r\nDATA\r\n");
    let body = format!("{}\r\n", "y".repeat(150));
    assert_eq!(h.send(&body), "");
    assert_eq!(h.send(".\r\n"), "552 5.3.4 Error: message size exceeds fixed maximum message size\r\n");
    assert!(h.spooled.is_empty());
    // Exactly at the limit passes (content of 100 bytes).
    h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    let r = h.send(&format!("{}\r\n.\r\n", "z".repeat(98)));
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

/// SMTP smuggling: `LF . LF` and friends do not end DATA; the message is refused at the real
/// end, and the smuggled "commands" were never run.
#[test]
fn smuggling_is_refused() {
    for trick in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r"] {
        let mut h = Harness::new(cfg());
        h.send("EHLO c\r\nMAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
        let r = h.send(&format!("first{trick}MAIL FROM:<evil@r.example>\r\nRCPT TO:<y@example.test>\r\nDATA\r\n"));
        assert_eq!(r, "", "{trick:?}");
        let r = h.send("smuggled\r\n.\r\n");
        assert_eq!(r, "554 5.5.2 Error: bare CR or LF in message content (RFC 5321 section 2.3.8)\r\n", "{trick:?}");
        assert!(h.spooled.is_empty());
    }
    // With the policy relaxed, the bytes are kept as they are.
    let mut h = Harness::new(SessionConfig { bare_line_policy: BareLinePolicy::Allow, ..cfg() });
    h.send("EHLO c\r\nMAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    assert!(h.send("a\nb\r\n.\r\n").starts_with("250 "));
    assert!(h.spooled[0].data.ends_with(b"a\nb\r\n"));
}

#[test]
fn bdat_chunks_and_last() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    let r = h.send("MAIL FROM:<a@r.example> BODY=BINARYMIME\r\nRCPT TO:<x@example.test>\r\nBDAT 5\r\nhel\r\n");
    assert_eq!(codes(&r), ["250", "250", "250"]);
    assert!(r.ends_with("250 2.0.0 Ok: 5 octets received\r\n"), "{r}");
    let r = h.send("BDAT 3 LAST\r\nlo\n");
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    assert!(h.spooled[0].data.ends_with(b"hel\r\nlo\n"));
    // DATA is refused for BINARYMIME; BDAT 0 LAST ends an empty-tail message.
    let r = h.send("MAIL FROM:<a@r.example> BODY=BINARYMIME\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
    assert!(r.ends_with("503 5.5.1 Error: BINARYMIME requires BDAT\r\n"), "{r}");
    let r = h.send("BDAT 2\r\nabBDAT 0 LAST\r\n");
    assert!(r.contains("250 2.0.0 Ok: 2 octets received\r\n250 2.0.0 Ok: queued as"), "{r}");
    assert!(h.spooled[1].data.ends_with(b"\r\nab"));
}

#[test]
fn bdat_without_transaction_reads_and_drops_the_chunk() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    // The chunk's bytes look like commands; they must not be run.
    assert_eq!(h.send("BDAT 6\r\nQUIT\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
    assert!(!h.closed);
    let r = h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<x@nowhere.example>\r\nBDAT 4 LAST\r\nabcd");
    assert!(r.ends_with("554 5.5.1 Error: no valid recipients\r\n"), "{r}");
    assert!(h.spooled.is_empty());
    assert_eq!(h.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

#[test]
fn bdat_over_size_limit() {
    let mut h = Harness::new(SessionConfig { max_message_size: 10, ..cfg() });
    h.ehlo();
    let r =
        h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\nBDAT 20 LAST\r\n01234567890123456789NOOP\r\n");
    assert_eq!(codes(&r), ["250", "250", "552", "250"], "{r}");
    assert!(h.spooled.is_empty());
}

/// RFC 3207 §4.2: commands pipelined after STARTTLS are thrown away, and the session starts
/// over after the handshake.
#[test]
fn starttls_discards_pipelined_input() {
    let mut h = Harness::new(SessionConfig { starttls: true, ..cfg() });
    h.ehlo();
    let r = h.send("STARTTLS\r\nMAIL FROM:<a@r.example>\r\n");
    assert_eq!(r, "220 2.0.0 Ready to start TLS\r\n");
    assert!(h.starttls);
    assert_eq!(h.send("RCPT TO:<x@example.test>\r\n"), "");
    h.s.tls_established(h.now, TlsInfo { version: "TLSv1_3".into(), cipher: "TLS13_AES_128_GCM_SHA256".into() });
    assert_eq!(h.send("MAIL FROM:<a@r.example>\r\n"), "503 5.5.1 Error: send HELO/EHLO first\r\n");
    let r = h.send("EHLO c\r\n");
    assert!(!r.contains("STARTTLS"));
    h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nx\r\n.\r\n");
    let text = String::from_utf8(h.spooled[0].data.clone()).unwrap();
    assert!(text.contains("(using TLSv1_3 with cipher TLS13_AES_128_GCM_SHA256)"), "{text}");
    assert!(text.contains(" with ESMTPS id "), "{text}");
    assert_eq!(h.send("STARTTLS\r\n"), "503 5.5.1 Error: TLS already active\r\n");
}

#[test]
fn postmaster_and_relay() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    // RFC 5321 §4.5.1: postmaster, with or without a domain, in any case.
    assert_eq!(h.send("RCPT TO:<Postmaster>\r\n"), "250 2.1.5 Ok\r\n");
    assert_eq!(h.send("RCPT TO:<postmaster@EXAMPLE.TEST>\r\n"), "250 2.1.5 Ok\r\n");
    for relay in [
        "<user@remote.example>",
        "<user%remote.example@elsewhere.example>",
        "<@example.test:user@remote.example>",
        "<user@[192.0.2.1]>",
    ] {
        assert_eq!(h.send(&format!("RCPT TO:{relay}\r\n")), "550 5.7.1 Error: relay access denied\r\n", "{relay}");
    }
}

#[test]
fn non_ascii_needs_smtputf8() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    assert_eq!(
        h.send("MAIL FROM:<jörg@r.example>\r\n"),
        "553 5.6.7 Error: non-ASCII sender address needs SMTPUTF8\r\n"
    );
    assert_eq!(h.send("MAIL FROM:<a@r.example>\r\n"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        h.send("RCPT TO:<jörg@example.test>\r\n"),
        "553 5.6.7 Error: non-ASCII recipient address needs SMTPUTF8\r\n"
    );
    h.send("RSET\r\nMAIL FROM:<jörg@r.example> SMTPUTF8\r\nRCPT TO:<jörg@example.test>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(h.spooled.len(), 1);
    assert!(String::from_utf8_lossy(&h.spooled[0].data).contains(" with UTF8SMTP id "));
}

#[test]
fn too_many_errors_drop_the_connection() {
    let mut h = Harness::new(SessionConfig { max_errors: 3, ..cfg() });
    let r = h.send("FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n");
    assert_eq!(codes(&r), ["500", "500", "500", "421"]);
    assert!(r.ends_with("421 4.7.0 mx.example.test Error: too many errors\r\n"));
    assert!(h.closed);
}

/// The whole conversation split at every byte offset gives the same replies and the same
/// stored message.
#[test]
fn every_split_gives_the_same_conversation() {
    let script = "EHLO c\r\nMAIL FROM:<a@r.example> SIZE=40\r\nRCPT TO:<x@example.test>\r\nDATA\r\n\
                  ..one\r\ntwo\r\n.\r\nMAIL FROM:<b@r.example>\r\nRCPT TO:<y@example.test>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\nde\
                  NOOP\r\nQUIT\r\n";
    let run = |cuts: &[usize]| {
        let mut h = Harness::new(cfg());
        let mut replies = String::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&script.len())) {
            replies.push_str(&h.send_bytes(&script.as_bytes()[start..c]));
            start = c;
        }
        let bodies: Vec<Vec<u8>> = h
            .spooled
            .iter()
            .map(|m| {
                // The Received header carries the time and id; compare what follows it.
                let d = &m.data;
                let end = d.windows(7).position(|w| w == b"+0000\r\n").unwrap() + 7;
                d[end..].to_vec()
            })
            .collect();
        let replies: String = replies
            .lines()
            .map(|l| if l.contains("queued as") { "250 queued\n".to_string() } else { format!("{l}\n") })
            .collect();
        (replies, bodies, h.closed)
    };
    let whole = run(&[]);
    assert_eq!(whole.1, vec![b".one\r\ntwo\r\n".to_vec(), b"abcde".to_vec()]);
    assert!(whole.2);
    for a in 0..=script.len() {
        assert_eq!(run(&[a]), whole, "split at {a}");
    }
}

/// Directory domains get the directory's verdict at RCPT; accept-all domains of the
/// configuration take any address; anything else is relaying.
#[test]
fn rcpt_uses_the_directory() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert_eq!(h.send("RCPT TO:<alice@example.net>\r\n"), "250 2.1.5 Ok\r\n");
    assert_eq!(h.send("RCPT TO:<ALICE@Example.NET>\r\n"), "250 2.1.5 Ok\r\n");
    assert!(h.send("RCPT TO:<nobody@example.net>\r\n").starts_with("550 5.1.1 "));
    assert!(h.send("RCPT TO:<bob@example.net>\r\n").starts_with("550 5.2.1 "));
    assert_eq!(h.send("RCPT TO:<postmaster@example.net>\r\n"), "250 2.1.5 Ok\r\n");
    assert_eq!(h.send("RCPT TO:<anyone@example.test>\r\n"), "250 2.1.5 Ok\r\n");
    assert_eq!(h.send("RCPT TO:<x@example.org>\r\n"), "550 5.7.1 Error: relay access denied\r\n");
}

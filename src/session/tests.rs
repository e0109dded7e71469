//! Session tests on a simulated clock: a scripted client against the state machine, with
//! the spool answered in-line.

use super::*;
use crate::spool::QueueId;

/// A session plus a simulated clock and a spool that answers when told to.
struct Harness {
    s: Session,
    now: Now,
    /// Messages spooled so far.
    spooled: Vec<NewMessage>,
    /// Answer spool requests at once (else they wait for `complete_spool`).
    auto_spool: bool,
    waiting: Option<Box<NewMessage>>,
    closed: bool,
    starttls: bool,
    /// DNS questions asked and not yet answered.
    queries: Vec<crate::dns::DnsQuery>,
    /// Password checks asked and not yet answered.
    auth_requests: Vec<crate::policy::auth::AuthRequest>,
    /// Policy services asked and not yet answered: the request and the service's index.
    delegations: Vec<(crate::policy::delegation::Request, usize)>,
    /// Activity-log lines the session asked for.
    activity: Vec<String>,
    /// SPF checks asked and not yet answered.
    spf: Vec<crate::policy::spf::Request>,
    /// DKIM/DMARC verifications asked and not yet answered.
    dkim: Vec<crate::policy::dkim::Request>,
    /// Milter steps asked, as lines (`open INDEX SENDER`, `rcpt INDEX ADDRESS`,
    /// `content INDEX`, `abort`).
    milters: Vec<String>,
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
        let s = Session::new(Arc::new(cfg), ids, directory(), "192.0.2.7:40000".parse().unwrap(), None, now, 0);
        let mut h = Harness {
            s,
            now,
            spooled: Vec::new(),
            auto_spool: true,
            waiting: None,
            closed: false,
            starttls: false,
            queries: Vec::new(),
            auth_requests: Vec::new(),
            delegations: Vec::new(),
            activity: Vec::new(),
            spf: Vec::new(),
            dkim: Vec::new(),
            milters: Vec::new(),
        };
        let greeting = h.take_output();
        assert!(greeting.starts_with("220 mx.example.test "), "{greeting}");
        h
    }

    fn take_output(&mut self) -> String {
        // As the driver does before it sends the output.
        self.s.flushed(self.now);
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
                Action::Resolve(q) => self.queries.push(q),
                Action::Authenticate(req) => self.auth_requests.push(*req),
                Action::Delegate(req, i) => self.delegations.push((*req, i)),
                Action::MilterOpen(req, i) => self.milters.push(format!("open {i} {}", req.from)),
                Action::MilterRcpt(a, i) => self.milters.push(format!("rcpt {i} {a}")),
                Action::Milter(req, i) => {
                    assert!(!req.message.is_empty());
                    self.milters.push(format!("content {i}"))
                }
                Action::MilterAbort => self.milters.push("abort".into()),
                Action::Spf(req) => self.spf.push(*req),
                Action::Dkim(req) => self.dkim.push(*req),
                Action::Log(a) => self.activity.push(a.line(crate::obs::LogFormat::Kv)),
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
        // Spool answers can release further pipelined replies, and a client that reads its
        // replies lets a session paused on its output go on.
        all.push_str(&self.take_output());
        while self.s.is_paused() {
            self.s.resume(self.now);
            all.push_str(&self.take_output());
        }
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

    // In DATA the (shorter) data time-out applies; without a minimum rate every block
    // renews it.
    let mut h = Harness::new(SessionConfig { min_data_rate: 0, ..c });
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
    let mut h = Harness::new(SessionConfig { max_recipients: 2, ..cfg() });
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

// ---- Policy at the door (SPEC §2–§5) ----

use crate::dns::{DnsAnswer, DnsQuery};
use crate::policy::auth::AuthOutcome;
use crate::policy::{AuthMode, DnsblProvider, InboundAuth, IpList, Policy, PtrCheck, Refusal, RelayRules, Spoofing};

fn b64(s: &[u8]) -> String {
    crate::delivery::client::base64(s)
}

impl Harness {
    /// A session from `peer` whose greeting (if any) is left in the output.
    fn raw(cfg: SessionConfig, peer: &str) -> (Self, String) {
        let now = Now::system();
        let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
        let s = Session::new(Arc::new(cfg), ids, directory(), peer.parse().unwrap(), None, now, 0);
        let mut h = Harness {
            s,
            now,
            spooled: Vec::new(),
            auto_spool: true,
            waiting: None,
            closed: false,
            starttls: false,
            queries: Vec::new(),
            auth_requests: Vec::new(),
            delegations: Vec::new(),
            activity: Vec::new(),
            spf: Vec::new(),
            dkim: Vec::new(),
            milters: Vec::new(),
        };
        let first = h.take_output();
        (h, first)
    }

    fn answer(&mut self, a: DnsAnswer) -> String {
        assert!(!self.queries.is_empty(), "no question was asked");
        self.queries.remove(0);
        self.s.provide_policy_answer(self.now, a);
        self.take_output()
    }

    fn auth(&mut self, outcome: AuthOutcome) -> String {
        assert!(!self.auth_requests.is_empty(), "no password check was asked");
        self.auth_requests.remove(0);
        self.s.auth_done(self.now, outcome);
        self.take_output()
    }
}

fn with_policy(p: Policy) -> SessionConfig {
    SessionConfig { policy: Arc::new(p), ..cfg() }
}

#[test]
fn access_list_refuses_at_connect() {
    let p = Policy { acl: IpList::parse(&["192.0.2.0/24"]).unwrap(), ..Policy::default() };
    let (h, first) = Harness::raw(with_policy(p), "192.0.2.7:1");
    assert_eq!(first, "554 5.7.1 Error: access denied for 192.0.2.7\r\n");
    assert!(h.closed);
    let p = Policy {
        acl_mode: crate::policy::AclMode::AllowOnlyListed,
        acl: IpList::parse(&["198.51.100.*"]).unwrap(),
        ..Policy::default()
    };
    let (h, first) = Harness::raw(with_policy(p.clone()), "192.0.2.7:1");
    assert!(first.starts_with("554 5.7.1 ") && h.closed, "{first}");
    let (h, first) = Harness::raw(with_policy(p), "198.51.100.3:1");
    assert!(first.starts_with("220 ") && !h.closed, "{first}");
}

#[test]
fn alternate_welcome() {
    let p = Policy { welcome: Some("%LOCALDOMAIN% welcomes you at %TIME%".into()), ..Policy::default() };
    let (_, first) = Harness::raw(with_policy(p), "192.0.2.7:1");
    assert!(first.starts_with("220 mx.example.test welcomes you at "), "{first}");
    assert!(first.trim_end().ends_with("+0000"), "{first}");
}

#[test]
fn ehlo_blocking_drops_and_helo_only_clients_work() {
    let p = Policy { ehlo_block: vec!["ylmf-pc".into()], ..Policy::default() };
    let mut h = Harness::new(with_policy(p.clone()));
    assert_eq!(h.send("EHLO YLMF-PC\r\nNOOP\r\n"), "554 5.7.1 Error: HELO/EHLO name refused\r\n");
    assert!(h.closed);
    let mut h = Harness::new(with_policy(p));
    assert_eq!(h.send("HELO client.example\r\n"), "250 mx.example.test\r\n");
    let r = h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.net>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(codes(&r), ["250", "250", "354", "250"]);
    assert!(String::from_utf8_lossy(&h.spooled[0].data).contains(" with SMTP id "));
}

/// With the activity log on, the session reports an accepted message (once its 250 is
/// sent) and a refused client, with the rule that refused it.
#[test]
fn activity_lines_for_a_message_and_a_refusal() {
    let mut h = Harness::new(SessionConfig { activity: true, ..cfg() });
    h.ehlo();
    let r = h.send(
        "MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(codes(&r), ["250", "250", "250", "354", "250"]);
    let id = h.spooled[0].envelope.id;
    let size = h.spooled[0].data.len();
    assert_eq!(h.activity.len(), 1, "{:?}", h.activity);
    let line = h.activity[0].split_once(' ').unwrap().1;
    assert_eq!(
        line,
        format!(
            "received id={id} session=0000000000000000 client=192.0.2.7 helo=client.example from=<a@r.example> \
             rcpts=2 size={size} tls=- auth=-"
        )
    );
    let p = Policy { ehlo_block: vec!["ylmf-pc".into()], ..Policy::default() };
    let mut h = Harness::new(SessionConfig { activity: true, ..with_policy(p) });
    h.send("EHLO YLMF-PC\r\n");
    assert_eq!(h.activity.len(), 1);
    assert!(
        h.activity[0]
            .ends_with(" refused session=0000000000000000 client=192.0.2.7 reason=\"EHLO block\" rule=YLMF-PC"),
        "{:?}",
        h.activity
    );
    assert_eq!(h.s.refusal(), Some(Refusal::EhloBlock));
    // Off: nothing.
    let mut h = Harness::new(cfg());
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(h.activity.is_empty());
}

#[test]
fn disabled_commands_and_vrfy_when_enabled() {
    let mut h = Harness::new(cfg());
    for c in ["VRFY alice", "EXPN staff", "ETRN example.net", "TURN"] {
        assert_eq!(h.send(&format!("{c}\r\n")), "502 5.5.1 Error: command not implemented\r\n", "{c}");
    }
    let p = Policy { disabled_commands: vec!["HELP".into(), "NOOP".into()], ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    assert_eq!(h.send("HELP\r\n"), "502 5.5.1 Error: command not implemented\r\n");
    assert_eq!(h.send("NOOP\r\n"), "502 5.5.1 Error: command not implemented\r\n");
    assert!(h.send("VRFY alice\r\n").starts_with("252 2.5.0 "));
}

#[test]
fn open_relay_attempts_are_refused_and_local_mail_accepted() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    for relay in [
        "<user@remote.example>",
        "<user%remote.example@example.net>",
        "<user%remote.example@example.test>",
        "<@example.net:user@remote.example>",
        "<\"user@remote.example\"@example.test>",
        "<remote.example!user@example.test>",
        "<user@[192.0.2.1]>",
        "<user@[IPv6:2001:db8::1]>",
    ] {
        assert_eq!(h.send(&format!("RCPT TO:{relay}\r\n")), "550 5.7.1 Error: relay access denied\r\n", "{relay}");
    }
    for local in
        ["<alice@example.net>", "<ALICE@EXAMPLE.NET>", "<anyone@Example.Test>", "<@remote.example:alice@example.net>"]
    {
        assert_eq!(h.send(&format!("RCPT TO:{local}\r\n")), "250 2.1.5 Ok\r\n", "{local}");
    }
    // A trailing dot is not RFC 5321 syntax: refused, never relayed.
    assert!(h.send("RCPT TO:<alice@example.net.>\r\n").starts_with("501 5.1.3"));
}

#[test]
fn relay_rules() {
    // Privileged range.
    let p = Policy {
        relay: RelayRules { privileged: IpList::parse(&["192.0.2.0/24"]).unwrap(), ..Default::default() },
        ..Default::default()
    };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert_eq!(h.send("RCPT TO:<user@remote.example>\r\n"), "250 2.1.5 Ok\r\n");
    // Local sender, when allowed; and relay switched off altogether.
    let p = Policy { relay: RelayRules { local_senders: true, ..Default::default() }, ..Default::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert!(h.send("RCPT TO:<user@remote.example>\r\n").starts_with("550 5.7.1"));
    h.send("RSET\r\nMAIL FROM:<alice@example.net>\r\n");
    assert_eq!(h.send("RCPT TO:<user@remote.example>\r\n"), "250 2.1.5 Ok\r\n");
    let p = Policy {
        relay: RelayRules { enabled: false, privileged: IpList::parse(&["*"]).unwrap(), ..Default::default() },
        ..Default::default()
    };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert!(h.send("RCPT TO:<user@remote.example>\r\n").starts_with("550 5.7.1"));
    assert_eq!(h.send("RCPT TO:<alice@example.net>\r\n"), "250 2.1.5 Ok\r\n");
}

#[test]
fn pop_before_smtp() {
    #[derive(Debug)]
    struct Recent;
    impl crate::policy::PopLookup for Recent {
        fn recent(&self, ip: std::net::IpAddr, _: u64) -> bool {
            ip.to_string() == "192.0.2.7"
        }
    }
    let p = Policy {
        relay: RelayRules { pop_before_smtp: Some(Arc::new(Recent)), ..Default::default() },
        ..Default::default()
    };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert_eq!(h.send("RCPT TO:<user@remote.example>\r\n"), "250 2.1.5 Ok\r\n");
}

#[test]
fn domain_literals() {
    let p =
        Policy { domain_literals: true, literal_addresses: vec!["203.0.113.5".parse().unwrap()], ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert_eq!(h.send("RCPT TO:<postmaster@[203.0.113.5]>\r\n"), "250 2.1.5 Ok\r\n");
    assert!(h.send("RCPT TO:<nobody@[203.0.113.5]>\r\n").starts_with("550 5.1.1"));
    assert_eq!(h.send("RCPT TO:<user@[198.51.100.1]>\r\n"), "550 5.7.1 Error: relay access denied\r\n");
}

#[test]
fn spoofing_local_domains() {
    let p = Policy { spoofing: Spoofing::AuthenticatedOnly, ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    assert_eq!(
        h.send("MAIL FROM:<alice@Example.NET>\r\n"),
        "553 5.7.1 Error: sender address of a local domain needs authentication\r\n"
    );
    assert_eq!(h.send("MAIL FROM:<a@r.example>\r\n"), "250 2.1.0 Ok\r\n");
}

#[test]
fn failures_count_and_auto_ban() {
    let bans = Arc::new(crate::policy::BanList::in_memory());
    let p = Policy { bans: Some(bans.clone()), auto_ban: Some(Duration::from_secs(3600)), ..Policy::default() };
    let mut h = Harness::new(SessionConfig { max_errors: 3, ..with_policy(p.clone()) });
    h.ehlo();
    let r = h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<x@remote.example>\r\nRCPT TO:<nobody@example.net>\r\nRCPT TO:<y@remote.example>\r\n");
    assert_eq!(codes(&r), ["250", "550", "550", "550", "421"]);
    assert!(h.closed);
    let now = h.now.unix_secs();
    assert!(bans.is_banned("192.0.2.7".parse().unwrap(), now));
    let (h2, first) = Harness::raw(with_policy(p), "192.0.2.7:2");
    assert_eq!(first, "554 5.7.1 Error: access denied for 192.0.2.7 (banned)\r\n");
    assert!(h2.closed);
}

/// A client on this host reaching the failure limit is closed like any other, never banned.
#[test]
fn loopback_is_never_auto_banned() {
    let bans = Arc::new(crate::policy::BanList::in_memory());
    let p = Policy { bans: Some(bans.clone()), auto_ban: Some(Duration::from_secs(3600)), ..Policy::default() };
    for peer in ["127.0.0.1:9", "[::1]:9", "[::ffff:127.0.0.1]:9"] {
        let (mut h, first) = Harness::raw(SessionConfig { max_errors: 2, ..with_policy(p.clone()) }, peer);
        assert!(first.starts_with("220 "), "{first}");
        let r =
            h.send("EHLO c\r\nMAIL FROM:<a@r.example>\r\nRCPT TO:<x@remote.example>\r\nRCPT TO:<y@remote.example>\r\n");
        assert_eq!(codes(&r), ["250", "250", "550", "550", "421"], "{peer}");
        assert!(h.closed);
    }
    assert!(bans.list(0).is_empty(), "{:?}", bans.list(0));
}

#[test]
fn recipients_per_hour() {
    let p = Policy { rcpt_per_hour: Some(Arc::new(crate::policy::RateLimiter::new(2))), ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    let r = h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n");
    assert_eq!(codes(&r), ["250", "250", "250", "451"]);
    assert!(r.ends_with("451 4.7.1 Error: too many recipients this hour, try again later\r\n"));
}

/// `max_recipients_per_hour_per_network`: the /24's clients share one allowance; an
/// authenticated client is counted as its user, not its network.
#[test]
fn recipients_per_hour_per_network() {
    let limiter = Arc::new(crate::policy::RateLimiter::new(3));
    let p = Policy { rcpt_per_hour_per_network: Some(limiter), ..Policy::default() };
    let rcpts = "MAIL FROM:<a@r.example>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n";
    let (mut h, _) = Harness::raw(with_policy(p.clone()), "192.0.2.10:4000");
    h.ehlo();
    assert_eq!(codes(&h.send(rcpts)), ["250", "250", "250"]);
    let (mut h, _) = Harness::raw(with_policy(p.clone()), "192.0.2.77:4000");
    h.ehlo();
    let r = h.send(rcpts);
    assert_eq!(codes(&r), ["250", "250", "451"], "a neighbour shares the /24's allowance");
    assert!(r.ends_with("451 4.7.1 Error: too many recipients from your network this hour, try again later\r\n"));
    let (mut h, _) = Harness::raw(with_policy(p), "192.0.3.1:4000");
    h.ehlo();
    assert_eq!(codes(&h.send(rcpts)), ["250", "250", "250"], "another network");
    assert_eq!(crate::policy::conns::network_key("2001:db8:1:2::9".parse().unwrap()), "2001:db8:1::/48");
    assert_eq!(crate::policy::conns::network_key("::ffff:192.0.2.9".parse().unwrap()), "192.0.2.0/24");
}

#[test]
fn hide_client_ip() {
    let mut h = Harness::new(SessionConfig { hide_client_ip: true, ..cfg() });
    h.send("EHLO c\r\nMAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nx\r\n.\r\n");
    let m = String::from_utf8_lossy(&h.spooled[0].data).into_owned();
    assert!(m.starts_with("Received: from c (unknown [127.0.0.1])"), "{m}");
}

fn auth_cfg(p: Policy) -> SessionConfig {
    SessionConfig { auth_mode: AuthMode::Always, ..with_policy(p) }
}

#[test]
fn auth_only_after_tls_by_default() {
    let mut h = Harness::new(cfg());
    let r = h.send("EHLO c\r\n");
    assert!(!r.contains("AUTH"), "{r}");
    assert_eq!(
        h.send("AUTH PLAIN AGFsaWNlAHB3\r\n"),
        "538 5.7.11 Error: encryption required for requested authentication mechanism\r\n"
    );
    let mut h = Harness::new(SessionConfig { auth_mode: AuthMode::Never, ..cfg() });
    h.ehlo();
    assert_eq!(h.send("AUTH PLAIN\r\n"), "503 5.5.1 Error: authentication not enabled\r\n");
}

#[test]
fn auth_plain_then_relay_with_esmtpa_and_added_headers() {
    let mut h = Harness::new(auth_cfg(Policy::default()));
    let r = h.send("EHLO c\r\n");
    assert!(r.contains("250-AUTH PLAIN LOGIN\r\n") || r.contains("250 AUTH PLAIN LOGIN\r\n"), "{r}");
    // Pipelined after AUTH: waits for the verdict.
    let ir = b64(b"\0alice@example.net\0secret");
    assert_eq!(h.send(&format!("AUTH PLAIN {ir}\r\nMAIL FROM:<alice@example.net>\r\n")), "");
    assert_eq!(h.auth_requests[0].credentials.login, "alice@example.net");
    let r = h.auth(AuthOutcome::Success);
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n");
    assert_eq!(h.s.authenticated(), Some("alice@example.net"));
    assert_eq!(h.send("RCPT TO:<user@remote.example>\r\n"), "250 2.1.5 Ok\r\n");
    h.send("DATA\r\nSubject: no id\r\n\r\nbody\r\n.\r\n");
    let m = String::from_utf8_lossy(&h.spooled[0].data).into_owned();
    assert!(m.contains(" with ESMTPA id "), "{m}");
    assert!(m.contains("\r\nMessage-ID: <") && m.contains("\r\nDate: "), "{m}");
    assert!(m.ends_with("Subject: no id\r\n\r\nbody\r\n"), "{m}");
    // Present headers are kept as they are.
    h.send("MAIL FROM:<alice@example.net>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nmessage-id: <m@x>\r\nDate: Sun, 1 Nov 2026 00:00:00 +0000\r\n\r\nb\r\n.\r\n");
    let m = String::from_utf8_lossy(&h.spooled[1].data).into_owned();
    assert!(!m.contains("Message-ID: <"), "{m}");
    // RFC 4954 §5: the submitter is the login, unless the client names another (AUTH=);
    // AUTH=<> means unknown.
    assert_eq!(h.spooled[0].envelope.auth.as_deref(), Some("alice@example.net"));
    h.send("MAIL FROM:<alice@example.net> AUTH=bob+2Bx@example.net\r\nRCPT TO:<x@example.test>\r\nDATA\r\nb\r\n.\r\n");
    assert_eq!(h.spooled[2].envelope.auth.as_deref(), Some("bob+2Bx@example.net"));
    h.send("MAIL FROM:<alice@example.net> AUTH=<>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nb\r\n.\r\n");
    assert_eq!(h.spooled[3].envelope.auth, None);
    // AUTH again: 503.
    assert_eq!(h.send("AUTH PLAIN\r\n"), "503 5.5.1 Error: already authenticated\r\n");
}

#[test]
fn auth_login_exchange_failure_and_cancel() {
    let mut h = Harness::new(SessionConfig { max_errors: 0, ..auth_cfg(Policy::default()) });
    h.ehlo();
    assert_eq!(h.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.send(&format!("{}\r\n", b64(b"alice@example.net"))), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(h.send(&format!("{}\r\n", b64(b"wrong"))), "");
    assert_eq!(h.auth_requests[0].credentials.password, b"wrong");
    assert_eq!(h.auth(AuthOutcome::Failure), "535 5.7.8 Error: authentication credentials invalid\r\n");
    assert_eq!(h.send("AUTH LOGIN\r\n*\r\n"), "334 VXNlcm5hbWU6\r\n501 5.0.0 Error: authentication cancelled\r\n");
    assert_eq!(h.send("AUTH PLAIN\r\n!!!\r\n"), "334 \r\n501 5.5.2 Error: cannot decode response\r\n");
    assert_eq!(h.send("AUTH CRAM-MD5\r\n"), "504 5.5.4 Error: unrecognized authentication type\r\n");
    assert_eq!(h.send(&format!("AUTH LOGIN {}\r\n", b64(b"alice@example.net"))), "334 UGFzc3dvcmQ6\r\n");
    h.send(&format!("{}\r\n", b64(b"pw")));
    assert_eq!(h.auth(AuthOutcome::Unavailable), "454 4.7.0 Error: temporary authentication failure\r\n");
    // Unknown logins are checked too (same time), with no hash.
    h.send(&format!("AUTH PLAIN {}\r\n", b64(b"\0ghost@example.net\0pw")));
    assert!(h.auth_requests[0].hash.is_none());
}

#[test]
fn auth_failures_count_toward_the_limit() {
    let mut h = Harness::new(SessionConfig { max_errors: 2, ..auth_cfg(Policy::default()) });
    h.ehlo();
    h.send(&format!("AUTH PLAIN {}\r\n", b64(b"\0alice@example.net\0x")));
    h.auth(AuthOutcome::Failure);
    h.send(&format!("AUTH PLAIN {}\r\n", b64(b"\0alice@example.net\0y")));
    let r = h.auth(AuthOutcome::Failure);
    assert_eq!(codes(&r), ["535", "421"]);
    assert!(h.closed);
}

#[test]
fn fixed_relay_login_in_constant_time() {
    let p = Policy { auth_directory: false, auth_fixed: Some(("relay".into(), "s3cret".into())), ..Policy::default() };
    let mut h = Harness::new(auth_cfg(p));
    h.ehlo();
    assert!(h.send(&format!("AUTH PLAIN {}\r\n", b64(b"\0relay\0nope"))).starts_with("535 5.7.8"));
    assert_eq!(
        h.send(&format!("AUTH PLAIN {}\r\n", b64(b"\0relay\0s3cret"))),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert!(h.auth_requests.is_empty());
    // A relay login owns no address: any sender.
    assert_eq!(
        h.send("MAIL FROM:<anyone@r.example>\r\nRCPT TO:<u@remote.example>\r\n"),
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
    );
}

#[test]
fn authenticated_senders_must_own_their_address() {
    let mut h = Harness::new(auth_cfg(Policy::default()));
    h.ehlo();
    h.send(&format!("AUTH PLAIN {}\r\n", b64(b"\0alice@example.net\0pw")));
    h.auth(AuthOutcome::Success);
    assert_eq!(
        h.send("MAIL FROM:<bob@example.net>\r\n"),
        "553 5.7.1 Error: sender address <bob@example.net> not owned by user alice@example.net\r\n"
    );
    assert_eq!(h.send("MAIL FROM:<ALICE@example.net>\r\n"), "250 2.1.0 Ok\r\n");
    assert_eq!(h.send("RSET\r\nMAIL FROM:<>\r\n"), "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n");
}

#[test]
fn require_auth_listener_and_inbound_auth() {
    let mut h = Harness::new(SessionConfig { require_auth: true, ..auth_cfg(Policy::default()) });
    h.ehlo();
    assert_eq!(h.send("MAIL FROM:<a@r.example>\r\n"), "530 5.7.0 Error: authentication required\r\n");
    let p = Policy { inbound_auth: InboundAuth::Required, ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert_eq!(h.send("RCPT TO:<alice@example.net>\r\n"), "530 5.7.0 Error: authentication required\r\n");
}

#[test]
fn dnsbl_at_connect_names_the_provider() {
    let p = Policy {
        dnsbl: vec![
            DnsblProvider { zone: "one.example".into(), server: None },
            DnsblProvider { zone: "two.example".into(), server: None },
        ],
        ..Policy::default()
    };
    let (mut h, first) = Harness::raw(with_policy(p.clone()), "192.0.2.7:1");
    assert_eq!(first, "");
    assert_eq!(h.queries, [DnsQuery::Dnsbl { name: "7.2.0.192.one.example.".into(), server: None }]);
    // Early input waits with the greeting.
    assert_eq!(h.send("EHLO c\r\n"), "");
    assert_eq!(h.answer(DnsAnswer::NotFound), "");
    assert_eq!(h.queries, [DnsQuery::Dnsbl { name: "7.2.0.192.two.example.".into(), server: None }]);
    let r = h.answer(DnsAnswer::Found(vec!["127.0.0.2".into()]));
    assert_eq!(r, "554 5.7.1 Error: client 192.0.2.7 is listed by two.example\r\n");
    assert!(h.closed);
    // A list that fails, or answers with its error code, lets the client in.
    let (mut h, _) = Harness::raw(with_policy(p.clone()), "192.0.2.7:1");
    assert_eq!(h.answer(DnsAnswer::TempFail), "");
    assert!(h.answer(DnsAnswer::Found(vec!["127.255.255.254".into()])).starts_with("220 "));
    // Private addresses are not looked up.
    let (h, first) = Harness::raw(with_policy(p), "10.0.0.1:1");
    assert!(first.starts_with("220 ") && h.queries.is_empty());
}

#[test]
fn ptr_check_reject_and_tag() {
    let p = Policy { ptr_check: PtrCheck::Reject, ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    assert_eq!(h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\n"), "");
    assert_eq!(h.queries, [DnsQuery::Ptr("192.0.2.7".parse().unwrap())]);
    let r = h.answer(DnsAnswer::NotFound);
    assert_eq!(r, "550 5.7.25 Error: client 192.0.2.7 has no PTR record\r\n503 5.5.1 Error: need MAIL command\r\n");
    // Asked once per connection.
    assert!(h.send("MAIL FROM:<a@r.example>\r\n").starts_with("550 5.7.25"));
    assert!(h.queries.is_empty());

    let p = Policy { ptr_check: PtrCheck::Tag, ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    h.send("MAIL FROM:<a@r.example>\r\n");
    assert_eq!(h.answer(DnsAnswer::NotFound), "250 2.1.0 Ok\r\n");
    h.send("RCPT TO:<x@example.test>\r\nDATA\r\nx\r\n.\r\n");
    let m = String::from_utf8_lossy(&h.spooled[0].data).into_owned();
    assert!(m.contains("\r\nX-Ringmx-PTR: none (client 192.0.2.7 has no PTR record)\r\n"), "{m}");
}

#[test]
fn sender_domain_must_resolve() {
    let p = Policy { sender_domain_resolves: true, ..Policy::default() };
    let mut h = Harness::new(with_policy(p));
    h.ehlo();
    // Local domains and the null sender need no lookup.
    assert_eq!(
        h.send("MAIL FROM:<alice@example.net>\r\nRSET\r\nMAIL FROM:<>\r\nRSET\r\n"),
        "250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n"
    );
    assert!(h.queries.is_empty());
    assert_eq!(h.send("MAIL FROM:<a@Nowhere.Example>\r\nRCPT TO:<x@example.test>\r\n"), "");
    assert_eq!(h.queries, [DnsQuery::MailDomain("nowhere.example".into())]);
    let r = h.answer(DnsAnswer::NotFound);
    assert_eq!(
        r,
        "550 5.1.8 Error: sender address rejected: domain not found\r\n503 5.5.1 Error: need MAIL command\r\n"
    );
    h.send("MAIL FROM:<a@slow.example>\r\n");
    assert!(h.answer(DnsAnswer::TempFail).starts_with("451 4.4.3 "));
    h.send("MAIL FROM:<a@ok.example>\r\n");
    assert_eq!(h.answer(DnsAnswer::Found(vec!["mx.ok.example".into()])), "250 2.1.0 Ok\r\n");
}

#[test]
fn proxy_header_names_the_client() {
    let c = SessionConfig { proxy_from: Some(Arc::new(IpList::parse(&["127.0.0.1"]).unwrap())), ..cfg() };
    let (mut h, first) = Harness::raw(c.clone(), "127.0.0.1:5000");
    assert_eq!(first, "");
    // Split header, then SMTP in the same write.
    assert_eq!(h.send("PROXY TCP4 198.51.100.20 "), "");
    let r = h.send("192.0.2.1 40000 25\r\nEHLO c\r\n");
    assert!(r.starts_with("220 mx.example.test ") && r.contains("250-mx.example.test"), "{r}");
    assert_eq!(h.s.client(), "198.51.100.20:40000".parse().unwrap());
    h.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(String::from_utf8_lossy(&h.spooled[0].data).contains("(unknown [198.51.100.20])"));
    // The access list sees the real client.
    let p = Policy { acl: IpList::parse(&["198.51.100.20"]).unwrap(), ..Policy::default() };
    let (mut h, _) = Harness::raw(SessionConfig { policy: Arc::new(p), ..c.clone() }, "127.0.0.1:5000");
    assert_eq!(
        h.send("PROXY TCP4 198.51.100.20 192.0.2.1 40000 25\r\n"),
        "554 5.7.1 Error: access denied for 198.51.100.20\r\n"
    );
    // Garbage instead of a header.
    let (mut h, _) = Harness::raw(c.clone(), "127.0.0.1:5000");
    assert_eq!(h.send("EHLO c\r\n"), "421 4.7.0 Error: PROXY protocol header expected\r\n");
    assert!(h.closed);
    // Not from a load balancer: no header is read.
    let (_, first) = Harness::raw(c, "192.0.2.9:1");
    assert!(first.starts_with("220 "));
}

/// Implicit TLS behind a load balancer: the prelude takes the header only, in pieces, and
/// leaves what follows it (the TLS handshake) to the caller.
#[test]
fn proxy_prelude_takes_the_header_only() {
    let c = SessionConfig { proxy_from: Some(Arc::new(IpList::parse(&["127.0.0.1"]).unwrap())), ..cfg() };
    let (mut h, _) = Harness::raw(c.clone(), "127.0.0.1:5000");
    let now = Now::system();
    assert_eq!(h.s.proxy_prelude(now, b"PROXY TCP4 198.51.100.20 "), 25);
    let rest = b"192.0.2.1 40000 465\r\n\x16\x03\x01";
    assert_eq!(h.s.proxy_prelude(now, rest), rest.len() - 3, "the TLS record stays with the caller");
    assert_eq!(h.s.client(), "198.51.100.20:40000".parse().unwrap());
    assert_eq!(h.s.proxy_prelude(now, b"\x16\x03\x01"), 0, "no header expected any more");
    // Not behind a balancer: nothing to take.
    let (mut h, _) = Harness::raw(c, "192.0.2.9:1");
    assert_eq!(h.s.proxy_prelude(now, b"\x16\x03\x01"), 0);
}

#[test]
fn inbound_auth_per_postoffice_by_default() {
    let data = serde_json::from_value(serde_json::json!({
        "postoffices": [{"name": "po"}, {"name": "internal", "require_auth_inbound": true}],
        "domains": [{"name": "example.net", "postoffice": "po"}, {"name": "intra.example", "postoffice": "internal"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "internal", "name": "ops", "addresses": ["ops@intra.example"]}
        ]
    }))
    .unwrap();
    let now = Now::system();
    let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
    let dir = Arc::new(Directory::build(data).unwrap());
    let mut s = Session::new(Arc::new(cfg()), ids, dir, "192.0.2.7:1".parse().unwrap(), None, now, 0);
    s.handle_input(
        now,
        b"EHLO c\r\nMAIL FROM:<a@r.example>\r\nRCPT TO:<ops@intra.example>\r\nRCPT TO:<alice@example.net>\r\n",
    );
    let out = String::from_utf8(std::mem::take(s.output())).unwrap();
    assert!(out.ends_with("250 2.1.0 Ok\r\n530 5.7.0 Error: authentication required\r\n250 2.1.5 Ok\r\n"), "{out}");
}

/// RFC 4954 §5: AUTH= from a client that did not authenticate is treated as AUTH=<>: the
/// message keeps no submitter.
#[test]
fn auth_parameter_from_an_unauthenticated_client_is_not_kept() {
    let mut h = Harness::new(cfg());
    h.ehlo();
    h.send("MAIL FROM:<a@r.example> AUTH=boss@example.test\r\nRCPT TO:<x@example.test>\r\nDATA\r\nb\r\n.\r\n");
    assert_eq!(h.spooled.len(), 1);
    assert_eq!(h.spooled[0].envelope.auth, None);
}

mod early;
mod hostile;
mod script;

/// Phase latencies on the simulated clock: pipelined MAIL and RCPT answered in the same
/// turn take no time; DATA's latency is the wait for the spool, from the dot to the 250.
#[test]
fn phase_latencies_run_from_input_to_reply() {
    use crate::obs::tally::{Stage, Tally};
    let tally = Rc::new(RefCell::new(Tally::default()));
    let mut h = Harness::new(cfg());
    h.s.set_tally(tally.clone());
    h.ehlo();
    h.auto_spool = false;
    let r = h.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.net>\r\nDATA\r\n");
    assert_eq!(codes(&r), ["250", "250", "354"]);
    h.now = h.now.advance(Duration::from_millis(7));
    assert_eq!(h.send("Subject: x\r\n\r\nhi\r\n.\r\n"), "", "the 250 waits for the spool");
    h.now = h.now.advance(Duration::from_millis(300));
    assert!(h.complete_spool(Ok(QueueId(1))).starts_with("250 2.0.0"));
    let t = tally.borrow();
    let count = |s: Stage| t.latency[s as usize].count();
    // The greeting went out before the tally was attached.
    assert_eq!(
        (count(Stage::Banner), count(Stage::Ehlo), count(Stage::Mail), count(Stage::Rcpt), count(Stage::Data)),
        (0, 1, 1, 1, 1)
    );
    assert_eq!(t.latency[Stage::Mail as usize].sum_us + t.latency[Stage::Rcpt as usize].sum_us, 0);
    assert_eq!(t.latency[Stage::Data as usize].sum_us, 300_000);
}

/// Milters, as Postfix asks them: each at MAIL (the MAIL's reply waits), at each RCPT our
/// checks accepted (a refusal is that recipient's), at the end of the content; a refusal at
/// MAIL ends the transaction and aborts the conversations; RSET aborts them too.
#[test]
fn milters_at_mail_rcpt_and_end_of_content() {
    use crate::policy::milter::{DefaultAction, Milter, MilterSettings, StepVerdict, Verdict};
    // The milters are never reached: the test answers for them.
    let milter = || {
        let s = MilterSettings {
            address: "127.0.0.1:9".into(),
            timeout: Duration::from_secs(1),
            default_action: DefaultAction::Tempfail,
        };
        Arc::new(Milter::start(s, 1).unwrap())
    };
    let policy = crate::policy::Policy { milters: vec![milter(), milter()], ..crate::policy::Policy::default() };
    let mut h = Harness::new(SessionConfig { policy: Arc::new(policy), ..cfg() });
    h.ehlo();
    assert_eq!(h.send("MAIL FROM:<a@sender.example>\r\n"), "", "waits for the first milter");
    h.s.milter_step_done(h.now, StepVerdict::Continue);
    assert_eq!(h.take_output(), "", "then the second");
    h.s.milter_step_done(h.now, StepVerdict::Continue);
    assert_eq!(h.take_output(), "250 2.1.0 Ok\r\n");
    assert_eq!(h.milters, ["abort", "open 0 a@sender.example", "open 1 a@sender.example"]);
    h.milters.clear();

    assert_eq!(h.send("RCPT TO:<alice@example.net>\r\n"), "");
    h.s.milter_step_done(h.now, StepVerdict::Continue);
    h.take_output();
    h.s.milter_step_done(h.now, StepVerdict::Refuse(Reply::new(550, "5.1.1", "No alice here")));
    assert_eq!(h.take_output(), "550 5.1.1 No alice here\r\n", "the second milter refuses the recipient");
    assert_eq!(
        h.send("RCPT TO:<bob@example.net>\r\n"),
        "550 5.2.1 Error: recipient address rejected: mailbox disabled\r\n"
    );
    assert_eq!(h.milters, ["rcpt 0 alice@example.net", "rcpt 1 alice@example.net"], "our refusal comes first");
    h.milters.clear();
    assert_eq!(h.send("RCPT TO:<alice@example.net>\r\n"), "");
    h.s.milter_step_done(h.now, StepVerdict::Continue);
    h.take_output();
    h.s.milter_step_done(h.now, StepVerdict::Continue);
    assert_eq!(h.take_output(), "250 2.1.5 Ok\r\n");
    assert!(h.send("DATA\r\n").starts_with("354"));
    assert_eq!(h.send("Subject: x\r\n\r\nhi\r\n.\r\n"), "");
    h.s.milter_done(h.now, Verdict::Accept(Vec::new()));
    h.take_output();
    h.s.milter_done(h.now, Verdict::Accept(Vec::new()));
    let r = h.take_output() + &h.take_output();
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(h.milters[h.milters.len() - 2..], ["content 0", "content 1"]);

    // Refused at MAIL: no transaction, the conversations aborted.
    h.milters.clear();
    h.send("MAIL FROM:<spammer@sender.example>\r\n");
    h.s.milter_step_done(h.now, StepVerdict::Refuse(Reply::new(550, "5.7.1", "Go away")));
    assert_eq!(h.take_output(), "550 5.7.1 Go away\r\n");
    assert!(h.send("RCPT TO:<alice@example.net>\r\n").starts_with("503"));
    assert_eq!(h.milters, ["abort", "open 0 spammer@sender.example", "abort"]);
    // Discard at MAIL: the message is taken and dropped, no milter asked again.
    h.milters.clear();
    h.send("MAIL FROM:<a@sender.example>\r\n");
    h.s.milter_step_done(h.now, StepVerdict::Discard);
    assert_eq!(h.take_output(), "250 2.1.0 Ok\r\n");
    assert!(h.send("RCPT TO:<alice@example.net>\r\n").starts_with("250"));
    assert!(h.send("DATA\r\n").starts_with("354"));
    assert_eq!(h.send("Subject: x\r\n\r\nhi\r\n.\r\n"), "250 2.0.0 Ok: discarded by a content filter\r\n");
    assert_eq!(h.milters, ["abort", "open 0 a@sender.example"]);
    // RSET in a transaction aborts.
    h.milters.clear();
    h.send("MAIL FROM:<a@sender.example>\r\n");
    h.s.milter_step_done(h.now, StepVerdict::Continue);
    h.take_output();
    h.s.milter_step_done(h.now, StepVerdict::Continue);
    h.take_output();
    assert_eq!(h.send("RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(h.milters.last().map(String::as_str), Some("abort"));
}

/// Policy delegation: each service asked at its stage, in order; a refusal is the
/// recipient's reply and drops what its services prepended; PREPEND headers from accepted
/// recipients and from the end of the content go on top of the message.
#[test]
fn policy_services_in_order_at_rcpt_and_end_of_content() {
    use crate::policy::delegation::{DefaultAction, PolicyService, ServiceSettings, Stage, Verdict};
    // The services are never reached: the test answers for them.
    let service = |stages: Vec<Stage>| {
        Arc::new(
            PolicyService::start(ServiceSettings {
                address: "127.0.0.1:9".into(),
                stages,
                timeout: Duration::from_secs(1),
                default_action: DefaultAction::Tempfail,
                cache_ttl: Duration::ZERO,
                threads: 1,
            })
            .unwrap(),
        )
    };
    let policy = crate::policy::Policy {
        delegation: vec![service(vec![Stage::Rcpt]), service(vec![Stage::Rcpt, Stage::Data])],
        ..crate::policy::Policy::default()
    };
    let mut h = Harness::new(SessionConfig { policy: Arc::new(policy), ..cfg() });
    h.ehlo();
    assert!(h.send("MAIL FROM:<a@sender.example>\r\n").starts_with("250"));
    assert_eq!(h.send("RCPT TO:<alice@example.net>\r\n"), "", "waits for the first service");
    let (req, i) = h.delegations.remove(0);
    assert_eq!(
        (i, req.stage, req.recipient.as_str(), req.sender.as_str()),
        (0, Some(Stage::Rcpt), "alice@example.net", "a@sender.example")
    );
    assert_eq!(req.client_address, "192.0.2.7");
    h.s.delegation_done(h.now, Verdict::Continue { prepend: Some("X-First: dropped with its recipient".into()) });
    assert_eq!(h.take_output(), "", "then the second");
    assert_eq!(h.delegations.remove(0).1, 1);
    h.s.delegation_done(h.now, Verdict::Refuse(Reply::new(450, "4.7.1", "Greylisted")));
    assert_eq!(h.take_output(), "450 4.7.1 Greylisted\r\n");

    assert_eq!(h.send("RCPT TO:<alice@example.net>\r\n"), "");
    h.delegations.clear();
    h.s.delegation_done(h.now, Verdict::Continue { prepend: Some("X-Greylist: delayed 60 seconds".into()) });
    h.take_output();
    h.delegations.clear();
    h.s.delegation_done(h.now, Verdict::Continue { prepend: None });
    assert_eq!(h.take_output(), "250 2.1.5 Ok\r\n");
    assert!(h.send("DATA\r\n").starts_with("354"));
    assert_eq!(h.send("Subject: x\r\n\r\nhi\r\n.\r\n"), "", "the end of the content asks the data service");
    let (req, i) = h.delegations.remove(0);
    assert_eq!((i, req.stage, req.recipient_count), (1, Some(Stage::Data), 1));
    assert!(!req.queue_id.is_empty() && req.size > 0);
    h.s.delegation_done(h.now, Verdict::Continue { prepend: Some("X-Policy: checked".into()) });
    // The spool answers when the harness drains the actions: its 250 comes with the next take.
    let r = h.take_output() + &h.take_output();
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let msg = String::from_utf8(h.spooled[0].data.clone()).unwrap();
    assert!(msg.starts_with("X-Greylist: delayed 60 seconds\r\nX-Policy: checked\r\nReceived: from "), "{msg}");
    assert!(!msg.contains("X-First"), "{msg}");

    // Refused at the end of the content: the transaction is gone.
    assert!(h.send("MAIL FROM:<a@sender.example>\r\n").starts_with("250"));
    h.send("RCPT TO:<alice@example.net>\r\n");
    for _ in 0..2 {
        h.delegations.clear();
        h.s.delegation_done(h.now, Verdict::Continue { prepend: None });
        h.take_output();
    }
    h.send("DATA\r\nSubject: y\r\n\r\nspam\r\n.\r\n");
    h.delegations.clear();
    h.s.delegation_done(h.now, Verdict::Refuse(Reply::new(554, "5.7.1", "Spam")));
    assert_eq!(h.take_output(), "554 5.7.1 Spam\r\n");
    assert_eq!(h.spooled.len(), 1);
    assert!(h.send("RCPT TO:<alice@example.net>\r\n").starts_with("503"), "no transaction left");
}

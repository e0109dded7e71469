//! The client against scripted server replies, on a simulated clock.

use super::*;

const MIN: Duration = Duration::from_secs(60);

/// A client and its simulated clock.
struct H {
    c: Client,
    t0: Instant,
    now: Instant,
}

impl H {
    fn new(cfg: ClientConfig) -> H {
        let t0 = Instant::now();
        H { c: Client::new(Arc::new(cfg), t0), t0, now: t0 }
    }

    /// Greeting and EHLO with these extension lines; returns the events.
    fn open(cfg: ClientConfig, ext: &[&str]) -> H {
        let mut h = H::new(cfg);
        h.reply("220 mx.test ESMTP\r\n");
        assert_eq!(h.sent(), "EHLO client.test\r\n");
        let mut r = String::from("250");
        r.push_str(if ext.is_empty() { " mx.test\r\n" } else { "-mx.test\r\n" });
        for (i, e) in ext.iter().enumerate() {
            r.push_str(if i + 1 == ext.len() { "250 " } else { "250-" });
            r.push_str(e);
            r.push_str("\r\n");
        }
        h.reply(&r);
        h
    }

    fn reply(&mut self, s: &str) {
        self.c.handle_input(self.now, s.as_bytes());
    }

    /// Everything the client has to send now (blocks included), as text.
    fn sent(&mut self) -> String {
        let mut out = Vec::new();
        for _ in 0..1000 {
            match self.c.poll_transmit(self.now) {
                Some(b) => out.extend_from_slice(&b),
                None => break,
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// One poll_transmit call, for checking what goes out in one write.
    fn one_write(&mut self) -> String {
        String::from_utf8(self.c.poll_transmit(self.now).unwrap_or_default()).unwrap()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.c.handle_timeout(self.now);
    }

    fn deadline(&self) -> Option<Duration> {
        self.c.poll_timeout().map(|t| t - self.t0)
    }
}

fn cfg() -> ClientConfig {
    ClientConfig { ehlo_name: "client.test".into(), tls: TlsPolicy::Off, ..Default::default() }
}

fn msg(rcpts: &[&str], content: &str) -> Arc<OutboundMessage> {
    Arc::new(OutboundMessage::new(
        "a@src.test",
        rcpts.iter().map(|s| s.to_string()).collect(),
        content.as_bytes().into(),
        false,
    ))
}

fn ok(text: &str) -> RcptResult {
    Ok(Response::parse(text).unwrap())
}

fn rejected(stage: Stage, text: &str) -> RcptResult {
    Err(Error::Rejected { stage, reply: Response::parse(text).unwrap() })
}

#[test]
fn pipelined_transaction_with_per_recipient_results() {
    let mut h = H::open(cfg(), &["PIPELINING", "SIZE 1000", "8BITMIME", "ENHANCEDSTATUSCODES"]);
    assert_eq!(h.events(), vec![Event::Ready]);
    assert!(h.c.extensions().pipelining);
    h.c.send(msg(&["b@dst.test", "c@dst.test"], "Subject: x\r\n\r\n.dot\r\nend\r\n"), h.now);
    // MAIL, every RCPT and DATA in one write (RFC 2920).
    assert_eq!(
        h.one_write(),
        "MAIL FROM:<a@src.test> SIZE=25\r\nRCPT TO:<b@dst.test>\r\nRCPT TO:<c@dst.test>\r\nDATA\r\n"
    );
    assert_eq!(h.one_write(), "");
    h.reply("250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.1 busy\r\n354 go ahead\r\n");
    assert_eq!(h.sent(), "Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n");
    assert_eq!(h.events(), vec![]);
    h.reply("250 2.0.0 queued as Q1\r\n");
    let ev = h.events();
    assert_eq!(
        ev,
        vec![Event::Done(vec![ok("250 2.0.0 queued as Q1"), rejected(Stage::Rcpt, "450 4.2.1 busy")]), Event::Ready]
    );
    let Event::Done(r) = &ev[0] else { unreachable!() };
    let e = r[1].as_ref().unwrap_err();
    assert!(!e.is_permanent());
    assert_eq!(e.concern(), Concern::Recipient);
    assert_eq!(e.status(), "4.2.1");
    assert_eq!(e.reply().unwrap().to_string(), "450 4.2.1 busy");
}

#[test]
fn helo_fallback_and_lockstep_without_pipelining() {
    let mut h = H::new(cfg());
    h.reply("220 old.test\r\n");
    assert_eq!(h.sent(), "EHLO client.test\r\n");
    h.reply("502 5.5.2 what\r\n");
    assert_eq!(h.sent(), "HELO client.test\r\n");
    h.reply("250 old.test\r\n");
    assert_eq!(h.events(), vec![Event::Ready]);
    h.c.send(msg(&["b@dst.test", "nobody@dst.test", "c@dst.test"], "hi\r\n"), h.now);
    assert_eq!(h.sent(), "MAIL FROM:<a@src.test>\r\n");
    h.reply("250 ok\r\n");
    assert_eq!(h.sent(), "RCPT TO:<b@dst.test>\r\n");
    h.reply("250 ok\r\n");
    assert_eq!(h.sent(), "RCPT TO:<nobody@dst.test>\r\n");
    h.reply("550 5.1.1 no such user\r\n");
    assert_eq!(h.sent(), "RCPT TO:<c@dst.test>\r\n");
    h.reply("250 ok\r\n");
    assert_eq!(h.sent(), "DATA\r\n");
    h.reply("354 go\r\n");
    assert_eq!(h.sent(), "hi\r\n.\r\n");
    h.reply("250 done\r\n");
    let ev = h.events();
    assert_eq!(
        ev,
        vec![
            Event::Done(vec![ok("250 done"), rejected(Stage::Rcpt, "550 5.1.1 no such user"), ok("250 done")]),
            Event::Ready
        ]
    );
    let Event::Done(r) = &ev[0] else { unreachable!() };
    assert!(r[1].as_ref().unwrap_err().is_permanent());
}

#[test]
fn every_recipient_refused_skips_data_without_pipelining() {
    let mut h = H::open(cfg(), &[]);
    h.events();
    h.c.send(msg(&["x@dst.test"], "hi\r\n"), h.now);
    assert_eq!(h.sent(), "MAIL FROM:<a@src.test>\r\n");
    h.reply("250 ok\r\n");
    assert_eq!(h.sent(), "RCPT TO:<x@dst.test>\r\n");
    h.reply("550 5.1.1 unknown\r\n");
    assert_eq!(h.sent(), "");
    assert_eq!(h.events(), vec![Event::Done(vec![rejected(Stage::Rcpt, "550 5.1.1 unknown")]), Event::Ready]);
    // The next message on this connection starts with RSET.
    h.c.send(msg(&["y@dst.test"], "hi\r\n"), h.now);
    assert_eq!(h.sent(), "RSET\r\n");
    h.reply("250 ok\r\n");
    assert_eq!(h.sent(), "MAIL FROM:<a@src.test>\r\n");
}

#[test]
fn pipelined_data_accepted_with_no_recipient_sends_a_lone_dot() {
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    h.c.send(msg(&["x@dst.test"], "hi\r\n"), h.now);
    h.sent();
    h.reply("250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n");
    assert_eq!(h.sent(), ".\r\n");
    assert_eq!(h.events(), vec![]);
    h.reply("554 5.5.1 no valid recipients\r\n");
    assert_eq!(h.events(), vec![Event::Done(vec![rejected(Stage::Rcpt, "550 5.1.1 unknown")]), Event::Ready]);
}

#[test]
fn pipelined_mail_refusal_fails_the_message() {
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    h.c.send(msg(&["b@dst.test", "c@dst.test"], "hi\r\n"), h.now);
    h.sent();
    h.reply("550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
    let mail = rejected(Stage::Mail, "550 5.7.1 sender refused");
    assert_eq!(h.events(), vec![Event::Done(vec![mail.clone(), mail.clone()]), Event::Ready]);
    let e = mail.unwrap_err();
    assert!(e.is_permanent() && e.was_due_to_message());
}

#[test]
fn size_8bitmime_and_smtputf8_refusals_before_sending() {
    let mut h = H::open(cfg(), &["PIPELINING", "SIZE 10"]);
    h.events();
    h.c.send(msg(&["b@dst.test"], "twenty bytes long!\r\n"), h.now);
    assert_eq!(h.sent(), "");
    let too_big = Error::TooBig { size: 20, max: 10 };
    assert_eq!(h.events(), vec![Event::Done(vec![Err(too_big.clone())]), Event::Ready]);
    assert!(too_big.is_permanent());
    assert_eq!((too_big.concern(), too_big.status().as_str()), (Concern::Message, "5.3.4"));

    h.c.send(msg(&["b@dst.test"], "Gr\u{fc}\u{df}e\r\n"), h.now);
    assert_eq!(h.sent(), "");
    assert_eq!(h.events(), vec![Event::Done(vec![Err(Error::EightBitUnsupported)]), Event::Ready]);
    assert_eq!(Error::EightBitUnsupported.status(), "5.6.3");

    h.c.send(msg(&["j\u{f6}rg@dst.test"], "hi\r\n"), h.now);
    assert_eq!(h.events(), vec![Event::Done(vec![Err(Error::SmtpUtf8Unsupported)]), Event::Ready]);

    // Offered: the parameters go out.
    let mut h = H::open(cfg(), &["SIZE 100", "8BITMIME", "SMTPUTF8"]);
    h.events();
    h.c.send(msg(&["j\u{f6}rg@dst.test"], "Gr\u{fc}\u{df}e\r\n"), h.now);
    assert_eq!(h.sent(), "MAIL FROM:<a@src.test> SIZE=9 BODY=8BITMIME SMTPUTF8\r\n");
}

#[test]
fn starttls_opportunistic_and_required() {
    let tls = |policy| ClientConfig { tls: policy, ..cfg() };
    // Offered: used, then EHLO again.
    let mut h = H::open(tls(TlsPolicy::Opportunistic), &["STARTTLS", "PIPELINING"]);
    assert_eq!(h.sent(), "STARTTLS\r\n");
    h.reply("220 2.0.0 go\r\n250 injected\r\n");
    assert_eq!(h.events(), vec![Event::StartTls]);
    h.c.tls_done(true, h.now);
    assert_eq!(h.sent(), "EHLO client.test\r\n");
    assert!(!h.c.extensions().pipelining, "extensions are forgotten after TLS");
    h.reply("250-mx.test\r\n250 PIPELINING\r\n");
    assert_eq!(h.events(), vec![Event::Ready]);
    assert!(h.c.is_tls() && h.c.extensions().pipelining);

    // Not offered: plaintext when opportunistic, QUIT and a deferral when required.
    let mut h = H::open(tls(TlsPolicy::Opportunistic), &["PIPELINING"]);
    assert_eq!(h.events(), vec![Event::Ready]);
    let mut h = H::open(tls(TlsPolicy::Require), &["PIPELINING"]);
    assert_eq!(h.sent(), "QUIT\r\n");
    assert_eq!(h.events(), vec![Event::Closed(Some(Error::TlsUnavailable))]);
    assert!(!Error::TlsUnavailable.is_permanent());

    // STARTTLS refused: plaintext when opportunistic.
    let mut h = H::open(tls(TlsPolicy::Opportunistic), &["STARTTLS"]);
    h.sent();
    h.reply("454 4.7.0 TLS not available\r\n");
    assert_eq!(h.events(), vec![Event::Ready]);

    // Handshake failure ends the connection.
    let mut h = H::open(tls(TlsPolicy::Require), &["STARTTLS"]);
    h.sent();
    h.reply("220 go\r\n");
    assert_eq!(h.events(), vec![Event::StartTls]);
    h.c.tls_done(false, h.now);
    assert_eq!(h.events(), vec![Event::Closed(Some(Error::TlsFailed))]);
    assert!(h.c.is_closed());
}

fn auth_cfg(mechanism: Option<AuthMechanism>) -> ClientConfig {
    ClientConfig {
        auth: Some(Credentials { user: "user".into(), password: "pass".into(), mechanism }),
        auth_without_tls: true,
        ..cfg()
    }
}

#[test]
fn auth_plain_and_login() {
    let mut h = H::open(auth_cfg(None), &["AUTH LOGIN PLAIN"]);
    assert_eq!(h.sent(), "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    h.reply("235 2.7.0 ok\r\n");
    assert_eq!(h.events(), vec![Event::Ready]);

    let mut h = H::open(auth_cfg(Some(AuthMechanism::Login)), &["AUTH=LOGIN PLAIN"]);
    assert_eq!(h.sent(), "AUTH LOGIN\r\n");
    h.reply("334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.sent(), "dXNlcg==\r\n");
    h.reply("334 UGFzc3dvcmQ6\r\n");
    assert_eq!(h.sent(), "cGFzcw==\r\n");
    h.reply("235 2.7.0 ok\r\n");
    assert_eq!(h.events(), vec![Event::Ready]);

    // Wrong credentials.
    let mut h = H::open(auth_cfg(None), &["AUTH PLAIN"]);
    h.sent();
    h.reply("535 5.7.8 bad credentials\r\n");
    assert_eq!(h.sent(), "QUIT\r\n");
    let ev = h.events();
    assert_eq!(ev, vec![Event::Closed(Some(rejected(Stage::Auth, "535 5.7.8 bad credentials").unwrap_err()))]);

    // No mechanism we speak; credentials never go out in plaintext unless allowed.
    let mut h = H::open(auth_cfg(None), &["AUTH CRAM-MD5"]);
    assert_eq!(h.sent(), "QUIT\r\n");
    assert!(matches!(h.events()[..], [Event::Closed(Some(Error::AuthUnavailable(_)))]));
    let mut h = H::open(ClientConfig { auth_without_tls: false, ..auth_cfg(None) }, &["AUTH PLAIN"]);
    assert_eq!(h.sent(), "QUIT\r\n");
    assert!(matches!(h.events()[..], [Event::Closed(Some(Error::AuthUnavailable(_)))]));
}

#[test]
fn rset_reuse_for_the_next_message_then_quit() {
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    for i in 0..3 {
        h.c.send(msg(&["b@dst.test"], "hi\r\n"), h.now);
        let expect = if i == 0 { "" } else { "RSET\r\n" };
        assert_eq!(h.one_write(), format!("{expect}MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n"));
        if i > 0 {
            h.reply("250 2.0.0 reset\r\n");
        }
        h.reply("250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(h.sent(), "hi\r\n.\r\n");
        h.reply(&format!("250 queued {i}\r\n"));
        assert_eq!(h.events(), vec![Event::Done(vec![ok(&format!("250 queued {i}"))]), Event::Ready]);
    }
    h.c.quit(h.now);
    assert_eq!(h.sent(), "QUIT\r\n");
    h.reply("221 bye\r\n");
    assert_eq!(h.events(), vec![Event::Closed(None)]);
}

#[test]
fn timeouts_per_stage() {
    // Greeting: 5 minutes.
    let mut h = H::new(cfg());
    assert_eq!(h.deadline(), Some(5 * MIN));
    h.advance(5 * MIN - Duration::from_secs(1));
    assert_eq!(h.events(), vec![]);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.events(), vec![Event::Closed(Some(Error::Timeout { stage: Stage::Greeting }))]);

    // MAIL 5, DATA 2, blocks 3, final dot 10 minutes, each from the last progress.
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    h.c.send(msg(&["b@dst.test"], "hi\r\n"), h.now);
    h.sent();
    assert_eq!(h.deadline(), Some(5 * MIN));
    h.advance(MIN);
    h.reply("250 ok\r\n");
    assert_eq!(h.deadline(), Some(6 * MIN), "RCPT: 5 minutes from the MAIL reply");
    h.reply("250 ok\r\n");
    assert_eq!(h.deadline(), Some(3 * MIN), "DATA: 2 minutes");
    h.reply("354 go\r\n");
    assert_eq!(h.deadline(), Some(4 * MIN), "first block: 3 minutes");
    h.sent();
    assert_eq!(h.deadline(), Some(11 * MIN), "final reply: 10 minutes");
    h.advance(10 * MIN);
    assert_eq!(
        h.events(),
        vec![
            Event::Done(vec![Err(Error::Timeout { stage: Stage::DataEnd })]),
            Event::Closed(Some(Error::Timeout { stage: Stage::DataEnd }))
        ]
    );

    // Configurable.
    let t = ClientTimeouts { greeting: Duration::from_secs(7), ..Default::default() };
    let h = H::new(ClientConfig { timeouts: t, ..cfg() });
    assert_eq!(h.deadline(), Some(Duration::from_secs(7)));
}

#[test]
fn body_blocks_restart_the_data_block_clock() {
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    let big = "x".repeat(78) + "\r\n";
    let content = big.repeat(2000); // 160 000 bytes: three blocks
    h.c.send(msg(&["b@dst.test"], &content), h.now);
    h.sent();
    h.reply("250 ok\r\n250 ok\r\n354 go\r\n");
    let mut total = 0;
    for i in 0..3 {
        h.advance(2 * MIN);
        assert_eq!(h.events(), vec![], "block {i}");
        total += h.one_write().len();
    }
    assert_eq!(total, content.len() + 3);
    assert_eq!(h.one_write(), "");
}

#[test]
fn connection_lost_mid_transaction() {
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    h.c.send(msg(&["b@dst.test", "c@dst.test"], "hi\r\n"), h.now);
    h.sent();
    h.reply("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n");
    h.c.connection_lost();
    let lost = Error::ConnectionLost { stage: Stage::Data };
    assert_eq!(
        h.events(),
        vec![
            Event::Done(vec![Err(lost.clone()), rejected(Stage::Rcpt, "550 5.1.1 unknown")]),
            Event::Closed(Some(lost.clone()))
        ]
    );
    assert!(!lost.is_permanent());
    assert_eq!(lost.concern(), Concern::Connection);
}

#[test]
fn replies_split_at_every_byte() {
    let script = "220 mx.test\r\n250-mx.test\r\n250-PIPELINING\r\n250 SIZE 500\r\n";
    for cut in 0..script.len() {
        let mut h = H::new(cfg());
        h.c.handle_input(h.now, &script.as_bytes()[..cut]);
        h.c.handle_input(h.now, &script.as_bytes()[cut..]);
        h.sent();
        assert_eq!(h.events(), vec![Event::Ready], "cut {cut}");
        assert_eq!(h.c.extensions().size, Some(500));
    }
}

#[test]
fn garbage_and_421() {
    let mut h = H::new(cfg());
    h.reply("HTTP/1.1 400 Bad Request\r\n");
    assert_eq!(
        h.events(),
        vec![Event::Closed(Some(Error::Protocol { stage: Stage::Greeting, what: "reply without a code" }))]
    );

    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    h.c.send(msg(&["b@dst.test"], "hi\r\n"), h.now);
    h.sent();
    h.reply("421 4.3.2 shutting down\r\n");
    let ev = h.events();
    assert!(
        matches!(&ev[..], [Event::Done(r), Event::Closed(Some(_))] if r[0].as_ref().unwrap_err().status() == "4.3.2")
    );
}

#[test]
fn responses_and_helpers() {
    let r = Response::parse("550 5.1.1 no such user").unwrap();
    assert_eq!(r, Response::new(550, Some("5.1.1"), "no such user"));
    assert_eq!(r.to_string(), "550 5.1.1 no such user");
    let r = Response::parse("451 try later").unwrap();
    assert_eq!((r.enhanced.as_deref(), r.status().as_str()), (None, "4.0.0"));
    // An enhanced code of the wrong class is text.
    assert_eq!(Response::parse("550 4.1.1 odd").unwrap().enhanced, None);
    assert_eq!(Response::parse("nonsense"), None);
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    // Dot-stuffing carries across blocks.
    let mut out = Vec::new();
    let mut start = true;
    stuff(b".a\r\n", &mut start, &mut out);
    stuff(b"", &mut start, &mut out);
    stuff(b".", &mut start, &mut out);
    stuff(b"b.\r\nc", &mut start, &mut out);
    assert_eq!(out, b"..a\r\n..b.\r\nc");
    assert!(!start);
}

#[test]
fn multi_line_rejection_keeps_the_text() {
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.events();
    h.c.send(msg(&["b@dst.test"], "hi\r\n"), h.now);
    h.sent();
    h.reply("250 ok\r\n550-5.7.1 blocked\r\n550 5.7.1 see https://x.test\r\n554 no recipients\r\n");
    let ev = h.events();
    let Event::Done(r) = &ev[0] else { panic!("{ev:?}") };
    let reply = r[0].as_ref().unwrap_err().reply().unwrap();
    assert_eq!(reply.text, "blocked\nsee https://x.test");
    assert_eq!(reply.to_string(), "550 5.7.1 blocked / see https://x.test");
}

/// RFC 3461 §4: RET, ENVID, NOTIFY and ORCPT go on to a next hop that offers DSN, and not
/// to one that does not.
#[test]
fn dsn_parameters_relayed_only_to_a_dsn_peer() {
    use crate::wire::{Notify, Ret};
    let mut m = OutboundMessage::new(
        "a@src.test",
        vec!["x@dst.test".into(), "y@dst.test".into()],
        "Subject: d\r\n\r\nx\r\n".as_bytes().into(),
        false,
    );
    m.dsn = DsnParams {
        ret: Some(Ret::Hdrs),
        envid: Some("QQ+2B1".into()),
        rcpts: vec![
            (Some(Notify { success: true, failure: true, ..Default::default() }), Some("rfc822;x@orig.test".into())),
            (Some(Notify { never: true, ..Default::default() }), None),
        ],
    };
    let m = Arc::new(m);
    let mut h = H::open(cfg(), &["PIPELINING", "DSN"]);
    h.c.send(m.clone(), h.now);
    assert_eq!(
        h.sent(),
        "MAIL FROM:<a@src.test> RET=HDRS ENVID=QQ+2B1\r\n\
         RCPT TO:<x@dst.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@orig.test\r\n\
         RCPT TO:<y@dst.test> NOTIFY=NEVER\r\nDATA\r\n"
    );
    let mut h = H::open(cfg(), &["PIPELINING"]);
    h.c.send(m, h.now);
    assert_eq!(h.sent(), "MAIL FROM:<a@src.test>\r\nRCPT TO:<x@dst.test>\r\nRCPT TO:<y@dst.test>\r\nDATA\r\n");
}

/// RFC 4954 §5: to a next hop we authenticated to, MAIL carries the submitter, or <>.
#[test]
fn auth_parameter_only_after_authenticating() {
    let mut with = OutboundMessage::new("a@src.test", vec!["x@dst.test".into()], "x\r\n".as_bytes().into(), false);
    with.auth = Some("alice+2Bme@src.test".into());
    let with = Arc::new(with);
    let mut h = H::open(auth_cfg(None), &["PIPELINING", "AUTH PLAIN"]);
    h.sent();
    h.reply("235 2.7.0 ok\r\n");
    h.events();
    h.c.send(with.clone(), h.now);
    assert!(h.sent().starts_with("MAIL FROM:<a@src.test> AUTH=alice+2Bme@src.test\r\n"));
    let mut h = H::open(auth_cfg(None), &["PIPELINING", "AUTH PLAIN"]);
    h.sent();
    h.reply("235 2.7.0 ok\r\n");
    h.events();
    h.c.send(msg(&["x@dst.test"], "x\r\n"), h.now);
    assert!(h.sent().starts_with("MAIL FROM:<a@src.test> AUTH=<>\r\n"));
    // Not authenticated to this peer: no AUTH= at all.
    let mut h = H::open(cfg(), &["PIPELINING", "AUTH PLAIN"]);
    h.c.send(with, h.now);
    assert!(h.sent().starts_with("MAIL FROM:<a@src.test>\r\n"));
}

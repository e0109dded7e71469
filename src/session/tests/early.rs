//! Issue 14 at the door, on a simulated clock: the pregreet test (early talkers, pipelining
//! without PIPELINING offered, known-good clients) and greylisting at RCPT.

use super::*;
use crate::policy::greylist::{Greylist, Settings};

fn session(cfg: &Arc<SessionConfig>, client: &str, now: Now) -> Session {
    let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
    Session::new(cfg.clone(), ids, directory(), client.parse().unwrap(), None, now, 1)
}

fn out(s: &mut Session) -> String {
    String::from_utf8(std::mem::take(s.output())).unwrap()
}

fn pregreet_cfg() -> Arc<SessionConfig> {
    Arc::new(SessionConfig { pregreet: Duration::from_secs(3), ..cfg() })
}

#[test]
fn a_client_that_talks_before_the_greeting_is_refused() {
    let cfg = pregreet_cfg();
    let now = Now::system();
    let mut s = session(&cfg, "192.0.2.7:4000", now);
    assert_eq!(out(&mut s), "", "no greeting during the wait");
    assert!(s.wants_input(), "input is read: that is the test");
    s.handle_input(now.advance(Duration::from_secs(1)), b"EHLO bot.example\r\n");
    assert_eq!(out(&mut s), "554 5.5.1 Error: protocol error: talked before the greeting\r\n");
    assert!(s.is_closed());
    assert_eq!(s.refusal(), Some(Refusal::EarlyTalker));
    // It did not become known good.
    let mut again = session(&cfg, "192.0.2.7:4001", now.advance(Duration::from_secs(5)));
    assert_eq!(out(&mut again), "");
}

#[test]
fn a_patient_client_is_greeted_then_known_good() {
    let cfg = pregreet_cfg();
    let now = Now::system();
    let mut s = session(&cfg, "192.0.2.8:4000", now);
    // The session's next deadline on the test's clock is the end of the configured wait.
    assert_eq!(s.poll_timeout(), Some(now.mono + cfg.pregreet));
    s.handle_timeout(now.advance(Duration::from_secs(2)));
    assert_eq!(out(&mut s), "");
    let later = now.advance(Duration::from_secs(3));
    s.handle_timeout(later);
    assert!(out(&mut s).starts_with("220 mx.example.test "));
    s.handle_input(later, b"EHLO client.example\r\n");
    assert!(out(&mut s).starts_with("250-mx.example.test\r\n"));
    // Pipelining once PIPELINING was offered is fine.
    s.handle_input(later, b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<b@example.test>\r\n");
    assert_eq!(out(&mut s), "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
    // The next connection from there is greeted at once.
    let mut next = session(&cfg, "192.0.2.8:4001", later);
    assert!(out(&mut next).starts_with("220 "));
    // A whitelisted client never waits.
    let policy = Policy { whitelist: IpList::parse(&["198.51.100.0/24".to_string()]).unwrap(), ..Policy::default() };
    let cfg = Arc::new(SessionConfig { policy: Arc::new(policy), ..(*pregreet_cfg()).clone() });
    assert!(out(&mut session(&cfg, "198.51.100.1:4000", now)).starts_with("220 "));
}

#[test]
fn pipelining_without_pipelining_offered_is_refused() {
    let now = Now::system();
    let after_wait = now.advance(Duration::from_secs(3));
    // EHLO with the next command in the same packet (RFC 2920 §3.1: EHLO ends a group).
    // HELO (no PIPELINING offered), then two commands at once.
    for (first, rest) in [
        ("EHLO bot.example\r\nMAIL FROM:<a@remote.example>\r\n", None),
        ("HELO bot.example\r\n", Some("MAIL FROM:<a@remote.example>\r\nRCPT TO:<b@example.test>\r\n")),
    ] {
        let cfg = pregreet_cfg();
        let mut s = session(&cfg, "192.0.2.9:4000", now);
        s.handle_timeout(after_wait);
        out(&mut s);
        s.handle_input(after_wait, first.as_bytes());
        if let Some(rest) = rest {
            assert_eq!(out(&mut s), "250 mx.example.test\r\n");
            s.handle_input(after_wait, rest.as_bytes());
        }
        let o = out(&mut s);
        assert!(o.ends_with("554 5.5.1 Error: improper use of SMTP command pipelining\r\n"), "{o}");
        assert!(s.is_closed() && s.refusal() == Some(Refusal::Pipelining));
    }
}

fn greylist() -> Arc<Greylist> {
    let settings = Settings {
        delay: Duration::from_secs(300),
        retry_window: Duration::from_secs(86400),
        lifetime: Duration::from_secs(86400),
        auto_whitelist: 0,
        exempt: IpList::default(),
        exempt_spec: Vec::new(),
        max_entries: 1000,
        exempt_spf_pass: true,
    };
    Arc::new(Greylist::in_memory(settings, 42))
}

#[test]
fn greylisting_refuses_the_first_attempt_and_takes_the_retry() {
    let policy = Arc::new(Policy { greylist: Some(greylist()), ..Policy::default() });
    let cfg = SessionConfig { policy, activity: true, ..cfg() };
    let mut h = Harness::new(cfg.clone());
    h.ehlo();
    h.send("MAIL FROM:<alice@remote.example>\r\n");
    assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), "451 4.7.1 Error: greylisted, try again in 300 seconds\r\n");
    assert!(h.activity.iter().any(|l| l.contains("step=rcpt rule=greylist")), "{:?}", h.activity);
    // A retry too soon, then after the delay (the harness's clock moves).
    h.now = h.now.advance(Duration::from_secs(120));
    assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), "451 4.7.1 Error: greylisted, try again in 180 seconds\r\n");
    h.now = h.now.advance(Duration::from_secs(180));
    assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), "250 2.1.5 Ok\r\n");
    // An unknown local user gets its 550 first, not a greylisting.
    assert!(h.send("RCPT TO:<nobody@example.net>\r\n").starts_with("550 5.1.1"));
}

fn spf_policy() -> Arc<Policy> {
    let settings = crate::policy::spf::Settings {
        fail: crate::policy::spf::SpfAction::Reject,
        softfail: crate::policy::spf::SpfAction::Tag,
        temperror: crate::policy::spf::SpfAction::Tempfail,
        permerror: crate::policy::spf::SpfAction::Tag,
        timeout: Duration::from_secs(5),
        max_void_lookups: 2,
        servers: Vec::new(),
    };
    let spf = crate::policy::spf::SpfService::start(settings).unwrap();
    Arc::new(Policy { spf: Some(Arc::new(spf)), ..Policy::default() })
}

fn spf(result: crate::policy::spf::Result) -> crate::policy::spf::Outcome {
    crate::policy::spf::Outcome { result, domain: "remote.example".into(), explanation: None }
}

/// RFC 7208 at MAIL FROM: the session waits for the check; fail refuses with 550 5.7.23,
/// temperror with 451 4.7.24; another result is accepted and becomes the message's
/// Authentication-Results field (RFC 8601), and one the client wrote claiming our
/// authserv-id is removed (RFC 8601 §5), while another host's stays.
#[test]
fn spf_at_mail_from_and_the_authentication_results_field() {
    let mut h = Harness::new(SessionConfig { policy: spf_policy(), ..cfg() });
    h.ehlo();
    for (result, reply) in [
        (crate::policy::spf::Result::Fail, "550 5.7.23 Error: SPF fail for remote.example\r\n"),
        (
            crate::policy::spf::Result::TempError,
            "451 4.7.24 Error: SPF check of remote.example failed temporarily, try again later\r\n",
        ),
        (crate::policy::spf::Result::Pass, "250 2.1.0 Ok\r\n"),
    ] {
        assert_eq!(h.send("MAIL FROM:<alice@remote.example>\r\n"), "", "waits for the check");
        let req = h.spf.pop().expect("an SPF check");
        assert_eq!(
            (req.ip.to_string(), req.helo.as_str(), req.sender.as_str()),
            ("192.0.2.7".into(), "client.example", "alice@remote.example")
        );
        h.s.spf_done(h.now, spf(result));
        assert_eq!(h.take_output(), reply);
    }
    h.send("RCPT TO:<bob@example.test>\r\nDATA\r\n");
    let body = "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=forged.example\r\n\
                Authentication-Results: other.example;\r\n\tspf=fail\r\nSubject: x\r\n\r\nbody\r\n.\r\n";
    assert!(h.send(body).starts_with("250 2.0.0 Ok: queued as "));
    let text = String::from_utf8(h.spooled[0].data.clone()).unwrap();
    assert!(
        text.starts_with(
            "Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=alice@remote.example\r\nReceived: "
        ),
        "{text}"
    );
    assert!(!text.contains("forged.example"), "{text}");
    assert!(text.contains("\r\nAuthentication-Results: other.example;\r\n\tspf=fail\r\nSubject: x\r\n"), "{text}");
}

/// A sender whose SPF passed is not greylisted (`[greylist] exempt_spf_pass`); another
/// result is.
#[test]
fn spf_pass_skips_greylisting() {
    let mut policy = (*spf_policy()).clone();
    policy.greylist = Some(greylist());
    let mut h = Harness::new(SessionConfig { policy: Arc::new(policy), ..cfg() });
    h.ehlo();
    for (result, reply) in [
        (crate::policy::spf::Result::Pass, "250 2.1.5 Ok\r\n"),
        (crate::policy::spf::Result::SoftFail, "451 4.7.1 Error: greylisted, try again in 300 seconds\r\n"),
    ] {
        h.send("RSET\r\nMAIL FROM:<alice@remote.example>\r\n");
        h.spf.pop().expect("an SPF check");
        h.s.spf_done(h.now, spf(result));
        h.take_output();
        assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), reply, "{result:?}");
    }
}

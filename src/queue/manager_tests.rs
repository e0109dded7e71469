//! The queue manager on a simulated clock, with literal vectors of what comes out and when
//! (KumoMTA-style): each test plays the driver, answers the manager's actions with scripted
//! outcomes, and compares every action, rendered as a line, with the expected list.
//!
//! Times are minutes after `T0`; `m+15` in a line is a next attempt 15 minutes after `T0`.

use super::*;
use crate::queue::DelayNoticeMode;
use crate::spool::MarkStatus;

const T0: u64 = 1_795_000_000_000;
const MIN: u64 = 60_000;

fn directory() -> Directory {
    let data = serde_json::from_value(serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.net", "postoffice": "po"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "away", "addresses": ["away@example.net"],
             "autoresponder": {"subject": "Away", "body": "Back on Monday."},
             "delivery_event": "/usr/local/bin/notify"},
            {"postoffice": "po", "name": "fwd", "addresses": ["fwd@example.net"],
             "redirect": ["someone@elsewhere.test"]}
        ],
        "lists": [{"address": "dev@example.net", "posting": "anyone",
                   "members": [{"address": "alice@example.net"}, {"address": "x@a.test"}, {"address": "y@b.test"}]}]
    }))
    .unwrap();
    Directory::build(data).unwrap()
}

fn config() -> ManagerConfig {
    ManagerConfig {
        hostname: "mx.example.net".into(),
        local_retry: Duration::from_secs(5 * 60),
        catch_alls: true,
        catch_all_header: "X-Original-To".into(),
        autoreply_period: Duration::from_secs(24 * 3600),
        local_domains: ["accept.test".to_string()].into_iter().collect(),
        routing: RoutingConfig::default(),
        retry: RetryConfig::default(),
        delay_notice: DelayNoticeConfig::default(),
        lmtp: None,
        active_limit: 100,
        postmaster: None,
        activity: false,
        one_click: None,
    }
}

/// The driver's side: the manager, the directory, the clock, and the content of messages.
struct Driver {
    m: QueueManager,
    dir: Directory,
    now: u64,
    next_id: u64,
    /// The spool: each message's envelope.
    spool: HashMap<QueueId, Envelope>,
}

impl Driver {
    fn new(cfg: ManagerConfig) -> Self {
        let m = QueueManager::new(cfg, QueueId(0), ReplyMemory::default());
        Driver { m, dir: directory(), now: T0, next_id: 1, spool: HashMap::new() }
    }

    fn at(&mut self, minutes: u64) {
        self.now = T0 + minutes * MIN;
    }

    /// A message from `from` to `rcpts`, made durable now.
    fn accept(&mut self, from: &str, rcpts: &[&str]) -> QueueId {
        let id = QueueId(self.next_id << 32);
        self.next_id += 1;
        let mut e = Envelope::new(id);
        e.received_ms = self.now;
        e.from = from.into();
        e.rcpts = rcpts.iter().map(|a| Recipient { address: a.to_string(), notify: None, orcpt: None }).collect();
        self.spool.insert(id, e.clone());
        let offset = (id.0 >> 32) * 100;
        let location = Location { seq: 1, record_offset: offset, content_offset: offset + 80, content_len: 20 };
        self.m.handle_accepted(self.now, &self.dir, e, 0, location);
        id
    }

    /// Runs what is due now and renders every action; contents are read at once.
    fn run(&mut self) -> Vec<String> {
        self.m.handle_timeout(self.now, &self.dir);
        self.drain()
    }

    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(a) = self.m.poll_action() {
            if let Action::ReadMessage { id, .. } = a {
                let content: Arc<[u8]> = Arc::from(&b"Subject: hello\r\n\r\nHi.\r\n"[..]);
                let env = self.spool[&id].clone();
                self.m.handle_message(self.now, &self.dir, id, Ok((env, content)));
                continue;
            }
            out.push(show(&a));
        }
        out
    }

    fn outcome(&mut self, o: Outcome) -> Vec<String> {
        self.m.handle_outcome(self.now, o);
        self.drain()
    }

    /// Every remote recipient of `id` gets `reply` (2xx delivered, 4xx deferred, 5xx failed).
    fn remote(&mut self, id: QueueId, rcpts: &[u16], reply: &str) -> Vec<String> {
        let r = Response::parse(reply).unwrap();
        let o = match r.code {
            200..=299 => RcptOutcome::Delivered { reply: r },
            400..=499 => RcptOutcome::Deferred { reply: r },
            _ => RcptOutcome::Failed { reply: r },
        };
        let results = rcpts.iter().map(|i| (*i, o.clone())).collect();
        self.outcome(Outcome::Remote(RemoteOutcome {
            id,
            remote_mta: Some("mx.elsewhere.test".into()),
            peer_dsn: false,
            results,
        }))
    }

    fn maildir_ok(&mut self, id: QueueId, copy: u16) -> Vec<String> {
        let file = PathBuf::from(format!("/m/new/{copy}"));
        self.outcome(Outcome::Maildir { id, copy, result: Ok(file) })
    }

    fn next_due_minutes(&self) -> Option<u64> {
        self.m.poll_timeout().map(|t| (t - T0) / MIN)
    }
}

use crate::queue::actions::{Draft, LocalFailure, RcptOutcome, RemoteOutcome};
use std::collections::HashMap;
use std::path::PathBuf;

fn minutes(t: u64) -> String {
    format!("m+{}", (t - T0) / MIN)
}

/// One line per action.
fn show(a: &Action) -> String {
    match a {
        Action::ReadMessage { id, .. } => format!("read {id}"),
        Action::SubmitRemote(j) => {
            let rcpts: Vec<String> = j.rcpts.iter().map(|(i, a)| format!("{i}:{a}")).collect();
            format!("remote {:?} {}", j.route, rcpts.join(","))
        }
        Action::StageMaildir(c) => format!("maildir {} copy{} to {}", c.maildir, c.copy, c.delivered_to),
        Action::DeliverLmtp(b) => format!("lmtp batch{} {}", b.batch, b.rcpts.join(",")),
        Action::AppendMark(m) => {
            let who = m.rcpt.map_or("all".to_string(), |i| i.to_string());
            let next = match m.next_attempt_ms {
                0 => String::new(),
                crate::spool::HOLD_MS => " on hold".to_string(),
                t => format!(" next {}", minutes(t)),
            };
            format!("mark {who} {:?} #{}{next} {}", m.status, m.attempts, m.text)
        }
        Action::Generate(Generate::Dsn { reports, .. }) => {
            let r: Vec<String> = reports.iter().map(|r| format!("{}:{}", r.rcpt, r.action.as_str())).collect();
            format!("dsn {}", r.join(","))
        }
        Action::Generate(Generate::Message(m)) => {
            let to: Vec<&str> = m.envelope.rcpts.iter().map(|r| r.address.as_str()).collect();
            format!("message <{}> to {}", m.envelope.from, to.join(","))
        }
        Action::KeepBadmail { .. } => "badmail".into(),
        Action::RunEvent { program, postoffice, mailbox, file } => {
            format!("event {program} {postoffice} {mailbox} {}", file.display())
        }
        Action::SaveReplies => "save replies".into(),
        Action::ListMail(j) => format!("list {} {:?} copy{} from <{}>", j.list, j.role, j.copy, j.from),
    }
}

fn mx(d: &str) -> String {
    format!("Mx({d:?})")
}

/// A remote recipient that never gets through, on the default schedule with a lifetime
/// of 12 hours: attempts at 0, 15, 45, 105, 345, 585 and the last at the lifetime's end
/// (720), then it fails and the sender gets one delay notice (first deferral) and the
/// failure report.
#[test]
fn retry_schedule_and_lifetime() {
    let mut cfg = config();
    cfg.retry.lifetime = Duration::from_secs(12 * 3600);
    let mut d = Driver::new(cfg);
    let id = d.accept("s@sender.test", &["r@remote.test"]);
    let mut tried = Vec::new();
    let mut reports = Vec::new();
    while let Some(m) = d.next_due_minutes() {
        d.at(m);
        let out = d.run();
        assert_eq!(out, vec![format!("remote {} 0:r@remote.test", mx("remote.test"))]);
        tried.push(m);
        for line in d.remote(id, &[0], "451 4.3.0 try later") {
            if line.starts_with("dsn") {
                reports.push((m, line));
            } else {
                assert!(line.starts_with("mark 0 "), "{line}");
            }
        }
        assert!(tried.len() < 20, "the lifetime ends it");
    }
    assert_eq!(tried, vec![0, 15, 45, 105, 345, 585, 720]);
    assert_eq!(reports, vec![(0, "dsn 0:delayed".to_string()), (720, "dsn 0:failed".to_string())]);
    assert!(d.m.is_empty(), "nothing left to track");
}

/// `expired = "badmail"` (MailEnable's other choice): a message out of time goes to the
/// bad-mail folder and its sender gets no failure report (a delay notice still went).
#[test]
fn expired_messages_to_badmail() {
    let mut cfg = config();
    cfg.retry.lifetime = Duration::from_secs(3600);
    cfg.retry.expired = crate::queue::schedule::Expired::Badmail;
    let mut d = Driver::new(cfg);
    let id = d.accept("s@sender.test", &["r@remote.test"]);
    let mut last = Vec::new();
    while let Some(m) = d.next_due_minutes() {
        d.at(m);
        d.run();
        last = d.remote(id, &[0], "451 4.3.0 try later");
    }
    assert_eq!(last, ["mark 0 Failed #4 451 4.3.0 try later (given up: message expired)", "badmail"]);
    assert_eq!(d.m.stats().badmail, 1);
}

/// Each mark of a deferred recipient carries its attempt number and next attempt.
#[test]
fn marks_of_the_first_attempts() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["r@remote.test"]);
    d.run();
    assert_eq!(
        d.remote(id, &[0], "451 4.3.0 try later"),
        ["mark 0 Deferred #1 next m+15 451 4.3.0 try later", "dsn 0:delayed"]
    );
    d.at(15);
    d.run();
    assert_eq!(d.remote(id, &[0], "421 4.4.2 busy"), ["mark 0 Deferred #2 next m+45 421 4.4.2 busy"]);
    d.at(45);
    d.run();
    assert_eq!(d.remote(id, &[0], "250 2.0.0 ok"), ["mark 0 Delivered #3 250 2.0.0 ok"]);
    assert_eq!(d.m.stats().relayed, 1);
    assert!(d.m.is_empty());
}

#[test]
fn max_attempts_fails_the_recipient() {
    let mut cfg = config();
    cfg.retry.max_attempts = Some(3);
    let mut d = Driver::new(cfg);
    let id = d.accept("s@sender.test", &["r@remote.test"]);
    let mut out = Vec::new();
    while let Some(m) = d.next_due_minutes() {
        d.at(m);
        d.run();
        out.push((m, d.remote(id, &[0], "450 4.2.1 mailbox busy")));
    }
    assert_eq!(
        out,
        vec![
            (0, vec!["mark 0 Deferred #1 next m+15 450 4.2.1 mailbox busy".to_string(), "dsn 0:delayed".into()]),
            (15, vec!["mark 0 Deferred #2 next m+45 450 4.2.1 mailbox busy".into()]),
            (
                45,
                vec![
                    "mark 0 Failed #3 450 4.2.1 mailbox busy (given up after 3 attempts)".into(),
                    "dsn 0:failed".into()
                ]
            ),
        ]
    );
}

/// When delay notices go out, for each mode: minutes of the deferrals that sent one.
#[test]
fn delay_notices_off_first_each_and_after() {
    let run = |mode, after: Option<u64>| -> Vec<u64> {
        let mut cfg = config();
        cfg.retry.max_attempts = Some(6);
        cfg.delay_notice = DelayNoticeConfig { mode, after: after.map(|m| Duration::from_secs(m * 60)) };
        let mut d = Driver::new(cfg);
        let id = d.accept("s@sender.test", &["r@remote.test"]);
        let mut notices = Vec::new();
        while let Some(m) = d.next_due_minutes() {
            d.at(m);
            d.run();
            if d.remote(id, &[0], "451 4.3.0 later").contains(&"dsn 0:delayed".to_string()) {
                notices.push(m);
            }
        }
        notices
    };
    assert_eq!(run(DelayNoticeMode::Off, None), Vec::<u64>::new());
    assert_eq!(run(DelayNoticeMode::First, None), vec![0]);
    assert_eq!(run(DelayNoticeMode::First, Some(60)), vec![105]);
    assert_eq!(run(DelayNoticeMode::Each, None), vec![0, 15, 45, 105, 345]);
    assert_eq!(run(DelayNoticeMode::Each, Some(60)), vec![105, 345]);
}

/// One recipient local, one remote (deferred), one unknown: exactly which marks, reports
/// and notices come out, and when.
#[test]
fn mixed_message() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["alice@example.net", "r@remote.test", "bob@example.net"]);
    assert_eq!(
        d.run(),
        [
            format!("remote {} 1:r@remote.test", mx("remote.test")),
            "maildir po/alice copy0 to alice@example.net".to_string(),
        ]
    );
    // The Maildir commit: alice delivered; bob failed at expansion; one report for bob.
    assert_eq!(
        d.maildir_ok(id, 0),
        [
            "mark 0 Delivered #1 250 2.0.0 delivered to mailbox",
            "mark 2 Failed #1 550 5.1.1 unknown user",
            "dsn 2:failed",
        ]
    );
    assert_eq!(d.next_due_minutes(), None, "the remote job is out");
    assert_eq!(d.m.len(), 1);
    assert_eq!(
        d.remote(id, &[1], "451 4.4.1 no answer"),
        ["mark 1 Deferred #1 next m+15 451 4.4.1 no answer", "dsn 1:delayed"]
    );
    assert_eq!(d.next_due_minutes(), Some(15));
    let trouble = d.m.deferred_destinations(10);
    assert_eq!(trouble.len(), 1);
    assert_eq!((trouble[0].destination.as_str(), trouble[0].deferrals), ("remote.test", 1));
    assert_eq!(trouble[0].last_reply, "451 4.4.1 no answer");
    assert_eq!(d.m.oldest(), Some(id));
    d.at(15);
    // Only the open recipient is tried again.
    assert_eq!(d.run(), [format!("remote {} 1:r@remote.test", mx("remote.test"))]);
    assert_eq!(d.remote(id, &[1], "250 2.0.0 queued as X"), ["mark 1 Delivered #2 250 2.0.0 queued as X"]);
    assert!(d.m.is_empty());
    assert!(d.m.deferred_destinations(10).is_empty(), "delivered: no longer in trouble");
    assert_eq!(d.m.oldest(), None);
    assert_eq!(
        d.m.stats(),
        Stats {
            delivered: 1,
            relayed: 1,
            deferred: 1,
            failed: 1,
            deferred_remote: 1,
            failed_remote: 0,
            dsn_failed: 1,
            dsn_delayed: 1,
            ..Stats::default()
        }
    );
}

/// With the activity log on, the mixed message's story in lines, all with its queue id: the
/// mailbox copy, the failure at expansion and its report, the deferral, the delivery.
#[test]
fn activity_of_a_mixed_message() {
    let mut d = Driver::new(ManagerConfig { activity: true, ..config() });
    let id = d.accept("s@sender.test", &["alice@example.net", "r@remote.test", "bob@example.net"]);
    d.run();
    d.maildir_ok(id, 0);
    d.remote(id, &[1], "451 4.4.1 no answer");
    d.at(15);
    d.run();
    d.remote(id, &[1], "250 2.0.0 queued as X");
    let lines: Vec<String> =
        d.m.take_activity()
            .iter()
            .map(|a| {
                let l = a.line(crate::obs::LogFormat::Kv);
                l.split_once(' ').map(|(_, rest)| rest.to_string()).unwrap_or(l)
            })
            .collect();
    let q = id.to_string();
    // Routed once, at the first attempt, one line per route.
    let (routed, lines): (Vec<String>, Vec<String>) = lines.into_iter().partition(|l| l.starts_with("routed "));
    assert_eq!(
        routed,
        [
            format!("routed id={q} route=local rcpts=alice@example.net,bob@example.net"),
            format!("routed id={q} route=mx:remote.test rcpts=r@remote.test"),
        ]
    );
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(
        lines[0],
        format!("delivered id={q} rcpt=<alice@example.net> via=mailbox reply=\"250 2.0.0 delivered to mailbox\"")
    );
    assert_eq!(lines[1], format!("failed id={q} rcpt=<bob@example.net> via=local reply=\"550 5.1.1 unknown user\""));
    assert!(
        lines[2].starts_with("generated id=") && lines[2].ends_with(&format!(" kind=dsn about={q} to=s@sender.test")),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with(&format!(
            "deferred id={q} rcpt=<r@remote.test> via=mx.elsewhere.test reply=\"451 4.4.1 no answer\" next_attempt="
        )),
        "{}",
        lines[3]
    );
    assert!(lines[4].starts_with("generated id=") && lines[4].contains(" kind=dsn "), "the delay notice: {}", lines[4]);
    assert_eq!(
        lines[5],
        format!("delivered id={q} rcpt=<r@remote.test> via=mx.elsewhere.test reply=\"250 2.0.0 queued as X\"")
    );
    assert!(d.m.take_activity().is_empty(), "taken once");
}

/// Remote recipients are grouped by route: one job per destination, in route order.
#[test]
fn one_job_per_route() {
    let mut d = Driver::new(config());
    d.accept("s@sender.test", &["a@b.test", "x@a.test", "c@b.test", "y@a.test"]);
    assert_eq!(
        d.run(),
        [
            format!("remote {} 1:x@a.test,3:y@a.test", mx("a.test")),
            format!("remote {} 0:a@b.test,2:c@b.test", mx("b.test"))
        ]
    );
}

/// A Maildir that fails for a transient reason is retried after the local pause; a
/// permanent one fails the recipient. A failure of mail from the null sender goes to the
/// bad-mail folder instead of a report.
#[test]
fn local_retry_and_badmail() {
    let mut d = Driver::new(config());
    let id = d.accept("", &["alice@example.net"]);
    assert_eq!(d.run(), ["maildir po/alice copy0 to alice@example.net"]);
    let busy = LocalFailure { permanent: false, reply: Response::new(451, Some("4.3.0"), "disk busy") };
    assert_eq!(
        d.outcome(Outcome::Maildir { id, copy: 0, result: Err(busy) }),
        ["mark 0 Deferred #1 next m+5 451 4.3.0 disk busy"]
    );
    d.at(5);
    assert_eq!(d.run(), ["maildir po/alice copy0 to alice@example.net"]);
    let full = LocalFailure { permanent: true, reply: Response::new(552, Some("5.2.2"), "mailbox full") };
    assert_eq!(
        d.outcome(Outcome::Maildir { id, copy: 0, result: Err(full) }),
        ["mark 0 Failed #2 552 5.2.2 mailbox full", "badmail"]
    );
    assert!(d.m.is_empty());
}

/// A mailbox with an auto-responder and a delivery event: one reply per sender per period
/// (RFC 3834 §2), from the null sender (§3.3), and the event on the delivered file.
#[test]
fn auto_reply_and_delivery_event() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["away@example.net"]);
    assert_eq!(d.run(), ["maildir po/away copy0 to away@example.net"]);
    assert_eq!(
        d.maildir_ok(id, 0),
        [
            "message <> to s@sender.test",
            "save replies",
            "event /usr/local/bin/notify po away /m/new/0",
            "mark 0 Delivered #1 250 2.0.0 delivered to mailbox",
        ]
    );
    d.at(60);
    let id = d.accept("s@sender.test", &["away@example.net"]);
    d.run();
    assert_eq!(
        d.maildir_ok(id, 0),
        ["event /usr/local/bin/notify po away /m/new/0", "mark 0 Delivered #1 250 2.0.0 delivered to mailbox"],
        "answered within the period: no second reply"
    );
}

/// A redirect elsewhere is forwarded as a new message from the same sender, in the same
/// turn as the marks.
#[test]
fn redirect_elsewhere_is_forwarded() {
    let mut d = Driver::new(config());
    d.accept("s@sender.test", &["fwd@example.net"]);
    assert_eq!(
        d.run(),
        ["mark 0 Delivered #1 250 2.0.0 forwarded", "message <s@sender.test> to someone@elsewhere.test"]
    );
}

/// Mail to a list goes to the list manager; what it wants sent is queued in the same turn as
/// the mark; the distribution (from the list's bounce address) goes out as a VERP job (the
/// delivery runtime sends each recipient from its own reverse path).
#[test]
fn a_list_takes_its_mail_and_its_distribution_goes_out_with_verp() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["dev@example.net", "dev-bounces+x=a.test@example.net"]);
    assert_eq!(
        d.run(),
        [
            "list dev@example.net Post copy0 from <s@sender.test>",
            "list dev@example.net Bounces(Some(\"x@a.test\")) copy1 from <s@sender.test>"
        ]
    );
    let draft = Draft {
        from: "dev-bounces@example.net".into(),
        to: vec!["alice@example.net".into(), "x@a.test".into(), "y@b.test".into()],
        data: b"Subject: [dev] hello\r\n\r\nHi.\r\n".to_vec(),
        kind: "list",
    };
    assert!(d.outcome(Outcome::List { id, copy: 0, result: Ok(vec![draft]) }).is_empty(), "waits for copy 1");
    let refused = LocalFailure { permanent: true, reply: Response::new(550, Some("5.7.1"), "not a bounce") };
    assert_eq!(
        d.outcome(Outcome::List { id, copy: 1, result: Err(refused) }),
        [
            "mark 0 Delivered #1 250 2.0.0 taken by the list",
            "mark 1 Failed #1 550 5.7.1 not a bounce",
            "message <dev-bounces@example.net> to alice@example.net,x@a.test,y@b.test",
            "dsn 1:failed"
        ]
    );
    assert_eq!(d.m.stats().list_messages, 1);

    d.accept("dev-bounces@example.net", &["alice@example.net", "x@a.test", "y@b.test"]);
    d.m.handle_timeout(d.now, &d.dir);
    let mut jobs = Vec::new();
    while let Some(a) = d.m.poll_action() {
        match a {
            Action::ReadMessage { id, .. } => {
                let env = d.spool[&id].clone();
                d.m.handle_message(d.now, &d.dir, id, Ok((env, Arc::from(&b"Subject: x\r\n\r\n"[..]))));
            }
            Action::SubmitRemote(j) => jobs.push(format!("<{}> verp {} {:?}", j.from, j.verp, j.rcpts)),
            _ => {}
        }
    }
    assert_eq!(
        jobs,
        [
            "<dev-bounces@example.net> verp true [(1, \"x@a.test\")]",
            "<dev-bounces@example.net> verp true [(2, \"y@b.test\")]"
        ]
    );
}

/// A suspended destination's recipients are held, the others go; resuming tries the held
/// ones at once.
#[test]
fn suspended_destinations_wait_until_resumed() {
    let mut d = Driver::new(config());
    assert_eq!(d.m.handle_destinations(d.now, "suspend", &["Remote.Test.".into()]), Ok(vec!["remote.test".into()]));
    let id = d.accept("s@sender.test", &["r@remote.test", "o@other.test"]);
    assert_eq!(d.run(), [format!("remote {} 1:o@other.test", mx("other.test"))]);
    d.remote(id, &[1], "250 2.0.0 ok");
    assert!(!d.m.is_empty(), "r@remote.test waits");
    assert!(d.run().is_empty(), "held: not tried again by itself");
    assert_eq!(d.m.handle_destinations(d.now, "resume", &["remote.test".into()]), Ok(vec![]));
    assert_eq!(d.run(), [format!("remote {} 0:r@remote.test", mx("remote.test"))]);
    assert!(d.m.handle_destinations(d.now, "pause", &[]).is_err());
}

/// LMTP mailboxes: one transaction for the plain copies; a broken server defers them all.
#[test]
fn lmtp_batches() {
    let mut cfg = config();
    cfg.lmtp = Some(LmtpRoute {
        endpoint: crate::delivery::lmtp::LmtpEndpoint::parse("127.0.0.1:24").unwrap(),
        domains: vec![],
        timeout: Duration::from_secs(30),
    });
    let mut d = Driver::new(cfg);
    let id = d.accept("s@sender.test", &["alice@example.net", "away@example.net"]);
    assert_eq!(d.run(), ["lmtp batch0 alice@example.net,away@example.net"]);
    assert_eq!(
        d.outcome(Outcome::Lmtp { id, batch: 0, result: Err("connect: refused".into()) }),
        [
            "mark 0 Deferred #1 next m+5 451 4.4.1 LMTP server: connect: refused",
            "mark 1 Deferred #1 next m+5 451 4.4.1 LMTP server: connect: refused",
        ]
    );
    d.at(5);
    d.run();
    let full = LocalFailure { permanent: true, reply: Response::new(552, Some("5.2.2"), "over quota") };
    assert_eq!(
        d.outcome(Outcome::Lmtp { id, batch: 0, result: Ok(vec![Err(full), Ok(())]) }),
        [
            "message <> to s@sender.test",
            "save replies",
            "mark 0 Failed #2 552 5.2.2 over quota",
            "mark 1 Delivered #2 250 2.0.0 delivered to mailbox",
            "dsn 0:failed",
        ],
        "no delivery event for an LMTP copy (there is no file)"
    );
}

fn request(op: QueueOp, ids: &[QueueId]) -> QueueRequest {
    QueueRequest { op, ids: Some(ids.iter().map(|i| i.to_string()).collect()) }
}

/// `queue retry|delete|bounce` on a message waiting for its next attempt.
#[test]
fn queue_requests_on_a_waiting_message() {
    for (op, expect_now) in [
        (QueueOp::Retry, vec![format!("remote {} 0:r@remote.test", mx("remote.test"))]),
        (QueueOp::Delete, vec!["mark all Deleted #1 deleted by the administrator".to_string()]),
        (
            QueueOp::Bounce,
            vec![
                "mark 0 Failed #1 550 5.0.0 returned to the sender by the administrator".into(),
                "dsn 0:failed".into(),
            ],
        ),
    ] {
        let mut d = Driver::new(config());
        let id = d.accept("s@sender.test", &["r@remote.test"]);
        d.run();
        d.remote(id, &[0], "451 4.3.0 later");
        d.at(3);
        let a = d.m.handle_queue_request(d.now, &request(op, &[id]));
        assert_eq!(a.done, [id.to_string()]);
        let mut out = d.drain();
        out.extend(d.run());
        assert_eq!(out, expect_now, "{op:?}");
        if op != QueueOp::Retry {
            assert!(d.m.is_empty(), "{op:?}: forgotten");
        }
    }
}

/// A message whose remote job is out: delete marks it, and the late outcome changes
/// nothing (no mark, no report).
#[test]
fn queue_delete_while_in_flight() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["r@remote.test"]);
    d.run();
    d.m.handle_queue_request(d.now, &request(QueueOp::Delete, &[id]));
    assert_eq!(d.drain(), ["mark all Deleted #1 deleted by the administrator"]);
    assert_eq!(d.remote(id, &[0], "250 2.0.0 ok"), Vec::<String>::new());
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Retry, &[id]));
    assert_eq!(a.not_found, [id.to_string()]);
}

/// What recovery finds of a message: where it is, its attempts and latest marks.
fn recovered(id: QueueId, attempts: u16, latest: Vec<Option<(MarkStatus, u64)>>) -> QueuedMessage {
    let location = Location { seq: 7, record_offset: 100, content_offset: 180, content_len: 20 };
    QueuedMessage { id, received_ms: T0, shard: 0, location, attempts, latest, quarantined: false }
}

/// Mail for an accept-all domain with no route is held (a compact entry, never due);
/// `queue retry` tries it again, `queue bounce` returns it; after a restart with a smart
/// host configured it goes there.
#[test]
fn held_messages() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["x@accept.test"]);
    d.m.handle_timeout(d.now, &d.dir);
    assert!(d.m.poll_action().is_none(), "held at acceptance: its record is not even read");
    assert_eq!((d.m.len(), d.m.active(), d.next_due_minutes()), (1, 0, None), "held: not loaded, not due");
    d.m.handle_queue_request(d.now, &request(QueueOp::Retry, &[id]));
    assert_eq!(d.run(), Vec::<String>::new(), "still nowhere to send it");
    d.m.handle_queue_request(d.now, &request(QueueOp::Bounce, &[id]));
    assert_eq!(d.drain(), ["mark 0 Failed #0 550 5.0.0 returned to the sender by the administrator", "dsn 0:failed"]);
    assert!(d.m.is_empty());
    let mut cfg = config();
    cfg.routing.smart_host = Some(crate::routing::SmartHostConfig { host: "relay.test".into(), port: 25, auth: None });
    let mut d = Driver::new(cfg);
    let id = QueueId(9 << 32);
    let mut e = Envelope::new(id);
    e.rcpts = vec![Recipient { address: "x@accept.test".into(), notify: None, orcpt: None }];
    d.spool.insert(id, e);
    d.m.handle_recovered(d.now, recovered(id, 0, vec![None]));
    assert_eq!(d.run(), [r#"remote SmartHost { host: "relay.test", port: 25, auth: None } 0:x@accept.test"#]);
}

/// A quarantined message (a milter or script held it) is never due: `retry` leaves it,
/// `release` writes the mark that keeps it released after a restart and delivers it; after a
/// restart without that mark it is still held.
#[test]
fn quarantine_until_released() {
    let mut d = Driver::new(config());
    let id = QueueId(7 << 32);
    let mut e = Envelope::new(id);
    e.from = "s@sender.test".into();
    e.quarantine = Some("held for review".into());
    e.rcpts = vec![Recipient { address: "r@remote.test".into(), notify: None, orcpt: None }];
    d.spool.insert(id, e.clone());
    let location = Location { seq: 1, record_offset: 0, content_offset: 80, content_len: 20 };
    d.m.handle_accepted(d.now, &d.dir, e, 0, location);
    assert_eq!((d.run(), d.next_due_minutes()), (Vec::<String>::new(), None), "held: not read, not due");
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Retry, &[id]));
    assert_eq!((a.done.len(), a.skipped.len()), (0, 1), "{a:?}");
    assert_eq!(d.run(), Vec::<String>::new());
    d.at(5);
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Release, &[id]));
    assert_eq!(a.done, [id.to_string()]);
    let mut out = d.drain();
    out.extend(d.run());
    assert_eq!(
        out,
        [
            "mark all Deferred #0 next m+5 released from quarantine by the administrator".to_string(),
            format!("remote {} 0:r@remote.test", mx("remote.test"))
        ]
    );
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Release, &[id]));
    assert_eq!(a.skipped, [format!("{id}: not held")]);
    // `--all` releases what is quarantined and says nothing of the rest.
    let all = QueueRequest { op: QueueOp::Release, ids: None };
    let a = d.m.handle_queue_request(d.now, &all);
    assert!(a.skipped.is_empty() && a.done.is_empty(), "{a:?}");
    // After a restart: still quarantined without the mark.
    let mut d2 = Driver::new(config());
    d2.spool.insert(id, d.spool[&id].clone());
    d2.m.handle_recovered(d2.now, QueuedMessage { quarantined: true, ..recovered(id, 0, vec![None]) });
    assert_eq!((d2.run(), d2.next_due_minutes(), d2.m.len()), (Vec::<String>::new(), None, 1));
}

/// `queue hold`: the unfinished recipients get durable hold marks and the message is not
/// tried again (`retry` leaves it) until `release`, which reopens only them; a restart finds
/// it still held. A message with a delivery out is skipped.
#[test]
fn hold_until_released() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["a@remote.test", "b@other.test"]);
    d.run();
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Hold, &[id]));
    assert_eq!(a.skipped, [format!("{id}: being delivered now: hold it once this attempt ends")]);
    d.remote(id, &[0], "250 2.0.0 ok");
    d.remote(id, &[1], "451 4.3.0 later");
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Hold, &[id]));
    assert_eq!(a.done, [id.to_string()]);
    assert_eq!(d.drain(), ["mark 1 Deferred #1 on hold held by the administrator"], "only the unfinished one");
    // Its filing in the timer is stale: the retry time passes and it is not tried.
    d.at(60);
    assert_eq!(d.run(), Vec::<String>::new(), "not tried while held");
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Retry, &[id]));
    assert_eq!(a.skipped.len(), 1, "{a:?}");
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Hold, &[id]));
    assert_eq!(a.skipped, [format!("{id}: already held")]);
    // A restart: the latest marks are a delivery and a hold.
    let mut d2 = Driver::new(config());
    d2.spool.insert(id, d.spool[&id].clone());
    let latest = vec![Some((MarkStatus::Delivered, 0)), Some((MarkStatus::Deferred, crate::spool::HOLD_MS))];
    d2.m.handle_recovered(d2.now, QueuedMessage { quarantined: true, ..recovered(id, 1, latest) });
    assert_eq!((d2.run(), d2.next_due_minutes(), d2.m.len()), (Vec::<String>::new(), None, 1), "still held");
    let a = d2.m.handle_queue_request(d2.now, &request(QueueOp::Release, &[id]));
    assert_eq!(a.done, [id.to_string()]);
    let mut out = d2.drain();
    out.extend(d2.run());
    assert_eq!(
        out,
        [
            "mark 1 Deferred #1 next m+0 released from quarantine by the administrator".to_string(),
            format!("remote {} 1:b@other.test", mx("other.test"))
        ],
        "the delivered recipient stays delivered"
    );
}

/// A script's route sends every recipient, local ones too, to its host.
#[test]
fn a_scripts_route_takes_every_recipient() {
    let mut d = Driver::new(config());
    let id = QueueId(8 << 32);
    let mut e = Envelope::new(id);
    e.from = "s@sender.test".into();
    e.route = Some("[192.0.2.25]:2525".into());
    e.rcpts = ["alice@example.net", "r@remote.test"]
        .iter()
        .map(|a| Recipient { address: a.to_string(), notify: None, orcpt: None })
        .collect();
    d.spool.insert(id, e.clone());
    let location = Location { seq: 1, record_offset: 0, content_offset: 80, content_len: 20 };
    d.m.handle_accepted(d.now, &d.dir, e, 0, location);
    assert_eq!(
        d.run(),
        [r#"remote SmartHost { host: "192.0.2.25", port: 2525, auth: None } 0:alice@example.net,1:r@remote.test"#]
    );
}

/// A restart feeds the manager what recovery found: final recipients stay done, a
/// deferred one is due at its mark's next attempt, and the attempt count goes on.
#[test]
fn restart_replay() {
    let mut d = Driver::new(config());
    let id = QueueId(42 << 32);
    let mut e = Envelope::new(id);
    e.received_ms = T0;
    e.from = "s@sender.test".into();
    e.rcpts = ["alice@example.net", "r@remote.test", "q@remote.test"]
        .iter()
        .map(|a| Recipient { address: a.to_string(), notify: None, orcpt: None })
        .collect();
    d.spool.insert(id, e);
    let latest = vec![
        Some((MarkStatus::Delivered, 0)),
        Some((MarkStatus::Deferred, T0 + 45 * MIN)),
        Some((MarkStatus::Failed, 0)),
    ];
    d.at(20);
    d.m.handle_recovered(d.now, recovered(id, 2, latest));
    assert_eq!(d.next_due_minutes(), Some(45));
    assert_eq!(d.m.location(id), Some(At::of_record(0, 7, 100)));
    assert_eq!(d.m.active(), 0, "nothing loaded until due");
    d.at(45);
    assert_eq!(d.run(), [format!("remote {} 1:r@remote.test", mx("remote.test"))]);
    assert_eq!(d.m.active(), 1);
    assert_eq!(
        d.remote(id, &[1], "451 4.3.0 later"),
        ["mark 1 Deferred #3 next m+105 451 4.3.0 later"],
        "third attempt: 60 minutes; no second delay notice (first mode, one was due at the first deferral)"
    );
    assert_eq!(d.m.active(), 0, "unloaded while it waits");
    // A message never tried is due at once.
    d.m.handle_recovered(d.now, recovered(QueueId(43 << 32), 0, vec![None]));
    assert_eq!(d.next_due_minutes(), Some(45), "due now (minute 45)");
}

/// The active window: with room for two, the third due message waits until one of the
/// first two is done, then goes in due order.
#[test]
fn active_window() {
    let mut cfg = config();
    cfg.active_limit = 2;
    let mut d = Driver::new(cfg);
    let a = d.accept("s@sender.test", &["r@a.test"]);
    let b = d.accept("s@sender.test", &["r@b.test"]);
    let c = d.accept("s@sender.test", &["r@c.test"]);
    assert_eq!(d.run(), [format!("remote {} 0:r@a.test", mx("a.test")), format!("remote {} 0:r@b.test", mx("b.test"))]);
    assert_eq!((d.m.active(), d.m.poll_timeout()), (2, None), "full: nothing to wake up for");
    assert_eq!(d.run(), Vec::<String>::new());
    assert_eq!(d.remote(b, &[0], "250 2.0.0 ok"), ["mark 0 Delivered #1 250 2.0.0 ok"]);
    assert_eq!(d.run(), [format!("remote {} 0:r@c.test", mx("c.test"))]);
    d.remote(a, &[0], "250 2.0.0 ok");
    d.remote(c, &[0], "250 2.0.0 ok");
    assert!(d.m.is_empty() && d.m.active() == 0);
}

/// A record that cannot be read puts the attempt off by the local pause, without marks.
#[test]
fn unreadable_record_is_retried() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["r@remote.test"]);
    d.m.handle_timeout(d.now, &d.dir);
    match d.m.poll_action() {
        Some(Action::ReadMessage { id: got, at }) => {
            assert_eq!((got, at.seq()), (id, 1));
        }
        other => panic!("{other:?}"),
    }
    d.m.handle_message(d.now, &d.dir, id, Err("no such file".into()));
    assert!(d.m.poll_action().is_none());
    assert_eq!(d.next_due_minutes(), Some(5));
    assert!(!d.m.is_idle_until(id, T0 + 10 * MIN), "due before then");
    assert!(d.m.is_idle_until(id, T0 + 5 * MIN));
}

/// `queue show` on a running server: the record's place, from the queue's index.
#[test]
fn locate_through_the_index() {
    let mut d = Driver::new(config());
    let id = d.accept("s@sender.test", &["x@accept.test"]);
    let a = d.m.handle_queue_request(d.now, &request(QueueOp::Locate, &[id, QueueId(77)]));
    let l = &a.located[0];
    assert_eq!((l.id.as_str(), l.shard, l.seq, l.offset), (id.to_string().as_str(), 0, 1, 100));
    assert_eq!(a.not_found, [QueueId(77).to_string()]);
    assert!(d.drain().is_empty(), "no mark, no change");
}

/// RFC 5321 §4.5.1: a domain without a postmaster mailbox. Without a fallback the mail
/// waits (never bounced); with `delivery.postmaster` it is forwarded there.
#[test]
fn postmaster_without_a_mailbox() {
    let mut d = Driver::new(config());
    d.accept("s@sender.test", &["postmaster@example.net"]);
    assert_eq!(d.run(), ["mark 0 Deferred #1 next m+5 451 4.3.0 postmaster has no mailbox"]);
    let mut cfg = config();
    cfg.postmaster = Some("hostmaster@isp.test".into());
    let mut d = Driver::new(cfg);
    d.accept("s@sender.test", &["postmaster@example.net"]);
    assert_eq!(d.run(), ["mark 0 Delivered #1 250 2.0.0 forwarded", "message <s@sender.test> to hostmaster@isp.test"]);
    // The fallback itself unresolved: it waits instead of forwarding to itself.
    let mut cfg = config();
    cfg.postmaster = Some("Postmaster@example.net".into());
    let mut d = Driver::new(cfg);
    d.accept("s@sender.test", &["postmaster@example.net"]);
    assert_eq!(d.run(), ["mark 0 Deferred #1 next m+5 451 4.3.0 postmaster has no mailbox"]);
}

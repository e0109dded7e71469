//! Golden files: `tests/golden/dsn/*.eml`. Run with `UPDATE_GOLDEN=1` to rewrite them after
//! an intended change, and read the diff.

use super::*;
use crate::spool::{QueueId, Recipient};
use crate::wire::Body;
use std::path::PathBuf;

const NOW: u64 = 1_795_321_697_000; // Sun, 22 Nov 2026 04:28:17 +0000
const HOUR: u64 = 3_600_000;

fn envelope(ret: Option<Ret>) -> Envelope {
    let mut e = Envelope::new(QueueId(0x6A1F_0000_0300_0001));
    e.received_ms = NOW - 2 * HOUR;
    e.from = "alice@sender.example".into();
    e.body = Some(Body::SevenBit);
    e.ret = ret;
    e.envid = Some("QQ314159+2Bx".into());
    e.rcpts = vec![
        Recipient { address: "bob@remote.example".into(), notify: None, orcpt: None },
        Recipient {
            address: "carol@remote.example".into(),
            notify: Some(Notify { failure: true, delay: true, success: true, never: false }),
            orcpt: Some("rfc822;Carol+2Bext@old.example".into()),
        },
        Recipient {
            address: "dave@remote.example".into(),
            notify: Some(Notify { never: true, ..Default::default() }),
            orcpt: None,
        },
    ];
    e
}

const CONTENT: &[u8] = b"From: Alice <alice@sender.example>\r\nTo: bob@remote.example\r\nSubject: Lunch\r\nMessage-ID: <lunch-1@sender.example>\r\n\r\nNoon at the usual place?\r\n.\r\n";

fn failed(rcpt: usize) -> RecipientReport {
    RecipientReport {
        rcpt,
        action: Action::Failed,
        status: "5.1.1".into(),
        remote_mta: Some("mx1.remote.example".into()),
        diagnostic: Some("550 5.1.1 <bob@remote.example>: user unknown".into()),
        last_attempt_ms: Some(NOW - 60_000),
        will_retry_until_ms: None,
    }
}

fn delayed(rcpt: usize) -> RecipientReport {
    RecipientReport {
        rcpt,
        action: Action::Delayed,
        status: "4.4.1".into(),
        remote_mta: None,
        diagnostic: Some("connection refused by mx1.remote.example[192.0.2.25]:25".into()),
        last_attempt_ms: Some(NOW - 60_000),
        will_retry_until_ms: Some(NOW - 2 * HOUR + 120 * HOUR),
    }
}

fn run(env: &Envelope, reports: &[RecipientReport]) -> Option<Dsn> {
    build(&DsnInput {
        reporting_mta: "mx.ringmx.example",
        envelope: env,
        content: CONTENT,
        reports,
        now_ms: NOW,
        boundary: "=_ringmx_6A1F000003000001_1",
        message_id: "6A1F000003000001.dsn@mx.ringmx.example",
        config: DsnConfig::default(),
    })
}

fn golden(name: &str, got: &Dsn) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "golden", "dsn", name].iter().collect();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got.content).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(String::from_utf8_lossy(&got.content), String::from_utf8_lossy(&want), "{name}");
    // Every line ends with CRLF; no bare LF, no line over 998.
    for line in got.content.split(|&b| b == b'\n') {
        assert!(line.is_empty() || line.ends_with(b"\r"), "{name}: bare LF");
        assert!(line.len() <= 998);
    }
}

#[test]
fn failure_returns_the_whole_message() {
    let env = envelope(Some(Ret::Full));
    let mut c = failed(1);
    c.diagnostic = Some("550 5.1.1 <carol@remote.example>: user unknown".into());
    let dsn = run(&env, &[failed(0), c, failed(2)]).unwrap();
    assert_eq!(dsn.to, "alice@sender.example");
    golden("failed-ret-full.eml", &dsn);
}

#[test]
fn delay_notice_with_headers_only() {
    let env = envelope(Some(Ret::Hdrs));
    let dsn = run(&env, &[delayed(0)]).unwrap();
    golden("delayed-ret-hdrs.eml", &dsn);
}

#[test]
fn success_only_when_asked_and_headers_by_default() {
    let env = envelope(None);
    let ok = |rcpt| RecipientReport {
        rcpt,
        action: Action::Delivered,
        status: "2.0.0".into(),
        remote_mta: Some("mx1.remote.example".into()),
        diagnostic: Some("250 2.0.0 Ok: queued as 4XyZ".into()),
        last_attempt_ms: Some(NOW),
        will_retry_until_ms: None,
    };
    // bob (no NOTIFY) and dave (NEVER) are not told; carol asked for SUCCESS.
    let dsn = run(&env, &[ok(0), ok(1), ok(2)]).unwrap();
    golden("delivered-notify-success.eml", &dsn);
    assert!(run(&env, &[ok(0), ok(2)]).is_none());
}

#[test]
fn never_for_a_null_sender_notify_never_or_bounces_off() {
    let mut env = envelope(None);
    assert!(run(&env, &[failed(2)]).is_none(), "NOTIFY=NEVER");
    let mut input_env = env.clone();
    input_env.from.clear();
    assert!(run(&input_env, &[failed(0)]).is_none(), "null sender");
    env.rcpts[0].notify = Some(Notify { success: true, ..Default::default() });
    assert!(run(&env, &[failed(0)]).is_none(), "NOTIFY=SUCCESS only");
    let env = envelope(None);
    let off = DsnInput {
        reporting_mta: "mx",
        envelope: &env,
        content: CONTENT,
        reports: &[failed(0)],
        now_ms: NOW,
        boundary: "b",
        message_id: "m",
        config: DsnConfig { bounces: false, ..Default::default() },
    };
    assert!(build(&off).is_none());
    assert!(build(&DsnInput { reports: &[delayed(0)], ..off }).is_some(), "delay notices are not bounces");
}

#[test]
fn notify_defaults_and_xtext() {
    assert!(wants_notice(None, Action::Failed));
    assert!(wants_notice(None, Action::Delayed));
    assert!(!wants_notice(None, Action::Delivered));
    let never = Some(Notify { never: true, success: true, ..Default::default() });
    assert!(!wants_notice(never, Action::Delivered));
    assert_eq!(xtext_decode("a+2Bb+3Dc+"), "a+b=c+");
    assert_eq!(xtext_decode("j+C3+B6rg"), "jörg");
}

/// ENVID and ORCPT are the client's xtext, which can encode CR and LF: decoded into the
/// report they must not end their field and start another (found by the `dsn` fuzz
/// target).
#[test]
fn xtext_cannot_inject_report_fields() {
    let mut env = envelope(None);
    env.envid = Some("id+0D+0AX-Injected:+20yes".into());
    env.rcpts[1].orcpt = Some("rfc822;c+0A+0AFinal-Recipient:+20rfc822;evil@x".into());
    let dsn = run(&env, &[failed(0), failed(1)]).unwrap();
    let text = String::from_utf8_lossy(&dsn.content);
    assert!(text.contains("Original-Envelope-Id: id  X-Injected: yes\r\n"), "{text}");
    assert!(!text.contains("\r\nX-Injected:"), "{text}");
    assert!(!text.contains("\nFinal-Recipient: rfc822;evil"), "{text}");
    assert!(!text.contains("\r\n\r\nFinal-Recipient: rfc822;evil"), "{text}");
}

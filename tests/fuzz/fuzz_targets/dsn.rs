//! Delivery status notifications built from what other servers and senders control: the
//! remote reply text and host, the addresses, ENVID and ORCPT, and the original message.
//! Building never panics, and what comes out is a mail message: CRLF line endings only,
//! no line over RFC 5322 §2.1.1's 998 characters, the report's header fields each on
//! lines of their own (a reply cannot inject a field), and the MIME boundary closed.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringmx::delivery::dsn::{Action, DsnConfig, DsnInput, RecipientReport, build, xtext_decode};
use ringmx::spool::{Envelope, QueueId, Recipient};

#[derive(Arbitrary, Debug)]
struct Input {
    from: String,
    envid: Option<String>,
    rcpts: Vec<(String, Option<String>)>,
    reports: Vec<Report>,
    content: Vec<u8>,
    return_limit: u16,
}

#[derive(Arbitrary, Debug)]
struct Report {
    rcpt: u8,
    action: u8,
    status: String,
    remote_mta: Option<String>,
    diagnostic: Option<String>,
}

/// Addresses and status codes reach the builder only as the session's parser and our own
/// code made them: without control characters, of bounded length.
fn address(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

fuzz_target!(|i: Input| {
    let _ = xtext_decode(&i.from);
    let mut env = Envelope::new(QueueId(1));
    env.from = address(&i.from);
    // ENVID and ORCPT are the client's xtext as sent: any byte can be encoded in them.
    env.envid = i.envid.clone();
    env.rcpts =
        i.rcpts.iter().map(|(a, o)| Recipient { address: address(a), notify: None, orcpt: o.clone() }).collect();
    if env.rcpts.is_empty() {
        return;
    }
    let reports: Vec<RecipientReport> = i
        .reports
        .iter()
        .map(|r| RecipientReport {
            rcpt: r.rcpt as usize % env.rcpts.len(),
            action: [Action::Failed, Action::Delayed, Action::Delivered, Action::Relayed][r.action as usize % 4],
            status: address(&r.status),
            remote_mta: r.remote_mta.as_deref().map(address),
            diagnostic: r.diagnostic.clone(),
            last_attempt_ms: Some(1_700_000_000_000),
            will_retry_until_ms: Some(1_700_100_000_000),
        })
        .collect();
    let input = DsnInput {
        reporting_mta: "mx.example.test",
        envelope: &env,
        content: &i.content,
        reports: &reports,
        now_ms: 1_700_000_000_000,
        boundary: "=_boundary_1",
        message_id: "dsn.1@mx.example.test",
        config: DsnConfig { bounces: true, return_limit: i.return_limit as usize, sender: None },
    };
    let Some(dsn) = build(&input) else { return };
    let c = &dsn.content;
    // The report part ends before the returned message: check our own lines there.
    let ours_end =
        find(c, b"Content-Type: message/").or_else(|| find(c, b"Content-Type: text/rfc822-headers")).unwrap_or(c.len());
    let ours = &c[..ours_end];
    for line in ours.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.contains(&b'\r'), "bare CR in {line:?}");
        assert!(line.len() <= 998, "a line of {} characters", line.len());
    }
    for (i, &b) in ours.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && ours[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    assert!(find(c, b"\r\n--=_boundary_1--\r\n").is_some(), "boundary not closed");
});

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

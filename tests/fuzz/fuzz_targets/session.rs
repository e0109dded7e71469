//! Random input, in random pieces, never panics the session, and everything it sends is
//! well-formed reply lines. The first byte holds flags (0x80: the client is a trusted
//! PROXY-protocol balancer; 0x40: the connection is already TLS) and picks the DNS and
//! password answers; then each piece is a length byte and that many bytes. The seeds in
//! `seeds/session/` are whole dialogs in this form (see `make_seeds.py`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::dns::DnsAnswer;
use ringmx::policy::auth::AuthOutcome;
use ringmx::session::{Action, Session, SessionConfig};
use ringmx::spool::{IdGen, QueueId};
use ringmx::util::time::Now;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let policy = ringmx::policy::Policy { auth_directory: true, ..Default::default() };
    let cfg = Arc::new(SessionConfig {
        hostname: "mx.example.test".into(),
        max_message_size: 4096,
        local_domains: ["example.test".to_string()].into_iter().collect(),
        starttls: flags & 0x40 == 0,
        auth_mode: ringmx::policy::AuthMode::Always,
        policy: Arc::new(policy),
        proxy_from: (flags & 0x80 != 0).then(|| Arc::new(ringmx::policy::IpList::parse(&["192.0.2.0/24"]).unwrap())),
        activity: flags & 0x20 != 0,
        ..SessionConfig::default()
    });
    let tls = (flags & 0x40 != 0).then(|| ringmx::session::TlsInfo { version: "t".into(), cipher: "c".into() });
    let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
    let mut now = Now::system();
    let dir = std::sync::Arc::new(ringmx::directory::Directory::build(Default::default()).unwrap());
    let mut s = Session::new(cfg, ids, dir, "192.0.2.1:25".parse().unwrap(), tls, now, 0);
    // The first byte of each piece sets its length; pieces are fed one by one.
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        s.handle_input(now, &tail[..n]);
        rest = &tail[n..];
        now = now.advance(Duration::from_secs(1));
        s.handle_timeout(now);
        while let Some(a) = s.poll_action() {
            match a {
                Action::Spool(req) => {
                    let id = req.envelope.id;
                    s.spool_done(now, Ok(id), req.data);
                }
                Action::StartTls => {
                    s.tls_established(now, ringmx::session::TlsInfo { version: "t".into(), cipher: "c".into() })
                }
                // DNS and password answers come from the first input byte, so every path of
                // the policy checks is reachable.
                Action::Resolve(_) => {
                    let answer = match flags % 3 {
                        0 => DnsAnswer::Found(vec!["127.0.0.2".into()]),
                        1 => DnsAnswer::NotFound,
                        _ => DnsAnswer::TempFail,
                    };
                    s.provide_policy_answer(now, answer);
                }
                Action::Authenticate(_) => {
                    let outcome = match (flags >> 2) % 3 {
                        0 => AuthOutcome::Success,
                        1 => AuthOutcome::Failure,
                        _ => AuthOutcome::Unavailable,
                    };
                    s.auth_done(now, outcome);
                }
                Action::Delegate(..) => {
                    s.delegation_done(now, ringmx::policy::delegation::Verdict::Continue { prepend: None });
                }
                Action::Milter(..) => s.milter_done(now, ringmx::policy::milter::Verdict::Accept(Vec::new())),
                Action::MilterOpen(..) | Action::MilterRcpt(..) => {
                    s.milter_step_done(now, ringmx::policy::milter::StepVerdict::Continue)
                }
                Action::MilterAbort => {}
                Action::Dkim(..) => s.dkim_done(now, ringmx::policy::dkim::Outcome::default()),
                Action::Spf(..) => s.spf_done(
                    now,
                    ringmx::policy::spf::Outcome {
                        result: ringmx::policy::spf::Result::None,
                        domain: String::new(),
                        explanation: None,
                    },
                ),
                Action::Close => return,
                Action::Log(a) => drop(a.line(ringmx::obs::LogFormat::Json)),
            }
        }
        let out = std::mem::take(s.output());
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.len() >= 5 && line[..3].iter().all(u8::is_ascii_digit) && line.ends_with(b"\r"));
        }
    }
});

//! Whole SMTP dialogs, structured so that fuzzing starts past the greeting: a sequence of
//! well-formed commands with fuzzed arguments (EHLO, MAIL and RCPT with their parameters,
//! DATA and BDAT content, AUTH PLAIN and LOGIN, STARTTLS, a PROXY header), raw bytes,
//! time passing, and a client that reads its replies or does not. The session never
//! panics, every reply is a well-formed line, and the replies waiting for a client that
//! does not read stay under the back-pressure bound.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringmx::dns::DnsAnswer;
use ringmx::policy::auth::AuthOutcome;
use ringmx::policy::{AuthMode, IpList, Policy};
use ringmx::session::{Action, OUTPUT_PAUSE, Session, SessionConfig, TlsInfo};
use ringmx::spool::{IdGen, QueueId};
use ringmx::util::time::Now;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
struct Dialog {
    setup: Setup,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    /// The client is a trusted load balancer: a PROXY header is expected first.
    proxied: bool,
    tls: bool,
    dns: u8,
    auth: u8,
    spool_fails: bool,
    max_recipients: u8,
    max_errors: u8,
    max_message_size: u16,
    min_data_rate: u16,
    /// Feed input even when the session asks for none (a careless driver).
    ignore_backpressure: bool,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Cmd(Cmd),
    Raw(Vec<u8>),
    /// DATA content, ended with CRLF.CRLF when `end`.
    Content {
        text: Vec<u8>,
        end: bool,
    },
    /// A BDAT command and its chunk; `delta` makes the declared size lie.
    Bdat {
        data: Vec<u8>,
        last: bool,
        delta: i8,
    },
    Proxy(Proxy),
    /// Seconds pass.
    Tick(u16),
    /// The client reads every reply so far.
    Read,
    /// Later writes go in pieces of this size (0: whole).
    Split(u8),
}

#[derive(Arbitrary, Debug)]
enum Cmd {
    Ehlo(Word),
    Helo(Word),
    Mail(Addr, Vec<MailParam>),
    Rcpt(Addr, Vec<RcptParam>),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy(Word),
    Expn(Word),
    Help,
    StartTls,
    AuthPlain {
        initial: bool,
        user: Word,
        password: Word,
    },
    AuthLogin {
        initial: bool,
        user: Word,
        password: Word,
    },
    /// A SASL line out of turn, or a `*` cancel.
    Sasl(Word),
}

#[derive(Arbitrary, Debug)]
enum Word {
    Client,
    Empty,
    Long(u16),
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct Addr {
    local: Local,
    domain: Domain,
}

#[derive(Arbitrary, Debug)]
enum Local {
    Alice,
    Bob,
    Postmaster,
    Quoted(String),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Domain {
    Local,
    Hosted,
    Remote,
    Literal([u8; 4]),
    Null,
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum MailParam {
    Size(u64),
    Body(u8),
    SmtpUtf8,
    Ret(bool),
    Envid(String),
    Auth(String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum RcptParam {
    Notify(u8),
    Orcpt(String),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Proxy {
    V1 { v6: bool, a: [u8; 4], port: u16 },
    V1Unknown,
    V2 { a: [u8; 4], tail: Vec<u8> },
    Garbage(Vec<u8>),
}

fn word(w: &Word) -> String {
    match w {
        Word::Client => "client.example".into(),
        Word::Empty => String::new(),
        Word::Long(n) => "w".repeat(*n as usize % 4096),
        Word::Any(s) => s.clone(),
    }
}

fn addr(a: &Addr) -> String {
    let local = match &a.local {
        Local::Alice => "alice".into(),
        Local::Bob => "bob".into(),
        Local::Postmaster => "postmaster".into(),
        Local::Quoted(s) => format!("\"{s}\""),
        Local::Any(s) => s.clone(),
    };
    match &a.domain {
        Domain::Local => format!("<{local}@example.test>"),
        Domain::Hosted => format!("<{local}@example.net>"),
        Domain::Remote => format!("<{local}@remote.example>"),
        Domain::Literal(o) => format!("<{local}@[{}.{}.{}.{}]>", o[0], o[1], o[2], o[3]),
        Domain::Null => "<>".into(),
        Domain::Any(d) => format!("<{local}@{d}>"),
    }
}

fn b64(data: &[u8]) -> String {
    ringmx::delivery::client::base64(data)
}

/// The bytes a step puts on the wire.
fn render(step: &Step, out: &mut Vec<u8>) {
    match step {
        Step::Cmd(c) => {
            let line = match c {
                Cmd::Ehlo(w) => format!("EHLO {}", word(w)),
                Cmd::Helo(w) => format!("HELO {}", word(w)),
                Cmd::Mail(a, params) => {
                    let mut l = format!("MAIL FROM:{}", addr(a));
                    for p in params {
                        l.push(' ');
                        l.push_str(&match p {
                            MailParam::Size(n) => format!("SIZE={n}"),
                            MailParam::Body(b) => {
                                ["BODY=7BIT", "BODY=8BITMIME", "BODY=BINARYMIME", "BODY=X"][*b as usize % 4].to_string()
                            }
                            MailParam::SmtpUtf8 => "SMTPUTF8".into(),
                            MailParam::Ret(f) => if *f { "RET=FULL" } else { "RET=HDRS" }.into(),
                            MailParam::Envid(s) => format!("ENVID={s}"),
                            MailParam::Auth(s) => format!("AUTH={s}"),
                            MailParam::Raw(s) => s.clone(),
                        });
                    }
                    l
                }
                Cmd::Rcpt(a, params) => {
                    let mut l = format!("RCPT TO:{}", addr(a));
                    for p in params {
                        l.push(' ');
                        l.push_str(&match p {
                            RcptParam::Notify(n) => {
                                ["NOTIFY=NEVER", "NOTIFY=SUCCESS,FAILURE", "NOTIFY=DELAY", "NOTIFY=NEVER,SUCCESS"]
                                    [*n as usize % 4]
                                    .to_string()
                            }
                            RcptParam::Orcpt(s) => format!("ORCPT=rfc822;{s}"),
                            RcptParam::Raw(s) => s.clone(),
                        });
                    }
                    l
                }
                Cmd::Data => "DATA".into(),
                Cmd::Rset => "RSET".into(),
                Cmd::Noop => "NOOP".into(),
                Cmd::Quit => "QUIT".into(),
                Cmd::Vrfy(w) => format!("VRFY {}", word(w)),
                Cmd::Expn(w) => format!("EXPN {}", word(w)),
                Cmd::Help => "HELP".into(),
                Cmd::StartTls => "STARTTLS".into(),
                Cmd::AuthPlain { initial, user, password } => {
                    let ir = b64(format!("\0{}\0{}", word(user), word(password)).as_bytes());
                    if *initial { format!("AUTH PLAIN {ir}") } else { format!("AUTH PLAIN\r\n{ir}") }
                }
                Cmd::AuthLogin { initial, user, password } => {
                    let (u, p) = (b64(word(user).as_bytes()), b64(word(password).as_bytes()));
                    if *initial { format!("AUTH LOGIN {u}\r\n{p}") } else { format!("AUTH LOGIN\r\n{u}\r\n{p}") }
                }
                Cmd::Sasl(w) => word(w),
            };
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Step::Raw(b) => out.extend_from_slice(b),
        Step::Content { text, end } => {
            out.extend_from_slice(text);
            if *end {
                out.extend_from_slice(b"\r\n.\r\n");
            }
        }
        Step::Bdat { data, last, delta } => {
            let size = (data.len() as i64 + *delta as i64).max(0);
            out.extend_from_slice(format!("BDAT {size}{}\r\n", if *last { " LAST" } else { "" }).as_bytes());
            out.extend_from_slice(data);
        }
        Step::Proxy(p) => match p {
            Proxy::V1 { v6: false, a, port } => out.extend_from_slice(
                format!("PROXY TCP4 {}.{}.{}.{} 192.0.2.1 {port} 25\r\n", a[0], a[1], a[2], a[3]).as_bytes(),
            ),
            Proxy::V1 { v6: true, a, port } => out.extend_from_slice(
                format!("PROXY TCP6 2001:db8::{:x}{:x} 2001:db8::1 {port} 25\r\n", a[0], a[1]).as_bytes(),
            ),
            Proxy::V1Unknown => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
            Proxy::V2 { a, tail } => {
                out.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
                out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                out.extend_from_slice(a);
                out.extend_from_slice(&[192, 0, 2, 1, 0x9c, 0x40, 0, 25]);
                out.extend_from_slice(tail);
            }
            Proxy::Garbage(g) => out.extend_from_slice(g),
        },
        Step::Tick(_) | Step::Read | Step::Split(_) => {}
    }
}

fn directory() -> Arc<ringmx::directory::Directory> {
    let data = serde_json::from_value(serde_json::json!({
        "postoffices": [{"name": "po"}],
        "default_postoffice": "po",
        "domains": [{"name": "example.net", "postoffice": "po"}],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "bob", "disabled": true, "addresses": ["bob@example.net"]}
        ],
        "groups": [{"address": "team@example.net", "members": ["alice@example.net", "x@remote.example"]}]
    }))
    .unwrap();
    Arc::new(ringmx::directory::Directory::build(data).unwrap())
}

struct Run {
    s: Session,
    now: Now,
    setup: Setup,
    closed: bool,
}

impl Run {
    fn actions(&mut self) {
        while let Some(a) = self.s.poll_action() {
            match a {
                Action::Spool(req) => {
                    let result = if self.setup.spool_fails {
                        Err(ringmx::wire::Reply::new(451, "4.3.0", "Error: queue file write error"))
                    } else {
                        Ok(req.envelope.id)
                    };
                    self.s.spool_done(self.now, result, req.data);
                }
                Action::StartTls => {
                    self.s.tls_established(self.now, TlsInfo { version: "TLSv1.3".into(), cipher: "c".into() })
                }
                Action::Resolve(_) => {
                    let answer = match self.setup.dns % 4 {
                        0 => DnsAnswer::Found(vec!["127.0.0.2".into()]),
                        1 => DnsAnswer::NotFound,
                        2 => DnsAnswer::Found(vec!["mail.example".into()]),
                        _ => DnsAnswer::TempFail,
                    };
                    self.s.provide_policy_answer(self.now, answer);
                }
                Action::Authenticate(_) => {
                    let outcome = match self.setup.auth % 3 {
                        0 => AuthOutcome::Success,
                        1 => AuthOutcome::Failure,
                        _ => AuthOutcome::Unavailable,
                    };
                    self.s.auth_done(self.now, outcome);
                }
                Action::Delegate(..) => {
                    let go_on = ringmx::policy::delegation::Verdict::Continue { prepend: None };
                    self.s.delegation_done(self.now, go_on);
                }
                Action::Milter(..) => {
                    self.s.milter_done(self.now, ringmx::policy::milter::Verdict::Accept(Vec::new()));
                }
                Action::MilterOpen(..) | Action::MilterRcpt(..) => {
                    self.s.milter_step_done(self.now, ringmx::policy::milter::StepVerdict::Continue);
                }
                Action::MilterAbort => {}
                Action::Spf(..) => {
                    let o = ringmx::policy::spf::Outcome {
                        result: ringmx::policy::spf::Result::None,
                        domain: String::new(),
                        explanation: None,
                    };
                    self.s.spf_done(self.now, o);
                }
                Action::Dkim(..) => {
                    let o = ringmx::policy::dkim::Outcome::default();
                    self.s.dkim_done(self.now, o);
                }
                Action::Close => self.closed = true,
                // Formatting the line is what the writer does with it.
                Action::Log(a) => drop(a.line(ringmx::obs::LogFormat::Kv)),
            }
        }
    }

    /// The client reads: every reply goes, and a paused session goes on.
    fn read(&mut self) {
        loop {
            let out = std::mem::take(self.s.output());
            check_replies(&out);
            self.actions();
            if !self.s.is_paused() {
                break;
            }
            self.s.resume(self.now);
            self.actions();
        }
    }

    fn feed(&mut self, mut bytes: &[u8], piece: usize) {
        while !bytes.is_empty() && !self.closed {
            if !self.s.wants_input() && !self.setup.ignore_backpressure {
                // A driver stops reading here; the client's bytes wait in the kernel.
                return;
            }
            let n = if piece == 0 { bytes.len() } else { piece.min(bytes.len()) };
            self.s.handle_input(self.now, &bytes[..n]);
            bytes = &bytes[n..];
            self.actions();
            // The bound a client that does not read can push the replies to.
            assert!(self.s.output().len() < OUTPUT_PAUSE + 8192, "{}", self.s.output().len());
        }
    }
}

fn check_replies(out: &[u8]) {
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit) && line.ends_with(b"\r"), "{line:?}");
        assert!(line[3] == b' ' || line[3] == b'-' || line == &line[..4], "{line:?}");
    }
}

fuzz_target!(|d: Dialog| {
    let setup = d.setup;
    let policy =
        Policy { auth_directory: true, auth_fixed: Some(("relay".into(), "secret".into())), ..Policy::default() };
    let cfg = Arc::new(SessionConfig {
        hostname: "mx.example.test".into(),
        max_message_size: setup.max_message_size as u64,
        max_recipients: (setup.max_recipients as usize % 8).max(1),
        max_errors: setup.max_errors as u32 % 32,
        min_data_rate: setup.min_data_rate as u64,
        local_domains: ["example.test".to_string()].into_iter().collect(),
        starttls: !setup.tls,
        auth_mode: AuthMode::Always,
        policy: Arc::new(policy),
        proxy_from: setup.proxied.then(|| Arc::new(IpList::parse(&["192.0.2.0/24"]).unwrap())),
        activity: true,
        ..SessionConfig::default()
    });
    let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
    let now = Now::system();
    let tls = setup.tls.then(|| TlsInfo { version: "TLSv1.3".into(), cipher: "c".into() });
    let s = Session::new(cfg, ids, directory(), "192.0.2.1:40000".parse().unwrap(), tls, now, 0);
    let mut run = Run { s, now, setup, closed: false };
    run.actions();
    let mut piece = 0usize;
    let mut wire = Vec::new();
    for step in &d.steps {
        if run.closed {
            break;
        }
        match step {
            Step::Tick(secs) => {
                run.now = run.now.advance(Duration::from_secs(*secs as u64));
                run.s.handle_timeout(run.now);
                run.actions();
            }
            Step::Read => run.read(),
            Step::Split(n) => piece = *n as usize,
            _ => {
                wire.clear();
                render(step, &mut wire);
                run.feed(&wire, piece);
            }
        }
    }
    run.read();
});

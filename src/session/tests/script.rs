//! The operator's script in the session: each verdict at each hook on the wire, what it
//! adds to the message, and a script that never ends.

use super::*;
use crate::policy::script::{Scripts, settings};
use std::io::Write as _;

/// A configuration whose policy runs `source` (kept in `dir`).
fn with_script(
    dir: &tempfile::TempDir,
    source: &str,
    tune: impl FnOnce(&mut crate::policy::script::Settings),
) -> SessionConfig {
    let path = dir.path().join(format!("hooks-{}.lua", source.len()));
    std::fs::File::create(&path).unwrap().write_all(source.as_bytes()).unwrap();
    let mut s = settings(&path);
    tune(&mut s);
    let policy = Policy { scripts: Some(Scripts::load(s).unwrap()), ..Policy::default() };
    SessionConfig { policy: Arc::new(policy), activity: true, ..cfg() }
}

/// Decides by the HELO name, the sender and the recipient, as a test script can.
const VERDICTS: &str = r#"
function connect(ctx) if ctx.client_ip == "192.0.2.66" then return ringmx.reject(554, "5.7.1", "go away") end end
function ehlo(ctx) if ctx.helo == "bad.example" then return ringmx.reject(550, "5.7.1", "bad name") end end
function mail(ctx)
  if ctx.sender == "spam@remote.example" then return ringmx.reject(553, "5.7.1", "sender refused") end
  if ctx.sender == "later@remote.example" then return ringmx.tempfail(450, "4.7.1", "sender later") end
  ringmx.add_header("X-Mail-Hook", ctx.sender)
end
function rcpt(ctx)
  if ctx.recipient == "no@example.test" then return ringmx.reject(550, "5.1.1", "recipient refused") end
  if ctx.recipient == "later@example.test" then return ringmx.tempfail("recipient later") end
  if ctx.recipient == "relay@example.test" then ringmx.route("[192.0.2.25]:2525") end
end
function data(ctx)
  for _, f in ipairs(ctx.headers) do
    if f.name == "Subject" and f.value == "reject" then return ringmx.reject(554, "5.7.1", "content refused") end
    if f.name == "Subject" and f.value == "tempfail" then return ringmx.tempfail("content later") end
    if f.name == "Subject" and f.value == "hold" then return ringmx.quarantine("held for review") end
  end
  ringmx.add_header("X-Size", tostring(ctx.size))
end"#;

#[test]
fn connect_hook_refuses_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(with_script(&dir, VERDICTS, |_| {}));
    let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
    let now = Now::system();
    let mut s = Session::new(cfg.clone(), ids.clone(), directory(), "192.0.2.66:4000".parse().unwrap(), None, now, 1);
    assert_eq!(String::from_utf8(std::mem::take(s.output())).unwrap(), "554 5.7.1 go away\r\n");
    assert!(s.is_closed());
    assert_eq!(s.refusal(), Some(Refusal::Script));
    // Another client is greeted.
    let mut s = Session::new(cfg, ids, directory(), "192.0.2.7:4000".parse().unwrap(), None, now, 2);
    assert!(String::from_utf8(std::mem::take(s.output())).unwrap().starts_with("220 "));
}

#[test]
fn each_verdict_at_ehlo_mail_rcpt_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(with_script(&dir, VERDICTS, |_| {}));
    assert_eq!(h.send("EHLO bad.example\r\n"), "550 5.7.1 bad name\r\n");
    // The refused EHLO did not count: no transaction yet.
    assert_eq!(h.send("MAIL FROM:<a@remote.example>\r\n"), "503 5.5.1 Error: send HELO/EHLO first\r\n");
    h.ehlo();
    assert_eq!(h.send("MAIL FROM:<spam@remote.example>\r\n"), "553 5.7.1 sender refused\r\n");
    assert_eq!(h.send("MAIL FROM:<later@remote.example>\r\n"), "450 4.7.1 sender later\r\n");
    assert_eq!(h.send("MAIL FROM:<alice@remote.example>\r\n"), "250 2.1.0 Ok\r\n");
    assert_eq!(h.send("RCPT TO:<no@example.test>\r\n"), "550 5.1.1 recipient refused\r\n");
    assert_eq!(h.send("RCPT TO:<later@example.test>\r\n"), "451 4.7.1 recipient later\r\n");
    assert_eq!(h.send("RCPT TO:<bob@example.test>\r\n"), "250 2.1.5 Ok\r\n");
    h.send("DATA\r\n");
    assert_eq!(h.send("Subject: reject\r\n\r\nx\r\n.\r\n"), "554 5.7.1 content refused\r\n");
    h.send("MAIL FROM:<alice@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n");
    assert_eq!(h.send("Subject: tempfail\r\n\r\nx\r\n.\r\n"), "451 4.7.1 content later\r\n");
    assert!(h.spooled.is_empty());
    // A refusal by the script is in the activity log with its step and rule.
    assert!(h.activity.iter().any(|l| l.contains("step=rcpt rule=script") && l.contains("rcpt=<no@example.test>")));
    assert!(h.activity.iter().any(|l| l.contains("step=data rule=script")));
}

#[test]
fn accepted_messages_carry_the_headers_route_and_quarantine_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(with_script(&dir, VERDICTS, |_| {}));
    h.ehlo();
    h.send("MAIL FROM:<alice@remote.example>\r\nRCPT TO:<relay@example.test>\r\nDATA\r\n");
    assert!(h.send("Subject: plain\r\n\r\nbody\r\n.\r\n").starts_with("250 2.0.0 Ok: queued as "));
    h.send("MAIL FROM:<alice@remote.example>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n");
    assert!(h.send("Subject: hold\r\n\r\nbody\r\n.\r\n").starts_with("250 2.0.0 Ok: queued as "));
    let (a, b) = (&h.spooled[0], &h.spooled[1]);
    let text = String::from_utf8(a.data.clone()).unwrap();
    // Added fields go on top, in the order the hooks ran; the size is the content's.
    assert!(text.starts_with("X-Mail-Hook: alice@remote.example\r\nX-Size: 24\r\nReceived: "), "{text}");
    assert_eq!((a.envelope.route.as_deref(), a.envelope.quarantine.as_deref()), (Some("[192.0.2.25]:2525"), None));
    assert_eq!((b.envelope.route.as_deref(), b.envelope.quarantine.as_deref()), (None, Some("held for review")));
    // A new transaction starts without the last one's route.
    assert!(!String::from_utf8(b.data.clone()).unwrap().contains("X-Size: 24\r\nX-Size"));
}

#[test]
fn a_script_that_never_ends_is_stopped_and_the_command_tempfailed() {
    let dir = tempfile::tempdir().unwrap();
    let src = "function rcpt(ctx) while true do end end";
    let mut h = Harness::new(with_script(&dir, src, |s| s.budget = Duration::from_millis(10)));
    h.ehlo();
    h.send("MAIL FROM:<alice@remote.example>\r\n");
    assert_eq!(
        h.send("RCPT TO:<bob@example.test>\r\n"),
        "451 4.3.0 Error: local policy script failed, try again later\r\n"
    );
    // The session goes on.
    assert_eq!(h.send("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

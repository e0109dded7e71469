//! `[scripts]`: the operator's Lua script on a running server, both drivers: a verdict at
//! each hook on the wire, headers added to what is delivered, a route to another host, a
//! quarantine, a script that never ends (its budget), and a reload whose script does not
//! compile (the old script stays).

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const SCRIPT: &str = r#"
-- Refuses by name at each step; routes, holds and tags the rest.
function connect(ctx) ringmx.log("connect from " .. ctx.client_ip) end
function ehlo(ctx) if ctx.helo == "bad.example" then return ringmx.reject(550, "5.7.1", "bad HELO") end end
function mail(ctx) if ctx.sender:match("^spam@") then return ringmx.reject(553, "5.7.1", "sender refused") end end
function rcpt(ctx)
  if ctx.recipient == "refused@example.net" then return ringmx.reject(550, "5.1.1", "no such user here") end
  if ctx.recipient == "slow@example.net" then while true do end end
  ringmx.add_header("X-Rcpt-Checked", ctx.recipient)
end
function data(ctx)
  for _, f in ipairs(ctx.headers) do
    if f.name == "Subject" and f.value:find("hold me") then return ringmx.quarantine("subject asked for it") end
    if f.name == "Subject" and f.value:find("relay me") then ringmx.route(RELAY) end
  end
  ringmx.add_header("X-Script-Size", tostring(ctx.size))
end
"#;

fn write_script(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn verdicts_headers_route_and_quarantine_on_a_running_server() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        mailboxes_directory(dir.path(), &["alice", "slow", "refused"]);
        // The far end a script's route sends to.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = stop.clone();
        let far = std::thread::spawn(move || {
            far_end(listener, s2, |e| {
                if let FarEvent::Message(m) = e {
                    let _ = tx.send(m.to_string());
                }
            })
        });
        let script = SCRIPT.replace("RELAY", &format!("\"{relay}\""));
        let path = write_script(dir.path(), "hooks.lua", &script);
        let cfg = format!("[scripts]\npath = {path:?}\nbudget = \"20ms\"\n");
        let srv = start_plain(dir.path(), driver, &cfg);
        let (mut c, banner) = Client::connect(srv.addr());
        assert!(banner.starts_with("220 "), "{banner}");
        assert_eq!(c.cmd("EHLO bad.example"), "550 5.7.1 bad HELO\r\n");
        assert!(c.cmd("EHLO client.test").starts_with("250-"));
        assert_eq!(c.cmd("MAIL FROM:<spam@remote.example>"), "553 5.7.1 sender refused\r\n");
        assert_eq!(c.cmd("MAIL FROM:<s@remote.example>"), "250 2.1.0 Ok\r\n");
        assert_eq!(c.cmd("RCPT TO:<refused@example.net>"), "550 5.1.1 no such user here\r\n");
        assert_eq!(
            c.cmd("RCPT TO:<slow@example.net>"),
            "451 4.3.0 Error: local policy script failed, try again later\r\n"
        );
        assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok\r\n");
        // Delivered, with what the hooks added on top.
        queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: plain\r\n\r\nhello\r\n"));
        assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()), "{driver}");
        let m = &mailbox(dir.path(), "alice")[0];
        assert!(m.contains("X-Rcpt-Checked: alice@example.net\nX-Script-Size: 25\nReceived: "), "{driver}: {m}");
        // Routed: every recipient, local or not, goes to the script's host.
        queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: relay me\r\n\r\nvia\r\n"));
        let relayed = rx.recv_timeout(Duration::from_secs(20)).expect("relayed to the script's host");
        assert!(relayed.contains("Subject: relay me"), "{relayed}");
        // Held: accepted, listed as quarantined, not delivered.
        let held = queued_id(&c.message("s@remote.example", &["alice@example.net"], "Subject: hold me\r\n\r\nx\r\n"));
        assert!(eventually(Duration::from_secs(20), || queue(dir.path())
            .iter()
            .any(|m| m["id"] == held.as_str() && m["status"] == "quarantined")));
        assert_eq!(mailbox(dir.path(), "alice").len(), 1);
        assert!(c.cmd("QUIT").starts_with("221"));
        // The server first: it closes the connection it keeps to the far end.
        let (status, log) = srv.stop();
        stop_far_end(relay, &stop);
        far.join().unwrap();
        assert!(status.success(), "{log}");
        // A hook that failed is logged with the script's line; `ringmx.log` writes there too.
        assert!(
            log.contains("script hook rcpt: ") && log.contains("hooks.lua:8: the script ran past its budget"),
            "{log}"
        );
        assert!(log.contains("script: connect from 127.0.0.1"), "{log}");
    }
}

#[test]
fn a_script_that_does_not_compile_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    mailboxes_directory(dir.path(), &["alice", "bob"]);
    let old =
        "function rcpt(ctx) if ctx.recipient == 'alice@example.net' then return ringmx.reject('old script') end end";
    let path = write_script(dir.path(), "hooks.lua", old);
    let srv = start_plain(dir.path(), "uring", &format!("[scripts]\npath = {path:?}\n"));
    let rcpt = |who: &str| {
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<s@remote.example>");
        c.cmd(&format!("RCPT TO:<{who}>"))
    };
    assert_eq!(rcpt("alice@example.net"), "550 5.7.1 old script\r\n");
    // A syntax error on line 2: check-config and reload name it; the old script stays.
    write_script(dir.path(), "hooks.lua", "function rcpt(ctx)\n  return ringmx.reject('new' 'x')\nend\n");
    let cfg = dir.path().join("ringmx.toml");
    let check = std::process::Command::new(BIN).args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(!check.status.success() && err.contains("scripts.path") && err.contains("hooks.lua:2:"), "{err}");
    let reload = std::process::Command::new(BIN).args(["reload", "--config"]).arg(&cfg).output().unwrap();
    assert!(!reload.status.success(), "{}", String::from_utf8_lossy(&reload.stdout));
    assert_eq!(rcpt("alice@example.net"), "550 5.7.1 old script\r\n");
    // A good new script: applied to new sessions.
    let new =
        "function rcpt(ctx) if ctx.recipient == 'bob@example.net' then return ringmx.tempfail('new script') end end";
    write_script(dir.path(), "hooks.lua", new);
    let reload = std::process::Command::new(BIN).args(["reload", "--config"]).arg(&cfg).output().unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    assert_eq!(rcpt("alice@example.net"), "250 2.1.5 Ok\r\n");
    assert_eq!(rcpt("bob@example.net"), "451 4.7.1 new script\r\n");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

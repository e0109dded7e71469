use super::*;
use std::io::Write as _;

fn host_with(source: &str, tune: impl FnOnce(&mut Settings)) -> (tempfile::TempDir, Result<ScriptHost, String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hooks.lua");
    std::fs::File::create(&path).unwrap().write_all(source.as_bytes()).unwrap();
    let mut s = settings(&path);
    tune(&mut s);
    let host = Scripts::load(s).and_then(ScriptHost::new);
    (dir, host)
}

fn host(source: &str) -> (tempfile::TempDir, ScriptHost) {
    let (d, h) = host_with(source, |_| {});
    (d, h.unwrap())
}

fn cx() -> Context<'static> {
    Context {
        session: 0x2a,
        client_ip: "192.0.2.7".into(),
        client_port: 40000,
        server_ip: "127.0.0.1".into(),
        server_port: 25,
        helo: Some("client.example"),
        esmtp: true,
        sender: Some("alice@example.org"),
        recipient: Some("bob@example.test"),
        recipients: vec!["carol@example.test"],
        ..Context::default()
    }
}

fn refused(code: u16, status: &'static str, text: &str) -> Option<Verdict> {
    Some(Verdict::Refuse(Reply::new(code, status, text.to_string())))
}

#[test]
fn each_verdict_at_each_hook() {
    for hook in Hook::ALL {
        let name = hook.name();
        let src = format!(
            r#"
function {name}(ctx)
  if ctx.helo == "reject" then return ringmx.reject(554, "5.7.1", "not you") end
  if ctx.helo == "tempfail" then return ringmx.tempfail("later") end
  if ctx.helo == "accept" then return ringmx.accept() end
end"#
        );
        let (_d, mut h) = host(&src);
        assert!(h.defines(hook) && h.scripts().defines(hook), "{name}");
        let with = |helo| Context { helo: Some(helo), ..cx() };
        assert_eq!(h.run(hook, &with("reject")).verdict, refused(554, "5.7.1", "not you"), "{name}");
        assert_eq!(h.run(hook, &with("tempfail")).verdict, refused(451, "4.7.1", "later"), "{name}");
        assert_eq!(h.run(hook, &with("accept")).verdict, Some(Verdict::Continue), "{name}");
        assert_eq!(h.run(hook, &with("other")).verdict, None, "{name}");
        // Every other hook is not defined: nothing to call.
        for other in Hook::ALL.into_iter().filter(|o| *o != hook) {
            assert!(!h.defines(other));
            assert_eq!(h.run(other, &with("reject")), Outcome::default());
        }
    }
}

#[test]
fn the_context_carries_the_session_and_envelope() {
    let (_d, mut h) = host(
        r#"
function rcpt(ctx)
  local seen = table.concat({ctx.hook, ctx.session, ctx.client_ip, ctx.client_port, ctx.server_port,
    ctx.helo, tostring(ctx.esmtp), ctx.sender, ctx.recipient, #ctx.recipients, ctx.recipients[1],
    tostring(ctx.tls), tostring(ctx.auth)}, " ")
  return ringmx.reject(550, seen)
end
function data(ctx)
  local names = {}
  for _, f in ipairs(ctx.headers) do names[#names + 1] = f.name .. "=" .. f.value end
  return ringmx.reject(550, ctx.size .. " " .. table.concat(names, ";") .. " " .. tostring(ctx.body))
end"#,
    );
    let r = h.run(Hook::Rcpt, &cx());
    let want = "rcpt 2a 192.0.2.7 40000 25 client.example true alice@example.org bob@example.test 1 carol@example.test nil nil";
    assert_eq!(r.verdict, refused(550, "5.7.1", want));
    let msg = b"Subject: a\r\n folded\r\nFrom: x@example.org\r\n\r\nbody\r\n";
    let data = Context { message: Some(msg), size: msg.len() as u64, ..cx() };
    let r = h.run(Hook::Data, &data);
    let want = format!("{} Subject=a folded;From=x@example.org nil", msg.len());
    assert_eq!(r.verdict, refused(550, "5.7.1", &want));
}

#[test]
fn the_body_only_on_request() {
    let src = r#"function data(ctx) return ringmx.reject((ctx.body:gsub("%s+$", ""))) end"#;
    let (_d, h) = host_with(src, |s| s.body = true);
    let msg = b"Subject: a\r\n\r\nline one\r\n";
    let r = h.unwrap().run(Hook::Data, &Context { message: Some(msg), ..cx() });
    assert_eq!(r.verdict, refused(550, "5.7.1", "line one"));
}

#[test]
fn headers_and_route_for_the_transaction() {
    let (_d, mut h) = host(
        r#"
function mail(ctx) ringmx.add_header("X-Sender-Checked", ctx.sender) end
function rcpt(ctx) ringmx.route("relay.example.net:2525") ringmx.add_header("X-Rcpt", ctx.recipient) end
function ehlo(ctx) ringmx.add_header("X-Too-Early", "yes") end
function data(ctx) ringmx.add_header("Bad Name", "x") end"#,
    );
    let m = h.run(Hook::Mail, &cx());
    assert_eq!((m.verdict, m.headers, m.route), (None, vec!["X-Sender-Checked: alice@example.org".to_string()], None));
    let r = h.run(Hook::Rcpt, &cx());
    assert_eq!(r.headers, vec!["X-Rcpt: bob@example.test".to_string()]);
    assert_eq!(r.route.as_deref(), Some("relay.example.net:2525"));
    // No transaction at EHLO; a name with a space is no header field: both fail safe.
    assert_eq!(h.run(Hook::Ehlo, &cx()).verdict, Some(Verdict::Refuse(failure_reply())));
    let d = h.run(Hook::Data, &Context { message: Some(b"\r\n"), ..cx() });
    assert_eq!((d.verdict, d.headers), (Some(Verdict::Refuse(failure_reply())), vec![]));
}

#[test]
fn quarantine_at_the_end_of_the_content_only() {
    let (_d, mut h) = host(
        r#"
function data(ctx) return ringmx.quarantine("looks like phishing") end
function rcpt(ctx) return ringmx.quarantine("too early") end"#,
    );
    let d = h.run(Hook::Data, &Context { message: Some(b"\r\n"), ..cx() });
    assert_eq!(d.verdict, Some(Verdict::Quarantine("looks like phishing".into())));
    assert_eq!(h.run(Hook::Rcpt, &cx()).verdict, Some(Verdict::Refuse(failure_reply())));
}

#[test]
fn replies_are_checked() {
    let (_d, mut h) = host(
        r#"
function rcpt(ctx)
  local w = ctx.recipient
  if w == "a" then return ringmx.reject(450, "wrong class") end
  if w == "b" then return ringmx.reject(550, "4.7.1", "status of the wrong class") end
  if w == "c" then return ringmx.reject("5.7.26", "any status") end
  if w == "d" then return ringmx.reject("line\r\nbreak") end
  if w == "e" then return ringmx.tempfail(421, "4.3.2", "shutting down") end
  if w == "f" then return ringmx.reject() end
  if w == "g" then return 42 end
  if w == "h" then return {action = "bounce"} end
end"#,
    );
    let at = |w: &'static str| Context { recipient: Some(w), ..cx() };
    let failed = Some(Verdict::Refuse(failure_reply()));
    for w in ["a", "b", "d", "g", "h"] {
        assert_eq!(h.run(Hook::Rcpt, &at(w)).verdict, failed, "{w}");
    }
    assert_eq!(h.run(Hook::Rcpt, &at("c")).verdict, refused(550, "", "5.7.26 any status"));
    let mut out = Vec::new();
    if let Some(Verdict::Refuse(r)) = h.run(Hook::Rcpt, &at("c")).verdict {
        r.write(&mut out);
    }
    assert_eq!(out, b"550 5.7.26 any status\r\n");
    assert_eq!(h.run(Hook::Rcpt, &at("e")).verdict, refused(421, "", "4.3.2 shutting down"));
    assert_eq!(h.run(Hook::Rcpt, &at("f")).verdict, refused(550, "5.7.1", "Rejected"));
}

#[test]
fn a_script_that_loops_for_ever_is_stopped_by_its_budget() {
    let (_d, h) = host_with("function mail(ctx) local n = 0 while true do n = n + 1 end end", |s| {
        s.budget = Duration::from_millis(20)
    });
    let mut h = h.unwrap();
    assert_eq!(h.run(Hook::Mail, &cx()).verdict, Some(Verdict::Refuse(failure_reply())));
    // The state is usable afterwards, and the next call has a budget of its own.
    assert_eq!(h.run(Hook::Mail, &cx()).verdict, Some(Verdict::Refuse(failure_reply())));
    // A loop at the top level fails the load itself.
    let (_d, h) = host_with("while true do end", |s| s.budget = Duration::from_millis(20));
    assert!(h.err().unwrap().contains("budget"));
}

/// One C call the budget's hook cannot interrupt: pattern matching whose backtracking would
/// run for hours is refused up front (and fails safe); ordinary patterns work.
#[test]
fn a_pattern_too_costly_is_refused_before_it_runs() {
    let src = r#"
function mail(ctx)
  local s = string.rep("a", 5000)
  if ctx.sender == "slow@example.org" then
    return s:find(string.rep("a*", 6) .. "b") and ringmx.accept()
  end
  local user, domain = ctx.sender:match("^(.-)@(.+)$")
  assert(user == "alice" and domain == "example.org")
  assert(("x-y-z"):gsub("%-", "+") == "x+y+z")
  assert(s:find("aab", 1, true) == nil)
  assert(select(2, s:gsub("[a-c]", "")) == 5000)
  return ringmx.reject(550, "5.7.1", "patterns work")
end
"#;
    let (_d, h) = host_with(src, |s| s.budget = Duration::from_millis(50));
    let mut h = h.unwrap();
    assert_eq!(h.run(Hook::Mail, &cx()).verdict, refused(550, "5.7.1", "patterns work"));
    let slow = Context { sender: Some("slow@example.org"), ..cx() };
    assert_eq!(h.run(Hook::Mail, &slow).verdict, Some(Verdict::Refuse(failure_reply())));
}

#[test]
fn memory_is_limited() {
    let (_d, h) = host_with(
        r#"local t = {} function mail(ctx) for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end end"#,
        |s| {
            s.memory_limit = 4 << 20;
            s.budget = Duration::from_secs(60);
        },
    );
    let mut h = h.unwrap();
    assert_eq!(h.run(Hook::Mail, &cx()).verdict, Some(Verdict::Refuse(failure_reply())));
}

#[test]
fn errors_name_the_file_and_line() {
    let (_d, h) = host_with("function mail(ctx)\n  return ringmx.reject(\nend\n", |_| {});
    let e = h.err().unwrap();
    assert!(e.contains("hooks.lua:3:"), "{e}");
    let (_d, h) = host_with("mail = 3", |_| {});
    assert!(h.err().unwrap().contains("`mail` is not a function"));
    let (_d, h) = host_with("x", |s| s.path = s.path.with_file_name("missing.lua"));
    assert!(h.err().unwrap().contains("cannot read"));
}

#[test]
fn the_sandbox_has_no_files_unless_configured() {
    let src = r#"
function connect(ctx)
  return ringmx.reject(table.concat({type(io), type(os), type(load), type(loadfile), type(dofile),
    type(require), type(string.rep)}, " "))
end"#;
    let (_d, mut h) = host(src);
    assert_eq!(h.run(Hook::Connect, &cx()).verdict, refused(550, "5.7.1", "nil nil nil nil nil nil function"));
    let (_d, h) = host_with(src, |s| s.libraries = vec![Library::Io, Library::Os]);
    let v = h.unwrap().run(Hook::Connect, &cx()).verdict;
    assert_eq!(v, refused(550, "5.7.1", "table table nil nil nil nil function"));
}

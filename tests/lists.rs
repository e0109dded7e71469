//! Mailing lists on a running server, over SMTP, with exact outcomes: who receives what,
//! with which headers and subject. Posting modes, the password, moderation by command line
//! and by mail, subscription with a code, unsubscription, help, footers on text/plain,
//! multipart/alternative and multipart/signed, a list that contains itself, an
//! auto-responder member that must not answer, VERP bounces that disable a member, the
//! DMARC From rewrite from a real DNS answer, and digests.

mod common;
#[path = "common/dns.rs"]
mod dns;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// No DMARC question to DNS (there is no DNS server here but the one a test starts).
const NO_DNS: &str = "[lists]\ndmarc_dns = false\n";

/// A postoffice with mailboxes ann, bob, carol, dan, mod, owner and away (an
/// auto-responder) on example.org, and `lists`.
fn directory(dir: &Path, lists: serde_json::Value) {
    let mb = |n: &str| serde_json::json!({"postoffice": "po", "name": n, "addresses": [format!("{n}@example.org")]});
    let mut away = mb("away");
    away["autoresponder"] = serde_json::json!({"subject": "Away", "body": "Back soon."});
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": "example.org", "postoffice": "po"}],
        "mailboxes": [mb("ann"), mb("bob"), mb("carol"), mb("dan"), mb("mod"), mb("owner"), away],
        "lists": lists,
    });
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("directory.json"), serde_json::to_string_pretty(&data).unwrap()).unwrap();
}

fn members(addrs: &[&str]) -> serde_json::Value {
    addrs.iter().map(|a| serde_json::json!({"address": a})).collect()
}

/// Sends one message over SMTP; the final reply.
fn send(addr: std::net::SocketAddr, from: &str, to: &str, msg: &str) -> String {
    let (mut c, _) = Client::connect(addr);
    c.cmd("EHLO client.example.org");
    let r = c.message(from, &[to], msg);
    c.cmd("QUIT");
    r
}

/// The messages of a mailbox once it holds at least `n`, with CRLF line ends (Maildir
/// files have LF).
fn wait_mail(dir: &Path, name: &str, n: usize) -> Vec<String> {
    assert!(eventually(WAIT, || mailbox(dir, name).len() >= n), "{name} got {} of {n}", mailbox(dir, name).len());
    let mut m: Vec<String> = mailbox(dir, name).iter().map(|t| t.replace('\n', "\r\n")).collect();
    m.sort();
    m
}

fn wait_queue_empty(dir: &Path) {
    assert!(eventually(WAIT, || queue(dir).is_empty()), "queue: {:?}", queue(dir));
}

/// The value of a header field (unfolded) of a delivered message.
fn field(msg: &str, name: &str) -> Option<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or_default().replace("\r\n ", " ").replace("\r\n\t", " ");
    head.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn activity(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/log/activity.log")).unwrap_or_default()
}

#[test]
fn a_post_reaches_every_member_once_as_one_spool_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(
        d,
        serde_json::json!([{
            "address": "dev@example.org", "description": "Developers", "owners": ["owner@example.org"],
            "footer_text": "-- \nThe dev list: dev-request@example.org", "archive": true,
            "members": members(&["ann@example.org", "bob@example.org", "carol@example.org", "away@example.org"]),
        }]),
    );
    let srv = start_plain(d, "uring", &format!("[log]\nactivity = true\n{NO_DNS}"));
    let post = "From: Ann <ann@example.org>\r\nTo: dev@example.org\r\nSubject: hello\r\nMessage-ID: <p1@example.org>\r\n\r\nHi all.\r\n";
    assert!(send(srv.addr(), "ann@example.org", "dev@example.org", post).starts_with("250 "));
    for m in ["ann", "bob", "carol", "away"] {
        wait_mail(d, m, 1);
    }
    wait_queue_empty(d);
    let copy = &wait_mail(d, "bob", 1)[0];
    assert_eq!(field(copy, "Return-Path").as_deref(), Some("<dev-bounces@example.org>"));
    assert_eq!(field(copy, "Subject").as_deref(), Some("[dev] hello"));
    assert_eq!(field(copy, "List-Id").as_deref(), Some("\"Developers\" <dev.example.org>"));
    assert_eq!(
        field(copy, "List-Unsubscribe").as_deref(),
        Some("<mailto:dev-request@example.org?subject=unsubscribe>")
    );
    assert_eq!(field(copy, "List-Post").as_deref(), Some("<mailto:dev@example.org>"));
    assert_eq!(field(copy, "Precedence").as_deref(), Some("list"));
    assert_eq!(field(copy, "From").as_deref(), Some("Ann <ann@example.org>"));
    assert!(copy.ends_with("Hi all.\r\n-- \r\nThe dev list: dev-request@example.org\r\n"), "{copy}");
    // One distribution message for the four members, from the list's bounce address (the
    // log is written by its own thread).
    let generated = |l: &str| l.contains("generated") && l.contains("kind=list ");
    assert!(eventually(WAIT, || activity(d).lines().any(generated)));
    let log = activity(d);
    let lists: Vec<&str> = log.lines().filter(|l| generated(l)).collect();
    assert_eq!(lists.len(), 1, "{log}");
    assert!(lists[0].contains("to=ann@example.org,bob@example.org,carol@example.org,away@example.org"), "{log}");
    // The auto-responder member did not answer the list (it carries List-Id, Precedence).
    assert_eq!(mailbox(d, "ann").len(), 1, "only the post itself");
    assert!(!log.contains("kind=autoreply"), "{log}");
    // The archive keeps the copy.
    let archive = d.join("data/lists/dev@example.org/archive/new");
    assert_eq!(std::fs::read_dir(archive).unwrap().count(), 1);

    // multipart/alternative: the footer is a part of its own; the alternative is whole.
    let alt = "From: ann@example.org\r\nSubject: html\r\nMIME-Version: 1.0\r\n\
               Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
               plain\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b1--\r\n";
    assert!(send(srv.addr(), "ann@example.org", "dev@example.org", alt).starts_with("250 "));
    let copy = wait_mail(d, "carol", 2).into_iter().find(|m| m.contains("Subject: [dev] html")).unwrap();
    assert!(field(&copy, "Content-Type").unwrap().starts_with("multipart/mixed; boundary="), "{copy}");
    assert!(copy.contains("Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b1--\r\n"), "{copy}");
    assert!(copy.contains("The dev list: dev-request@example.org"));

    // multipart/signed (RFC 1847): the signed entity goes out byte for byte.
    let signed_body = "--s1\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--s1\r\nContent-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\nxyz\r\n-----END PGP SIGNATURE-----\r\n--s1--\r\n";
    let signed = format!(
        "From: ann@example.org\r\nSubject: signed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; boundary=\"s1\"\r\n\r\n{signed_body}"
    );
    assert!(send(srv.addr(), "ann@example.org", "dev@example.org", &signed).starts_with("250 "));
    let copy = wait_mail(d, "carol", 3).into_iter().find(|m| m.contains("Subject: [dev] signed")).unwrap();
    assert!(copy.contains(&format!("Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; boundary=\"s1\"\r\n\r\n{signed_body}")), "{copy}");
    srv.stop();
}

#[test]
fn posting_rules_at_rcpt_and_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(
        d,
        serde_json::json!([
            {"address": "dev@example.org", "members": members(&["ann@example.org", "bob@example.org"])},
            {"address": "sec@example.org", "posting": "password", "password": "s3cret", "prefix": "none",
             "members": members(&["bob@example.org", "carol@example.org"])},
        ]),
    );
    let srv = start_plain(d, "uring", NO_DNS);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO client.example.org");
    c.cmd("MAIL FROM:<dan@example.org>");
    assert_eq!(
        c.cmd("RCPT TO:<dev@example.org>"),
        "550 5.7.1 Error: recipient address rejected: this list takes posts from its members only\r\n"
    );
    // Commands and the owners take mail from anyone.
    assert!(c.cmd("RCPT TO:<dev-request@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<dev-owner@example.org>").starts_with("250"));
    c.cmd("RSET");
    c.cmd("MAIL FROM:<>");
    assert!(c.cmd("RCPT TO:<dev@example.org>").starts_with("550 5.7.1"), "a bounce is never a post");
    c.cmd("QUIT");

    // Without the password: accepted at RCPT (the subject is not known yet), then returned.
    let no_pw = "From: dan@example.org\r\nSubject: hi\r\n\r\nx\r\n";
    assert!(send(srv.addr(), "dan@example.org", "sec@example.org", no_pw).starts_with("250 "));
    let dsn = wait_mail(d, "dan", 1);
    assert!(dsn[0].contains("550 5.7.1 this list takes posts with its password in the subject only"), "{}", dsn[0]);
    // With it: distributed, the password taken out of the subject.
    let pw = "From: dan@example.org\r\nSubject: [:s3cret:] release 1.0\r\n\r\nx\r\n";
    assert!(send(srv.addr(), "dan@example.org", "sec@example.org", pw).starts_with("250 "));
    let copy = wait_mail(d, "carol", 1);
    assert_eq!(field(&copy[0], "Subject").as_deref(), Some("release 1.0"));
    assert!(!copy[0].contains("s3cret"));
    srv.stop();
}

/// The code at the end of a held notice's subject.
fn code_of(subject: &str) -> String {
    subject.rsplit(' ').next().unwrap().to_string()
}

#[test]
fn moderated_posts_approved_from_the_command_line_and_rejected_by_mail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(
        d,
        serde_json::json!([{
            "address": "announce@example.org", "moderated": true, "posting": "anyone",
            "moderators": ["mod@example.org"], "members": members(&["bob@example.org", "carol@example.org"]),
        }]),
    );
    let srv = start_plain(d, "uring", NO_DNS);
    let post = "From: Ann <ann@example.org>\r\nSubject: news\r\n\r\nbig news\r\n";
    assert!(send(srv.addr(), "ann@example.org", "announce@example.org", post).starts_with("250 "));
    let notice = wait_mail(d, "mod", 1).remove(0);
    let subject = field(&notice, "Subject").unwrap();
    assert!(subject.starts_with("Post to announce@example.org held for approval: approve "), "{subject}");
    let code = code_of(&subject);
    let (status, out) = ringmx(d, &["directory", "list", "moderate", "announce@example.org"]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains(&code) && out.contains("from ann@example.org  news"), "{out}");
    let (status, out) = ringmx(d, &["directory", "list", "moderate", "announce@example.org", "--approve", &code]);
    assert_eq!((status, out.trim()), (0, format!("post {code} approved and distributed").as_str()));
    let copy = wait_mail(d, "bob", 1);
    assert_eq!(field(&copy[0], "Subject").as_deref(), Some("[announce] news"));
    wait_mail(d, "carol", 1);
    let (_, out) = ringmx(d, &["directory", "list", "moderate", "announce@example.org"]);
    assert!(out.contains("0 post(s) held"), "{out}");

    // The second post is rejected by the moderator's reply, with a reason.
    let post2 = "From: Ann <ann@example.org>\r\nSubject: more news\r\n\r\nx\r\n";
    assert!(send(srv.addr(), "ann@example.org", "announce@example.org", post2).starts_with("250 "));
    let notices = wait_mail(d, "mod", 2);
    let n2 = notices.iter().find(|n| n.contains("Subject: more news")).unwrap();
    let code2 = code_of(&field(n2, "Subject").unwrap());
    let reply = format!(
        "From: mod@example.org\r\nSubject: Re: {}\r\n\r\nreject {code2} old news\r\n\r\n> quoted notice\r\n",
        field(n2, "Subject").unwrap()
    );
    assert!(send(srv.addr(), "mod@example.org", "announce-request@example.org", &reply).starts_with("250 "));
    let told = wait_mail(d, "ann", 1);
    assert_eq!(field(&told[0], "Subject").as_deref(), Some("Your post to announce@example.org was rejected"));
    assert!(told[0].contains("Reason: old news"));
    let answered = wait_mail(d, "mod", 3);
    assert!(answered.iter().any(|m| m.contains(&format!("The post {code2} was rejected."))));
    wait_queue_empty(d);
    assert_eq!(mailbox(d, "bob").len(), 1, "the rejected post went to nobody");
    srv.stop();
}

#[test]
fn subscribe_with_a_code_help_and_unsubscribe_by_mail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(
        d,
        serde_json::json!([{"address": "dev@example.org", "description": "Developers", "members": members(&["bob@example.org"])}]),
    );
    let srv = start_plain(d, "uring", NO_DNS);
    let req = "From: Dan <dan@example.org>\r\nSubject: subscribe\r\n\r\n";
    assert!(send(srv.addr(), "dan@example.org", "dev-request@example.org", req).starts_with("250 "));
    let ask = wait_mail(d, "dan", 1).remove(0);
    let subject = field(&ask, "Subject").unwrap();
    assert!(subject.starts_with("confirm "), "{subject}");
    assert_eq!(field(&ask, "Auto-Submitted").as_deref(), Some("auto-replied"));
    let (_, out) = ringmx(d, &["directory", "member", "list", "dev@example.org"]);
    assert_eq!(out, "bob@example.org\n", "not before the code comes back");
    // A reply to the request keeps the subject.
    let confirm = format!("From: dan@example.org\r\nSubject: Re: {subject}\r\n\r\n");
    assert!(send(srv.addr(), "dan@example.org", "dev-request@example.org", &confirm).starts_with("250 "));
    let welcome =
        wait_mail(d, "dan", 2).into_iter().find(|m| m.contains("Subject: Welcome to dev@example.org")).unwrap();
    assert!(welcome.contains("dan@example.org is now a member"));
    assert!(eventually(WAIT, || ringmx(d, &["directory", "member", "list", "dev@example.org"]).1
        == "bob@example.org\ndan@example.org\n"));

    // help, to the request address.
    let help = "From: carol@example.org\r\nSubject: help\r\n\r\n";
    assert!(send(srv.addr(), "carol@example.org", "dev-request@example.org", help).starts_with("250 "));
    let h = wait_mail(d, "carol", 1).remove(0);
    assert!(h.contains("dev@example.org: Developers") && h.contains("unsubscribe          leave the list"), "{h}");

    // unsubscribe in the subject of a mail to the list itself (MailEnable's way).
    let unsub = "From: bob@example.org\r\nSubject: unsubscribe\r\n\r\n";
    assert!(send(srv.addr(), "bob@example.org", "dev@example.org", unsub).starts_with("250 "));
    let bye = wait_mail(d, "bob", 1).remove(0);
    assert!(bye.contains("bob@example.org was removed from dev@example.org."), "{bye}");
    assert!(
        eventually(WAIT, || ringmx(d, &["directory", "member", "list", "dev@example.org"]).1 == "dan@example.org\n")
    );
    srv.stop();
}

#[test]
fn a_list_that_contains_itself_or_a_list_that_contains_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(
        d,
        serde_json::json!([
            {"address": "a@example.org", "posting": "anyone", "members": members(&["bob@example.org", "b@example.org"])},
            {"address": "b@example.org", "posting": "anyone", "members": members(&["carol@example.org", "a@example.org"])},
        ]),
    );
    let (status, _) = ringmx(d, &["directory", "member", "add", "a@example.org", "a@example.org"]);
    assert_eq!(status, 2, "the command line refuses a list as its own member");
    let srv = start_plain(d, "uring", NO_DNS);
    assert!(send(srv.addr(), "ann@example.org", "a@example.org", "Subject: loop?\r\n\r\nx\r\n").starts_with("250 "));
    wait_mail(d, "bob", 1);
    wait_mail(d, "carol", 1);
    wait_queue_empty(d);
    // Each went round once: b's copy came back to a, which saw its own X-Loop and dropped it.
    assert_eq!((mailbox(d, "bob").len(), mailbox(d, "carol").len()), (1, 1));
    let (_, log) = srv.stop();
    assert!(log.contains("already went through this list (X-Loop)"), "{log}");
}

type Recorded = Arc<Mutex<Vec<String>>>;

/// A far end on loopback that accepts everything and records each MAIL FROM and each
/// message.
fn recording_far_end() -> (std::net::SocketAddr, Recorded, Recorded) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let messages = Arc::new(Mutex::new(Vec::new()));
    let (s2, m2) = (seen.clone(), messages.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let seen = s2.clone();
            let messages = m2.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let _ = w.write_all(b"220 far.example ESMTP\r\n");
                let mut line = String::new();
                let mut data = false;
                let mut message = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    let reply: &[u8] = if data {
                        if line == ".\r\n" {
                            data = false;
                            messages.lock().unwrap().push(std::mem::take(&mut message));
                            b"250 ok\r\n"
                        } else {
                            message.push_str(line.strip_prefix('.').unwrap_or(&line));
                            b""
                        }
                    } else {
                        let up = line.to_ascii_uppercase();
                        if up.starts_with("MAIL FROM:") {
                            seen.lock().unwrap().push(line.trim_end().to_string());
                        }
                        if up.starts_with("DATA") {
                            data = true;
                            b"354 go on\r\n"
                        } else if up.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n");
                            break;
                        } else {
                            b"250 ok\r\n"
                        }
                    };
                    let _ = w.write_all(reply);
                    line.clear();
                }
            });
        }
    });
    (addr, seen, messages)
}

#[test]
fn verp_bounces_disable_a_member_and_tell_the_owner() {
    let (far, seen, _) = recording_far_end();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(
        d,
        serde_json::json!([{
            "address": "dev@example.org", "owners": ["owner@example.org"], "bounce_limit": 2,
            "members": members(&["ann@example.org", "x@far.example", "y@far.example"]),
        }]),
    );
    let cfg =
        format!("[delivery.routing.domain_smart_hosts.\"far.example\"]\nhost = \"127.0.0.1\"\nport = {}\n", far.port());
    let srv = start_plain(d, "uring", &format!("{cfg}{NO_DNS}"));
    assert!(send(srv.addr(), "ann@example.org", "dev@example.org", "Subject: hi\r\n\r\nx\r\n").starts_with("250 "));
    // Two members of one destination: one job, a transaction each, each from its own path.
    assert!(eventually(WAIT, || seen.lock().unwrap().len() == 2));
    let mut froms = seen.lock().unwrap().clone();
    froms.sort();
    assert_eq!(
        froms,
        ["MAIL FROM:<dev-bounces+x=far.example@example.org>", "MAIL FROM:<dev-bounces+y=far.example@example.org>"]
    );
    // The far end's bounces come back to the VERP address: the second disables x.
    let bounce = "From: MAILER-DAEMON@far.example\r\nSubject: Undelivered Mail\r\n\r\nmailbox gone\r\n";
    for _ in 0..2 {
        assert!(send(srv.addr(), "", "dev-bounces+x=far.example@example.org", bounce).starts_with("250 "));
    }
    let told = wait_mail(d, "owner", 1).remove(0);
    assert_eq!(field(&told, "Subject").as_deref(), Some("x@far.example disabled on dev@example.org by bounces"));
    let (_, out) = ringmx(d, &["directory", "member", "list", "dev@example.org"]);
    assert_eq!(out, "ann@example.org\nx@far.example disabled bounces=2\ny@far.example\n");
    srv.stop();
}

#[test]
fn dmarc_reject_domains_get_the_from_rewritten_from_dns() {
    use hickory_server::proto::rr::RData;
    use hickory_server::proto::rr::rdata::TXT;
    let zone = dns::zone(
        "example.com.",
        &[("_dmarc.strict.example.com.", RData::TXT(TXT::new(vec!["v=DMARC1; p=reject".into()])))],
    );
    let ns = dns::serve(vec![zone]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(
        d,
        serde_json::json!([{"address": "dev@example.org", "posting": "anyone", "reply_to": "list",
                            "members": members(&["bob@example.org"])}]),
    );
    let srv = start_plain(d, "uring", &format!("[dns]\nservers = [\"{ns}\"]\n"));
    let strict = "From: Ann Lee <ann@strict.example.com>\r\nSubject: one\r\n\r\nx\r\n";
    assert!(send(srv.addr(), "ann@strict.example.com", "dev@example.org", strict).starts_with("250 "));
    let relaxed = "From: Carl <carl@relaxed.example.com>\r\nSubject: two\r\n\r\nx\r\n";
    assert!(send(srv.addr(), "carl@relaxed.example.com", "dev@example.org", relaxed).starts_with("250 "));
    let got = wait_mail(d, "bob", 2);
    let one = got.iter().find(|m| m.contains("Subject: [dev] one")).unwrap();
    assert_eq!(field(one, "From").as_deref(), Some("\"Ann Lee via dev\" <dev@example.org>"));
    assert_eq!(field(one, "X-Original-From").as_deref(), Some("Ann Lee <ann@strict.example.com>"));
    assert_eq!(field(one, "Reply-To").as_deref(), Some("<dev@example.org>, Ann Lee <ann@strict.example.com>"));
    let two = got.iter().find(|m| m.contains("Subject: [dev] two")).unwrap();
    assert_eq!(field(two, "From").as_deref(), Some("Carl <carl@relaxed.example.com>"), "no DMARC record: kept");
    srv.stop();
}

#[test]
fn digest_members_get_a_mime_digest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut m = members(&["ann@example.org", "bob@example.org"]);
    m[1]["digest"] = serde_json::json!(true);
    // A digest goes as soon as its posts pass 1 byte: with every post here.
    directory(d, serde_json::json!([{"address": "dev@example.org", "digest_max_bytes": 1, "members": m}]));
    let srv = start_plain(d, "uring", NO_DNS);
    assert!(send(srv.addr(), "ann@example.org", "dev@example.org", "Subject: first\r\n\r\nx\r\n").starts_with("250 "));
    let dg = wait_mail(d, "bob", 1).remove(0);
    assert_eq!(field(&dg, "Subject").as_deref(), Some("dev digest, Vol 1, Issue 1"));
    assert!(dg.contains("multipart/digest") && dg.contains("Subject: [dev] first"), "{dg}");
    assert_eq!(wait_mail(d, "ann", 1).len(), 1, "ann gets each post");
    srv.stop();
}

#[test]
fn list_and_member_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    directory(d, serde_json::json!([]));
    std::fs::write(d.join("ringmx.toml"), format!("data_dir = {:?}\n", d.join("data"))).unwrap();
    let run = |args: &[&str]| ringmx(d, args);
    let (s, out) = run(&[
        "directory",
        "list",
        "add",
        "dev@example.org",
        "--add-owner",
        "owner@example.org",
        "--posting",
        "password",
        "--password",
        "pw1",
        "--reply-to",
        "desk@example.org",
        "--prefix",
        "DEV:",
    ]);
    assert_eq!(
        (s, out.as_str()),
        (0, "list dev@example.org added (posts to dev@example.org, commands to dev-request@example.org)\n")
    );
    let (s, _) = run(&["directory", "list", "add", "dev-request@example.org"]);
    assert_eq!(s, 2, "the address of another list's commands");
    let (s, _) = run(&["directory", "list", "set", "dev@example.org", "--posting", "everyone"]);
    assert_eq!(s, 2, "not one of the posting rules");
    let (s, out) = run(&["directory", "list", "show", "dev@example.org", "--json"]);
    assert_eq!(s, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["posting"], "password");
    assert_eq!(v["reply_to"], "address");
    assert_eq!(v["reply_to_address"], "desk@example.org");
    assert_eq!(v["prefix"], "custom");
    assert_eq!(v["prefix_text"], "DEV:");
    assert!(v.get("password").is_none(), "show never prints the password");
    std::fs::write(
        d.join("members.txt"),
        "# the team\nbob@example.org\nCarol@Example.org, Carol\nnot an address\nbob@example.org\n",
    )
    .unwrap();
    let (s, out) = run(&["directory", "member", "import", "dev@example.org", d.join("members.txt").to_str().unwrap()]);
    assert_eq!(s, 2, "{out}");
    assert!(out.contains("2 member(s) added to dev@example.org, 1 already members, 1 line(s) refused"), "{out}");
    let (s, out) = run(&["directory", "member", "set", "dev@example.org", "bob@example.org", "--digest", "true"]);
    assert_eq!(s, 0, "{out}");
    let (_, out) = run(&["directory", "member", "list", "dev@example.org"]);
    assert_eq!(out, "bob@example.org digest\ncarol@example.org\n");
    let (_, out) = run(&["directory", "member", "export", "dev@example.org"]);
    assert_eq!(out, "bob@example.org\ncarol@example.org\n");
    let (_, out) = run(&["directory", "list", "list"]);
    assert_eq!(out, "dev@example.org  2 member(s)  \n");
    let (s, out) = run(&["directory", "list", "moderate", "dev@example.org", "--approve", "0123456789abcdef"]);
    assert_eq!(s, 2, "no server: {out}");
    let (s, _) = run(&["directory", "list", "remove", "dev@example.org"]);
    assert_eq!(s, 0);
    let (s, _) = run(&["directory", "member", "list", "dev@example.org"]);
    assert_eq!(s, 2);
}

/// A new ed25519 key for example.org, selector `lists` (`ringmx dkim keygen`): its file and
/// the TXT record's text.
fn lists_key(d: &Path) -> (std::path::PathBuf, String) {
    let key = d.join("lists.pem");
    let out = std::process::Command::new(BIN)
        .args(["dkim", "keygen", "example.org", "--algorithm", "ed25519", "--selector", "lists", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record = String::from_utf8(out.stdout).unwrap();
    (key, record.lines().next().unwrap().split('"').nth(1).unwrap().to_string())
}

/// OpenDKIM's verdict on `text` (`opendkim -t`, the key `txt` given through TestPublicKeys).
fn opendkim_verify(d: &Path, txt: &str, text: &str) -> String {
    std::fs::write(d.join("public"), format!("lists._domainkey.example.org {txt}\n")).unwrap();
    let vconf = d.join("verify.conf");
    std::fs::write(&vconf, format!("Mode v\nTestPublicKeys {}\nSyslog no\nUserID root\n", d.join("public").display()))
        .unwrap();
    let f = d.join("check.eml");
    std::fs::write(&f, text).unwrap();
    let out = std::process::Command::new("opendkim").arg("-x").arg(&vconf).args(["-vvv", "-t"]).arg(&f).output();
    String::from_utf8_lossy(&out.expect("opendkim -t (tests/run.sh installs opendkim)").stdout).into_owned()
}

/// With a `[[dkim.sign]]` key for the list's domain, the list's copies (here with the From
/// rewritten to the list, so the signature aligns for DMARC) and its own messages are
/// signed; OpenDKIM's verifier (`opendkim -t`, the public key given through
/// TestPublicKeys) finds the signatures good.
#[test]
fn the_lists_messages_are_dkim_signed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, txt) = lists_key(d);
    directory(
        d,
        serde_json::json!([{"address": "dev@example.org", "posting": "anyone", "from_rewrite": "always",
                            "footer_text": "-- \nthe dev list", "members": members(&["bob@example.org"])}]),
    );
    let cfg = format!("{NO_DNS}[[dkim.sign]]\ndomain = \"example.org\"\nselector = \"lists\"\nkey = {key:?}\n");
    let srv = start_plain(d, "uring", &cfg);
    let post =
        "From: Eve <eve@elsewhere.example>\r\nSubject: hello\r\nMessage-ID: <e1@elsewhere.example>\r\n\r\nhi\r\n";
    assert!(send(srv.addr(), "eve@elsewhere.example", "dev@example.org", post).starts_with("250 "));
    let help = "From: carol@example.org\r\nSubject: help\r\n\r\n";
    assert!(send(srv.addr(), "carol@example.org", "dev-request@example.org", help).starts_with("250 "));
    let copy = wait_mail(d, "bob", 1).remove(0);
    let answer = wait_mail(d, "carol", 1).remove(0);
    srv.stop();
    let verify = |text: &str| opendkim_verify(d, &txt, text);
    for m in [&copy, &answer] {
        assert!(m.contains("DKIM-Signature: ") && m.contains("d=example.org") && m.contains("s=lists"), "{m}");
        let good = verify(m);
        assert!(good.contains("dkim=pass"), "{good}\n{m}");
    }
    assert_eq!(field(&copy, "From").as_deref(), Some("\"Eve via dev\" <dev@example.org>"));
    let bad = verify(&copy.replace("the dev list", "THE DEV LIST"));
    assert!(bad.contains("dkim=fail") && !bad.contains("dkim=pass"), "{bad}");
}

/// One request to the metrics endpoint; the status line and the body.
fn http(addr: std::net::SocketAddr, method: &str, target: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = if method == "POST" { "List-Unsubscribe=One-Click" } else { "" };
    write!(s, "{method} {target} HTTP/1.1\r\nHost: lists.example.org\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// RFC 8058 one-click unsubscription: each member's copy (remote, through its VERP
/// transaction, and local) names its own link and `List-Unsubscribe-Post`, under a DKIM
/// signature of the list's domain; a GET only shows a button, a wrong token is refused, the
/// POST unsubscribes.
#[test]
fn one_click_unsubscription_rfc_8058() {
    let (far, _, messages) = recording_far_end();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, txt) = lists_key(d);
    directory(
        d,
        serde_json::json!([{"address": "dev@example.org", "posting": "anyone",
                                      "members": members(&["ann@example.org", "x@far.example"])}]),
    );
    let cfg = format!(
        "[lists]\ndmarc_dns = false\nunsubscribe_url = \"https://lists.example.org/lists/unsubscribe\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[dkim.sign]]\ndomain = \"example.org\"\nselector = \"lists\"\nkey = {key:?}\n\
         [delivery.routing.domain_smart_hosts.\"far.example\"]\nhost = \"127.0.0.1\"\nport = {}\n",
        far.port()
    );
    let srv = start_plain(d, "uring", &cfg);
    let metrics = srv.metrics.expect("the metrics endpoint");
    let post = "From: Carl <carl@elsewhere.example>\r\nSubject: hi\r\nMessage-ID: <c1@elsewhere.example>\r\n\r\nx\r\n";
    assert!(send(srv.addr(), "carl@elsewhere.example", "dev@example.org", post).starts_with("250 "));
    assert!(eventually(WAIT, || !messages.lock().unwrap().is_empty()));
    let remote = messages.lock().unwrap()[0].clone();
    let local = wait_mail(d, "ann", 1).remove(0);
    let link = |m: &str| {
        let v = field(m, "List-Unsubscribe").unwrap();
        v.split_once('<').unwrap().1.split_once('>').unwrap().0.to_string()
    };
    let x_link = link(&remote);
    assert!(
        x_link.starts_with("https://lists.example.org/lists/unsubscribe?l=dev%40example.org&m=x%40far.example&t="),
        "{x_link}"
    );
    assert!(
        field(&remote, "List-Unsubscribe").unwrap().ends_with(", <mailto:dev-request@example.org?subject=unsubscribe>")
    );
    assert_eq!(field(&remote, "List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"));
    assert!(link(&local).contains("&m=ann%40example.org&t="), "each member's own link");
    let own = remote.split("\r\n\r\n").next().unwrap().lines().filter(|l| l.starts_with("List-Unsubscribe:")).count();
    assert_eq!(own, 1, "the shared copy has none of its own");
    // Under the list domain's signature (RFC 8058 §4).
    let sig = field(&remote, "DKIM-Signature").unwrap().to_ascii_lowercase();
    assert!(sig.contains("list-unsubscribe:list-unsubscribe-post") || sig.contains("list-unsubscribe-post"), "{sig}");
    let verdict = opendkim_verify(d, &txt, &remote);
    assert!(verdict.contains("dkim=pass"), "{verdict}");

    let target = format!("/lists/unsubscribe?{}", x_link.split_once('?').unwrap().1);
    let (status, page) = http(metrics, "GET", &target);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(page.contains("<form method=\"post\"") && page.contains("x@far.example"), "{page}");
    let (_, members_now) = ringmx(d, &["directory", "member", "list", "dev@example.org"]);
    assert_eq!(members_now, "ann@example.org\nx@far.example\n", "a GET unsubscribes nobody (§3.2)");
    let forged = target.replace("&t=", "&t=0").replace("m=x%40far.example", "m=ann%40example.org");
    assert_eq!(http(metrics, "POST", &forged).0, "HTTP/1.1 403 Forbidden");
    let (status, body) = http(metrics, "POST", &target);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "x@far.example no longer gets mail from dev@example.org\n")
    );
    assert!(
        eventually(WAIT, || ringmx(d, &["directory", "member", "list", "dev@example.org"]).1 == "ann@example.org\n")
    );
    srv.stop();
}

/// `[lists] arc_seal`: a post's distribution carries an ARC set of the list's domain
/// (RFC 8617; by its RSA key, as ARC knows no other algorithm) on top of its DKIM
/// signature; two verifiers (mail-auth, asking the in-process hickory server for the key,
/// and dkimpy) find the chain valid, i=1 with cv=none, and broken by a changed body; the
/// ARC-Authentication-Results say what the post was found to be when it arrived.
#[test]
fn a_posts_distribution_is_arc_sealed() {
    use hickory_server::proto::rr::RData;
    use hickory_server::proto::rr::rdata::TXT;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, txt) = lists_key(d);
    // ARC knows rsa-sha256 only: the seal's key, beside the ed25519 one that signs.
    let (arc_key, arc_txt) = dns::rsa_key(BIN, d, "example.org", "arc");
    let ns = dns::serve(vec![
        dns::zone(
            "example.org.",
            &[
                ("lists._domainkey.example.org.", RData::TXT(TXT::new(vec![txt.clone()]))),
                ("arc._domainkey.example.org.", dns::long_txt(&arc_txt)),
            ],
        ),
        // Everything else does not exist.
        dns::zone(".", &[]),
    ]);
    directory(
        d,
        serde_json::json!([{"address": "dev@example.org", "posting": "anyone", "from_rewrite": "never",
                            "footer_text": "-- \nthe dev list", "members": members(&["bob@example.org"])},
                           {"address": "held@example.org", "posting": "anyone", "moderated": true,
                            "moderators": ["mod@example.org"], "members": members(&["carol@example.org"])}]),
    );
    let cfg = format!(
        "[dns]\nservers = [\"{ns}\"]\n[lists]\ndmarc_dns = false\narc_seal = true\n\
         [[dkim.sign]]\ndomain = \"example.org\"\nselector = \"lists\"\nkey = {key:?}\n\
         [[dkim.sign]]\ndomain = \"example.org\"\nselector = \"arc\"\nkey = {arc_key:?}\n"
    );
    let srv = start_plain(d, "uring", &cfg);
    let post =
        "From: Eve <eve@elsewhere.example>\r\nSubject: sealed\r\nMessage-ID: <s1@elsewhere.example>\r\n\r\nhi\r\n";
    assert!(send(srv.addr(), "eve@elsewhere.example", "dev@example.org", post).starts_with("250 "));
    let copy = wait_mail(d, "bob", 1).remove(0);
    // A moderated post is sealed when approved.
    let held = "From: Eve <eve@elsewhere.example>\r\nSubject: held\r\n\r\nwait\r\n";
    assert!(send(srv.addr(), "eve@elsewhere.example", "held@example.org", held).starts_with("250 "));
    let code = code_of(&field(&wait_mail(d, "mod", 1).remove(0), "Subject").unwrap());
    let (status, out) = ringmx(d, &["directory", "list", "moderate", "held@example.org", "--approve", &code]);
    assert_eq!(status, 0, "{out}");
    let approved = wait_mail(d, "carol", 1).remove(0);
    srv.stop();
    let aar = field(&copy, "ARC-Authentication-Results").unwrap_or_default();
    assert!(aar.starts_with("i=1; mx.example.test;"), "{copy}");
    // An unsigned post: no dkim= (mail-auth writes one per signature found), DMARC none.
    assert!(!aar.contains("dkim=") && aar.contains("dmarc=none header.from=elsewhere.example"), "{aar}");
    assert!(aar.contains("arc=none") && aar.contains("smtp.remote-ip=127.0.0.1"), "{aar}");
    let seal = field(&copy, "ARC-Seal").unwrap_or_default();
    assert!(seal.contains("i=1") && seal.contains("cv=none") && seal.contains("a=rsa-sha256"), "{seal}");
    assert!(seal.contains("s=arc") && seal.contains("d=example.org"), "{seal}");
    // An independent verification of the chain (and of the list's own DKIM signature).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let auth = dns::authenticator(ns);
    let msg = mail_auth::AuthenticatedMessage::parse(copy.as_bytes()).unwrap();
    let (arc, dkim) = rt.block_on(async { (auth.verify_arc(&msg).await, auth.verify_dkim(&msg).await) });
    assert_eq!(arc.result(), &mail_auth::DkimResult::Pass, "{copy}");
    assert_eq!(arc.sets().len(), 1);
    assert!(dkim.iter().any(|o| o.result() == &mail_auth::DkimResult::Pass), "{dkim:?}");
    // A changed body breaks the seal's message signature.
    let changed = copy.replace("the dev list", "THE DEV LIST");
    let msg = mail_auth::AuthenticatedMessage::parse(changed.as_bytes()).unwrap();
    let arc = rt.block_on(auth.verify_arc(&msg));
    assert_ne!(arc.result(), &mail_auth::DkimResult::Pass);
    // And another implementation's verdict: dkimpy's arc_verify (Debian's python3-dkim),
    // the key handed to it for arc._domainkey.example.org.
    let verdict = dns::dkimpy_arc(d, "arc._domainkey.example.org", &arc_txt, &copy);
    assert!(verdict.starts_with("pass "), "{verdict}\n{copy}");
    let verdict = dns::dkimpy_arc(d, "arc._domainkey.example.org", &arc_txt, &changed);
    assert!(verdict.starts_with("fail "), "{verdict}");
    let verdict = dns::dkimpy_arc(d, "arc._domainkey.example.org", &arc_txt, &approved);
    assert!(verdict.starts_with("pass "), "the approved post: {verdict}\n{approved}");
}

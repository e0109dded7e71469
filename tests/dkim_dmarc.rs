//! `[dkim] verify` and `[dmarc]` on a running server against an in-process DNS zone: the
//! signed message of RFC 8463 Appendix A.3 (an ed25519-sha256 and an rsa-sha256 signature,
//! relaxed/relaxed; keys of Appendix A.2) verifies, with the exact `Authentication-Results`
//! field (RFC 8601); the same message modified in transit fails both signatures, and DMARC
//! (RFC 7489) with `p=reject` refuses it (550 5.7.1) or, with `reject = false`, records it;
//! a subdomain without a record gets its organisational domain's `sp=`.

mod common;
#[path = "common/dns.rs"]
mod dns;

use common::*;
use dns::zone;
use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::rdata::TXT;
use std::time::Duration;

fn txt(s: &str) -> RData {
    RData::TXT(TXT::new(vec![s.to_string()]))
}

const ED25519_KEY: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
const RSA_KEY: &str = "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB";

/// The signer of RFC 8463 A.3 with both keys of A.2, publishing p=reject.
fn football_zone()
-> (hickory_server::proto::rr::LowerName, std::sync::Arc<dyn hickory_server::zone_handler::ZoneHandler>) {
    zone(
        "football.example.com.",
        &[
            ("brisbane._domainkey.football.example.com.", txt(ED25519_KEY)),
            ("test._domainkey.football.example.com.", txt(RSA_KEY)),
            ("_dmarc.football.example.com.", txt("v=DMARC1; p=reject")),
        ],
    )
}

fn dns_server() -> std::net::SocketAddr {
    dns::serve(vec![
        football_zone(),
        zone("example.org.", &[("_dmarc.example.org.", txt("v=DMARC1; p=none; sp=reject"))]),
        zone("testing.example.", &[("_dmarc.testing.example.", txt("v=DMARC1; p=reject; t=y"))]),
        zone("sampled.example.", &[("_dmarc.sampled.example.", txt("v=DMARC1; p=reject; pct=0"))]),
        zone("whole.example.", &[("_dmarc.whole.example.", txt("v=DMARC1; p=reject; pct=100"))]),
        // Everything else does not exist (the DMARC tree walk asks up to the top).
        zone(".", &[]),
    ])
}

/// RFC 8463 A.3, with CRLF line ends as it travels.
fn rfc8463_message() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/rfc8463-a3.eml"))
        .unwrap()
        .replace('\n', "\r\n")
}

fn server(dir: &std::path::Path, addr: std::net::SocketAddr, reject: bool) -> Server {
    alice_directory(dir);
    let cfg = format!("{PROXY_LISTENER}[dns]\nservers = [\"{addr}\"]\n[dmarc]\nenabled = true\nreject = {reject}\n");
    start(dir, "uring", &cfg)
}

fn send(srv: &Server, from: &str, body: &str) -> String {
    let (mut c, _) = Client::connect_proxied(srv.addr(), "192.0.2.10");
    c.cmd("EHLO client.example");
    c.message(from, &["alice@example.net"], body)
}

#[test]
fn rfc8463_vectors_verify_and_a_modified_body_is_refused_by_dmarc() {
    let addr = dns_server();
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), addr, true);
    queued_id(&send(&srv, "joe@football.example.com", &rfc8463_message()));
    assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()));
    let m = &mailbox(dir.path(), "alice")[0];
    let want = "Authentication-Results: mx.example.test;\n\
                \tdkim=pass header.d=football.example.com header.s=brisbane header.a=ed25519-sha256;\n\
                \tdkim=pass header.d=football.example.com header.s=test header.a=rsa-sha256;\n\
                \tdmarc=pass header.from=football.example.com\nReceived: ";
    assert!(m.contains(want), "{m}");
    // Modified in transit: no signature holds, DMARC fails, p=reject refuses it.
    let modified = rfc8463_message().replace("We lost the game", "We won the game");
    assert_eq!(
        send(&srv, "joe@football.example.com", &modified),
        "550 5.7.1 Error: the DMARC policy of football.example.com rejects this message (not authenticated)\r\n"
    );
    // sp= of the organisational domain for a subdomain without a record of its own.
    let unsigned = "From: x@mail.example.org\r\nSubject: unsigned\r\n\r\nhello\r\n";
    assert!(send(&srv, "x@mail.example.org", unsigned).starts_with("550 5.7.1 "), "sp=reject");
    // The organisational domain itself has p=none: accepted, recorded as a failure.
    queued_id(&send(&srv, "x@example.org", "From: x@example.org\r\nSubject: unsigned\r\n\r\nhello\r\n"));
    // DMARCbis t=y (testing): p=reject is applied as quarantine, not refused.
    queued_id(&send(&srv, "x@testing.example", "From: x@testing.example\r\nSubject: unsigned\r\n\r\nhello\r\n"));
    // RFC 7489 §6.6.4 pct=0: no failing message is in the sample, so p=reject applies as
    // quarantine, for the subdomain too; pct=100 refuses as without it.
    queued_id(&send(&srv, "x@sampled.example", "From: x@sampled.example\r\nSubject: unsigned\r\n\r\nhello\r\n"));
    queued_id(&send(&srv, "x@mail.sampled.example", "From: x@mail.sampled.example\r\nSubject: u\r\n\r\nhi\r\n"));
    let whole = send(&srv, "x@whole.example", "From: x@whole.example\r\nSubject: unsigned\r\n\r\nhello\r\n");
    assert!(whole.starts_with("550 5.7.1 "), "pct=100: {whole}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn with_reject_off_a_failure_is_recorded_for_the_mailbox() {
    let addr = dns_server();
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path(), addr, false);
    let modified = rfc8463_message().replace("We lost the game", "We won the game");
    queued_id(&send(&srv, "joe@football.example.com", &modified));
    assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()));
    let m = &mailbox(dir.path(), "alice")[0];
    assert!(m.starts_with("Return-Path: <joe@football.example.com>\nDelivered-To: alice@example.net\nAuthentication-Results: mx.example.test;\n\tdkim=fail reason="), "{m}");
    assert!(m.contains("header.s=brisbane header.a=ed25519-sha256;\n"), "{m}");
    assert!(m.contains("\tdmarc=fail policy.dmarc=reject header.from=football.example.com\nReceived: "), "{m}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

/// RFC 8463 A.2's ed25519 private key (its public key is [`ED25519_KEY`]): what a trusted
/// mailing list seals with in this test.
const ED25519_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
const ED25519_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// `message` with an ARC set (RFC 8617) sealed by `sealer` (selector `brisbane`), as a list
/// that changed it would add.
fn arc_sealed(message: &str, sealer: &str) -> String {
    use mail_auth::common::headers::HeaderWriter;
    let key = mail_auth::common::crypto::Ed25519Key::from_seed_and_public_key(
        &ringmx_b64::decode(ED25519_SEED.as_bytes()).unwrap(),
        &ringmx_b64::decode(ED25519_PUBLIC.as_bytes()).unwrap(),
    )
    .unwrap();
    let parsed = mail_auth::AuthenticatedMessage::parse(message.as_bytes()).unwrap();
    // No ARC set yet: the chain is empty (no lookup is made).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let none = rt.block_on(mail_auth::MessageAuthenticator::new_cloudflare().unwrap().verify_arc(&parsed));
    let results = mail_auth::AuthenticationResults::new(sealer);
    let set = mail_auth::arc::ArcSealer::from_key(key)
        .domain(sealer)
        .selector("brisbane")
        .headers(["From", "To", "Subject"])
        .seal(&parsed, &results, &none)
        .unwrap();
    format!("{}{message}", set.to_header().replace("\r\n", "\n").replace('\n', "\r\n"))
}

/// RFC 8617 §7.2: a message changed by a list (its DKIM signatures broken, so DMARC fails
/// under p=reject) is accepted when the list's valid ARC seal is trusted; a seal not
/// trusted, or a chain broken after sealing, does not save it.
#[test]
fn a_trusted_arc_sealer_vouches_for_a_dmarc_failure() {
    let addr = dns::serve(vec![
        football_zone(),
        zone("list.example.", &[("brisbane._domainkey.list.example.", txt(ED25519_KEY))]),
        zone("other.example.", &[("brisbane._domainkey.other.example.", txt(ED25519_KEY))]),
        zone(".", &[]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    alice_directory(dir.path());
    let cfg = format!(
        "{PROXY_LISTENER}[dns]\nservers = [\"{addr}\"]\n[dmarc]\nenabled = true\ntrusted_arc_sealers = [\"list.example\"]\n"
    );
    let srv = start(dir.path(), "epoll", &cfg);
    let changed = rfc8463_message().replace("Subject: Is dinner ready?", "Subject: [list] Is dinner ready?");
    queued_id(&send(&srv, "joe@football.example.com", &arc_sealed(&changed, "list.example")));
    assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()));
    let m = &mailbox(dir.path(), "alice")[0];
    assert!(
        m.contains(
            "\tarc=pass header.d=list.example;\n\tdmarc=fail policy.dmarc=reject header.from=football.example.com\n"
        ),
        "{m}"
    );
    let refused =
        "550 5.7.1 Error: the DMARC policy of football.example.com rejects this message (not authenticated)\r\n";
    assert_eq!(send(&srv, "joe@football.example.com", &arc_sealed(&changed, "other.example")), refused);
    let broken = arc_sealed(&changed, "list.example").replace("We lost the game", "We won the game");
    assert_eq!(send(&srv, "joe@football.example.com", &broken), refused);
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

/// `[dkim] arc_seal_forwards` (RFC 8617 §5.1): a message that a mailbox's redirect sends
/// elsewhere leaves with an ARC set of the mailbox's domain, by its RSA key, whose
/// ARC-Authentication-Results say what was found when it arrived: i=1 cv=none on a message
/// without a chain, i=2 cv=pass on top of a list's valid set, i=2 cv=fail on a broken chain
/// (§5.1.2), and a message delivered here is not sealed at all (two verification workers,
/// `[dkim] threads = 2`). mail-auth (asking the in-process DNS server) and dkimpy find the
/// chain valid, and broken by a changed body.
#[test]
fn a_message_forwarded_elsewhere_is_arc_sealed() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (arc_key, arc_txt) = dns::rsa_key(BIN, d, "example.net", "arc");
    let ns = dns::serve(vec![
        football_zone(),
        zone("list.example.", &[("brisbane._domainkey.list.example.", txt(ED25519_KEY))]),
        zone("example.net.", &[("arc._domainkey.example.net.", dns::long_txt(&arc_txt))]),
        zone(".", &[]),
    ]);
    // The far end the redirect leads to.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let far = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        far_end(listener, st, |e| {
            if let FarEvent::Message(m) = e {
                s.lock().unwrap().push(m.to_string());
            }
        })
    });
    let dd = d.join("data/directory");
    std::fs::create_dir_all(&dd).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [
            {"name": "example.net", "postoffice": "po"},
            {"name": "backup.example", "postoffice": "po", "smart_host": far.to_string()}
        ],
        "mailboxes": [
            {"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]},
            {"postoffice": "po", "name": "bob", "addresses": ["bob@example.net"], "redirect": ["u@backup.example"]}
        ]
    });
    std::fs::write(dd.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
    let cfg = format!(
        "{PROXY_LISTENER}[dns]\nservers = [\"{ns}\"]\n[dmarc]\nenabled = true\nreject = false\n\
         [dkim]\narc_seal_forwards = true\nthreads = 2\n\
         [[dkim.sign]]\ndomain = \"example.net\"\nselector = \"arc\"\nkey = {arc_key:?}\n"
    );
    let srv = start(d, "uring", &cfg);
    let send_to = |to: &str, body: &str| {
        let (mut c, _) = Client::connect_proxied(srv.addr(), "192.0.2.10");
        c.cmd("EHLO client.example");
        queued_id(&c.message("joe@football.example.com", &[to], body));
    };
    let listed = rfc8463_message().replace("Subject: Is dinner ready?", "Subject: [list] Is dinner ready?");
    send_to("bob@example.net", &rfc8463_message());
    assert!(eventually(Duration::from_secs(20), || seen.lock().unwrap().len() == 1));
    send_to("bob@example.net", &arc_sealed(&listed, "list.example"));
    assert!(eventually(Duration::from_secs(20), || seen.lock().unwrap().len() == 2));
    let broken = arc_sealed(&listed, "list.example").replace("We lost the game", "We won the game");
    send_to("bob@example.net", &broken);
    assert!(eventually(Duration::from_secs(20), || seen.lock().unwrap().len() == 3));
    send_to("alice@example.net", &rfc8463_message());
    assert!(eventually(Duration::from_secs(20), || !mailbox(d, "alice").is_empty()));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    stop_far_end(far, &stop);
    t.join().unwrap();
    let got = seen.lock().unwrap().clone();
    let field = |m: &str, name: &str| -> Vec<String> {
        let prefix = format!("{name}: ");
        let mut out = Vec::new();
        let mut cur: Option<String> = None;
        for l in m.split("\r\n").take_while(|l| !l.is_empty()) {
            if l.starts_with([' ', '\t']) {
                if let Some(c) = cur.as_mut() {
                    c.push_str(l.trim_start());
                }
                continue;
            }
            out.extend(cur.take());
            cur = l.strip_prefix(prefix.as_str()).map(str::to_string);
        }
        out.extend(cur);
        out
    };
    // No chain as it came: i=1, cv=none; what was found is said.
    let seal = field(&got[0], "ARC-Seal");
    assert_eq!(seal.len(), 1, "{}", got[0]);
    assert!(seal[0].contains("i=1") && seal[0].contains("cv=none") && seal[0].contains("d=example.net"), "{seal:?}");
    assert!(seal[0].contains("s=arc") && seal[0].contains("a=rsa-sha256"), "{seal:?}");
    let aar = field(&got[0], "ARC-Authentication-Results").remove(0);
    assert!(aar.starts_with("i=1; mx.example.test;"), "{aar}");
    assert!(aar.contains("dkim=pass") && aar.contains("dmarc=pass") && aar.contains("arc=none"), "{aar}");
    assert!(aar.contains("smtp.remote-ip=192.0.2.10"), "{aar}");
    // On top of the list's valid set: i=2, cv=pass.
    let seals = field(&got[1], "ARC-Seal");
    assert_eq!(seals.len(), 2, "{}", got[1]);
    assert!(
        seals[0].contains("i=2") && seals[0].contains("cv=pass") && seals[0].contains("d=example.net"),
        "{seals:?}"
    );
    assert!(field(&got[1], "ARC-Authentication-Results")[0].contains("arc=pass"), "{}", got[1]);
    // A broken chain is marked so (§5.1.2).
    let seals = field(&got[2], "ARC-Seal");
    assert!(seals.len() == 2 && seals[0].contains("i=2") && seals[0].contains("cv=fail"), "{}", got[2]);
    assert!(field(&got[2], "ARC-Authentication-Results")[0].contains("arc=fail"), "{}", got[2]);
    // Mail delivered here carries no seal of ours.
    assert!(!mailbox(d, "alice")[0].contains("ARC-Seal: i=1; a=rsa-sha256"), "{}", mailbox(d, "alice")[0]);
    // Verified by mail-auth, asking the in-process server for the keys.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let auth = dns::authenticator(ns);
    let verdict = |m: &str| {
        let msg = mail_auth::AuthenticatedMessage::parse(m.as_bytes()).unwrap();
        let out = rt.block_on(auth.verify_arc(&msg));
        (out.result().clone(), out.sets().len())
    };
    assert_eq!(verdict(&got[0]), (mail_auth::DkimResult::Pass, 1), "{}", got[0]);
    assert_eq!(verdict(&got[1]), (mail_auth::DkimResult::Pass, 2), "{}", got[1]);
    let changed = got[0].replace("We lost the game", "We won the game");
    assert_ne!(verdict(&changed).0, mail_auth::DkimResult::Pass);
    // And by dkimpy (Debian's python3-dkim), the key handed to it.
    let arc = |m: &str| dns::dkimpy_arc(d, "arc._domainkey.example.net", &arc_txt, m);
    assert!(arc(&got[0]).starts_with("pass "), "{}\n{}", arc(&got[0]), got[0]);
    assert!(arc(&changed).starts_with("fail "), "{}", arc(&changed));
}

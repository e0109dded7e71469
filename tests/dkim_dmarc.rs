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

fn dns_server() -> std::net::SocketAddr {
    dns::serve(vec![
        zone(
            "football.example.com.",
            &[
                ("brisbane._domainkey.football.example.com.", txt(ED25519_KEY)),
                ("test._domainkey.football.example.com.", txt(RSA_KEY)),
                ("_dmarc.football.example.com.", txt("v=DMARC1; p=reject")),
            ],
        ),
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
        zone(
            "football.example.com.",
            &[
                ("brisbane._domainkey.football.example.com.", txt(ED25519_KEY)),
                ("test._domainkey.football.example.com.", txt(RSA_KEY)),
                ("_dmarc.football.example.com.", txt("v=DMARC1; p=reject")),
            ],
        ),
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

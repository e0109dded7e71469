//! `[spf]` on a running server against an in-process DNS zone (hickory-server on
//! loopback), clients named by a PROXY header: each result of RFC 7208 §2.6 at MAIL FROM
//! with its action (fail 550 5.7.23, temperror 451 4.7.24, the others accepted and tagged),
//! the limits of §4.6.4 (ten DNS-querying terms, two void lookups), `mx`, `ptr`, `include`
//! of a domain with no record, `redirect=`, two records at once (§4.5), macros (§7) and
//! `exp=` (§6.2), the HELO identity for `<>` (§2.3), and the `Authentication-Results`
//! field (RFC 8601) on the delivered message.

mod common;
#[path = "common/dns.rs"]
mod dns;

use common::*;
use dns::zone;
use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::rdata::{A, MX, PTR, TXT};
use std::net::Ipv4Addr;
use std::time::Duration;

fn txt(s: &str) -> RData {
    RData::TXT(TXT::new(vec![s.to_string()]))
}

/// The zone every case is in.
fn dns_server() -> std::net::SocketAddr {
    let mut records: Vec<(String, RData)> = vec![
        ("pass.example.org.".into(), txt("v=spf1 ip4:192.0.2.0/24 -all")),
        ("soft.example.org.".into(), txt("v=spf1 ip4:192.0.2.0/24 ~all")),
        ("neutral.example.org.".into(), txt("v=spf1 ?all")),
        ("none.example.org.".into(), RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))),
        ("broken.example.org.".into(), txt("v=spf1 ip4:not-an-address -all")),
        // §7: the client's address, reversed, under the domain.
        ("macro.example.org.".into(), txt("v=spf1 exists:%{ir}._ip.%{d} -all")),
        ("10.2.0.192._ip.macro.example.org.".into(), RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))),
        // §6.2: the domain explains its refusals.
        ("exp.example.org.".into(), txt("v=spf1 -all exp=why.%{d}")),
        ("why.exp.example.org.".into(), txt("%{l} may not send from %{i}")),
        // The HELO name of a null sender.
        ("helo.example.org.".into(), txt("v=spf1 ip4:192.0.2.0/24 -all")),
        // §4.6.4: two void lookups are allowed, a third is permerror.
        ("void2.example.org.".into(), txt("v=spf1 a:nx1.example.org mx:nx2.example.org ip4:192.0.2.0/24 -all")),
        (
            "void3.example.org.".into(),
            txt("v=spf1 a:nx1.example.org mx:nx2.example.org exists:nx3.example.org ip4:192.0.2.0/24 -all"),
        ),
        // §4.5: two SPF records is an error; §5.2: so is an include of a domain with none.
        ("two.example.org.".into(), txt("v=spf1 +all")),
        ("two.example.org.".into(), txt("v=spf1 -all")),
        ("incnone.example.org.".into(), txt("v=spf1 include:none.example.org -all")),
        // §6.1: another domain's record decides.
        ("redir.example.org.".into(), txt("v=spf1 redirect=pass.example.org")),
        // §5.4: the domain's mail exchangers.
        ("mx.example.org.".into(), txt("v=spf1 mx -all")),
        ("mx.example.org.".into(), RData::MX(MX::new(10, dns::name("mail.mx.example.org.")))),
        ("mail.mx.example.org.".into(), RData::A(A(Ipv4Addr::new(192, 0, 2, 20)))),
        // §5.5: a name of the client that leads back to it, under the domain.
        ("ptr.example.org.".into(), txt("v=spf1 ptr -all")),
        ("host.ptr.example.org.".into(), RData::A(A(Ipv4Addr::new(192, 0, 2, 30)))),
    ];
    // §4.6.4: eleven includes in a chain, past the ten DNS-querying terms allowed.
    for i in 0..11 {
        records.push((format!("l{i}.example.org."), txt(&format!("v=spf1 include:l{}.example.org -all", i + 1))));
    }
    records.push(("l11.example.org.".into(), txt("v=spf1 +all")));
    // Ten DNS-querying terms are allowed: ten includes in a chain pass.
    for i in 0..10 {
        records.push((format!("m{i}.example.org."), txt(&format!("v=spf1 include:m{}.example.org -all", i + 1))));
    }
    records.push(("m10.example.org.".into(), txt("v=spf1 +all")));
    let refs: Vec<(&str, RData)> = records.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
    let ptr = [("30.2.0.192.in-addr.arpa.", RData::PTR(PTR(dns::name("host.ptr.example.org."))))];
    dns::serve(vec![zone("example.org.", &refs), zone("2.0.192.in-addr.arpa.", &ptr)])
}

#[test]
fn each_spf_result_at_mail_from() {
    let addr = dns_server();
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let cfg = format!(
            "{PROXY_LISTENER}[dns]\nservers = [\"{addr}\"]\n[spf]\nenabled = true\ntimeout = \"5s\"\npermerror = \"reject\"\n"
        );
        let srv = start(dir.path(), driver, &cfg);
        let mail = |client: &str, helo: &str, from: &str| {
            let (mut c, _) = Client::connect_proxied(srv.addr(), client);
            c.cmd(&format!("EHLO {helo}"));
            c.cmd(&format!("MAIL FROM:<{from}>"))
        };
        let ok = "250 2.1.0 Ok\r\n";
        let broken = |d: &str| format!("550 5.7.24 Error: the SPF record of {d} is broken\r\n");
        let fail = |d: &str| format!("550 5.7.23 Error: SPF fail for {d}\r\n");
        let cases: Vec<(&str, &str, &str, String)> = vec![
            ("pass", "192.0.2.10", "a@pass.example.org", ok.into()),
            ("fail", "198.51.100.1", "a@pass.example.org", fail("pass.example.org")),
            ("softfail: tagged", "198.51.100.1", "a@soft.example.org", ok.into()),
            ("neutral", "198.51.100.1", "a@neutral.example.org", ok.into()),
            ("none", "198.51.100.1", "a@none.example.org", ok.into()),
            ("permerror: a broken record", "192.0.2.10", "a@broken.example.org", broken("broken.example.org")),
            ("ten DNS-querying terms", "192.0.2.10", "a@m0.example.org", ok.into()),
            ("permerror: eleven DNS-querying terms", "192.0.2.10", "a@l0.example.org", broken("l0.example.org")),
            ("two void lookups", "192.0.2.10", "a@void2.example.org", ok.into()),
            ("permerror: a third void lookup", "192.0.2.10", "a@void3.example.org", broken("void3.example.org")),
            ("permerror: two SPF records", "192.0.2.10", "a@two.example.org", broken("two.example.org")),
            (
                "permerror: include of a domain with none",
                "192.0.2.10",
                "a@incnone.example.org",
                broken("incnone.example.org"),
            ),
            ("redirect= fail", "198.51.100.1", "a@redir.example.org", fail("redir.example.org")),
            ("redirect= pass", "192.0.2.10", "a@redir.example.org", ok.into()),
            ("mx pass", "192.0.2.20", "a@mx.example.org", ok.into()),
            ("mx fail", "192.0.2.10", "a@mx.example.org", fail("mx.example.org")),
            ("ptr pass", "192.0.2.30", "a@ptr.example.org", ok.into()),
            ("ptr fail: no name", "192.0.2.31", "a@ptr.example.org", fail("ptr.example.org")),
            ("macro pass", "192.0.2.10", "a@macro.example.org", ok.into()),
            ("macro fail", "192.0.2.11", "a@macro.example.org", fail("macro.example.org")),
            (
                "exp=",
                "198.51.100.7",
                "bob@exp.example.org",
                "550 5.7.23 Error: bob may not send from 198.51.100.7\r\n".into(),
            ),
            ("null sender: the HELO name passes", "192.0.2.10", "", ok.into()),
            // RFC 7208 §5: a client on an IPv4-mapped IPv6 address is an IPv4 client.
            ("IPv4-mapped client, ip4 pass", "::ffff:192.0.2.10", "a@pass.example.org", ok.into()),
            ("IPv4-mapped client, a fail", "::ffff:198.51.100.1", "a@pass.example.org", fail("pass.example.org")),
            (
                "temperror: a zone no server answers for",
                "192.0.2.10",
                "a@unhosted.test",
                "451 4.7.24 Error: SPF check of unhosted.test failed temporarily, try again later\r\n".into(),
            ),
        ];
        for (what, client, from, want) in cases {
            let helo = if from.is_empty() { "helo.example.org" } else { "client.example" };
            assert_eq!(mail(client, helo, from), want, "{driver}: {what}");
        }
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}

#[test]
fn the_result_is_on_the_delivered_message() {
    let addr = dns_server();
    let dir = tempfile::tempdir().unwrap();
    alice_directory(dir.path());
    // permerror refused too, for the reply code; a third void lookup allowed.
    let cfg = format!(
        "{PROXY_LISTENER}[dns]\nservers = [\"{addr}\"]\n[spf]\nenabled = true\npermerror = \"reject\"\nmax_void_lookups = 3\n"
    );
    let srv = start(dir.path(), "uring", &cfg);
    let (mut c, _) = Client::connect_proxied(srv.addr(), "198.51.100.1");
    c.cmd("EHLO client.example");
    assert_eq!(
        c.cmd("MAIL FROM:<a@broken.example.org>"),
        "550 5.7.24 Error: the SPF record of broken.example.org is broken\r\n"
    );
    // With a third void lookup allowed the record is read to its end: a fail, not permerror.
    assert_eq!(
        c.cmd("MAIL FROM:<a@void3.example.org>"),
        "550 5.7.23 Error: SPF fail for void3.example.org\r\n",
        "max_void_lookups = 3"
    );
    c.cmd("RSET");
    let r = c.message("a@soft.example.org", &["alice@example.net"], "Subject: tagged\r\n\r\nx\r\n");
    queued_id(&r);
    assert!(eventually(Duration::from_secs(20), || !mailbox(dir.path(), "alice").is_empty()));
    let m = &mailbox(dir.path(), "alice")[0];
    assert!(
        m.contains(
            "\nAuthentication-Results: mx.example.test;\n\tspf=softfail smtp.mailfrom=a@soft.example.org\nReceived: "
        ),
        "{m}"
    );
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

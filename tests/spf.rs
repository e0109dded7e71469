//! `[spf]` on a running server against an in-process DNS zone (hickory-server on
//! loopback), clients named by a PROXY header: each result of RFC 7208 §2.6 at MAIL FROM
//! with its action (fail 550 5.7.23, temperror 451 4.7.24, the others accepted and tagged),
//! the lookup limit of §4.6.4 (ten DNS-querying terms), macros (§7) and `exp=` (§6.2), the
//! HELO identity for `<>` (§2.3), and the `Authentication-Results` field (RFC 8601) on the
//! delivered message. Not yet: §4.6.4's limit of two void lookups (the library used does
//! not count them).

mod common;
#[path = "common/dns.rs"]
mod dns;

use common::*;
use dns::zone;
use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::rdata::{A, TXT};
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
    ];
    // §4.6.4: eleven includes in a chain, past the ten DNS-querying terms allowed.
    for i in 0..11 {
        records.push((format!("l{i}.example.org."), txt(&format!("v=spf1 include:l{}.example.org -all", i + 1))));
    }
    records.push(("l11.example.org.".into(), txt("v=spf1 +all")));
    let refs: Vec<(&str, RData)> = records.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
    dns::serve(vec![zone("example.org.", &refs)])
}

#[test]
fn each_spf_result_at_mail_from() {
    let addr = dns_server();
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        alice_directory(dir.path());
        let cfg = format!("{PROXY_LISTENER}[dns]\nservers = [\"{addr}\"]\n[spf]\nenabled = true\ntimeout = \"5s\"\n");
        let srv = start(dir.path(), driver, &cfg);
        let mail = |client: &str, helo: &str, from: &str| {
            let (mut c, _) = Client::connect_proxied(srv.addr(), client);
            c.cmd(&format!("EHLO {helo}"));
            c.cmd(&format!("MAIL FROM:<{from}>"))
        };
        let ok = "250 2.1.0 Ok\r\n";
        let cases: [(&str, &str, &str, &str); 12] = [
            ("pass", "192.0.2.10", "a@pass.example.org", ok),
            ("fail", "198.51.100.1", "a@pass.example.org", "550 5.7.23 Error: SPF fail for pass.example.org\r\n"),
            ("softfail: tagged", "198.51.100.1", "a@soft.example.org", ok),
            ("neutral", "198.51.100.1", "a@neutral.example.org", ok),
            ("none", "198.51.100.1", "a@none.example.org", ok),
            ("permerror: tagged", "192.0.2.10", "a@broken.example.org", ok),
            ("permerror of the lookup limit", "192.0.2.10", "a@l0.example.org", ok),
            ("macro pass", "192.0.2.10", "a@macro.example.org", ok),
            ("macro fail", "192.0.2.11", "a@macro.example.org", "550 5.7.23 Error: SPF fail for macro.example.org\r\n"),
            ("exp=", "198.51.100.7", "bob@exp.example.org", "550 5.7.23 Error: bob may not send from 198.51.100.7\r\n"),
            ("null sender: the HELO name passes", "192.0.2.10", "", ok),
            (
                "temperror: a zone no server answers for",
                "192.0.2.10",
                "a@unhosted.test",
                "451 4.7.24 Error: SPF check of unhosted.test failed temporarily, try again later\r\n",
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
    // permerror refused too, for the reply code.
    let cfg = format!("{PROXY_LISTENER}[dns]\nservers = [\"{addr}\"]\n[spf]\nenabled = true\npermerror = \"reject\"\n");
    let srv = start(dir.path(), "uring", &cfg);
    let (mut c, _) = Client::connect_proxied(srv.addr(), "198.51.100.1");
    c.cmd("EHLO client.example");
    assert_eq!(
        c.cmd("MAIL FROM:<a@broken.example.org>"),
        "550 5.7.24 Error: the SPF record of broken.example.org is broken\r\n"
    );
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

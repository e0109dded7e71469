//! Policy at the door over real TCP, on both drivers: access list, auto-ban kept across a
//! restart, EHLO blocking, alternate banner, disabled commands, hidden client address,
//! recipients per hour, spoofing; and the DNS checks (DNSBL, PTR, sender domain) against an
//! in-process hickory-server on loopback. Client addresses other than 127/8 come through the
//! PROXY protocol (hickory answers 127/8 reverse lookups itself).

mod common;

use common::*;
#[path = "common/dns.rs"]
mod dns;

use dns::{name, zone};
use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::rdata::{A, MX, PTR};
use ringmx::dns::{Dns, DnsAnswer, DnsQuery, DnsService, DnsSettings};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Behind a load balancer the per-address connection limit counts the client named in the
/// PROXY header, not the balancer: 421 4.7.0 for the client over the limit, others still
/// served; a closed connection frees its place.
#[test]
fn per_address_limit_counts_the_proxied_client() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        let srv = start(tmp.path(), driver, &format!("{PROXY_LISTENER}[limits]\nmax_connections_per_ip = 2\n"));
        let (a1, g1) = Client::connect_proxied(srv.addr(), "192.0.2.7");
        let (_a2, g2) = Client::connect_proxied(srv.addr(), "192.0.2.7");
        assert!(g1.starts_with("220") && g2.starts_with("220"), "{driver}: {g1}{g2}");
        let (_a3, g3) = Client::connect_proxied(srv.addr(), "192.0.2.7");
        assert!(g3.starts_with("421 4.7.0"), "{driver}: {g3}");
        // Three connections from the balancer already: another client is still served.
        let (mut b, gb) = Client::connect_proxied(srv.addr(), "192.0.2.8");
        assert!(gb.starts_with("220"), "{driver}: {gb}");
        assert!(b.cmd("EHLO b").starts_with("250"));
        drop(a1);
        assert!(
            eventually(Duration::from_secs(5), || Client::connect_proxied(srv.addr(), "192.0.2.7")
                .1
                .starts_with("220")),
            "{driver}: the place of the closed connection is not freed"
        );
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}

/// `[limits] max_connections_per_network`: an IPv4 /24 shares one count (421 4.7.0 past
/// it); another network is served.
#[test]
fn per_network_limit_counts_the_clients_neighbours() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = format!("{PROXY_LISTENER}[limits]\nmax_connections_per_network = 2\n");
        let srv = start(tmp.path(), driver, &cfg);
        let (_a, g1) = Client::connect_proxied(srv.addr(), "192.0.2.7");
        let (_b, g2) = Client::connect_proxied(srv.addr(), "192.0.2.8");
        assert!(g1.starts_with("220") && g2.starts_with("220"), "{driver}: {g1}{g2}");
        let (_c, g3) = Client::connect_proxied(srv.addr(), "192.0.2.9");
        assert_eq!(g3, "421 4.7.0 Error: too many connections from your address or network\r\n", "{driver}");
        let (_d, g4) = Client::connect_proxied(srv.addr(), "198.51.100.9");
        assert!(g4.starts_with("220"), "{driver}: {g4}");
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
    }
}

/// `ringmx ban list|add|lift`: on the running server the list every shard reads changes at
/// once (loopback probing banned itself before: now the operator can see and lift it); on
/// a stopped one the file is edited and the next start honours it.
#[test]
fn operator_bans_list_add_and_lift() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = format!("{PROXY_LISTENER}[policy]\nauto_ban = true\n");
    let srv = start(tmp.path(), "uring", &cfg);
    let d = tmp.path();
    assert_eq!(ringmx(d, &["ban", "add", "192.0.2.77", "--for", "1h"]), (0, "192.0.2.77: banned\n".into()));
    assert!(Client::connect_proxied(srv.addr(), "192.0.2.77").1.starts_with("554 5.7.1 "), "banned at once");
    let (code, out) = ringmx(d, &["ban", "list", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["address"], "192.0.2.77");
    assert!(v["until"].as_u64().unwrap() > 0);
    assert_eq!(ringmx(d, &["ban", "lift", "192.0.2.77"]), (0, "192.0.2.77: lifted\n".into()));
    assert!(Client::connect_proxied(srv.addr(), "192.0.2.77").1.starts_with("220 "), "lifted at once");
    assert_eq!(ringmx(d, &["ban", "lift", "192.0.2.77"]).0, 1, "not banned any more");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    // Stopped: the file is edited; the next start reads it.
    assert_eq!(ringmx(d, &["ban", "add", "192.0.2.78"]), (0, "192.0.2.78: banned\n".into()));
    assert_eq!(ringmx(d, &["ban", "list"]), (0, "192.0.2.78  for ever\n".into()));
    let srv = start(tmp.path(), "epoll", &cfg);
    assert!(Client::connect_proxied(srv.addr(), "192.0.2.78").1.starts_with("554 5.7.1 "));
    drop(srv);
    // With automatic bans off, the running server says so.
    let tmp = tempfile::tempdir().unwrap();
    let _srv = start(tmp.path(), "uring", PROXY_LISTENER);
    assert_eq!(ringmx(tmp.path(), &["ban", "list"]).0, 1);
}

#[test]
fn access_list_and_auto_ban_across_restart() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = format!(
            "{PROXY_LISTENER}[policy]\naccess_list = [\"192.0.2.66\", \"198.51.100.0/28\", \"203.0.113.*\"]\n\
             auto_ban = true\nauto_ban_duration = \"1h\"\nwhitelist = [\"192.0.2.200\"]\n[limits]\nmax_errors = 2\n"
        );
        let srv = start(tmp.path(), driver, &cfg);
        for listed in ["192.0.2.66", "198.51.100.7", "203.0.113.250"] {
            let (mut c, g) = Client::connect_proxied(srv.addr(), listed);
            assert_eq!(g, format!("554 5.7.1 Error: access denied for {listed}\r\n"), "{driver}");
            assert_eq!(c.reply(), "", "closed");
        }
        for (client, banned) in [("192.0.2.77", true), ("192.0.2.200", false)] {
            let (mut c, g) = Client::connect_proxied(srv.addr(), client);
            assert!(g.starts_with("220 "), "{g}");
            c.cmd("EHLO c");
            c.cmd("MAIL FROM:<a@remote.example>");
            assert!(c.cmd("RCPT TO:<x@remote.example>").starts_with("550 5.7.1"));
            assert!(c.cmd("RCPT TO:<y@remote.example>").starts_with("550 5.7.1"));
            assert!(c.reply().starts_with("421 4.7.0"));
            let (_, g) = Client::connect_proxied(srv.addr(), client);
            assert_eq!(g.starts_with("554 5.7.1"), banned, "{driver} {client}: {g}");
        }
        let (status, log) = srv.stop();
        assert!(status.success());
        assert!(log.contains("4 refused connection(s) (access list 3, auto-ban 1);"), "{driver}: {log}");
        activity_shows(
            tmp.path(),
            &[
                &["refused session=", "client=203.0.113.250", "reason=\"access list\" rule=access_list"],
                &["refused session=", "client=192.0.2.77", "reason=auto-ban rule=auto_ban"],
                &[
                    "rejected session=",
                    "client=192.0.2.77",
                    "step=rcpt rule=relay from=<a@remote.example>",
                    "rcpt=<x@remote.example>",
                    "reply=\"550 5.7.1 Error: relay access denied\"",
                ],
            ],
        );
        let bans = std::fs::read_to_string(tmp.path().join("data/bans")).unwrap();
        assert!(bans.contains("192.0.2.77 ") && !bans.contains("192.0.2.200"), "{bans}");
        let srv = start(tmp.path(), driver, &cfg);
        let (_, g) = Client::connect_proxied(srv.addr(), "192.0.2.77");
        assert_eq!(g, "554 5.7.1 Error: access denied for 192.0.2.77 (banned)\r\n", "{driver}: kept across a restart");
        drop(srv);
        // allow_only_listed.
        let tmp = tempfile::tempdir().unwrap();
        let srv = start(
            tmp.path(),
            driver,
            &format!(
                "{PROXY_LISTENER}[policy]\naccess_control = \"allow_only_listed\"\naccess_list = [\"2001:db8::/32\", \"192.0.2.1\"]\n"
            ),
        );
        assert!(Client::connect_proxied(srv.addr(), "192.0.2.1").1.starts_with("220 "));
        assert!(Client::connect_proxied(srv.addr(), "192.0.2.2").1.starts_with("554 5.7.1 "));
    }
}

#[test]
fn helo_blocking_banner_commands_hidden_ip_rate_and_spoofing() {
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = "[policy]\nehlo_block = [\"ylmf-pc\"]\nwelcome = \"%LOCALDOMAIN% Mail Service ready at %TIME%\"\n\
                   disabled_commands = [\"VRFY\", \"EXPN\", \"HELP\"]\nhide_client_ip = true\nmax_recipients_per_hour = 3\n\
                   sender_spoofing = \"authenticated_only\"\n";
        let srv = start_plain(tmp.path(), driver, cfg);
        let (mut c, g) = Client::connect(srv.addr());
        assert!(g.starts_with("220 mx.example.test Mail Service ready at ") && g.trim_end().ends_with("+0000"), "{g}");
        assert_eq!(c.cmd("EHLO ylmf-pc"), "554 5.7.1 Error: HELO/EHLO name refused\r\n");
        assert_eq!(c.reply(), "", "{driver}: dropped");
        let (mut c, _) = Client::connect(srv.addr());
        assert_eq!(c.cmd("HELO client.example"), "250 mx.example.test\r\n");
        for verb in ["VRFY x", "EXPN x", "HELP", "ETRN x"] {
            assert_eq!(c.cmd(verb), "502 5.5.1 Error: command not implemented\r\n", "{verb}");
        }
        assert!(c.cmd("NOOP").starts_with("250"));
        assert_eq!(
            c.cmd("MAIL FROM:<me@example.test>"),
            "553 5.7.1 Error: sender address of a local domain needs authentication\r\n"
        );
        assert!(c.cmd("MAIL FROM:<a@remote.example>").starts_with("250"));
        for r in ["a", "b", "c"] {
            assert!(c.cmd(&format!("RCPT TO:<{r}@example.test>")).starts_with("250"));
        }
        assert_eq!(
            c.cmd("RCPT TO:<d@example.test>"),
            "451 4.7.1 Error: too many recipients this hour, try again later\r\n"
        );
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
        let id = queued_id(&c.reply());
        let (_, shown) = ringmx(tmp.path(), &["queue", "show", &id]);
        assert!(
            shown.starts_with(
                "Received: from client.example (unknown [127.0.0.1])\r\n\tby mx.example.test (ringmx) with SMTP"
            ),
            "{shown}"
        );
        // The hour's allowance is per identity and shared by every connection.
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        assert!(c.cmd("MAIL FROM:<a@remote.example> SIZE=999999999").starts_with("552 5.3.4"));
        c.cmd("MAIL FROM:<a@remote.example>");
        assert!(c.cmd("RCPT TO:<e@example.test>").starts_with("451 4.7.1"), "{driver}");
        activity_shows(
            tmp.path(),
            &[
                &["refused session=", "reason=\"EHLO block\" rule=ylmf-pc"],
                &["rejected session=", "step=mail rule=spoofing from=<me@example.test>"],
                &["rejected session=", "step=mail rule=size from=<a@remote.example>", "reply=\"552 5.3.4 "],
                &["rejected session=", "step=rcpt rule=rate", "rcpt=<d@example.test>", "reply=\"451 4.7.1 "],
            ],
        );
    }
}

/// Waits until the activity log has a line holding every needle of each group (refusals
/// and rejections are logged with their rule).
fn activity_shows(dir: &std::path::Path, lines: &[&[&str]]) {
    let text = || std::fs::read_to_string(dir.join("data/log/activity.log")).unwrap_or_default();
    let has = |t: &str, needles: &[&str]| t.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(eventually(Duration::from_secs(20), || lines.iter().all(|n| has(&text(), n))), "{lines:?} in\n{}", text());
}

/// An authoritative server on 127.0.0.1 (UDP) for the test's zones, running until the
/// process ends.
fn dns_server() -> SocketAddr {
    dns::serve(vec![
        zone(
            "test.",
            &[
                ("9.2.0.192.bl.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))),
                ("good.test.", RData::MX(MX::new(10, name("mx.good.test.")))),
                ("mx.good.test.", RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))),
                ("aonly.test.", RData::A(A(Ipv4Addr::new(192, 0, 2, 2)))),
                ("host.test.", RData::A(A(Ipv4Addr::new(192, 0, 2, 10)))),
            ],
        ),
        zone("2.0.192.in-addr.arpa.", &[("10.2.0.192.in-addr.arpa.", RData::PTR(PTR(name("host.test."))))]),
    ])
}

#[test]
fn dns_service_answers_and_caches() {
    let addr = dns_server();
    let settings = DnsSettings {
        servers: vec![addr],
        timeout: Duration::from_secs(2),
        min_ttl: Duration::from_secs(30),
        max_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(60),
    };
    let service = std::sync::Arc::new(DnsService::start().unwrap());
    let s = Dns::new(service.clone(), settings.clone());
    let q = |q: DnsQuery| s.resolve_blocking(q);
    assert_eq!(
        q(DnsQuery::Dnsbl { name: "9.2.0.192.bl.test.".into(), server: None }),
        DnsAnswer::Found(vec!["127.0.0.2".into()])
    );
    assert_eq!(q(DnsQuery::Dnsbl { name: "10.2.0.192.bl.test.".into(), server: None }), DnsAnswer::NotFound);
    assert_eq!(q(DnsQuery::Ptr("192.0.2.10".parse().unwrap())), DnsAnswer::Found(vec!["host.test.".into()]));
    assert_eq!(q(DnsQuery::Ptr("192.0.2.11".parse().unwrap())), DnsAnswer::NotFound);
    assert_eq!(q(DnsQuery::MailDomain("good.test".into())), DnsAnswer::Found(vec!["mx.good.test.".into()]));
    assert_eq!(q(DnsQuery::MailDomain("aonly.test".into())), DnsAnswer::Found(vec!["192.0.2.2".into()]));
    assert_eq!(q(DnsQuery::MailDomain("nowhere.test".into())), DnsAnswer::NotFound);
    // A zone the server does not serve answers REFUSED: not an answer either way.
    assert_eq!(q(DnsQuery::MailDomain("elsewhere.example".into())), DnsAnswer::TempFail);
    // Cached: answered on the calling thread, at once.
    let (tx, rx) = std::sync::mpsc::channel();
    s.submit(
        DnsQuery::MailDomain("nowhere.test".into()),
        Box::new(move |a| tx.send((std::thread::current().id(), a)).unwrap()),
    );
    assert_eq!(rx.try_recv().unwrap(), (std::thread::current().id(), DnsAnswer::NotFound));
    // Delivery's questions go to the same service: MX records with their preference, a
    // host's addresses, and NXDOMAIN told apart from "no such records".
    assert_eq!(q(DnsQuery::Mx("good.test".into())), DnsAnswer::Found(vec!["10 mx.good.test.".into()]));
    assert_eq!(q(DnsQuery::Mx("aonly.test".into())), DnsAnswer::NotFound);
    assert_eq!(q(DnsQuery::Mx("nowhere.test".into())), DnsAnswer::NoSuchName);
    assert_eq!(q(DnsQuery::Addrs("mx.good.test".into())), DnsAnswer::Found(vec!["192.0.2.1".into()]));
    // Another part with the same settings shares the cache: answered at once.
    let delivery = Dns::new(service.clone(), settings.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    delivery.submit(
        DnsQuery::Mx("good.test".into()),
        Box::new(move |a| tx.send((std::thread::current().id(), a)).unwrap()),
    );
    let found = DnsAnswer::Found(vec!["10 mx.good.test.".into()]);
    assert_eq!(rx.try_recv().unwrap(), (std::thread::current().id(), found));
    // A part with other settings (another time-out) asks for itself.
    let other = Dns::new(service, DnsSettings { timeout: Duration::from_secs(3), ..settings });
    let (tx, rx) = std::sync::mpsc::channel();
    other.submit(
        DnsQuery::Mx("good.test".into()),
        Box::new(move |a| tx.send((std::thread::current().id(), a)).unwrap()),
    );
    let (thread, answer) = rx.recv().unwrap();
    assert_ne!(thread, std::thread::current().id(), "not cached for these settings: the service thread answers");
    assert_eq!(answer, DnsAnswer::Found(vec!["10 mx.good.test.".into()]));
}

#[test]
fn dnsbl_ptr_and_sender_domain_over_tcp() {
    let addr = dns_server();
    // A name server that never answers, for the time-out case.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    for driver in DRIVERS {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = format!(
            "{PROXY_LISTENER}[policy]\nptr_check = \"reject\"\nsender_domain_resolves = true\n\
             [policy.dns]\nservers = [\"{addr}\"]\ntimeout = \"2s\"\n\
             [[policy.dnsbl]]\nzone = \"bl.test\"\n[[policy.dnsbl]]\nzone = \"off.test\"\nenabled = false\n"
        );
        let srv = start(tmp.path(), driver, &cfg);
        let (mut c, g) = Client::connect_proxied(srv.addr(), "192.0.2.9");
        assert_eq!(g, "554 5.7.1 Error: client 192.0.2.9 is listed by bl.test\r\n", "{driver}");
        assert_eq!(c.reply(), "");
        let (mut c, g) = Client::connect_proxied(srv.addr(), "192.0.2.10");
        assert!(g.starts_with("220 "), "{driver}: {g}");
        c.cmd("EHLO host.test");
        assert_eq!(c.cmd("MAIL FROM:<a@good.test>"), "250 2.1.0 Ok\r\n", "{driver}");
        c.cmd("RSET");
        assert_eq!(c.cmd("MAIL FROM:<a@aonly.test>"), "250 2.1.0 Ok\r\n");
        c.cmd("RSET");
        assert_eq!(
            c.cmd("MAIL FROM:<a@nowhere.test>"),
            "550 5.1.8 Error: sender address rejected: domain not found\r\n"
        );
        assert_eq!(c.cmd("MAIL FROM:<a@example.test>"), "250 2.1.0 Ok\r\n", "local domains need no lookup");
        c.cmd("RSET");
        assert_eq!(c.cmd("MAIL FROM:<>"), "250 2.1.0 Ok\r\n");
        let (mut c, _) = Client::connect_proxied(srv.addr(), "192.0.2.11");
        c.cmd("EHLO nameless");
        assert_eq!(c.cmd("MAIL FROM:<a@good.test>"), "550 5.7.25 Error: client 192.0.2.11 has no PTR record\r\n");
        activity_shows(
            tmp.path(),
            &[
                &["refused session=", "client=192.0.2.9", "reason=DNSBL rule=bl.test"],
                &["rejected session=", "client=192.0.2.10", "step=mail rule=sender_domain from=<a@nowhere.test>"],
                &["rejected session=", "client=192.0.2.11", "step=mail rule=ptr from=<a@good.test>", "5.7.25"],
            ],
        );
        // Private addresses are not checked.
        let (mut c, _) = Client::connect_proxied(srv.addr(), "10.1.2.3");
        c.cmd("EHLO lan");
        assert_eq!(c.cmd("MAIL FROM:<a@good.test>"), "250 2.1.0 Ok\r\n");
        drop(srv);

        // Tag mode: a header for the spam filter; a silent DNS server: 451 4.4.3.
        let tmp = tempfile::tempdir().unwrap();
        let cfg = format!(
            "{PROXY_LISTENER}[policy]\nptr_check = \"tag\"\nptr_header = \"X-PTR-Missing\"\n\
             [policy.dns]\nservers = [\"{addr}\"]\ntimeout = \"2s\"\n"
        );
        let srv = start(tmp.path(), driver, &cfg);
        let (mut c, _) = Client::connect_proxied(srv.addr(), "192.0.2.11");
        c.cmd("EHLO nameless");
        assert_eq!(c.cmd("MAIL FROM:<a@remote.example>"), "250 2.1.0 Ok\r\n");
        c.cmd("RCPT TO:<x@example.test>");
        c.cmd("DATA");
        c.send(b"Subject: t\r\n\r\nx\r\n.\r\n");
        let id = queued_id(&c.reply());
        let (_, shown) = ringmx(tmp.path(), &["queue", "show", &id]);
        assert!(shown.contains("\r\nX-PTR-Missing: none (client 192.0.2.11 has no PTR record)\r\n"), "{shown}");
        drop(srv);
        let tmp = tempfile::tempdir().unwrap();
        let cfg = format!(
            "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\n[policy]\nsender_domain_resolves = true\n\
             [policy.dns]\nservers = [\"{silent_addr}\"]\ntimeout = \"300ms\"\n"
        );
        let srv = start(tmp.path(), driver, &cfg);
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO c");
        assert_eq!(
            c.cmd("MAIL FROM:<a@slow.example>"),
            "451 4.4.3 Error: sender address rejected: cannot resolve the domain, try again later\r\n",
            "{driver}"
        );
    }
}

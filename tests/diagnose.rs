//! `ringmx diagnose` on a good setup (exit 0: listeners answer, not an open relay, the MX
//! points here, the queue shown) and on a broken one (exit 1: an open relay, a domain
//! without postmaster, an MX pointing elsewhere; with the server stopped, listeners that
//! do not answer; a broken file). DNS is an in-process hickory server on loopback.

mod common;
#[path = "common/dns.rs"]
mod dns;

use common::*;
use dns::{name, zone};
use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::rdata::{A, MX, PTR};
use std::net::Ipv4Addr;
use std::process::Command;

/// The address this host sends from (as diagnose finds it), when it has a route out.
fn outbound() -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:25").ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(a) => Some(a),
        _ => None,
    }
}

/// The zones: good.example's MX is this host, broken.example's is elsewhere; the outbound
/// address has a PTR that resolves back to it (diagnose checks it when it is public).
fn dns_server() -> std::net::SocketAddr {
    let mut zones = vec![zone(
        "example.",
        &[
            ("good.example.", RData::MX(MX::new(10, name("mx.good.example.")))),
            ("mx.good.example.", RData::A(A(Ipv4Addr::new(127, 0, 0, 1)))),
            ("broken.example.", RData::MX(MX::new(10, name("mx.elsewhere.example.")))),
            ("mx.elsewhere.example.", RData::A(A(Ipv4Addr::new(192, 0, 2, 55)))),
            ("out.good.example.", RData::A(A(outbound().unwrap_or(Ipv4Addr::LOCALHOST)))),
        ],
    )];
    if let Some(ip) = outbound() {
        let [a, b, c, d] = ip.octets();
        let origin = format!("{c}.{b}.{a}.in-addr.arpa.");
        let owner = format!("{d}.{origin}");
        zones.push(zone(&origin, &[(&owner, RData::PTR(PTR(name("out.good.example."))))]));
    }
    dns::serve(zones)
}

/// `diagnose --json` against `dir`'s configuration: its exit code and findings.
fn diagnose(dir: &std::path::Path) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["diagnose", "--json", "--config"])
        .arg(dir.join("ringmx.toml"))
        .output()
        .expect("run ringmx diagnose");
    let v =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v)
}

/// The findings of `check` with `severity`, as text.
fn found(v: &serde_json::Value, check: &str, severity: &str) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check && f["severity"] == severity)
        .map(|f| f["text"].as_str().unwrap().to_string())
        .collect()
}

fn directory(dir: &std::path::Path, domain: &str) {
    let d = dir.join("data/directory");
    std::fs::create_dir_all(&d).unwrap();
    let data = serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [{"name": domain, "postoffice": "po"}],
        "mailboxes": [{"postoffice": "po", "name": "alice", "addresses": [format!("alice@{domain}")]}]
    });
    std::fs::write(d.join("directory.json"), serde_json::to_string(&data).unwrap()).unwrap();
}

/// A server on one loopback listener, resolving with `dns`, plus `extra`; its
/// configuration then names the port it got (it was started on port 0), for diagnose.
fn serve(dir: &std::path::Path, driver: &str, dns: std::net::SocketAddr, extra: &str) -> (Server, u16) {
    let cfg = format!(
        "local_domains = []\n[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\n\
         [dns]\nservers = [\"{dns}\"]\ntimeout = \"2s\"\n{extra}"
    );
    let srv = start(dir, driver, &cfg);
    let port = srv.addr().port();
    let text = std::fs::read_to_string(dir.join("ringmx.toml")).unwrap().replace("port = 0", &format!("port = {port}"));
    std::fs::write(dir.join("ringmx.toml"), text).unwrap();
    (srv, port)
}

#[test]
fn a_good_setup_passes() {
    let dns = dns_server();
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), "good.example");
    let (srv, port) = serve(dir.path(), "uring", dns, "[delivery]\npostmaster = \"alice@good.example\"\n");
    let (code, v) = diagnose(dir.path());
    assert_eq!((code, &v["problems"], &v["warnings"]), (0, &0.into(), &0.into()), "{v:#}");
    assert!(found(&v, "listener", "info")[0].starts_with(&format!("127.0.0.1:{port}: 220 ")), "{v:#}");
    assert!(found(&v, "relay", "info")[0].starts_with("not an open relay: 16 relay attempts"), "{v:#}");
    assert!(found(&v, "mx", "info")[0].starts_with("good.example: MX mx.good.example points here"), "{v:#}");
    assert!(found(&v, "queue", "info")[0].starts_with("0 message(s) queued"), "{v:#}");
    let ptr = &found(&v, "ptr", "info")[0];
    assert!(ptr.contains("forward-confirmed") || ptr.contains("is private") || ptr.contains("no route"), "{ptr}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_broken_setup_is_reported() {
    let dns = dns_server();
    let dir = tempfile::tempdir().unwrap();
    directory(dir.path(), "broken.example");
    // Any local sender may relay: anyone can forge one, so this is an open relay.
    let (srv, _) = serve(dir.path(), "epoll", dns, "[relay]\nlocal_senders = true\n");
    let (code, v) = diagnose(dir.path());
    assert_eq!(code, 1, "{v:#}");
    let open = found(&v, "relay", "problem");
    assert!(
        open.iter()
            .any(|t| t
                .starts_with("OPEN RELAY: <ringmx-relay-test@relay-test.invalid> from <postmaster@broken.example>")),
        "{v:#}"
    );
    assert!(
        found(&v, "postmaster", "warning")[0]
            .starts_with("broken.example: mail to postmaster@broken.example has nowhere to go")
    );
    let mx = found(&v, "mx", "warning");
    assert!(
        mx[0].starts_with(
            "broken.example: MX mx.elsewhere.example does not point at this host: mx.elsewhere.example (192.0.2.55)"
        ),
        "{v:#}"
    );
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");

    // Stopped: nothing answers.
    let (code, v) = diagnose(dir.path());
    assert_eq!(code, 1);
    assert!(found(&v, "listener", "problem")[0].contains("nothing answers"), "{v:#}");
    assert_eq!(found(&v, "queue", "info"), ["the server is not running: queue state not shown"]);

    // A broken file: every problem, nothing else.
    std::fs::write(dir.path().join("ringmx.toml"), "hostname = \"bad name\"\n[[listener]]\nport = 25\nbind = []\n")
        .unwrap();
    let (code, v) = diagnose(dir.path());
    assert_eq!((code, v["problems"].as_u64()), (1, Some(2)), "{v:#}");
}

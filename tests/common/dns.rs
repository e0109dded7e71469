//! An authoritative DNS server (hickory-server) on 127.0.0.1 for a test's zones. Included
//! with `#[path = "common/dns.rs"] mod dns;` by the tests that need one.
#![allow(dead_code)]

use hickory_server::Server as DnsServer;
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use std::net::SocketAddr;
use std::sync::Arc;

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A zone `origin` with an SOA and `records` (owner name, data), TTL 60.
pub fn zone(origin: &str, records: &[(&str, RData)]) -> (LowerName, Arc<dyn ZoneHandler>) {
    let mut z: InMemoryZoneHandler = InMemoryZoneHandler::empty(name(origin), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(name("ns.test."), name("hostmaster.test."), 1, 3600, 600, 86400, 60);
    assert!(z.upsert_mut(Record::from_rdata(name(origin), 60, RData::SOA(soa)), 1));
    for (n, r) in records {
        assert!(z.upsert_mut(Record::from_rdata(name(n), 60, r.clone()), 1), "{n}");
    }
    (LowerName::from(name(origin)), Arc::new(z))
}

/// Serves `zones` over UDP on 127.0.0.1 until the process ends; the server's address.
pub fn serve(zones: Vec<(LowerName, Arc<dyn ZoneHandler>)>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            tx.send(socket.local_addr().unwrap()).unwrap();
            let mut catalog = Catalog::new();
            for (origin, handler) in zones {
                catalog.upsert(origin, vec![handler]);
            }
            let mut server = DnsServer::new(catalog);
            server.register_socket(socket);
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// A TXT record of `s`, split into the 255-octet strings DNS allows.
pub fn long_txt(s: &str) -> RData {
    use hickory_server::proto::rr::rdata::TXT;
    RData::TXT(TXT::new(s.as_bytes().chunks(255).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect()))
}

/// A new RSA key made by `ringmx dkim keygen DOMAIN --selector SELECTOR` into `dir`: its
/// file and the TXT record's text (its strings joined).
pub fn rsa_key(bin: &str, dir: &std::path::Path, domain: &str, selector: &str) -> (std::path::PathBuf, String) {
    let path = dir.join(format!("{selector}.{domain}.pem"));
    let out = std::process::Command::new(bin)
        .args(["dkim", "keygen", domain, "--selector", selector, "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let txt = String::from_utf8(out.stdout).unwrap().lines().next().unwrap().split('"').skip(1).step_by(2).collect();
    (path, txt)
}

/// mail-auth's verifier, asking only the DNS server at `ns`.
pub fn authenticator(ns: SocketAddr) -> mail_auth::MessageAuthenticator {
    let mut opts = hickory_resolver::config::ResolverOpts::default();
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    let mut server = hickory_resolver::config::NameServerConfig::udp_and_tcp(ns.ip());
    for c in &mut server.connections {
        c.port = ns.port();
    }
    let conf = hickory_resolver::config::ResolverConfig::from_name_servers(vec![server]);
    mail_auth::MessageAuthenticator::new(conf, opts).unwrap()
}

/// Another implementation's ARC verdict on `text`: dkimpy's `arc_verify` (Debian's
/// python3-dkim, installed by tests/run.sh), `txt` the only DNS answer, for the name
/// `key_name`; its `cv` and why, e.g. "pass …" or "fail …". `dir` holds the message file.
pub fn dkimpy_arc(dir: &std::path::Path, key_name: &str, txt: &str, text: &str) -> String {
    let f = dir.join("arc-verify.eml");
    std::fs::write(&f, text).unwrap();
    let script = "import sys, dkim\n\
                  txt, name = sys.argv[2].encode(), sys.argv[3].encode()\n\
                  dns = lambda n, timeout=5: txt if n.rstrip(b'.') == name else None\n\
                  cv, _, why = dkim.arc_verify(open(sys.argv[1], 'rb').read(), dnsfunc=dns)\n\
                  print(cv.decode(), why)\n";
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&f)
        .arg(txt)
        .arg(key_name)
        .output()
        .expect("Debian's python3 with python3-dkim (tests/run.sh installs it)");
    let verdict = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{verdict}{}", String::from_utf8_lossy(&out.stderr));
    verdict.trim().to_string()
}

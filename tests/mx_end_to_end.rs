//! MX routing through a whole server: the ringmx process asks a real DNS server
//! (hickory-server serving a zone in-process on 127.0.0.1, UDP) and delivers to what it
//! finds, on `[delivery.dns] remote_port` (the loadgen sink). RFC 5321 §5.1: an MX record
//! is followed; no MX means the domain's own address; a null MX (RFC 7505) fails at once
//! with 5.1.10 and the sender gets the report.

mod common;

use common::*;
use hickory_server::Server as DnsServer;
use hickory_server::proto::rr::rdata::{A, MX, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn zone() -> InMemoryZoneHandler {
    let mut z = InMemoryZoneHandler::empty(name("test."), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(name("ns.test."), name("hostmaster.test."), 1, 3600, 600, 86400, 60);
    let mut add = |n: &str, r: RData| assert!(z.upsert_mut(Record::from_rdata(name(n), 60, r), 1), "{n}");
    add("test.", RData::SOA(soa));
    add("far.test.", RData::MX(MX::new(10, name("mx1.far.test."))));
    add("mx1.far.test.", RData::A(A(Ipv4Addr::LOCALHOST)));
    add("implicit.test.", RData::A(A(Ipv4Addr::LOCALHOST)));
    add("nullmx.test.", RData::MX(MX::new(0, Name::root())));
    z
}

/// Serves the zone on 127.0.0.1 from a thread of its own until the returned sender drops.
fn start_dns() -> (SocketAddr, std::sync::mpsc::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(socket.local_addr().unwrap()).unwrap();
            let mut catalog = Catalog::new();
            let handler: Arc<dyn ZoneHandler> = Arc::new(zone());
            catalog.upsert(LowerName::from(name("test.")), vec![handler]);
            let mut server = DnsServer::new(catalog);
            server.register_socket(socket);
            // Until the test is done (the sender dropped), checked without blocking the runtime.
            while matches!(stop_rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = server.shutdown_gracefully().await;
        });
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

#[test]
fn mx_implicit_and_null_mx_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (dns, _dns_stop) = start_dns();
    let sink = Sink::start(dir.path(), "127.0.0.1:0", &[]);
    alice_directory(dir.path());
    let config = format!(
        "[relay]\nprivileged = [\"127.0.0.1\"]\n[delivery.dns]\nservers = [\"{dns}\"]\nremote_port = {}\n\
         [delivery.retry]\nintervals = [\"1s\"]\n[delivery.delay_notice]\nmode = \"off\"\n[delivery.remote]\ntls = \"off\"\n",
        sink.addr.port()
    );
    let srv = start_plain(dir.path(), "uring", &config);
    let (mut c, _) = Client::connect(srv.addr());
    c.cmd("EHLO c");
    queued_id(&c.message(
        "alice@example.net",
        &["u@far.test", "v@implicit.test", "w@nullmx.test"],
        "Subject: mx\r\n\r\nx\r\n",
    ));
    let new = dir.path().join("data/mailboxes/po/alice/Maildir/new");
    assert!(eventually(Duration::from_secs(20), || std::fs::read_dir(&new).map(|d| d.count() == 1).unwrap_or(false)));
    let f = std::fs::read_dir(&new).unwrap().next().unwrap().unwrap().path();
    let report = std::fs::read_to_string(f).unwrap();
    assert!(
        report.contains("Final-Recipient: rfc822; w@nullmx.test\n") && report.contains("Status: 5.1.10\n"),
        "{report}"
    );
    assert!(!report.contains("far.test") && !report.contains("implicit.test"), "{report}");
    assert!(eventually(Duration::from_secs(20), || queue(dir.path()).is_empty()), "{:?}", queue(dir.path()));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    let counts = sink.stop();
    // One job per route: the MX host and the implicit one, both the sink.
    assert_eq!((counts["messages"].as_u64(), counts["recipients"].as_u64()), (Some(2), Some(2)), "{counts}");
}

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

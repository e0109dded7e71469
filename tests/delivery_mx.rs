//! The MX plan against a real DNS server: hickory-server serving a zone in-process on
//! 127.0.0.1:0 (UDP), queried by the production resolver.

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use ringmx::delivery::mx::{DnsConfig, MxError, MxResolver};
use ringmx::dns::DnsService;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn zone() -> InMemoryZoneHandler {
    let origin = name("test.");
    let mut z = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(name("ns.test."), name("hostmaster.test."), 1, 3600, 600, 86400, 60);
    let mut add = |n: &str, r: RData| assert!(z.upsert_mut(Record::from_rdata(name(n), 60, r), 1), "{n}");
    add("test.", RData::SOA(soa));
    for (pref, x) in [(10, "a.multi.test."), (10, "b.multi.test."), (20, "c.multi.test."), (30, "gone.multi.test.")] {
        add("multi.test.", RData::MX(MX::new(pref, name(x))));
    }
    add("a.multi.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 2))));
    add("b.multi.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 3))));
    add("c.multi.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 4))));
    add("c.multi.test.", RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
    add("nullmx.test.", RData::MX(MX::new(0, Name::root())));
    add("implicit.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 5))));
    add("implicit.test.", RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
    add("cname.test.", RData::MX(MX::new(10, name("alias.cname.test."))));
    add("alias.cname.test.", RData::CNAME(CNAME(name("real.test."))));
    add("real.test.", RData::A(A(Ipv4Addr::new(127, 0, 0, 9))));
    add("nomail.test.", RData::TXT(TXT::new(vec!["v=spf1 -all".into()])));
    z
}

/// Runs `f` with a resolver pointed at the in-process server.
fn with_dns<F: AsyncFnOnce(MxResolver)>(f: F) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = Arc::new(zone());
        catalog.upsert(LowerName::from(name("test.")), vec![handler]);
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        let cfg = DnsConfig {
            servers: vec![addr],
            timeout: Duration::from_secs(2),
            remote_port: 2525,
            ..DnsConfig::default()
        };
        f(MxResolver::new(&cfg, Arc::new(DnsService::start().unwrap()))).await;
        server.shutdown_gracefully().await.unwrap();
    });
}

#[test]
fn mx_by_preference_with_addresses_and_fallbacks() {
    with_dns(async |r: MxResolver| {
        let plan = r.plan("multi.test", 7).await.unwrap();
        assert!(!plan.implicit);
        let hosts: Vec<(u16, &str)> = plan.hosts.iter().map(|h| (h.preference, h.name.as_str())).collect();
        assert_eq!(hosts.len(), 3, "the host without an address is left out: {hosts:?}");
        assert_eq!(hosts.iter().map(|h| h.0).collect::<Vec<_>>(), vec![10, 10, 20]);
        let mut first_two: Vec<&str> = hosts[..2].iter().map(|h| h.1).collect();
        first_two.sort();
        assert_eq!(first_two, vec!["a.multi.test", "b.multi.test"]);
        assert_eq!(
            plan.hosts[2].addrs,
            vec!["[::1]:2525".parse::<SocketAddr>().unwrap(), "127.0.0.4:2525".parse().unwrap()],
            "IPv6 then IPv4, on the configured port"
        );
        assert_eq!(plan.addrs().count(), 4);
        // The same seed gives the same order.
        assert_eq!(r.plan("multi.test", 7).await.unwrap(), plan);

        // No MX: the domain's own addresses.
        let plan = r.plan("implicit.test", 0).await.unwrap();
        assert!(plan.implicit);
        assert_eq!(plan.hosts[0].addrs, vec!["[::1]:2525".parse().unwrap(), "127.0.0.5:2525".parse().unwrap()]);

        // An MX pointing at a CNAME: followed.
        let plan = r.plan("cname.test", 0).await.unwrap();
        assert_eq!(plan.hosts[0].addrs, vec!["127.0.0.9:2525".parse().unwrap()]);

        // Null MX, NXDOMAIN, no mail host: permanent.
        let e = r.plan("nullmx.test", 0).await.unwrap_err();
        assert_eq!((e.clone(), e.status(), e.is_permanent()), (MxError::NullMx("nullmx.test".into()), "5.1.10", true));
        let e = r.plan("nosuch.test", 0).await.unwrap_err();
        assert_eq!((e.status(), e.is_permanent()), ("5.1.2", true), "{e}");
        let e = r.plan("nomail.test", 0).await.unwrap_err();
        assert_eq!(e, MxError::NoMailHost("nomail.test".into()));

        // A zone the server does not serve (REFUSED): temporary.
        let e = r.plan("elsewhere.example", 0).await.unwrap_err();
        assert_eq!((e.status(), e.is_permanent()), ("4.4.3", false), "{e}");

        // Address literals need no DNS.
        let plan = r.plan("[127.0.0.1]", 0).await.unwrap();
        assert_eq!(plan.hosts[0].addrs, vec!["127.0.0.1:2525".parse().unwrap()]);
    });
}

#[test]
fn a_silent_name_server_is_a_temporary_failure() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // A UDP socket that never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cfg = DnsConfig {
            servers: vec![silent.local_addr().unwrap()],
            timeout: Duration::from_millis(200),
            remote_port: 25,
            ..DnsConfig::default()
        };
        let r = MxResolver::new(&cfg, Arc::new(DnsService::start().unwrap()));
        let e = r.plan("multi.test", 0).await.unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert_eq!(e.status(), "4.4.3");
    });
}

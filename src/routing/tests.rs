//! Routing on literal vectors: the smart-host table, where each kind of recipient goes,
//! and the route as a grouping key.

use super::*;
use crate::delivery::client::AuthMechanism;

fn sh(host: &str) -> SmartHostConfig {
    SmartHostConfig { host: host.into(), port: 587, auth: None }
}

#[test]
fn routing_table() {
    let mx = |d: &str| Route::Mx(d.into());
    let smart = |h: &str| Route::SmartHost { host: h.into(), port: 587, auth: None };
    let mut cfg = RoutingConfig::default();
    assert_eq!(route("Example.ORG.", &cfg), mx("example.org"));
    cfg.domain_smart_hosts.insert("partner.test".into(), sh("relay.partner.test"));
    assert_eq!(route("partner.test", &cfg), smart("relay.partner.test"));
    assert_eq!(route("other.test", &cfg), mx("other.test"));
    cfg.smart_host = Some(sh("relay.isp.test"));
    assert_eq!(route("partner.test", &cfg), smart("relay.isp.test"), "global wins by default");
    assert_eq!(route("other.test", &cfg), smart("relay.isp.test"));
    cfg.domain_smart_host_priority = true;
    assert_eq!(route("partner.test", &cfg), smart("relay.partner.test"));
    assert_eq!(route("other.test", &cfg), smart("relay.isp.test"));
    let t: RoutingConfig = toml::from_str(
        "domain_smart_host_priority = true\n[smart_host]\nhost = \"relay\"\nauth = { user = \"u\", password = \"p\" }\n[domain_smart_hosts.\"a.test\"]\nhost = \"r2\"\nport = 2525\n",
    )
    .unwrap();
    assert_eq!(t.smart_host.as_ref().unwrap().port, 25);
    assert_eq!(t.domain_smart_hosts["a.test"].port, 2525);
}

fn directory() -> Directory {
    let data = serde_json::from_value(serde_json::json!({
        "postoffices": [{"name": "po"}],
        "domains": [
            {"name": "example.net", "postoffice": "po"},
            {"name": "backup.example", "postoffice": "po", "smart_host": "[2001:db8::25]:2525"}
        ],
        "mailboxes": [{"postoffice": "po", "name": "alice", "addresses": ["alice@example.net"]}]
    }))
    .unwrap();
    Directory::build(data).unwrap()
}

#[test]
fn where_each_recipient_goes() {
    let dir = directory();
    let local: HashSet<String> = ["example.test".to_string()].into_iter().collect();
    let mut cfg = RoutingConfig::default();
    assert_eq!(route_of(&dir, "alice@example.net", &cfg, &local), Where::Local);
    assert_eq!(
        route_of(&dir, "nobody@example.net", &cfg, &local),
        Where::Local,
        "the directory refuses it, not routing"
    );
    assert_eq!(
        route_of(&dir, "x@backup.example", &cfg, &local),
        Where::Remote(Route::SmartHost { host: "2001:db8::25".into(), port: 2525, auth: None }),
        "a hosted domain with a smart host is relayed (backup MX)"
    );
    assert_eq!(route_of(&dir, "x@example.test", &cfg, &local), Where::Held, "our accept-all domain: its MX is us");
    assert_eq!(route_of(&dir, "x@Remote.Example", &cfg, &local), Where::Remote(Route::Mx("remote.example".into())));
    cfg.smart_host = Some(sh("relay.isp.test"));
    assert_eq!(
        route_of(&dir, "x@example.test", &cfg, &local),
        Where::Remote(Route::SmartHost { host: "relay.isp.test".into(), port: 587, auth: None }),
        "an accept-all domain goes to the smart host when there is one"
    );
    assert_eq!(split_host_port("relay:25"), Some(("relay".into(), 25)));
    assert_eq!(split_host_port("relay"), None);
}

/// Recipients are grouped by route: equal routes sort together and hash alike, different
/// logins to one host are different routes, and a route's Debug never shows a password.
#[test]
fn the_route_is_a_key_without_secrets() {
    let login = |user: &str, password: &str| Credentials {
        user: user.into(),
        password: password.into(),
        mechanism: Some(AuthMechanism::Plain),
    };
    let a = Route::SmartHost { host: "relay".into(), port: 587, auth: Some(login("u", "secret-1")) };
    let b = Route::SmartHost { host: "relay".into(), port: 587, auth: Some(login("u", "secret-2")) };
    let c = Route::Mx("remote.example".into());
    let mut v = [c.clone(), a.clone(), b.clone(), a.clone(), c.clone()];
    v.sort();
    let groups = v.iter().fold(Vec::<(&Route, usize)>::new(), |mut g, r| {
        match g.last_mut() {
            Some((last, n)) if *last == r => *n += 1,
            _ => g.push((r, 1)),
        }
        g
    });
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(groups.iter().map(|g| g.1).sum::<usize>(), 5);
    let set: std::collections::HashSet<&Route> = v.iter().collect();
    assert_eq!(set.len(), 3);
    for r in [&a, &b] {
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("relay") && shown.contains("\"u\""), "{shown}");
    }
}

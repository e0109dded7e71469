use super::*;
use std::collections::HashMap;

fn mailbox(po: &str, name: &str, addresses: &[&str]) -> Mailbox {
    Mailbox {
        postoffice: po.into(),
        name: name.into(),
        password_hash: None,
        quota_bytes: 0,
        disabled: false,
        addresses: addresses.iter().map(|s| s.to_string()).collect(),
        redirect: vec![],
        redirect_keep_copy: false,
        autoresponder: None,
        delivery_event: None,
    }
}

fn domain(name: &str, po: &str) -> Domain {
    Domain {
        name: name.into(),
        postoffice: po.into(),
        enabled: true,
        abuse: None,
        postmaster: None,
        catch_all: None,
        smart_host: None,
        sender_blacklist: vec![],
    }
}

fn group(address: &str, members: &[&str]) -> Group {
    Group { address: address.into(), members: members.iter().map(|s| s.to_string()).collect() }
}

/// A directory with one of everything `check_recipient` distinguishes.
fn fixture() -> DirectoryData {
    let mut full = mailbox("corp", "full", &["full@example.test"]);
    full.quota_bytes = 1000;
    let mut off = mailbox("corp", "off", &["off@example.test"]);
    off.disabled = true;
    let mut catch = domain("catch.test", "corp");
    catch.catch_all = Some("alice@example.test".into());
    let mut disabled = domain("disabled.test", "corp");
    disabled.enabled = false;
    let mut relayed = domain("backup.test", "corp");
    relayed.smart_host = Some("192.0.2.25:25".into());
    let mut main = domain("example.test", "corp");
    main.sender_blacklist = vec!["spam.test".into()];
    main.postmaster = None;
    let mut pm = domain("pm.test", "corp");
    pm.postmaster = Some("bob@example.test".into());
    pm.abuse = Some("bob@example.test".into());
    DirectoryData {
        version: 1,
        default_postoffice: Some("corp".into()),
        postoffices: vec![Postoffice::new("corp".into(), false), Postoffice::new("internal".into(), true)],
        domains: vec![main, catch, disabled, relayed, pm, domain("internal.test", "internal")],
        mailboxes: vec![
            mailbox("corp", "alice", &["alice@example.test", "a@catch.test"]),
            mailbox("corp", "bob", &["bob@example.test"]),
            full,
            off,
            mailbox("corp", "postmaster", &["hostmaster@example.test"]),
        ],
        groups: vec![group("team@example.test", &["alice@example.test", "bob@example.test"])],
        blocked: vec!["gone@example.test".into()],
        lists: vec![
            serde_json::from_value(serde_json::json!({
                "address": "dev@example.test", "members": [{"address": "alice@example.test"}],
                "moderators": ["mod@remote.test"]
            }))
            .unwrap(),
            serde_json::from_value(serde_json::json!({"address": "old@example.test", "disabled": true})).unwrap(),
        ],
    }
}

struct Usage(HashMap<&'static str, u64>);

impl QuotaView for Usage {
    fn usage_bytes(&self, maildir: &str) -> Option<u64> {
        self.0.get(maildir).copied()
    }
}

/// Every rule of `check_recipient` with its exact reply.
#[test]
fn check_recipient_table() {
    let dir = Directory::build(fixture()).unwrap();
    let usage = Usage(HashMap::from([("corp/full", 1000), ("corp/alice", 5000)]));
    let cases: &[(Option<&str>, &str, bool, &str)] = &[
        // (sender, recipient, catch-alls enabled, expected)
        (Some("x@remote.test"), "alice@example.test", true, "mailbox corp/alice"),
        (Some("x@remote.test"), "ALICE@Example.TEST", true, "mailbox corp/alice"),
        (Some("x@remote.test"), "a@catch.test", true, "mailbox corp/alice"),
        (None, "bob@example.test", true, "mailbox corp/bob"),
        (Some("x@remote.test"), "nobody@example.test", true, "550 5.1.1"),
        (Some("x@remote.test"), "gone@example.test", true, "550 5.1.1"),
        (Some("x@remote.test"), "off@example.test", true, "550 5.2.1"),
        (Some("x@remote.test"), "anyone@disabled.test", true, "550 5.2.1"),
        (Some("x@remote.test"), "full@example.test", true, "552 5.2.2"),
        (Some("x@spam.test"), "alice@example.test", true, "550 5.7.1"),
        (Some("x@SPAM.test"), "bob@example.test", true, "550 5.7.1"),
        (Some("x@sub.spam.test"), "bob@example.test", true, "mailbox corp/bob"),
        (Some("x@remote.test"), "alice@remote.test", true, "not local"),
        (Some("x@remote.test"), "team@example.test", true, "group team@example.test"),
        (Some("x@remote.test"), "whoever@catch.test", true, "catch-all alice@example.test"),
        (Some("x@remote.test"), "whoever@catch.test", false, "550 5.1.1"),
        (Some("x@remote.test"), "anyone@backup.test", true, "relay 192.0.2.25:25"),
        (Some("x@remote.test"), "postmaster@example.test", true, "postmaster mailbox corp/postmaster"),
        (Some("x@remote.test"), "PostMaster@pm.test", true, "postmaster address bob@example.test"),
        (Some("x@remote.test"), "postmaster@internal.test", true, "postmaster unresolved"),
        (Some("x@remote.test"), "postmaster@disabled.test", true, "postmaster mailbox corp/postmaster"),
        (Some("x@spam.test"), "postmaster@example.test", true, "postmaster mailbox corp/postmaster"),
        (Some("x@remote.test"), "postmaster", true, "postmaster mailbox corp/postmaster"),
        (Some("x@remote.test"), "postmaster@backup.test", true, "relay 192.0.2.25:25"),
        (Some("x@remote.test"), "Abuse@pm.test", true, "abuse bob@example.test"),
        (Some("x@remote.test"), "abuse@example.test", true, "550 5.1.1"),
        // Lists: posts from members and moderators (550 5.7.1 for others, and for the null
        // sender); commands, owners and bounces (VERP too) from anyone.
        (Some("Alice@example.test"), "dev@example.test", true, "list dev@example.test"),
        (Some("mod@remote.test"), "dev@example.test", true, "list dev@example.test"),
        (Some("x@remote.test"), "dev@example.test", true, "550 5.7.1"),
        (None, "dev@example.test", true, "550 5.7.1"),
        (Some("x@remote.test"), "dev-request@example.test", true, "list dev@example.test"),
        (Some("x@remote.test"), "dev-owner@example.test", true, "list dev@example.test"),
        (None, "dev-bounces@example.test", true, "list dev@example.test"),
        (None, "dev-bounces+alice=example.test@example.test", true, "list dev@example.test"),
        (None, "dev-request+x@example.test", true, "550 5.1.1"),
        (Some("alice@example.test"), "old@example.test", true, "550 5.2.1"),
    ];
    for &(sender, rcpt, catch_alls, want) in cases {
        let got = match dir.check_recipient_with(sender, rcpt, catch_alls, &usage) {
            RcptVerdict::Accept(RcptTarget::Mailbox { maildir, .. }) => format!("mailbox {maildir}"),
            RcptVerdict::Accept(RcptTarget::Group { address }) => format!("group {address}"),
            RcptVerdict::Accept(RcptTarget::CatchAll { target, .. }) => format!("catch-all {target}"),
            RcptVerdict::Accept(RcptTarget::Relayed { host_port, .. }) => format!("relay {host_port}"),
            RcptVerdict::Accept(RcptTarget::Abuse { to, .. }) => format!("abuse {to}"),
            RcptVerdict::Accept(RcptTarget::Postmaster { route, .. }) => match route {
                PostmasterRoute::Own => "postmaster own".into(),
                PostmasterRoute::Address(a) => format!("postmaster address {a}"),
                PostmasterRoute::Mailbox { maildir, .. } => format!("postmaster mailbox {maildir}"),
                PostmasterRoute::Unresolved => "postmaster unresolved".into(),
            },
            RcptVerdict::Refuse(r) => {
                let reply = r.reply();
                format!("{} {}", reply.code, reply.status)
            }
            RcptVerdict::Accept(RcptTarget::List { list }) => format!("list {}", list.address),
            RcptVerdict::NotLocal => "not local".into(),
        };
        assert_eq!(got, want, "{sender:?} → {rcpt} (catch-alls {catch_alls})");
    }
    // Without usage figures no mailbox is known full.
    assert!(matches!(dir.check_recipient(None, "full@example.test", true), RcptVerdict::Accept(_)));
}

#[test]
fn refusal_replies() {
    let cases = [
        (Refusal::UnknownUser, 550, "5.1.1"),
        (Refusal::Blocked, 550, "5.1.1"),
        (Refusal::MailboxDisabled, 550, "5.2.1"),
        (Refusal::DomainDisabled, 550, "5.2.1"),
        (Refusal::MailboxFull, 552, "5.2.2"),
        (Refusal::SenderBlacklisted, 550, "5.7.1"),
    ];
    for (r, code, status) in cases {
        assert_eq!((r.reply().code, r.reply().status), (code, status), "{r:?}");
    }
    // Blocked and unknown are indistinguishable to the client.
    assert_eq!(Refusal::Blocked.reply(), Refusal::UnknownUser.reply());
}

#[test]
fn local_domains_and_auth() {
    let dir = Directory::build(fixture()).unwrap();
    assert!(dir.is_local_domain("example.test"));
    assert!(dir.is_local_domain("EXAMPLE.Test"));
    assert!(dir.is_local_domain("example.test."));
    assert!(dir.is_local_domain("disabled.test"));
    assert!(!dir.is_local_domain("remote.test"));
    assert!(!dir.is_local_domain(&"a".repeat(300)));
    assert!(dir.domain_requires_auth("internal.test"));
    assert!(!dir.domain_requires_auth("example.test"));
    assert_eq!(dir.mailbox_for_login("alice").unwrap().1, "corp/alice");
    assert_eq!(dir.mailbox_for_login("Bob@Example.test").unwrap().1, "corp/bob");
    assert!(dir.mailbox_for_login("nobody").is_none());
}

fn mbox(maildir: &str, delivered_to: &str) -> Destination {
    Destination::Mailbox { maildir: maildir.into(), delivered_to: delivered_to.into() }
}

fn dests(e: &Expansion) -> Vec<&Destination> {
    e.targets.iter().map(|t| &t.destination).collect()
}

#[test]
fn expand_redirects() {
    let mut data = fixture();
    data.mailboxes[0].redirect = vec!["bob@example.test".into(), "carol@remote.test".into()];
    let dir = Directory::build(data.clone()).unwrap();
    let e = dir.expand("alice@example.test");
    assert_eq!(
        dests(&e),
        [&mbox("corp/bob", "bob@example.test"), &Destination::Remote("carol@remote.test".into())],
        "without keep-copy, no local copy"
    );
    assert!(e.problems.is_empty());

    data.mailboxes[0].redirect_keep_copy = true;
    let dir = Directory::build(data).unwrap();
    let e = dir.expand("Alice@Example.test");
    assert_eq!(
        dests(&e),
        [
            &mbox("corp/bob", "bob@example.test"),
            &Destination::Remote("carol@remote.test".into()),
            &mbox("corp/alice", "alice@example.test"),
        ]
    );
    assert!(e.targets.iter().all(|t| t.original_recipients == ["alice@example.test"] && !t.catch_all));
}

#[test]
fn expand_nested_groups_with_a_loop() {
    let mut data = fixture();
    data.groups = vec![
        group("all@example.test", &["team@example.test", "ops@example.test", "x@remote.test"]),
        group("team@example.test", &["alice@example.test", "ops@example.test"]),
        group("ops@example.test", &["bob@example.test", "all@example.test", "alice@example.test"]),
    ];
    let dir = Directory::build(data).unwrap();
    let e = dir.expand("all@example.test");
    assert_eq!(
        dests(&e),
        [
            &mbox("corp/alice", "alice@example.test"),
            &mbox("corp/bob", "bob@example.test"),
            &Destination::Remote("x@remote.test".into()),
        ]
    );
    assert_eq!(
        e.problems,
        [ExpandProblem::Loop {
            chain: vec![
                "all@example.test".into(),
                "team@example.test".into(),
                "ops@example.test".into(),
                "all@example.test".into()
            ]
        }]
    );
}

#[test]
fn expand_redirect_loop_terminates() {
    let mut data = fixture();
    data.mailboxes[0].redirect = vec!["bob@example.test".into()];
    data.mailboxes[1].redirect = vec!["alice@example.test".into()];
    data.mailboxes[1].redirect_keep_copy = true;
    let dir = Directory::build(data).unwrap();
    let e = dir.expand("alice@example.test");
    assert_eq!(dests(&e), [&mbox("corp/bob", "bob@example.test")]);
    assert!(matches!(&e.problems[..], [ExpandProblem::Loop { chain }] if chain.len() == 3));
}

#[test]
fn expand_catch_all_one_copy() {
    let dir = Directory::build(fixture()).unwrap();
    let e = dir.expand_all(&["x@catch.test", "y@catch.test", "bob@example.test", "X@catch.test"], true);
    assert_eq!(e.targets.len(), 2);
    assert_eq!(e.targets[0].destination, mbox("corp/alice", "alice@example.test"));
    assert!(e.targets[0].catch_all);
    assert_eq!(e.targets[0].original_recipients, ["x@catch.test", "y@catch.test"]);
    assert!(!e.targets[1].catch_all);
    assert!(e.problems.is_empty());

    let e = dir.expand_all(&["x@catch.test"], false);
    assert!(e.targets.is_empty());
    assert_eq!(e.problems, [ExpandProblem::Unknown { address: "x@catch.test".into() }]);
}

#[test]
fn expand_other_destinations() {
    let dir = Directory::build(fixture()).unwrap();
    let e = dir.expand_all(
        &[
            "a@backup.test",
            "postmaster@pm.test",
            "abuse@pm.test",
            "postmaster@example.test",
            "postmaster@internal.test",
            "off@example.test",
            "gone@example.test",
            "u@disabled.test",
            "bob@example.test",
        ],
        true,
    );
    assert_eq!(
        dests(&e),
        [
            &Destination::Relay { host_port: "192.0.2.25:25".into(), address: "a@backup.test".into() },
            &mbox("corp/bob", "bob@example.test"),
            &mbox("corp/postmaster", "postmaster@example.test"),
        ]
    );
    assert_eq!(e.targets[1].original_recipients, ["postmaster@pm.test", "abuse@pm.test", "bob@example.test"]);
    assert_eq!(
        e.problems,
        [
            ExpandProblem::UnresolvedPostmaster { address: "postmaster@internal.test".into() },
            ExpandProblem::Disabled { address: "off@example.test".into() },
            ExpandProblem::Blocked { address: "gone@example.test".into() },
            ExpandProblem::Disabled { address: "u@disabled.test".into() },
        ]
    );
}

#[test]
fn expand_depth_is_bounded() {
    let mut data = fixture();
    data.groups =
        (0..40).map(|i| group(&format!("g{i}@example.test"), &[&format!("g{}@example.test", i + 1)])).collect();
    let dir = Directory::build(data).unwrap();
    let e = dir.expand("g0@example.test");
    assert!(e.targets.is_empty());
    assert_eq!(e.problems, [ExpandProblem::TooDeep { address: format!("g{}@example.test", expand::MAX_DEPTH) }]);
}

#[test]
fn build_refuses_broken_data() {
    type Change = fn(&mut DirectoryData);
    let cases: &[(Change, &str)] = &[
        (|d| d.mailboxes[1].addresses.push("alice@example.test".into()), "already in use"),
        (|d| d.groups.push(group("bob@example.test", &[])), "already in use"),
        (|d| d.mailboxes[0].addresses.push("a@unknown.test".into()), "unknown domain"),
        (|d| d.mailboxes[0].addresses.push("a@internal.test".into()), "postoffice \"internal\""),
        (|d| d.mailboxes[0].addresses.push("no-at-sign".into()), "invalid address"),
        (|d| d.domains[0].postoffice = "nope".into(), "unknown postoffice"),
        (|d| d.domains.push(domain("Example.test", "corp")), "already exists"),
        (|d| d.mailboxes.push(mailbox("corp", "Alice", &[])), "already exists"),
        (|d| d.mailboxes.push(mailbox("corp", "../etc", &[])), "invalid name"),
        (|d| d.domains[1].smart_host = Some("host-without-port".into()), "invalid smart host"),
        (|d| d.default_postoffice = Some("nope".into()), "unknown postoffice"),
        (|d| d.version = 99, "newer"),
    ];
    for (change, want) in cases {
        let mut data = fixture();
        change(&mut data);
        let err = Directory::build(data).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
}

#[test]
fn names_and_addresses() {
    use model::{check_smart_host, normalize_address, normalize_domain, normalize_name};
    assert_eq!(normalize_address(" Alice@Example.TEST ").unwrap(), "alice@example.test");
    assert_eq!(normalize_address("a.b+c@xn--bcher-kva.test").unwrap(), "a.b+c@xn--bcher-kva.test");
    assert_eq!(normalize_address("jörg@bücher.test").unwrap(), "jörg@bücher.test");
    for bad in ["", "a", "@x.test", "a@", "a b@x.test", "a@-x.test", "a@x..test", "<a@x.test>", "a,b@x.test"] {
        assert!(normalize_address(bad).is_err(), "{bad:?}");
    }
    assert!(normalize_address(&format!("{}@x.test", "a".repeat(65))).is_err());
    assert_eq!(normalize_domain("Example.Test.").unwrap(), "example.test");
    assert_eq!(normalize_name("Sales_1").unwrap(), "sales_1");
    for bad in ["", ".hidden", "a/b", "..", "a b"] {
        assert!(normalize_name(bad).is_err(), "{bad:?}");
    }
    for ok in ["mx.example.test:25", "192.0.2.1:2525", "[2001:db8::1]:25"] {
        assert!(check_smart_host(ok).is_ok(), "{ok}");
    }
    for bad in ["mx.example.test", "mx:0", "mx:99999", ":25", "[zz]:25"] {
        assert!(check_smart_host(bad).is_err(), "{bad}");
    }
}

#[test]
fn json_store_round_trip_and_atomic_write() {
    let tmp = tempfile::tempdir().unwrap();
    let store = JsonFileStore::in_data_dir(tmp.path());
    assert_eq!(store.path(), tmp.path().join("directory/directory.json"));
    // Nothing saved yet: an empty directory.
    assert_eq!(store.load().unwrap(), DirectoryData::default());

    let mut data = fixture();
    data.mailboxes[0].autoresponder =
        Some(AutoResponder { subject: "Away".into(), body: "Back on Monday.\n".into(), reply_to: None });
    data.mailboxes[0].password_hash = Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into());
    store.save(&data).unwrap();
    assert_eq!(store.load().unwrap(), data);

    // Pretty and human-readable; no temporary file left behind.
    let text = std::fs::read_to_string(store.path()).unwrap();
    assert!(text.contains("\n  \"postoffices\": [\n"), "{text}");
    let names: Vec<_> = std::fs::read_dir(store.path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["directory.json"]);

    // A save replaces the file by rename: a reader holding the old file still sees it whole.
    let old = std::fs::File::open(store.path()).unwrap();
    let mut smaller = data.clone();
    smaller.mailboxes.truncate(1);
    store.save(&smaller).unwrap();
    let old_text = std::io::read_to_string(old).unwrap();
    assert_eq!(serde_json::from_str::<DirectoryData>(&old_text).unwrap(), data);
    assert_eq!(store.load().unwrap(), smaller);

    // A store that cannot be written leaves the old file as it was.
    let ro = JsonFileStore::new(tmp.path().join("missing-parent-is-a-file/directory.json"));
    std::fs::write(tmp.path().join("missing-parent-is-a-file"), b"x").unwrap();
    assert!(matches!(ro.save(&data), Err(DirectoryError::Io { .. })));

    // A damaged file is reported, not taken for an empty directory.
    std::fs::write(store.path(), b"{\"domains\": [").unwrap();
    assert!(matches!(store.load(), Err(DirectoryError::Corrupt { .. })));
}

#[test]
fn handle_reload_swaps_and_keeps_old_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = JsonFileStore::in_data_dir(tmp.path());
    store.save(&fixture()).unwrap();
    let handle = DirectoryHandle::open(Box::new(store.clone())).unwrap();
    let before = handle.current();
    assert!(before.is_local_domain("example.test"));

    let mut data = fixture();
    data.domains.push(domain("new.test", "corp"));
    store.save(&data).unwrap();
    handle.reload().unwrap();
    assert!(handle.current().is_local_domain("new.test"));
    // A reader that took the directory before keeps a consistent view.
    assert!(!before.is_local_domain("new.test"));

    std::fs::write(store.path(), b"not json").unwrap();
    assert!(handle.reload().is_err());
    assert!(handle.current().is_local_domain("new.test"));
}

/// RFC 5321 §4.5.1: the hosted domains whose postmaster mail has nowhere to go (the
/// `internal` postoffice has no postmaster mailbox; disabled and relayed domains do not
/// count).
#[test]
fn domains_without_postmaster() {
    let d = Directory::build(fixture()).unwrap();
    assert_eq!(d.domains_without_postmaster(), ["internal.test"]);
}

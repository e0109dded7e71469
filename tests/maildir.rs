//! Maildir delivery on real files: the exact bytes written, unique names, quota refused
//! mid-stream and the quota count surviving a reopen.

use ringmx::delivery::maildir::{Maildir, MaildirError, Usage, UsageCache, mailbox_path};
use ringmx::directory::QuotaView;
use std::collections::HashSet;
use std::path::Path;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn delivers_with_exact_headers_into_new() {
    let tmp = tempfile::tempdir().unwrap();
    let root = mailbox_path(&tmp.path().join("mailboxes"), "corp/alice");
    assert_eq!(root, tmp.path().join("mailboxes/corp/alice/Maildir"));
    let md = Maildir::open(&root).unwrap();
    for sub in ["tmp", "new", "cur"] {
        assert!(root.join(sub).is_dir(), "{sub}/ created");
    }
    let content = b"Received: from a\r\nSubject: Hello\r\n\r\nHi Alice.\r\n";
    let f = md.deliver("bob@remote.test", "alice@example.test", content).unwrap();
    let want = b"Return-Path: <bob@remote.test>\nDelivered-To: alice@example.test\nReceived: from a\nSubject: Hello\n\nHi Alice.\n";
    assert_eq!(std::fs::read(&f.path).unwrap(), want);
    assert_eq!(f.size, want.len() as u64);
    assert_eq!(f.path.parent().unwrap(), root.join("new"));
    assert!(names(&root.join("tmp")).is_empty(), "nothing left in tmp/");

    // <secs>.M<usec>P<pid>Q<n>.<host>,S=<size>
    let name = f.path.file_name().unwrap().to_str().unwrap();
    let (base, size) = name.rsplit_once(",S=").unwrap();
    assert_eq!(size, want.len().to_string());
    let mut parts = base.splitn(3, '.');
    assert!(parts.next().unwrap().parse::<u64>().unwrap() > 1_700_000_000);
    let unique = parts.next().unwrap();
    let (m, rest) = unique.strip_prefix('M').unwrap().split_once('P').unwrap();
    let (pid, q) = rest.split_once('Q').unwrap();
    assert!(m.parse::<u32>().unwrap() < 1_000_000);
    assert_eq!(pid.parse::<u32>().unwrap(), std::process::id());
    q.parse::<u64>().unwrap();
    assert!(!parts.next().unwrap().is_empty(), "host part");

    // The null reverse path.
    let f = md.deliver("", "alice@example.test", b"x\r\n").unwrap();
    assert_eq!(std::fs::read(&f.path).unwrap(), b"Return-Path: <>\nDelivered-To: alice@example.test\nx\n");
}

#[test]
fn unique_names_across_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Maildir::open(tmp.path()).unwrap();
    let b = Maildir::open(tmp.path()).unwrap();
    let mut seen = HashSet::new();
    for i in 0..200 {
        let md = if i % 2 == 0 { &a } else { &b };
        let f = md.deliver("s@x.test", "r@y.test", b"body\r\n").unwrap();
        assert!(seen.insert(f.path), "duplicate name");
    }
    assert_eq!(names(&tmp.path().join("new")).len(), 200);
    assert_eq!(a.usage().unwrap().messages, 200, "no quota: counted from the files");
}

#[test]
fn quota_reached_mid_stream_and_surviving_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Maildir");
    let body = vec![b'x'; 1000];
    let md = Maildir::open_with_quota(&root, 3500).unwrap();
    assert_eq!(std::fs::read_to_string(root.join("maildirsize")).unwrap(), "3500S\n0 0\n");
    let mut delivered = Vec::new();
    let refused = loop {
        assert!(delivered.len() < 10, "the quota must stop deliveries");
        match md.deliver("s@x.test", "r@y.test", &body) {
            Ok(f) => delivered.push(f),
            Err(e) => break e,
        }
    };
    // Each message is 1000 bytes plus 47 of headers: three fit in 3500, the fourth does not.
    assert_eq!(delivered.len(), 3);
    let size = delivered[0].size;
    assert_eq!(size, 1047);
    match &refused {
        MaildirError::QuotaExceeded { used, size: s, quota, .. } => {
            assert_eq!((*used, *s, *quota), (3 * size, size, 3500));
        }
        other => panic!("{other:?}"),
    }
    assert!(refused.is_permanent());
    assert_eq!((refused.smtp_reply().code, refused.smtp_reply().status), (552, "5.2.2"));
    assert_eq!(names(&root.join("new")).len(), 3, "the refused message left no file");
    assert!(names(&root.join("tmp")).is_empty());
    // Maildir++: the limit, then one line per delivery.
    assert_eq!(std::fs::read_to_string(root.join("maildirsize")).unwrap(), "3500S\n0 0\n1047 1\n1047 1\n1047 1\n");

    // A small message still fits.
    let f = md.deliver("s@x.test", "r@y.test", b"ok").unwrap();
    assert_eq!(f.size, 49);

    // Reopened (a restart): the quota and usage come back from maildirsize.
    drop(md);
    let md = Maildir::open(&root).unwrap();
    assert_eq!(md.quota(), 3500);
    assert_eq!(md.usage().unwrap(), Usage { bytes: 3 * 1047 + 49, messages: 4 });
    assert!(matches!(md.deliver("s@x.test", "r@y.test", &body), Err(MaildirError::QuotaExceeded { .. })));

    // A reader expunges a message and a damaged maildirsize is rebuilt from the files.
    std::fs::remove_file(&delivered[0].path).unwrap();
    std::fs::write(root.join("maildirsize"), "3500S\n-99999 -9\n").unwrap();
    assert_eq!(md.usage().unwrap(), Usage { bytes: 2 * 1047 + 49, messages: 3 });
    md.deliver("s@x.test", "r@y.test", &body).unwrap();
    assert_eq!(md.usage().unwrap().messages, 4);

    // A raised limit rewrites the definition line and recounts; 0 removes the file.
    let md = Maildir::open_with_quota(&root, 1 << 20).unwrap();
    assert_eq!(std::fs::read_to_string(root.join("maildirsize")).unwrap(), format!("1048576S\n{} 4\n", 3 * 1047 + 49));
    assert_eq!(md.usage().unwrap().bytes, 3 * 1047 + 49);
    let md = Maildir::open_with_quota(&root, 0).unwrap();
    assert!(!root.join("maildirsize").exists());
    assert_eq!(md.usage().unwrap().messages, 4);
}

#[test]
fn usage_cache_feeds_the_rcpt_check() {
    use ringmx::directory::{Directory, DirectoryData, Domain, Mailbox, Postoffice, RcptVerdict};
    let data = DirectoryData {
        postoffices: vec![Postoffice::new("corp".into(), false)],
        domains: vec![Domain {
            name: "example.test".into(),
            postoffice: "corp".into(),
            enabled: true,
            abuse: None,
            postmaster: None,
            catch_all: None,
            smart_host: None,
            sender_blacklist: vec![],
        }],
        mailboxes: vec![Mailbox {
            postoffice: "corp".into(),
            name: "alice".into(),
            password_hash: None,
            quota_bytes: 2014,
            disabled: false,
            addresses: vec!["alice@example.test".into()],
            redirect: vec![],
            redirect_keep_copy: false,
            autoresponder: None,
            delivery_event: None,
        }],
        ..DirectoryData::default()
    };
    let dir = Directory::build(data).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = UsageCache::new();
    let (mb, maildir) = dir.mailbox_by_address("alice@example.test").unwrap();
    let md = Maildir::open_with_quota(&mailbox_path(tmp.path(), maildir), mb.quota_bytes).unwrap();
    let accepted = |c: &UsageCache| {
        matches!(dir.check_recipient_with(None, "alice@example.test", true, c), RcptVerdict::Accept(_))
    };
    assert!(accepted(&cache), "unknown usage: accepted");
    md.deliver("s@x.test", "alice@example.test", &[b'x'; 1500]).unwrap();
    cache.set(maildir, md.usage().unwrap().bytes);
    assert_eq!(cache.usage_bytes("corp/alice"), Some(1557));
    assert!(accepted(&cache), "below the quota");
    // The next one overshoots: refused at delivery (an NDR), then known full at RCPT.
    assert!(md.deliver("s@x.test", "alice@example.test", &[b'x'; 1500]).is_err());
    md.deliver("s@x.test", "alice@example.test", &[b'x'; 400]).unwrap();
    cache.set(maildir, md.usage().unwrap().bytes);
    match dir.check_recipient_with(None, "alice@example.test", true, &cache) {
        RcptVerdict::Refuse(r) => {
            assert_eq!(r.reply().to_string(), "552 5.2.2 Error: recipient address rejected: mailbox full")
        }
        other => panic!("{other:?}"),
    }
}

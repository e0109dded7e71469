//! The list manager on its own: who receives what, with which headers and subject.

use super::store::MemoryStore;
use super::*;
use crate::directory::model::{FromRewrite, Posting, ReplyToMode, Subscription};

const NOW: u64 = 1_780_000_000_000;

fn ctx() -> Ctx<'static> {
    Ctx { now_ms: NOW, hostname: "mx.example.org", poster_dmarc_strict: false, one_click: false }
}

fn list() -> List {
    let mut l: List = serde_json::from_str(r#"{"address": "dev@example.org"}"#).unwrap();
    l.owners = vec!["owner@example.org".into()];
    l.members = ["ann@example.net", "bob@example.com", "carol@example.org"]
        .iter()
        .map(|a| Member::new(a.to_string()))
        .collect();
    l
}

fn post_from(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Ann <{from}>\r\nTo: dev@example.org\r\nSubject: {subject}\r\nMessage-ID: <p1@example.net>\r\n\r\n{body}"
    )
    .into_bytes()
}

fn run(l: &List, role: ListRole, from: &str, msg: &[u8], store: &mut MemoryStore) -> Result<Handled, LocalFailure> {
    handle(l, &role, from, msg, &ctx(), store)
}

fn text(d: &Draft) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

fn head(d: &Draft, name: &str) -> Option<String> {
    message::header(&d.data, name)
}

#[test]
fn members_post_goes_to_every_member_once_with_the_list_fields() {
    let l = list();
    let mut s = MemoryStore::default();
    let h = run(&l, ListRole::Post, "ann@example.net", &post_from("ann@example.net", "hello", "hi all\r\n"), &mut s)
        .unwrap();
    assert_eq!(h.drafts.len(), 1, "one message for all members: {h:?}");
    let d = &h.drafts[0];
    assert_eq!(d.from, "dev-bounces@example.org");
    assert_eq!(d.to, vec!["ann@example.net", "bob@example.com", "carol@example.org"]);
    assert_eq!(head(d, "Subject").as_deref(), Some("[dev] hello"));
    assert_eq!(head(d, "List-Id").as_deref(), Some("<dev.example.org>"));
    assert_eq!(head(d, "List-Post").as_deref(), Some("<mailto:dev@example.org>"));
    assert_eq!(head(d, "List-Unsubscribe").as_deref(), Some("<mailto:dev-request@example.org?subject=unsubscribe>"));
    assert_eq!(head(d, "List-Help").as_deref(), Some("<mailto:dev-request@example.org?subject=help>"));
    assert_eq!(head(d, "List-Owner").as_deref(), Some("<mailto:dev-owner@example.org>"));
    assert_eq!(head(d, "Precedence").as_deref(), Some("list"));
    assert_eq!(head(d, "X-Loop").as_deref(), Some("dev@example.org"));
    assert_eq!(head(d, "From").as_deref(), Some("Ann <ann@example.net>"), "From kept without a DMARC reason");
    assert_eq!(head(d, "Reply-To"), None, "reply_to = poster leaves it alone");
    assert!(text(d).ends_with("\r\n\r\nhi all\r\n"));
}

#[test]
fn posting_rules_members_moderators_anyone() {
    let mut l = list();
    let mut s = MemoryStore::default();
    let stranger = post_from("eve@example.com", "spam", "x\r\n");
    let e = run(&l, ListRole::Post, "eve@example.com", &stranger, &mut s).unwrap_err();
    assert_eq!((e.permanent, e.reply.code), (true, 550));
    assert_eq!(e.reply.to_string(), "550 5.7.1 this list takes posts from its members only");

    l.posting = Posting::Moderators;
    l.moderators = vec!["mod@example.org".into()];
    let e =
        run(&l, ListRole::Post, "ann@example.net", &post_from("ann@example.net", "hi", "x\r\n"), &mut s).unwrap_err();
    assert_eq!(e.reply.code, 550, "a member is not a moderator");
    let h = run(&l, ListRole::Post, "mod@example.org", &post_from("mod@example.org", "news", "x\r\n"), &mut s).unwrap();
    assert_eq!(h.drafts[0].to.len(), 3);
    assert_eq!(head(&h.drafts[0], "List-Post").as_deref(), Some("NO"), "RFC 2369 §3.4: an announcement list");

    l.posting = Posting::Anyone;
    let h = run(&l, ListRole::Post, "eve@example.com", &stranger, &mut s).unwrap();
    assert_eq!(h.drafts[0].to.len(), 3);
}

#[test]
fn password_post_needs_the_password_which_is_stripped() {
    let mut l = list();
    l.posting = Posting::Password;
    l.password = Some("s3cret".into());
    let mut s = MemoryStore::default();
    let wrong = post_from("eve@example.com", "[:guess:] hi", "x\r\n");
    let e = run(&l, ListRole::Post, "eve@example.com", &wrong, &mut s).unwrap_err();
    assert_eq!(e.reply.to_string(), "550 5.7.1 this list takes posts with its password in the subject only");
    let none = post_from("eve@example.com", "hi", "x\r\n");
    assert!(run(&l, ListRole::Post, "eve@example.com", &none, &mut s).is_err());
    let right = post_from("eve@example.com", "[:s3cret:] release 1.0", "x\r\n");
    let h = run(&l, ListRole::Post, "eve@example.com", &right, &mut s).unwrap();
    assert_eq!(head(&h.drafts[0], "Subject").as_deref(), Some("[dev] release 1.0"));
    assert!(!text(&h.drafts[0]).contains("s3cret"));
}

#[test]
fn a_post_over_the_lists_size_is_returned_552() {
    let mut l = list();
    l.max_message_bytes = 100;
    let mut s = MemoryStore::default();
    let big = post_from("ann@example.net", "big", &"x".repeat(200));
    let e = run(&l, ListRole::Post, "ann@example.net", &big, &mut s).unwrap_err();
    assert_eq!(
        (e.permanent, e.reply.to_string()),
        (true, "552 5.3.4 the list takes posts of 100 bytes at most".into())
    );
    let small = post_from("ann@example.net", "s", "x\r\n");
    assert_eq!(run(&l, ListRole::Post, "ann@example.net", &small, &mut s).unwrap().drafts.len(), 1);
}

#[test]
fn moderated_post_is_held_then_approved_or_rejected() {
    let mut l = list();
    l.moderated = true;
    l.moderators = vec!["mod@example.org".into()];
    let mut s = MemoryStore::default();
    let p = post_from("ann@example.net", "proposal", "read this\r\n");
    let h = run(&l, ListRole::Post, "ann@example.net", &p, &mut s).unwrap();
    assert_eq!(h.drafts.len(), 1, "only the moderators' notice");
    let n = &h.drafts[0];
    assert_eq!(n.to, vec!["mod@example.org"]);
    let code = "0000000000000001";
    assert_eq!(head(n, "Subject").unwrap(), format!("Post to dev@example.org held for approval: approve {code}"));
    assert_eq!(head(n, "Auto-Submitted").as_deref(), Some("auto-generated"));
    assert!(text(n).contains("read this"));
    assert_eq!(s.held.len(), 1);

    // The moderator replies to the notice: approved (the driver distributes it).
    let reply = format!(
        "From: mod@example.org\r\nSubject: Re: {}\r\n\r\nOK\r\n> approve {code}\r\n",
        head(n, "Subject").unwrap()
    );
    let h = run(&l, ListRole::Request, "mod@example.org", reply.as_bytes(), &mut s).unwrap();
    assert_eq!(h.approved, vec![code.to_string()]);
    let d = approve(&l, code, &ctx(), &mut s).unwrap().unwrap();
    assert_eq!(d[0].to.len(), 3);
    assert_eq!(head(&d[0], "Subject").as_deref(), Some("[dev] proposal"));

    // A second post, rejected with a reason: the poster is told, nothing is distributed.
    let h = run(&l, ListRole::Post, "bob@example.com", &post_from("bob@example.com", "off topic", "x\r\n"), &mut s)
        .unwrap();
    let code2 = "0000000000000002";
    assert!(head(&h.drafts[0], "Subject").unwrap().ends_with(code2));
    let reject = format!("From: mod@example.org\r\nSubject: whatever\r\n\r\nreject {code2} not for this list\r\n");
    let h = run(&l, ListRole::Request, "mod@example.org", reject.as_bytes(), &mut s).unwrap();
    let to_poster = h.drafts.iter().find(|d| d.to == vec!["bob@example.com".to_string()]).unwrap();
    assert!(text(to_poster).contains("Reason: not for this list"));
    assert!(h.approved.is_empty());
    assert!(!s.held.contains_key(&("dev@example.org".into(), code2.into())));

    // A moderator's own post is not held.
    let h = run(&l, ListRole::Post, "mod@example.org", &post_from("mod@example.org", "x", "x\r\n"), &mut s);
    assert_eq!(h.unwrap().drafts[0].to.len(), 3);
}

#[test]
fn subscribe_with_a_code_then_unsubscribe() {
    let mut l = list();
    l.subscription = Subscription::Confirm;
    let mut s = MemoryStore::default();
    let req = b"From: Dan <dan@example.com>\r\nSubject: subscribe\r\n\r\n";
    let h = run(&l, ListRole::Request, "dan@example.com", req, &mut s).unwrap();
    assert!(h.changes.is_empty(), "not before the code comes back");
    let code = "0000000000000001";
    assert_eq!(h.drafts.len(), 1);
    assert_eq!(h.drafts[0].to, vec!["dan@example.com"]);
    assert_eq!(head(&h.drafts[0], "Subject").unwrap(), format!("confirm {code}"));
    assert_eq!(head(&h.drafts[0], "Reply-To").as_deref(), Some("<dev-request@example.org>"));

    let reply = format!("From: dan@example.com\r\nSubject: Re: confirm {code}\r\n\r\n");
    let h = run(&l, ListRole::Request, "dan@example.com", reply.as_bytes(), &mut s).unwrap();
    assert_eq!(
        h.changes,
        vec![Change::Subscribe { list: "dev@example.org".into(), address: "dan@example.com".into() }]
    );
    assert_eq!(head(&h.drafts[0], "Subject").as_deref(), Some("Welcome to dev@example.org"));
    // The code works once.
    let h = run(&l, ListRole::Request, "dan@example.com", reply.as_bytes(), &mut s).unwrap();
    assert!(h.changes.is_empty());
    assert!(text(&h.drafts[0]).contains("unknown or expired"));

    // MailEnable's way: "unsubscribe" as the subject of a mail to the list itself.
    let h =
        run(&l, ListRole::Post, "bob@example.com", b"From: bob@example.com\r\nSubject: unsubscribe\r\n\r\n", &mut s)
            .unwrap();
    assert_eq!(
        h.changes,
        vec![Change::Unsubscribe { list: "dev@example.org".into(), address: "bob@example.com".into() }]
    );
    let mut data = DirectoryData { lists: vec![l.clone()], ..Default::default() };
    assert_eq!(apply(&mut data, &h.changes[0], NOW), Applied::Done);
    assert!(data.lists[0].member("bob@example.com").is_none());

    l.subscription = Subscription::Closed;
    let h = run(&l, ListRole::Request, "dan@example.com", req, &mut s).unwrap();
    assert!(h.changes.is_empty() && text(&h.drafts[0]).contains("does not take subscriptions by mail"));
    l.subscription = Subscription::Anyone;
    let h = run(&l, ListRole::Request, "dan@example.com", req, &mut s).unwrap();
    assert_eq!(h.changes.len(), 1, "at once");
}

#[test]
fn help_answers_and_nothing_answers_a_bounce_or_a_list() {
    let l = list();
    let mut s = MemoryStore::default();
    let h = run(&l, ListRole::Request, "eve@example.com", b"From: eve@example.com\r\nSubject: help\r\n\r\n", &mut s)
        .unwrap();
    assert_eq!(h.drafts[0].to, vec!["eve@example.com"]);
    assert!(text(&h.drafts[0]).contains("subscribe            join the list"));
    assert_eq!(head(&h.drafts[0], "Auto-Submitted").as_deref(), Some("auto-replied"));
    let h = run(&l, ListRole::Request, "", b"Subject: help\r\n\r\n", &mut s).unwrap();
    assert!(h.drafts.is_empty(), "RFC 3834 §2: never to the null sender");
}

#[test]
fn reply_to_modes_and_prefix_not_doubled() {
    let mut l = list();
    let mut s = MemoryStore::default();
    let p = post_from("ann@example.net", "Re: [dev] hello", "x\r\n");
    l.reply_to = ReplyToMode::List;
    let h = run(&l, ListRole::Post, "ann@example.net", &p, &mut s).unwrap();
    assert_eq!(head(&h.drafts[0], "Subject").as_deref(), Some("Re: [dev] hello"));
    assert_eq!(head(&h.drafts[0], "Reply-To").as_deref(), Some("<dev@example.org>"));
    l.reply_to = ReplyToMode::Moderator;
    l.moderators = vec!["mod@example.org".into()];
    let h = run(&l, ListRole::Post, "ann@example.net", &p, &mut s).unwrap();
    assert_eq!(head(&h.drafts[0], "Reply-To").as_deref(), Some("<mod@example.org>"));
    l.reply_to = ReplyToMode::Address;
    l.reply_to_address = Some("desk@example.org".into());
    let h = run(&l, ListRole::Post, "ann@example.net", &p, &mut s).unwrap();
    assert_eq!(head(&h.drafts[0], "Reply-To").as_deref(), Some("<desk@example.org>"));
}

#[test]
fn a_list_that_contains_itself_drops_its_own_mail() {
    let mut l = list();
    l.members.push(Member::new("dev@example.org".into()));
    let mut s = MemoryStore::default();
    let h = run(&l, ListRole::Post, "ann@example.net", &post_from("ann@example.net", "hi", "x\r\n"), &mut s).unwrap();
    let d = &h.drafts[0];
    assert!(d.to.contains(&"dev@example.org".to_string()));
    // The copy comes back to the list: dropped, no new draft.
    let h = run(&l, ListRole::Post, &d.from, &d.data, &mut s).unwrap();
    assert!(h.drafts.is_empty() && h.note.unwrap().contains("X-Loop"));
}

#[test]
fn verp_bounces_disable_a_member_after_the_limit_and_tell_the_owners() {
    let mut l = list();
    l.bounce_limit = 3;
    let mut data = DirectoryData { lists: vec![l.clone()], ..Default::default() };
    let mut s = MemoryStore::default();
    let dsn = b"From: MAILER-DAEMON@example.com\r\nSubject: Undelivered\r\n\r\nno such user\r\n";
    for i in 1..=3u32 {
        let h = run(&l, ListRole::Bounces(Some("bob@example.com".into())), "", dsn, &mut s).unwrap();
        assert_eq!(
            h.changes,
            vec![Change::Bounce { list: "dev@example.org".into(), member: "bob@example.com".into() }]
        );
        let a = apply(&mut data, &h.changes[0], NOW + i as u64);
        if i < 3 {
            assert_eq!(a, Applied::Done);
        } else {
            assert_eq!(a, Applied::Disabled { bounces: 3 });
        }
    }
    assert!(data.lists[0].member("bob@example.com").unwrap().disabled);
    let n = disabled_notice(&data.lists[0], "bob@example.com", 3, &ctx()).unwrap();
    assert_eq!(n.to, vec!["owner@example.org"]);
    // A disabled member gets nothing more.
    let h =
        run(&data.lists[0], ListRole::Post, "ann@example.net", &post_from("ann@example.net", "hi", "x\r\n"), &mut s)
            .unwrap();
    assert_eq!(h.drafts[0].to, vec!["ann@example.net", "carol@example.org"]);
    // Mail to the VERP address that is not a bounce counts nothing.
    let h = run(
        &l,
        ListRole::Bounces(Some("ann@example.net".into())),
        "someone@example.com",
        b"Subject: hi\r\n\r\n",
        &mut s,
    )
    .unwrap();
    assert!(h.changes.is_empty());
}

#[test]
fn dmarc_strict_poster_gets_the_from_rewritten() {
    let l = list();
    let mut s = MemoryStore::default();
    let c = Ctx { poster_dmarc_strict: true, ..ctx() };
    let p = post_from("ann@example.net", "hi", "x\r\n");
    let h = handle(&l, &ListRole::Post, "ann@example.net", &p, &c, &mut s).unwrap();
    let d = &h.drafts[0];
    assert_eq!(head(d, "From").as_deref(), Some("\"Ann via dev\" <dev@example.org>"));
    assert_eq!(head(d, "X-Original-From").as_deref(), Some("Ann <ann@example.net>"));
    assert_eq!(head(d, "Reply-To").as_deref(), Some("Ann <ann@example.net>"));
    let mut never = l.clone();
    never.from_rewrite = FromRewrite::Never;
    let h = handle(&never, &ListRole::Post, "ann@example.net", &p, &c, &mut s).unwrap();
    assert_eq!(head(&h.drafts[0], "From").as_deref(), Some("Ann <ann@example.net>"));
}

#[test]
fn digest_members_get_the_digest_not_each_post() {
    let mut l = list();
    l.members[1].digest = true;
    l.archive = true;
    let mut s = MemoryStore::default();
    let h = run(&l, ListRole::Post, "ann@example.net", &post_from("ann@example.net", "one", "1\r\n"), &mut s).unwrap();
    assert_eq!(h.drafts[0].to, vec!["ann@example.net", "carol@example.org"]);
    run(&l, ListRole::Post, "ann@example.net", &post_from("ann@example.net", "two", "2\r\n"), &mut s).unwrap();
    assert_eq!((s.digest.len(), s.archived.len()), (2, 2));
    let posts: Vec<Vec<u8>> = s.digest.iter().map(|(_, p)| p.clone()).collect();
    let (d, next) = digest(&l, &posts, &store::DigestState::default(), &ctx()).unwrap();
    assert_eq!(d.to, vec!["bob@example.com"]);
    assert_eq!((next.volume, next.issue), (1, 1));
    assert!(next.last_ms > 0, "when it went is kept");
    assert_eq!(head(&d, "Subject").as_deref(), Some("dev digest, Vol 1, Issue 1"));
    assert!(text(&d).contains("[dev] one") && text(&d).contains("[dev] two"));
}

//! `[[dkim.sign]]`: an authenticated client's mail from one of our domains is signed, with
//! an ed25519 and an RSA key of `ringmx dkim keygen` and an RSA key of `opendkim-genkey`; OpenDKIM's
//! own verifier (`opendkim -t` in verifying mode, the public keys given through
//! TestPublicKeys) finds both signatures good, and a changed body bad. An unauthenticated
//! client's mail, or mail from a domain without a key, is not signed.

mod common;

use common::*;
use std::time::Duration;

fn plain(user: &str, pw: &str) -> String {
    ringmx_b64::encode(format!("\0{user}\0{pw}").as_bytes())
}

#[test]
fn our_users_mail_is_signed_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    alice_directory(d);
    // ed25519 by ringmx, RSA-2048 by OpenDKIM's tool.
    let ed = d.join("ed.pem");
    let out = std::process::Command::new(BIN)
        .args(["dkim", "keygen", "example.net", "--algorithm", "ed25519", "--selector", "ed", "--out"])
        .arg(&ed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ed_record = String::from_utf8(out.stdout).unwrap();
    let ed_txt = ed_record.lines().next().unwrap().split('"').nth(1).unwrap().to_string();
    assert!(ed_record.starts_with("ed._domainkey.example.net. IN TXT \"v=DKIM1; k=ed25519; p="), "{ed_record}");
    // RSA-2048 by ringmx (the default algorithm): the record's strings, joined.
    let rsa_key = d.join("gen.pem");
    let out = std::process::Command::new(BIN)
        .args(["dkim", "keygen", "gen.example", "--selector", "r1", "--out"])
        .arg(&rsa_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gen_record = String::from_utf8(out.stdout).unwrap();
    let gen_txt: String = gen_record.lines().next().unwrap().split('"').skip(1).step_by(2).collect();
    assert!(gen_txt.starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"), "{gen_record}");
    let genkey = std::process::Command::new("opendkim-genkey")
        .args(["-b", "2048", "-d", "rsa.example", "-s", "sel", "-D"])
        .arg(d)
        .output()
        .expect("opendkim-genkey (tests/run.sh installs opendkim-tools)");
    assert!(genkey.status.success(), "{}", String::from_utf8_lossy(&genkey.stderr));
    let rsa_txt: String = std::fs::read_to_string(d.join("sel.txt")).unwrap().split('"').skip(1).step_by(2).collect();
    let cfg = format!(
        "[[listener]]\nport = 0\nbind = [\"127.0.0.1\"]\nauth = \"always\"\n\
         [auth]\nusername = \"relay\"\npassword = \"relay-pw\"\n\
         [[dkim.sign]]\ndomain = \"example.net\"\nselector = \"ed\"\nkey = {ed:?}\n\
         [[dkim.sign]]\ndomain = \"rsa.example\"\nselector = \"sel\"\nkey = {:?}\n\
         [[dkim.sign]]\ndomain = \"gen.example\"\nselector = \"r1\"\nkey = {rsa_key:?}\n",
        d.join("sel.private")
    );
    let srv = start(d, "uring", &cfg);
    let send = |from: &str, auth: bool| {
        let (mut c, _) = Client::connect(srv.addr());
        c.cmd("EHLO client.example");
        if auth {
            assert!(c.cmd(&format!("AUTH PLAIN {}", plain("relay", "relay-pw"))).starts_with("235"));
        }
        let body = format!("From: Someone <{from}>\r\nTo: alice@example.net\r\nSubject: signed?\r\n\r\nhello\r\n");
        queued_id(&c.message(from, &["alice@example.net"], &body));
    };
    send("someone@example.net", true);
    send("someone@rsa.example", true);
    send("someone@gen.example", true);
    send("someone@other.example", true);
    send("someone@example.net", false);
    assert!(eventually(Duration::from_secs(20), || mailbox(d, "alice").len() == 5));
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
    // OpenDKIM's verifier, with our public keys.
    std::fs::write(
        d.join("public"),
        format!(
            "ed._domainkey.example.net {ed_txt}\nsel._domainkey.rsa.example {rsa_txt}\nr1._domainkey.gen.example {gen_txt}\n"
        ),
    )
    .unwrap();
    let vconf = d.join("verify.conf");
    std::fs::write(&vconf, format!("Mode v\nTestPublicKeys {}\nSyslog no\nUserID root\n", d.join("public").display()))
        .unwrap();
    let verify = |text: &str| {
        let f = d.join("check.eml");
        std::fs::write(&f, text.replace('\n', "\r\n")).unwrap();
        let out = std::process::Command::new("opendkim").arg("-x").arg(&vconf).args(["-vvv", "-t"]).arg(&f).output();
        String::from_utf8_lossy(&out.expect("opendkim -t").stdout).into_owned()
    };
    let mut signed = std::collections::BTreeMap::new();
    for m in mailbox(d, "alice") {
        let from = m.lines().find_map(|l| l.strip_prefix("From: Someone <")).unwrap().trim_end_matches('>').to_string();
        let auth = m.contains("DKIM-Signature:");
        signed.insert((from, auth), m);
    }
    let ed_msg = &signed[&("someone@example.net".to_string(), true)];
    assert!(
        ed_msg.contains("a=ed25519-sha256") && ed_msg.contains("d=example.net") && ed_msg.contains("s=ed"),
        "{ed_msg}"
    );
    let rsa_msg = &signed[&("someone@rsa.example".to_string(), true)];
    assert!(rsa_msg.contains("a=rsa-sha256") && rsa_msg.contains("d=rsa.example"), "{rsa_msg}");
    let gen_msg = &signed[&("someone@gen.example".to_string(), true)];
    assert!(gen_msg.contains("a=rsa-sha256") && gen_msg.contains("d=gen.example"), "{gen_msg}");
    for m in [ed_msg, rsa_msg, gen_msg] {
        let good = verify(m);
        assert!(good.contains("dkim=pass"), "{good}\n{m}");
        let bad = verify(&m.replace("hello", "HELLO"));
        assert!(bad.contains("dkim=fail") && !bad.contains("dkim=pass"), "{bad}");
    }
    // No key for other.example; the unauthenticated client's message is not ours to sign.
    assert!(signed.contains_key(&("someone@other.example".to_string(), false)), "{:?}", signed.keys());
    assert!(signed.contains_key(&("someone@example.net".to_string(), false)), "{:?}", signed.keys());
}

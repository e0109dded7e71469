//! SIGHUP reloads the configuration: with 50 sessions open, a changed banner reaches new
//! sessions while the open ones go on (none dropped); a broken file is refused with every
//! error logged and the configuration in force stays; a rotated certificate serves the
//! next handshakes.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn hup(srv: &Server) {
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
}

/// Replaces the configuration file at once (written aside, then renamed, as an operator's
/// tools do), so that a reload never reads half a file.
fn write_config(dir: &std::path::Path, text: &str) {
    let tmp = dir.join("ringmx.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("ringmx.toml")).unwrap();
}

/// The configuration file with `from` replaced by `to`.
fn edit(dir: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(dir.join("ringmx.toml")).unwrap();
    assert!(text.contains(from), "{text}");
    write_config(dir, &text.replace(from, to));
}

/// Reloads (applied, refused) as the metrics endpoint counts them.
fn reloads(m: SocketAddr) -> (u64, u64) {
    let mut s = TcpStream::connect(m).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    let v = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("ringmx_config_reloads_total{{result=\"{label}\"}} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (v("applied"), v("refused"))
}

/// Sends SIGHUP and waits until the server has dealt with it: `want` (applied, refused).
fn reload(srv: &Server, want: (u64, u64)) {
    let m = srv.metrics.expect("metrics on");
    hup(srv);
    assert!(eventually(Duration::from_secs(20), || reloads(m) == want), "{:?} != {want:?}", reloads(m));
}

/// `ringmx reload` for the server of `dir`.
fn cli_reload(dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(BIN).args(["reload", "--config"]).arg(dir.join("ringmx.toml")).output().unwrap()
}

fn banner(addr: SocketAddr) -> String {
    Client::connect(addr).1
}

#[test]
fn sighup_changes_the_banner_for_new_sessions_and_keeps_open_ones() {
    for driver in DRIVERS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = "[metrics]\nlisten = \"127.0.0.1:0\"\n[policy]\nwelcome = \"%LOCALDOMAIN% first banner\"\n";
        let srv = start_plain(dir.path(), driver, cfg);
        let open: Vec<(Client, String)> = (0..50).map(|_| Client::connect(srv.addr())).collect();
        for (_, g) in &open {
            assert!(g.contains("first banner"), "{g}");
        }
        edit(dir.path(), "first banner", "second banner");
        reload(&srv, (1, 0));
        assert!(banner(srv.addr()).contains("second banner"), "{driver}");
        // A broken file: refused, the configuration in force stays; then a good one again.
        let good = std::fs::read_to_string(dir.path().join("ringmx.toml")).unwrap();
        write_config(dir.path(), &format!("no_such_key = 1\n{}", good.replace("second banner", "never shown")));
        // `ringmx reload` reads the file first: it names the error and asks nothing.
        let out = cli_reload(dir.path());
        assert_eq!(out.status.code(), Some(2), "{driver}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
        assert_eq!(reloads(srv.metrics.unwrap()), (1, 0));
        // SIGHUP: the server refuses it.
        reload(&srv, (1, 1));
        assert!(banner(srv.addr()).contains("second banner"), "{driver}");
        // A good file again, through `ringmx reload`, which waits for the outcome.
        write_config(dir.path(), &good.replace("second banner", "third banner"));
        let out = cli_reload(dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("configuration reloaded"));
        assert_eq!(reloads(srv.metrics.unwrap()), (2, 1));
        assert!(banner(srv.addr()).contains("third banner"), "{driver}");
        // The sessions opened before any reload were never dropped and still work.
        for (mut c, _) in open {
            assert!(c.cmd("EHLO old.example").starts_with("250"), "{driver}");
            assert!(c.cmd("QUIT").starts_with("221"), "{driver}");
        }
        let (status, log) = srv.stop();
        assert!(status.success(), "{log}");
        assert!(log.contains("SIGHUP: configuration reloaded"), "{log}");
        assert!(log.contains("no_such_key"), "the unknown key is named: {log}");
        assert!(log.contains("SIGHUP: configuration not reloaded ("), "{log}");
        assert!(!log.contains("never shown"), "{log}");
    }
}

/// STARTTLS with a client that trusts only `ca`: whether the handshake completes.
fn starttls_trusts(addr: SocketAddr, ca: &rustls::pki_types::CertificateDer<'static>) -> bool {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    let mut reply = |r: &mut BufReader<TcpStream>| loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.clone();
        }
    };
    reply(&mut r);
    w.write_all(b"EHLO c\r\n").unwrap();
    reply(&mut r);
    w.write_all(b"STARTTLS\r\n").unwrap();
    assert!(reply(&mut r).starts_with("220"));
    let mut conn = rustls::ClientConnection::new(tls_client_config(ca), "localhost".try_into().unwrap()).unwrap();
    let mut sock = r.into_inner();
    conn.complete_io(&mut sock).is_ok() && !conn.is_handshaking()
}

#[test]
fn sighup_rotates_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert1, key1, ca1) = make_cert(&dir.path().join("tls1"));
    let (cert2, key2, ca2) = make_cert(&dir.path().join("tls2"));
    let cfg = format!("[metrics]\nlisten = \"127.0.0.1:0\"\n[tls]\ncertificate = {cert1:?}\nprivate_key = {key1:?}\n");
    let srv = start_plain(dir.path(), "uring", &cfg);
    assert!(starttls_trusts(srv.addr(), &ca1));
    assert!(!starttls_trusts(srv.addr(), &ca2));
    let text = std::fs::read_to_string(dir.path().join("ringmx.toml")).unwrap();
    write_config(
        dir.path(),
        &text.replace(&format!("{cert1:?}"), &format!("{cert2:?}")).replace(&format!("{key1:?}"), &format!("{key2:?}")),
    );
    reload(&srv, (1, 0));
    assert!(starttls_trusts(srv.addr(), &ca2), "the new certificate serves");
    assert!(!starttls_trusts(srv.addr(), &ca1));
    // A certificate that does not load: the server refuses the reload and says why.
    let text = std::fs::read_to_string(dir.path().join("ringmx.toml")).unwrap();
    write_config(dir.path(), &text.replace(&format!("{cert2:?}"), "\"/nonexistent/cert.pem\""));
    let out = cli_reload(dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem") && err.contains("configuration refused"), "{err}");
    assert!(starttls_trusts(srv.addr(), &ca2), "the certificate in force stays");
    // Connection limits are reloaded too: one per address now, the next gets 421 4.7.0.
    write_config(dir.path(), &format!("{text}[limits]\nmax_connections_per_ip = 1\n"));
    assert_eq!(cli_reload(dir.path()).status.code(), Some(0));
    let (_first, g) = Client::connect(srv.addr());
    assert!(g.starts_with("220 "), "{g}");
    let (_second, g) = Client::connect(srv.addr());
    assert!(g.starts_with("421 4.7.0"), "{g}");
    let (status, log) = srv.stop();
    assert!(status.success(), "{log}");
}

//! The generator against its own sink, in process, over real loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use ringmx_loadgen::client::driver::{self, RunConfig, RunResult, TlsClient};
use ringmx_loadgen::client::message::{MessageConfig, SizeDistribution};
use ringmx_loadgen::client::session::{AuthConfig, AuthMechanism, SessionConfig};
use ringmx_loadgen::report::Phase;
use ringmx_loadgen::sink::replies::SinkPhase;
use ringmx_loadgen::sink::{Driver, IoMode, Sink, SinkConfig, SinkOptions, SinkStats};
use ringmx_loadgen::tls;

/// Runs each listed test (a function taking the sink's [`IoMode`]) once per driver, as
/// `NAME::uring` and `NAME::epoll`. The io_uring one is skipped, saying so, where the
/// kernel does not allow io_uring.
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                if let Some(io) = super::uring_if_available() {
                    super::$name(io);
                }
            }
            #[test]
            fn epoll() {
                super::$name(ringmx_loadgen::sink::IoMode::Epoll);
            }
        }
    )*};
}

fn uring_if_available() -> Option<IoMode> {
    match IoMode::Uring.choose() {
        Ok(_) => Some(IoMode::Uring),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

on_both_drivers!(
    closed_loop_delivers_every_message_over_reused_connections,
    connection_per_message_and_several_recipients,
    bdat_end_to_end,
    an_injected_delay_shows_in_its_phase,
    open_loop_starts_messages_on_schedule,
    open_loop_charges_queueing_to_latency,
    starttls_with_auth_plain,
    implicit_tls_with_auth_login_and_connection_per_message,
    a_certificate_we_do_not_trust_fails_cleanly,
    a_stalled_server_still_ends_a_duration_bounded_run,
    replayed_eml_files_arrive_whole,
    large_messages_on_many_connections_arrive_whole,
    a_reply_after_the_client_half_closed_still_goes_out,
    idle_connections_are_closed,
    stopping_with_connections_open_ends_them,
);

fn start_sink(io: IoMode, cfg: SinkConfig, tweak: impl FnOnce(&mut SinkOptions)) -> Sink {
    let mut opts = SinkOptions::new("127.0.0.1:0".parse().unwrap(), cfg.build());
    opts.threads = 2;
    opts.io = io;
    tweak(&mut opts);
    let sink = Sink::start(opts).expect("sink starts");
    assert_eq!(matches!(sink.driver(), Driver::Uring { .. }), io == IoMode::Uring, "{}", sink.driver());
    sink
}

fn config(sink: &Sink) -> RunConfig {
    RunConfig {
        target: sink.local_addr(),
        threads: 2,
        connections: 4,
        rate: None,
        messages: Some(200),
        duration: Some(Duration::from_secs(60)),
        ramp_up: Duration::ZERO,
        session: SessionConfig { reply_timeout: Duration::from_secs(10), ..SessionConfig::default() },
        tls: None,
        message: MessageConfig::generated(
            "a@example.net",
            vec!["example.test".into()],
            1,
            SizeDistribution::Uniform { lo: 200, hi: 5000 },
        ),
    }
}

fn run(cfg: RunConfig) -> RunResult {
    driver::run(cfg, &mut |_| {}).expect("run completes")
}

fn run_and_stop(cfg: RunConfig, sink: Sink) -> (RunResult, SinkStats) {
    let r = run(cfg);
    (r, sink.stop().expect("sink stops"))
}

fn closed_loop_delivers_every_message_over_reused_connections(io: IoMode) {
    let sink = start_sink(io, SinkConfig::new("sink.test"), |_| {});
    let (r, s) = run_and_stop(config(&sink), sink);
    let rec = &r.recorder;
    assert_eq!((rec.ok, rec.failed()), (200, 0));
    assert_eq!(s.messages, 200);
    // At most one connection per configured connection (a worker that starts late may
    // find the budget already spent and open none).
    assert!((1..=4).contains(&s.connections), "{} connections", s.connections);
    assert_eq!(rec.connections, s.connections);
    assert_eq!(s.bytes, rec.bytes);
    assert_eq!(rec.histogram(Phase::Transaction).len(), 200);
    assert_eq!(rec.histogram(Phase::Connect).len(), s.connections);
    assert_eq!(rec.codes.count(221), s.connections, "every connection ends with QUIT");
}

fn connection_per_message_and_several_recipients(io: IoMode) {
    let sink = start_sink(io, SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.messages = Some(60);
    cfg.session.messages_per_connection = 1;
    cfg.message = MessageConfig::generated(
        "a@example.net",
        vec!["d1.test".into(), "d2.test".into()],
        3,
        SizeDistribution::Fixed(1000),
    );
    let (r, s) = run_and_stop(cfg, sink);
    assert_eq!(r.recorder.ok, 60);
    assert_eq!((s.connections, s.messages, s.recipients), (60, 60, 180));
}

fn bdat_end_to_end(io: IoMode) {
    let sink = start_sink(io, SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.session.chunking = true;
    let (r, s) = run_and_stop(cfg, sink);
    assert_eq!((r.recorder.ok, s.messages), (200, 200));
    assert_eq!(r.recorder.codes.count(354), 0, "no DATA was sent");
    assert_eq!(s.bytes, r.recorder.bytes);
}

fn an_injected_delay_shows_in_its_phase(io: IoMode) {
    let mut sc = SinkConfig::new("sink.test");
    sc.delays[SinkPhase::DataEnd.index()] = Duration::from_millis(5);
    let sink = start_sink(io, sc, |_| {});
    let mut cfg = config(&sink);
    cfg.messages = Some(100);
    let (r, _) = run_and_stop(cfg, sink);
    let p50 = |p: Phase| r.recorder.histogram(p).value_at_quantile(0.5) as f64 / 1e6;
    // Measurement check, not a speed check (no bound on how fast the machine is): the 5 ms
    // must be seen, in the phase that carries it and not in the others.
    assert!(p50(Phase::DataEnd) >= 5.0, "data_end p50 {} ms", p50(Phase::DataEnd));
    assert!(p50(Phase::Mail) < p50(Phase::DataEnd), "the delay belongs to data_end only");
    assert!(p50(Phase::Rcpt) < p50(Phase::DataEnd), "the delay belongs to data_end only");
    assert!(p50(Phase::Transaction) >= 5.0);
}

fn open_loop_starts_messages_on_schedule(io: IoMode) {
    let sink = start_sink(io, SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.rate = Some(400.0);
    cfg.messages = None;
    cfg.duration = Some(Duration::from_millis(500));
    let (r, s) = run_and_stop(cfg, sink);
    let rec = &r.recorder;
    // 400/s for 0.5 s: messages 0..=199 are due (message 200 is due exactly at the end).
    let attempted = rec.ok + rec.failed();
    assert!((199..=201).contains(&attempted), "attempted {attempted}");
    assert_eq!(rec.ok, s.messages);
    assert_eq!(rec.start_lag.len(), rec.ok);
}

fn open_loop_charges_queueing_to_latency(io: IoMode) {
    // One connection, a 40 ms server, 100 messages/s offered: the server keeps up with 25/s,
    // so messages queue. Measured from their intended start (wrk2's correction), latencies
    // grow far past the 40 ms service time.
    let mut sc = SinkConfig::new("sink.test");
    sc.delays[SinkPhase::DataEnd.index()] = Duration::from_millis(40);
    let sink = start_sink(io, sc, |_| {});
    let mut cfg = config(&sink);
    cfg.connections = 1;
    cfg.threads = 1;
    cfg.rate = Some(100.0);
    cfg.messages = None;
    cfg.duration = Some(Duration::from_millis(600));
    let (r, _) = run_and_stop(cfg, sink);
    let rec = &r.recorder;
    let service_ms = rec.histogram(Phase::DataEnd).value_at_quantile(0.5) as f64 / 1e6;
    let worst_ms = rec.histogram(Phase::Transaction).max() as f64 / 1e6;
    assert!(service_ms >= 40.0);
    assert!(worst_ms > 4.0 * service_ms, "worst {worst_ms} ms vs service {service_ms} ms");
    assert!(rec.errors.unfinished > 0, "messages still queued at the end count as unfinished");
    assert!(rec.start_lag.max() as f64 / 1e6 > 3.0 * service_ms);
}

fn self_signed() -> (Arc<rustls::ServerConfig>, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["sink.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (tls::server_config_from_der(vec![der.clone()], key).unwrap(), der)
}

fn tls_client(implicit: bool) -> TlsClient {
    TlsClient {
        config: tls::client_config(true, None).unwrap(),
        server_name: tls::server_name("sink.test").unwrap(),
        implicit,
    }
}

fn starttls_with_auth_plain(io: IoMode) {
    let (server, _) = self_signed();
    let mut sc = SinkConfig::new("sink.test");
    sc.starttls = true;
    sc.auth = Some(("u".into(), "secret".into()));
    let sink = start_sink(io, sc, |o| o.tls = Some(server));
    let mut cfg = config(&sink);
    cfg.session.starttls = true;
    cfg.session.auth =
        Some(AuthConfig { mechanism: AuthMechanism::Plain, user: "u".into(), password: "secret".into() });
    cfg.tls = Some(tls_client(false));
    let (r, s) = run_and_stop(cfg, sink);
    assert_eq!((r.recorder.ok, r.recorder.failed()), (200, 0));
    // One handshake and one login per connection (up to 4: a worker that starts late may
    // find the messages all taken and open none).
    assert!((1..=4).contains(&s.connections), "{} connections", s.connections);
    assert_eq!((s.messages, s.tls_handshakes, s.auth_successes), (200, s.connections, s.connections));
    assert_eq!(r.recorder.histogram(Phase::Tls).len(), s.connections);
    assert_eq!(r.recorder.histogram(Phase::Auth).len(), s.connections);
}

fn implicit_tls_with_auth_login_and_connection_per_message(io: IoMode) {
    let (server, _) = self_signed();
    let mut sc = SinkConfig::new("sink.test");
    sc.auth = Some(("u".into(), "secret".into()));
    let sink = start_sink(io, sc, |o| {
        o.tls = Some(server);
        o.implicit_tls = true;
    });
    let mut cfg = config(&sink);
    cfg.messages = Some(40);
    cfg.session.messages_per_connection = 1;
    cfg.session.auth =
        Some(AuthConfig { mechanism: AuthMechanism::Login, user: "u".into(), password: "secret".into() });
    cfg.tls = Some(tls_client(true));
    let (r, s) = run_and_stop(cfg, sink);
    assert_eq!((r.recorder.ok, r.recorder.failed()), (40, 0));
    assert_eq!((s.connections, s.messages, s.auth_successes), (40, 40, 40));
}

fn a_certificate_we_do_not_trust_fails_cleanly(io: IoMode) {
    let (server, _) = self_signed();
    let sink = start_sink(io, SinkConfig::new("sink.test"), |o| {
        o.tls = Some(server);
        o.implicit_tls = true;
    });
    let mut cfg = config(&sink);
    cfg.messages = Some(5);
    let empty_ca = std::env::temp_dir().join(format!("loadgen-empty-ca-{}.pem", std::process::id()));
    // A CA file holding an unrelated certificate.
    let (_, other) = self_signed();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64_lines(other.as_ref()));
    std::fs::write(&empty_ca, pem).unwrap();
    cfg.tls = Some(TlsClient {
        config: tls::client_config(false, Some(&empty_ca)).unwrap(),
        server_name: tls::server_name("sink.test").unwrap(),
        implicit: true,
    });
    let (r, s) = run_and_stop(cfg, sink);
    std::fs::remove_file(&empty_ca).ok();
    assert_eq!(r.recorder.ok, 0);
    assert!(r.recorder.errors.protocol + r.recorder.errors.io > 0);
    assert_eq!(s.messages, 0);
}

fn base64_lines(der: &[u8]) -> String {
    let mut out = Vec::new();
    ringmx_b64::encode_into(der, &mut out);
    out.chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_dead_target_still_ends_a_message_bounded_run() {
    // A socket bound but not listening: connections to its port are refused, and no other
    // process can take the port while the test runs.
    let dead = bound_not_listening();
    let port = dead.1;
    let sink = start_sink(IoMode::Epoll, SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.target = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.messages = Some(20);
    cfg.duration = None;
    let r = run(cfg);
    assert_eq!(r.recorder.ok, 0);
    assert!(r.recorder.errors.connect >= 20);
    sink.stop().unwrap();
}

/// A TCP socket bound to a free loopback port without listening, and its port.
fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: socket(2) takes no pointers; the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_in is plain old data, for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: bind and getsockname read and write one sockaddr_in, a live local whose size
    // is passed with it; `fd` is the socket owned above.
    unsafe {
        assert_eq!(libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len), 0);
        assert_eq!(libc::getsockname(fd.as_raw_fd(), &mut addr as *mut _ as *mut libc::sockaddr, &mut len), 0);
    }
    (fd, u16::from_be(addr.sin_port))
}

fn a_stalled_server_still_ends_a_duration_bounded_run(io: IoMode) {
    let mut sc = SinkConfig::new("sink.test");
    sc.delays[SinkPhase::DataEnd.index()] = Duration::from_secs(3600);
    let sink = start_sink(io, sc, |_| {});
    let mut cfg = config(&sink);
    cfg.messages = None;
    cfg.duration = Some(Duration::from_millis(200));
    cfg.session.reply_timeout = Duration::from_millis(300);
    let (r, _) = run_and_stop(cfg, sink);
    assert_eq!(r.recorder.ok, 0);
    assert_eq!(r.recorder.errors.timeout + r.recorder.errors.unfinished, 4, "each connection's message is lost");
}

fn replayed_eml_files_arrive_whole(io: IoMode) {
    let dir = std::env::temp_dir().join(format!("loadgen-eml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.eml"), "Subject: a\n\n.dot line\nbody\n").unwrap();
    std::fs::write(dir.join("b.eml"), "Subject: b\r\n\r\nbody b\r\n").unwrap();
    std::fs::write(dir.join("ignored.txt"), "x").unwrap();
    let sink = start_sink(io, SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.messages = Some(10);
    cfg.message = cfg.message.clone().replay_dir(&dir).unwrap();
    let (r, s) = run_and_stop(cfg, sink);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(r.recorder.ok, 10);
    // As received: a.eml is 32 bytes with CRLF and its dot stuffed, b.eml 22. Five of each.
    assert_eq!(s.bytes, 5 * 32 + 5 * 22);
}

fn large_messages_on_many_connections_arrive_whole(io: IoMode) {
    // More data in flight than the io_uring driver has receive buffers (128 × 16 KiB per
    // thread): reads span buffers and the multishot recv runs out of them and is re-armed.
    let sink = start_sink(io, SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.connections = 64;
    cfg.messages = Some(300);
    cfg.message = MessageConfig::generated(
        "a@example.net",
        vec!["example.test".into()],
        1,
        SizeDistribution::Uniform { lo: 20_000, hi: 300_000 },
    );
    let (r, s) = run_and_stop(cfg, sink);
    assert_eq!((r.recorder.ok, r.recorder.failed()), (300, 0));
    assert_eq!((s.messages, s.bytes), (300, r.recorder.bytes));
}

/// A raw client: connects, reads the greeting.
fn raw_client(sink: &Sink) -> std::net::TcpStream {
    let mut c = std::net::TcpStream::connect(sink.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let greeting = read_some(&mut c);
    assert!(greeting.starts_with("220 "), "{greeting}");
    c
}

fn read_some(c: &mut std::net::TcpStream) -> String {
    use std::io::Read as _;
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).expect("read within the time-out");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Everything until the sink closes the connection (a reset, when the sink closed it with
/// input unread, counts as closed).
fn read_to_end(c: &mut std::net::TcpStream) -> String {
    use std::io::Read as _;
    let mut out = Vec::new();
    match c.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the sink did not close within the time-out: {e}"),
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn a_reply_after_the_client_half_closed_still_goes_out(io: IoMode) {
    use std::io::Write as _;
    let sink = start_sink(io, SinkConfig::new("sink.test"), |_| {});
    let mut c = raw_client(&sink);
    c.write_all(b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nbody\r\n.\r\nQUIT\r\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let out = read_to_end(&mut c);
    assert!(out.contains("250 2.0.0 Ok: queued\r\n") && out.ends_with("221 2.0.0 Bye\r\n"), "{out}");
    let s = sink.stop().unwrap();
    assert_eq!((s.connections, s.messages), (1, 1));
}

fn idle_connections_are_closed(io: IoMode) {
    use std::io::Write as _;
    let sink = start_sink(io, SinkConfig::new("sink.test"), |o| o.idle_timeout = Duration::from_millis(100));
    let mut c = raw_client(&sink);
    c.write_all(b"NOOP\r\n").unwrap();
    // The idle scan runs once a second: the connection ends well within the read time-out.
    assert_eq!(read_to_end(&mut c), "250 2.0.0 Ok\r\n");
    sink.stop().unwrap();
}

fn stopping_with_connections_open_ends_them(io: IoMode) {
    use std::io::Write as _;
    let mut sc = SinkConfig::new("sink.test");
    sc.delays[SinkPhase::Mail.index()] = Duration::from_secs(3600);
    let sink = start_sink(io, sc, |_| {});
    let mut held = raw_client(&sink);
    held.write_all(b"EHLO c\r\nMAIL FROM:<a@x>\r\n").unwrap();
    let mut idle = raw_client(&sink);
    let s = sink.stop().expect("the sink stops with connections open");
    assert_eq!(s.connections, 2);
    for c in [&mut held, &mut idle] {
        assert!(!read_to_end(c).contains("250 2.1.0"), "the held reply never goes out");
    }
}

//! The generator against its own sink, in process, over real loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use ringmx_loadgen::client::driver::{self, RunConfig, RunResult, TlsClient};
use ringmx_loadgen::client::message::{MessageConfig, SizeDistribution};
use ringmx_loadgen::client::session::{AuthConfig, AuthMechanism, SessionConfig};
use ringmx_loadgen::report::Phase;
use ringmx_loadgen::sink::replies::SinkPhase;
use ringmx_loadgen::sink::{Sink, SinkConfig, SinkOptions, SinkStats};
use ringmx_loadgen::tls;

fn start_sink(cfg: SinkConfig, tweak: impl FnOnce(&mut SinkOptions)) -> Sink {
    let mut opts = SinkOptions::new("127.0.0.1:0".parse().unwrap(), cfg.build());
    opts.threads = 2;
    tweak(&mut opts);
    Sink::start(opts).expect("sink starts")
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

#[test]
fn closed_loop_delivers_every_message_over_reused_connections() {
    let sink = start_sink(SinkConfig::new("sink.test"), |_| {});
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

#[test]
fn connection_per_message_and_several_recipients() {
    let sink = start_sink(SinkConfig::new("sink.test"), |_| {});
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

#[test]
fn bdat_end_to_end() {
    let sink = start_sink(SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.session.chunking = true;
    let (r, s) = run_and_stop(cfg, sink);
    assert_eq!((r.recorder.ok, s.messages), (200, 200));
    assert_eq!(r.recorder.codes.count(354), 0, "no DATA was sent");
    assert_eq!(s.bytes, r.recorder.bytes);
}

#[test]
fn an_injected_delay_shows_in_its_phase() {
    let mut sc = SinkConfig::new("sink.test");
    sc.delays[SinkPhase::DataEnd.index()] = Duration::from_millis(5);
    let sink = start_sink(sc, |_| {});
    let mut cfg = config(&sink);
    cfg.messages = Some(100);
    let (r, _) = run_and_stop(cfg, sink);
    let p50 = |p: Phase| r.recorder.histogram(p).value_at_quantile(0.5) as f64 / 1e6;
    // Measurement check, not a speed check: the 5 ms must be seen, and not much more.
    assert!(p50(Phase::DataEnd) >= 5.0, "data_end p50 {} ms", p50(Phase::DataEnd));
    assert!(p50(Phase::DataEnd) < 9.0, "data_end p50 {} ms", p50(Phase::DataEnd));
    assert!(p50(Phase::Mail) < p50(Phase::DataEnd), "the delay belongs to data_end only");
    assert!(p50(Phase::Transaction) >= 5.0);
}

#[test]
fn open_loop_starts_messages_on_schedule() {
    let sink = start_sink(SinkConfig::new("sink.test"), |_| {});
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

#[test]
fn open_loop_charges_queueing_to_latency() {
    // One connection, a 40 ms server, 100 messages/s offered: the server keeps up with 25/s,
    // so messages queue. Measured from their intended start (wrk2's correction), latencies
    // grow far past the 40 ms service time.
    let mut sc = SinkConfig::new("sink.test");
    sc.delays[SinkPhase::DataEnd.index()] = Duration::from_millis(40);
    let sink = start_sink(sc, |_| {});
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

#[test]
fn starttls_with_auth_plain() {
    let (server, _) = self_signed();
    let mut sc = SinkConfig::new("sink.test");
    sc.starttls = true;
    sc.auth = Some(("u".into(), "secret".into()));
    let sink = start_sink(sc, |o| o.tls = Some(server));
    let mut cfg = config(&sink);
    cfg.session.starttls = true;
    cfg.session.auth =
        Some(AuthConfig { mechanism: AuthMechanism::Plain, user: "u".into(), password: "secret".into() });
    cfg.tls = Some(tls_client(false));
    let (r, s) = run_and_stop(cfg, sink);
    assert_eq!((r.recorder.ok, r.recorder.failed()), (200, 0));
    assert_eq!((s.messages, s.tls_handshakes, s.auth_successes), (200, 4, 4));
    assert_eq!(r.recorder.histogram(Phase::Tls).len(), 4);
    assert_eq!(r.recorder.histogram(Phase::Auth).len(), 4);
}

#[test]
fn implicit_tls_with_auth_login_and_connection_per_message() {
    let (server, _) = self_signed();
    let mut sc = SinkConfig::new("sink.test");
    sc.auth = Some(("u".into(), "secret".into()));
    let sink = start_sink(sc, |o| {
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

#[test]
fn a_certificate_we_do_not_trust_fails_cleanly() {
    let (server, _) = self_signed();
    let sink = start_sink(SinkConfig::new("sink.test"), |o| {
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
    ringmx_loadgen::b64::encode_into(der, &mut out);
    out.chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_dead_target_still_ends_a_message_bounded_run() {
    // Bind then drop: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sink = start_sink(SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.target = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.messages = Some(20);
    cfg.duration = None;
    let r = run(cfg);
    assert_eq!(r.recorder.ok, 0);
    assert!(r.recorder.errors.connect >= 20);
    sink.stop().unwrap();
}

#[test]
fn a_stalled_server_still_ends_a_duration_bounded_run() {
    let mut sc = SinkConfig::new("sink.test");
    sc.delays[SinkPhase::DataEnd.index()] = Duration::from_secs(3600);
    let sink = start_sink(sc, |_| {});
    let mut cfg = config(&sink);
    cfg.messages = None;
    cfg.duration = Some(Duration::from_millis(200));
    cfg.session.reply_timeout = Duration::from_millis(300);
    let (r, _) = run_and_stop(cfg, sink);
    assert_eq!(r.recorder.ok, 0);
    assert_eq!(r.recorder.errors.timeout + r.recorder.errors.unfinished, 4, "each connection's message is lost");
}

#[test]
fn replayed_eml_files_arrive_whole() {
    let dir = std::env::temp_dir().join(format!("loadgen-eml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.eml"), "Subject: a\n\n.dot line\nbody\n").unwrap();
    std::fs::write(dir.join("b.eml"), "Subject: b\r\n\r\nbody b\r\n").unwrap();
    std::fs::write(dir.join("ignored.txt"), "x").unwrap();
    let sink = start_sink(SinkConfig::new("sink.test"), |_| {});
    let mut cfg = config(&sink);
    cfg.messages = Some(10);
    cfg.message = cfg.message.clone().replay_dir(&dir).unwrap();
    let (r, s) = run_and_stop(cfg, sink);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(r.recorder.ok, 10);
    // As received: a.eml is 32 bytes with CRLF and its dot stuffed, b.eml 22. Five of each.
    assert_eq!(s.bytes, 5 * 32 + 5 * 22);
}

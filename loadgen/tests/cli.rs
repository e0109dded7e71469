//! The binary's contract: bounds, exit status, the remote-target guard, JSON output, the
//! sink's counters at exit, and a run against Postfix's smtp-sink.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmx-loadgen");

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-cli-{}-{name}", std::process::id()))
}

/// Runs the binary with a time limit; the test fails (rather than hangs) past it.
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_bounded(child, Duration::from_secs(60))
}

fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("process did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Runs each listed test (a function taking the value of the sink's `--io`) once per
/// driver, as `NAME::uring` and `NAME::epoll`; the io_uring one is skipped, saying so,
/// where the kernel does not allow io_uring.
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                match ringmx_loadgen::sink::IoMode::Uring.choose() {
                    Ok(_) => super::$name("uring"),
                    Err(e) => eprintln!("skipped: {e}"),
                }
            }
            #[test]
            fn epoll() {
                super::$name("epoll");
            }
        }
    )*};
}

on_both_drivers!(
    run_against_the_sink_binary_with_json,
    errors_over_the_limit_fail_the_run,
    the_sink_prints_counters_on_sigterm_and_writes_json,
    the_sink_ends_after_its_duration,
);

/// Starts `ringmx-loadgen sink --io IO` on a free port; returns it and its address once
/// listening.
fn spawn_sink(io: &str, extra: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    spawn_sink_with(&["--io", io], extra)
}

fn spawn_sink_with(io: &[&str], extra: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["sink", "--listen", "127.0.0.1:0", "--threads", "1"])
        .args(io)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("sink prints its address");
    let addr = first.strip_prefix("listening on ").expect("listening line").to_string();
    (child, addr, rx)
}

fn sink_output(rx: &mpsc::Receiver<String>) -> String {
    let mut out = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        out += &line;
        out.push('\n');
    }
    out
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_remote_target_is_refused_without_allow_remote() {
    let o = run(&["run", "--target", "192.0.2.1:25", "--messages", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--allow-remote"), "{}", stderr(&o));
}

#[test]
fn a_run_without_bounds_is_refused() {
    let o = run(&["run", "--target", "127.0.0.1:25"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--messages"));
}

fn run_against_the_sink_binary_with_json(io: &str) {
    let (sink, addr, rx) = spawn_sink(io, &["--max-messages", "300"]);
    let json = tmp("run.json");
    let svg = tmp("run.svg");
    let o = run(&[
        "run",
        "--target",
        &addr,
        "--messages",
        "300",
        "--connections",
        "3",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(report.contains("300 ok, 0 failed"), "{report}");
    // The sink stops by itself at --max-messages and prints its counters.
    let sink = wait_bounded(sink, Duration::from_secs(30));
    assert!(sink.status.success());
    let counters = sink_output(&rx);
    assert_eq!(counter(&counters, "messages"), 300);
    // Up to 3 (a worker that starts late may find the messages all taken and open none).
    let connections = counter(&report, "connections");
    assert!((1..=3).contains(&connections), "{connections} connections");
    assert_eq!(counter(&counters, "connections"), connections);

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["messages"]["ok"], 300);
    assert_eq!(v["error_rate"], 0.0);
    for phase in ["connect", "banner", "ehlo", "mail", "rcpt", "data", "data_end", "transaction"] {
        for k in ["p50", "p90", "p99", "p99_9", "max"] {
            assert!(v["latency_us"][phase][k].as_f64().unwrap() >= 0.0, "{phase}.{k}");
        }
    }
    assert!(v["latency_us"]["transaction"]["p50"].as_f64().unwrap() > 0.0);
    assert!(v["throughput"]["msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["cpu"]["seconds"].as_f64().is_some());
    assert!(v["codes"].as_array().unwrap().iter().any(|c| c["code"] == 354));
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("latency by percentile"));
    std::fs::remove_file(json).ok();
    std::fs::remove_file(svg).ok();
}

fn errors_over_the_limit_fail_the_run(io: &str) {
    let (mut sink, addr, _rx) = spawn_sink(io, &["--rcpt-reply", "550 5.1.1 no such user@100%"]);
    let o = run(&["run", "--target", &addr, "--messages", "20", "-c", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("error rate"));
    let o = run(&["run", "--target", &addr, "--messages", "20", "-c", "2", "--max-error-rate", "1"]);
    assert_eq!(o.status.code(), Some(0));
    sink.kill().ok();
    sink.wait().ok();
}

fn the_sink_prints_counters_on_sigterm_and_writes_json(io: &str) {
    let json = tmp("sink.json");
    let (sink, addr, rx) = spawn_sink(io, &["--json", json.to_str().unwrap()]);
    let o = run(&["run", "--target", &addr, "--messages", "30", "-c", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = counter(&String::from_utf8_lossy(&o.stdout), "connections");
    // One connection at a time, ten messages on each: two connections.
    let o = run(&["run", "--target", &addr, "--messages", "20", "-c", "1", "--messages-per-connection", "10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(counter(&String::from_utf8_lossy(&o.stdout), "connections"), 2);
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
    unsafe { libc_kill(sink.id() as i32, 15) };
    let out = wait_bounded(sink, Duration::from_secs(30));
    assert!(out.status.success());
    let counters = sink_output(&rx);
    assert_eq!(counter(&counters, "messages"), 50);
    assert_eq!(counter(&counters, "connections"), first + 2);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["messages"], 50);
    assert_eq!(v["recipients"], 50);
    assert_eq!(v["connections"], first + 2);
    std::fs::remove_file(json).ok();
}

fn the_sink_ends_after_its_duration(io: &str) {
    let (sink, _addr, rx) = spawn_sink(io, &["--duration", "300ms"]);
    let out = wait_bounded(sink, Duration::from_secs(30));
    assert!(out.status.success());
    assert_eq!(counter(&sink_output(&rx), "messages"), 0);
}

/// The contract ringmx's tests rely on: `sink --listen ADDR --threads 1 --json FILE`
/// prints `listening on ADDR` first on stdout; the driver chosen goes to stderr.
#[test]
fn the_default_driver_is_chosen_at_start_and_named_on_stderr() {
    let json = tmp("auto.json");
    let (sink, _addr, rx) = spawn_sink_with(&["--json", json.to_str().unwrap()], &[]);
    // SAFETY: kill(2) takes a pid and a signal, no memory; the pid is our own child, not yet reaped.
    unsafe { libc_kill(sink.id() as i32, 15) };
    let out = wait_bounded(sink, Duration::from_secs(30));
    assert!(out.status.success());
    assert_eq!(counter(&sink_output(&rx), "connections"), 0);
    let expected = match ringmx_loadgen::sink::IoMode::Uring.choose() {
        Ok(_) => "ringmx-loadgen sink: io_uring (",
        Err(_) => "ringmx-loadgen sink: epoll (io_uring unavailable: ",
    };
    assert!(stderr(&out).starts_with(expected), "{}", stderr(&out));
    std::fs::remove_file(json).ok();
}

#[test]
fn a_plot_that_cannot_be_drawn_is_refused_before_the_run() {
    let o = run(&["run", "--target", "127.0.0.1:9", "--messages", "1", "--plot", "latency.jpg"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(".svg or .png"), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "no run took place");
}

#[test]
fn an_unknown_driver_is_a_usage_error() {
    let o = run(&["sink", "--listen", "127.0.0.1:0", "--io", "kqueue"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--io"), "{}", stderr(&o));
}

// SAFETY: the declaration matches kill(2) in the C library: int kill(pid_t, int).
unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn against_postfix_smtp_sink() {
    let bin = Path::new("/usr/sbin/smtp-sink");
    if !bin.exists() {
        eprintln!("skipped: /usr/sbin/smtp-sink is not installed");
        return;
    }
    // smtp-sink takes a port, not port 0: one the kernel hands out, and another if some
    // process took it before smtp-sink could listen there.
    let mut started = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut sink = Command::new(bin)
            .args(["-u", "nobody", &addr, "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err()
            && sink.try_wait().ok().flatten().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if sink.try_wait().ok().flatten().is_none() && std::net::TcpStream::connect(&addr).is_ok() {
            started = Some((sink, addr));
            break;
        }
        sink.kill().ok();
        sink.wait().ok();
    }
    let (mut sink, addr) = started.expect("smtp-sink did not start");
    let o = run(&["run", "--target", &addr, "--messages", "300", "-c", "4", "--recipients", "2"]);
    let o2 = run(&["run", "--target", &addr, "--messages", "50", "-c", "2", "--messages-per-connection", "1"]);
    sink.kill().ok();
    sink.wait().ok();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("300 ok, 0 failed"));
    assert_eq!(o2.status.code(), Some(0), "{}", stderr(&o2));
}

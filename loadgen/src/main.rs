//! `ringmx-loadgen`: see `ringmx-loadgen --help` and docs/loadgen.md.
//!
//! Exit status: 0 success; 1 runtime failure or errors above `--max-error-rate`;
//! 2 usage error (including a remote target without `--allow-remote`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use clap::Parser;
use ringmx_loadgen::cli::{AuthMech, Cli, Command, Io, RunArgs, SinkArgs};
use ringmx_loadgen::client::driver::{self, RunConfig, TlsClient};
use ringmx_loadgen::client::message::MessageConfig;
use ringmx_loadgen::client::session::{AuthConfig, AuthMechanism, SessionConfig};
use ringmx_loadgen::report::progress;
use ringmx_loadgen::report::summary::{self, Figures, RunDescription};
use ringmx_loadgen::sink::replies::SinkPhase;
use ringmx_loadgen::sink::{IoMode, Sink, SinkConfig, SinkOptions, SinkStats};
use ringmx_loadgen::{net, plot, tls};

/// A failure with the exit status it maps to.
struct Failure(u8, String);

fn usage(msg: impl Into<String>) -> Failure {
    Failure(2, msg.into())
}

fn runtime(msg: impl std::fmt::Display) -> Failure {
    Failure(1, msg.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Run(a) => run(a),
        Command::Sink(a) => sink(a),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            eprintln!("ringmx-loadgen: {msg}");
            ExitCode::from(code)
        }
    }
}

fn resolve(s: &str) -> Result<SocketAddr, Failure> {
    s.to_socket_addrs().map_err(|e| usage(format!("{s}: {e}")))?.next().ok_or_else(|| usage(format!("{s}: no address")))
}

fn run(a: RunArgs) -> Result<u8, Failure> {
    let target = resolve(&a.target)?;
    if !target.ip().is_loopback() && !a.allow_remote {
        return Err(usage(format!(
            "refusing to load {target}, which is not a loopback address; pass --allow-remote if you mean it"
        )));
    }
    if a.messages.is_none() && a.duration.is_none() {
        return Err(usage("give --messages and/or --duration: a run must end by itself"));
    }
    if !(0.0..=1.0).contains(&a.max_error_rate) {
        return Err(usage("--max-error-rate is a fraction between 0 and 1"));
    }
    if a.recipients == 0 || a.connections == 0 {
        return Err(usage("--recipients and --connections must be at least 1"));
    }
    if let Some(path) = &a.plot {
        plot::check(path).map_err(|e| usage(e.to_string()))?;
    }
    let tls = if a.tls || a.starttls {
        let config = tls::client_config(a.insecure, a.ca_file.as_deref()).map_err(|e| usage(e.to_string()))?;
        let host = a.target.rsplit_once(':').map_or(a.target.as_str(), |(h, _)| h).trim_matches(['[', ']']);
        let name = a.tls_server_name.as_deref().unwrap_or(host);
        let server_name = tls::server_name(name).map_err(|e| usage(e.to_string()))?;
        Some(TlsClient { config, server_name, implicit: a.tls })
    } else {
        None
    };
    let auth = a.auth_user.as_ref().map(|user| AuthConfig {
        mechanism: match a.auth_mech {
            AuthMech::Plain => AuthMechanism::Plain,
            AuthMech::Login => AuthMechanism::Login,
        },
        user: user.clone(),
        password: a.auth_password.clone().unwrap_or_default(),
    });
    let mut message = MessageConfig::generated(&a.from, a.rcpt_domains.clone(), a.recipients, a.size.clone());
    message.rcpt_users = a.rcpt_users;
    message.seed = a.seed;
    if let Some(dir) = &a.eml_dir {
        message = message.replay_dir(dir).map_err(|e| usage(e.to_string()))?;
    }
    let session = SessionConfig {
        ehlo_name: a.ehlo.clone(),
        pipelining: !a.no_pipelining,
        chunking: a.bdat,
        starttls: a.starttls,
        auth,
        overlap: !a.no_overlap,
        messages_per_connection: a.messages_per_connection,
        reply_timeout: a.timeout,
    };
    let desc = RunDescription {
        target: target.to_string(),
        connections: a.connections,
        rate: a.rate,
        messages: a.messages,
        duration: a.duration,
        messages_per_connection: a.messages_per_connection,
        recipients: a.recipients,
        size: match &a.eml_dir {
            Some(d) => format!("replay {}", d.display()),
            None => format!("{:?}", a.size),
        },
        pipelining: !a.no_pipelining,
        bdat: a.bdat,
        tls: if a.tls {
            "implicit"
        } else if a.starttls {
            "starttls"
        } else {
            "none"
        },
        auth: a.auth_user.is_some(),
    };
    let cfg = RunConfig {
        target,
        threads: a.threads.unwrap_or_else(net::cores),
        connections: a.connections,
        rate: a.rate,
        messages: a.messages,
        duration: a.duration,
        ramp_up: a.ramp_up,
        session,
        tls,
        message,
    };
    net::stop_on_signals(-1).map_err(runtime)?;
    let live = !a.quiet && net::stderr_is_tty();
    let result = driver::run(cfg, &mut |t| {
        if live {
            progress::draw(t)
        }
    })
    .map_err(runtime)?;
    if live {
        progress::finish();
    }
    print!("{}", summary::to_text(&result, &desc));
    if let Some(path) = &a.json {
        let v = summary::to_json(&result, &desc);
        let text = serde_json::to_string_pretty(&v).expect("JSON values serialise");
        std::fs::write(path, text + "\n").map_err(|e| runtime(format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &a.plot {
        let title = format!("ringmx-loadgen → {}", desc.target);
        plot::write(&result, path, &title).map_err(runtime)?;
    }
    let f = Figures::of(&result);
    if f.error_rate > a.max_error_rate || f.attempted == 0 {
        eprintln!(
            "ringmx-loadgen: error rate {:.4} is above --max-error-rate {} ({} of {} messages failed)",
            f.error_rate, a.max_error_rate, f.failed, f.attempted
        );
        return Ok(1);
    }
    Ok(0)
}

fn sink(a: SinkArgs) -> Result<u8, Failure> {
    let listen = resolve(&a.listen)?;
    let mut cfg = SinkConfig::new(&a.hostname);
    cfg.pipelining = !a.no_pipelining;
    cfg.chunking = !a.no_chunking;
    cfg.max_message_size = a.max_size;
    cfg.starttls = a.tls_cert.is_some() && !a.implicit_tls;
    if let Some(cred) = &a.auth {
        let (u, p) = cred.split_once(':').ok_or_else(|| usage("--auth wants USER:PASSWORD"))?;
        cfg.auth = Some((u.to_string(), p.to_string()));
    }
    let per_phase = [
        (SinkPhase::Banner, &a.banner_reply),
        (SinkPhase::Ehlo, &a.ehlo_reply),
        (SinkPhase::Mail, &a.mail_reply),
        (SinkPhase::Rcpt, &a.rcpt_reply),
        (SinkPhase::Data, &a.data_reply),
        (SinkPhase::DataEnd, &a.data_end_reply),
    ];
    for (phase, specs) in per_phase {
        for s in specs {
            cfg.replies[phase.index()].push(s.clone()).map_err(|e| usage(e.to_string()))?;
        }
    }
    for d in &a.delay {
        cfg.delays[d.phase.index()] = d.delay;
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k).map_err(|e| usage(e.to_string()))?),
        _ => None,
    };
    let mut opts = SinkOptions::new(listen, cfg.build());
    opts.threads = a.threads.unwrap_or_else(net::cores);
    opts.tls = tls;
    opts.implicit_tls = a.implicit_tls;
    opts.max_messages = a.max_messages;
    opts.duration = a.duration;
    opts.idle_timeout = a.idle_timeout;
    opts.io = match a.io {
        Io::Auto => IoMode::Auto,
        Io::Uring => IoMode::Uring,
        Io::Epoll => IoMode::Epoll,
    };
    let sink = Sink::start(opts).map_err(|e| runtime(format!("listen on {listen}: {e}")))?;
    eprintln!("ringmx-loadgen sink: {}", sink.driver());
    net::stop_on_signals(sink.wake_fd()).map_err(runtime)?;
    println!("listening on {}", sink.local_addr());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let stats = sink.wait().map_err(runtime)?;
    print!("{}", sink_text(&stats));
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&sink_json(&stats)).expect("JSON values serialise");
        std::fs::write(path, text + "\n").map_err(|e| runtime(format!("{}: {e}", path.display())))?;
    }
    Ok(0)
}

fn sink_text(s: &SinkStats) -> String {
    let mut out = format!(
        "connections {}\nmessages {}\nrecipients {}\nbytes {}\ntls_handshakes {}\nauth_successes {}\nreplies\n",
        s.connections, s.messages, s.recipients, s.bytes, s.tls_handshakes, s.auth_successes
    );
    for (code, count, text) in s.codes.iter() {
        out.push_str(&format!("  {code} ×{count:<10} {text}\n"));
    }
    out
}

fn sink_json(s: &SinkStats) -> serde_json::Value {
    let codes: Vec<_> = s
        .codes
        .iter()
        .map(|(code, count, text)| serde_json::json!({"code": code, "count": count, "text": text}))
        .collect();
    serde_json::json!({
        "connections": s.connections, "messages": s.messages, "recipients": s.recipients,
        "bytes": s.bytes, "tls_handshakes": s.tls_handshakes, "auth_successes": s.auth_successes,
        "codes": codes,
    })
}

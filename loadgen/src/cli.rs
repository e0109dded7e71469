//! The command line: `ringmx-loadgen run` and `ringmx-loadgen sink`, and the parsers of
//! their values (durations, sizes, size distributions, rates).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::message::SizeDistribution;
use crate::sink::replies::{DelaySpec, ReplySpec};
pub use crate::units::{parse_duration, parse_size};

#[derive(Debug, Parser)]
#[command(name = "ringmx-loadgen", version, about = "SMTP load generator and discard sink")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send mail to an SMTP server and measure it.
    Run(RunArgs),
    /// Accept and discard mail, counting it.
    Sink(SinkArgs),
}

/// The sink's event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Io {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMech {
    Plain,
    Login,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The server, ADDR:PORT (or HOST:PORT).
    #[arg(long)]
    pub target: String,
    /// Allow a target outside loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Connections (closed loop: all busy; open loop: the most in use at once).
    #[arg(long, short = 'c', default_value_t = 10)]
    pub connections: usize,
    /// Open loop: start messages at this rate (per second, e.g. 2000 or 2000/s).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Stop after this many messages (attempts).
    #[arg(long, short = 'n')]
    pub messages: Option<u64>,
    /// Stop starting messages after this long (e.g. 30s, 2m).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Messages per connection before QUIT and a new connection; 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub messages_per_connection: u64,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub recipients: usize,
    /// Recipient domains, used in turn (repeatable).
    #[arg(long = "rcpt-domain", default_value = "example.test")]
    pub rcpt_domains: Vec<String>,
    /// Distinct recipient local parts (user0 … userN-1).
    #[arg(long, default_value_t = 1000)]
    pub rcpt_users: u64,
    /// Envelope sender.
    #[arg(long, default_value = "loadgen@example.net")]
    pub from: String,
    /// Message size: N, LO-HI (uniform) or lognormal:MEDIAN[:SIGMA]; k/m suffixes are ×1024.
    #[arg(long, default_value = "1k", value_parser = parse_size_distribution)]
    pub size: SizeDistribution,
    /// Replay the .eml files of this directory instead of generated messages.
    #[arg(long)]
    pub eml_dir: Option<PathBuf>,
    /// Do not use PIPELINING even when offered.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Wait for each message's final reply before sending the next MAIL (by default the
    /// next MAIL/RCPT/DATA go out with the previous content, as RFC 2920 allows).
    #[arg(long)]
    pub no_overlap: bool,
    /// Send with BDAT when the server offers CHUNKING.
    #[arg(long)]
    pub bdat: bool,
    /// Upgrade with STARTTLS (required).
    #[arg(long, conflicts_with = "tls")]
    pub starttls: bool,
    /// Implicit TLS from the first byte (port 465 style).
    #[arg(long)]
    pub tls: bool,
    /// Accept any server certificate (self-signed test servers).
    #[arg(long)]
    pub insecure: bool,
    /// PEM file of CA certificates to verify the server (default: the system bundle).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Name to send in SNI and verify (default: the target's host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Authenticate as this user (with --auth-password).
    #[arg(long, requires = "auth_password")]
    pub auth_user: Option<String>,
    #[arg(long, requires = "auth_user")]
    pub auth_password: Option<String>,
    #[arg(long, value_enum, default_value_t = AuthMech::Plain)]
    pub auth_mech: AuthMech,
    /// The EHLO name.
    #[arg(long, default_value = "loadgen.example.test")]
    pub ehlo: String,
    /// Open connections (closed loop) or raise the rate (open loop) gradually over this time.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub ramp_up: Duration,
    /// Longest wait for any reply; also how long in-flight messages may finish at the end.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Exit 1 when failed/attempted messages exceed this fraction.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency spectrum and throughput over time (FILE.svg or FILE.png; a PNG
    /// needs a TrueType font such as Debian's fonts-dejavu-core).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No live progress line even on a terminal.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Seed of the size and recipient choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to listen on, ADDR:PORT (port 0 picks one; the bound address is printed).
    #[arg(long)]
    pub listen: String,
    /// Event-loop threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Event loop: io_uring, epoll, or auto (io_uring when the kernel allows it; the
    /// choice is printed on stderr at start).
    #[arg(long, value_enum, default_value_t = Io::Auto)]
    pub io: Io,
    /// Name in the greeting and EHLO reply.
    #[arg(long, default_value = "sink.example.test")]
    pub hostname: String,
    #[arg(long)]
    pub no_pipelining: bool,
    #[arg(long)]
    pub no_chunking: bool,
    /// PEM certificate chain: offer STARTTLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Speak TLS from the first byte instead of offering STARTTLS.
    #[arg(long, requires = "tls_cert")]
    pub implicit_tls: bool,
    /// Offer AUTH PLAIN LOGIN and accept these credentials (USER:PASSWORD).
    #[arg(long)]
    pub auth: Option<String>,
    /// Largest message announced with SIZE.
    #[arg(long, value_parser = parse_size, default_value = "100m")]
    pub max_size: u64,
    /// Reply to the connection, e.g. "554 5.7.1 go away"@5% (repeatable).
    #[arg(long)]
    pub banner_reply: Vec<ReplySpec>,
    #[arg(long)]
    pub ehlo_reply: Vec<ReplySpec>,
    #[arg(long)]
    pub mail_reply: Vec<ReplySpec>,
    /// Reply to RCPT, e.g. "450 4.2.1 busy"@10% (repeatable).
    #[arg(long)]
    pub rcpt_reply: Vec<ReplySpec>,
    /// Reply to DATA (354 by default).
    #[arg(long)]
    pub data_reply: Vec<ReplySpec>,
    /// Reply after the end of the data.
    #[arg(long)]
    pub data_end_reply: Vec<ReplySpec>,
    /// Delay a phase's reply: PHASE=DURATION, phases banner, ehlo, mail, rcpt, data, data_end.
    #[arg(long)]
    pub delay: Vec<DelaySpec>,
    /// Exit after accepting this many messages.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Exit after this long.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Close connections idle this long.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub idle_timeout: Duration,
    /// Write the counters as JSON to this file at exit.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `N`, `LO-HI` (uniform) or `lognormal:MEDIAN[:SIGMA]` (σ of the log, default 1).
pub fn parse_size_distribution(s: &str) -> Result<SizeDistribution, String> {
    if let Some(rest) = s.strip_prefix("lognormal:") {
        let mut parts = rest.split(':');
        let median = parse_size(parts.next().unwrap_or(""))?;
        let sigma = match parts.next() {
            Some(p) => p.parse::<f64>().map_err(|_| format!("bad sigma in {s:?}"))?,
            None => 1.0,
        };
        if median == 0 || !(sigma >= 0.0 && sigma.is_finite()) {
            return Err(format!("bad lognormal {s:?}"));
        }
        return Ok(SizeDistribution::LogNormal { median, sigma });
    }
    if let Some((lo, hi)) = s.split_once('-') {
        let (lo, hi) = (parse_size(lo)?, parse_size(hi)?);
        if lo > hi {
            return Err(format!("empty range {s:?}"));
        }
        return Ok(SizeDistribution::Uniform { lo, hi });
    }
    Ok(SizeDistribution::Fixed(parse_size(s)?))
}

/// `2000` or `2000/s`, `120/m`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (num, per) = s.split_once('/').unwrap_or((s, "s"));
    let v: f64 = num.trim().parse().map_err(|_| format!("bad rate {s:?}"))?;
    let per_s = match per.trim() {
        "s" | "sec" => v,
        "m" | "min" => v / 60.0,
        "h" => v / 3600.0,
        _ => return Err(format!("bad rate unit in {s:?} (/s, /m, /h)")),
    };
    if !(per_s > 0.0 && per_s.is_finite()) {
        return Err(format!("rate must be positive: {s:?}"));
    }
    Ok(per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_and_distributions() {
        assert_eq!(parse_size("10k"), Ok(10 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("300"), Ok(300));
        assert!(parse_size("3q").is_err());
        assert_eq!(parse_size_distribution("4k"), Ok(SizeDistribution::Fixed(4096)));
        assert_eq!(parse_size_distribution("1k-2k"), Ok(SizeDistribution::Uniform { lo: 1024, hi: 2048 }));
        assert_eq!(
            parse_size_distribution("lognormal:8k:0.5"),
            Ok(SizeDistribution::LogNormal { median: 8192, sigma: 0.5 })
        );
        assert!(parse_size_distribution("2k-1k").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2000"), Ok(2000.0));
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5/fortnight").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ringmx-loadgen",
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--rcpt-reply",
            "450 4.2.1 busy@10%",
            "--delay",
            "data_end=5ms",
        ])
        .unwrap();
        let Command::Sink(s) = cli.command else { panic!("sink") };
        assert_eq!(s.rcpt_reply[0].code, 450);
        assert_eq!(s.delay[0].delay, Duration::from_millis(5));
    }
}

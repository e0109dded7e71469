//! The `ringmx` command: `serve` (the default), `check-config`, `queue`.

use clap::{Parser, Subcommand};
use ringmx::admin::control::QueueOp;
use ringmx::config::{Config, IoMode, ListenerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc unless built with `--features system-alloc` (docs/decisions/004-allocator.md).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ringmx", version, about = "SMTP mail gateway: inbound MX and relay")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default): SIGTERM drains and exits 0.
    Serve(ServeArgs),
    /// Validate a configuration file and print every problem found.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Inspect and control the queue (works with the server running or stopped; `bounce`
    /// needs it running).
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// Manage the directory: postoffices, domains, mailboxes, groups, blocked addresses.
    Directory(ringmx::admin::directory::DirectoryArgs),
    /// See and change the automatic bans (with the server running or stopped).
    Ban {
        #[command(subcommand)]
        cmd: BanCmd,
    },
    /// Check the setup: configuration, postmaster, listeners, an open-relay self-test, MX
    /// and PTR records, the queue. Exits 1 on a problem or warning.
    Diagnose {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reload the running server's configuration file (as SIGHUP does) and say what came
    /// of it: exit 1 with the errors when the file was refused.
    Reload {
        #[command(flatten)]
        at: Where,
    },
    /// Copy the configuration, the directory and the spool into DIR (the server may run).
    Backup {
        dir: PathBuf,
        #[command(flatten)]
        at: Where,
    },
    /// Put a backup from DIR in place, the server stopped and its spool empty.
    Restore {
        dir: PathBuf,
        #[command(flatten)]
        at: Where,
    },
    /// Read activity logs.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// DKIM keys of our domains.
    Dkim {
        #[command(subcommand)]
        cmd: DkimCmd,
    },
}

#[derive(clap::Subcommand)]
enum DkimCmd {
    /// Write a new signing key (PKCS#8 PEM, mode 0600) and print the DNS record to publish.
    Keygen {
        domain: String,
        /// rsa (every verifier knows it) or ed25519 (RFC 8463: short, but not every
        /// verifier checks it; publish both and sign with both to serve all).
        #[arg(long, default_value = "rsa", value_parser = ["rsa", "ed25519"])]
        algorithm: String,
        /// Size of an RSA key: 1024, 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        #[arg(long, default_value = "ringmx")]
        selector: String,
        /// Where to write the key (it must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Subcommand)]
enum LogCmd {
    /// Messages received, delivered, deferred and failed, refusals by reason, top senders,
    /// recipients and domains, traffic per hour (key=value and JSON lines alike).
    Summary {
        /// Activity log files (`-`: standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Switch the debug log (protocol traces in `<log dir>/debug.log`) on the running
    /// server: `on` (for every client, or those given with --client), `off`, `status`.
    Debug {
        #[arg(value_enum)]
        state: DebugState,
        /// A client address, network (CIDR) or wildcard to trace (repeatable; default all).
        #[arg(long = "client")]
        clients: Vec<String>,
        #[command(flatten)]
        at: Where,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DebugState {
    On,
    Off,
    Status,
}

#[derive(clap::Subcommand)]
enum BanCmd {
    /// The bans in force.
    List {
        #[command(flatten)]
        at: Where,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Lift the bans of these addresses.
    Lift {
        #[arg(required = true)]
        ips: Vec<std::net::IpAddr>,
        #[command(flatten)]
        at: Where,
    },
    /// Ban an address.
    Add {
        ip: std::net::IpAddr,
        /// For how long (`30m`, `2h`, `7d`); without it, for ever.
        #[arg(long = "for", value_parser = duration_arg)]
        duration: Option<std::time::Duration>,
        #[command(flatten)]
        at: Where,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Configuration file (TOML); without it, embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (spool, mailboxes); overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen on ADDR:PORT (repeatable); replaces the configured listeners.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// A domain to accept mail for (repeatable); replaces `local_domains`.
    #[arg(long)]
    local_domain: Vec<String>,
    /// I/O driver: auto, uring or epoll.
    #[arg(long)]
    io: Option<IoMode>,
    #[arg(long)]
    ingress_cores: Option<usize>,
    #[arg(long)]
    delivery_cores: Option<usize>,
    /// Take over from the server running on the same data directory: bind the same
    /// listeners beside it, have it drain, then take its spool (a zero-downtime restart or
    /// upgrade to this binary).
    #[arg(long)]
    takeover: bool,
}

#[derive(clap::Args)]
struct Where {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List queued messages.
    List {
        #[command(flatten)]
        at: Where,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filters: Filters,
    },
    /// Print a queued message as spooled.
    Show {
        id: String,
        #[command(flatten)]
        at: Where,
    },
    /// Try these messages now (held ones too).
    Retry(Targets),
    /// Remove these messages from the queue, without a report.
    Delete(Targets),
    /// Fail every unfinished recipient of these messages and report it to the sender.
    Bounce(Targets),
    /// Take these messages out of quarantine (a milter or script held them) or off hold:
    /// delivered as any other from now on.
    Release(Targets),
    /// Keep these messages in the queue, untried, until released (a message being
    /// delivered at this moment is skipped: hold it again once the attempt ends).
    Hold(Targets),
    /// Hold the mail for these recipient domains in the queue, untried, until resumed (a
    /// destination in trouble, or asking to be left alone).
    Suspend {
        #[arg(required = true)]
        domains: Vec<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Deliver again to these domains: their held mail is tried at once.
    Resume {
        #[arg(required = true)]
        domains: Vec<String>,
        #[command(flatten)]
        at: Where,
    },
    /// The suspended destinations.
    Suspended {
        #[command(flatten)]
        at: Where,
    },
}

#[derive(clap::Args)]
struct Targets {
    /// Queue ids (16 hexadecimal digits).
    #[arg(conflicts_with = "all")]
    ids: Vec<String>,
    /// Every queued message.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filters: Filters,
    #[command(flatten)]
    at: Where,
}

/// Which messages: every criterion given must hold (addresses compare without case).
#[derive(clap::Args)]
struct Filters {
    /// The sender contains this (`<>`: the null sender).
    #[arg(long, value_name = "TEXT")]
    sender: Option<String>,
    /// An unfinished recipient contains this.
    #[arg(long, value_name = "TEXT")]
    recipient: Option<String>,
    /// An unfinished recipient is in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// queued, deferred, quarantined or held.
    #[arg(long)]
    state: Option<String>,
    /// Received at least this long ago (30m, 2h, 5d).
    #[arg(long, value_name = "DURATION")]
    older_than: Option<String>,
    /// Received at most this long ago.
    #[arg(long, value_name = "DURATION")]
    newer_than: Option<String>,
    /// At least this many bytes (512K, 10M).
    #[arg(long, value_name = "SIZE")]
    min_size: Option<String>,
    /// At most this many bytes.
    #[arg(long, value_name = "SIZE")]
    max_size: Option<String>,
}

impl Filters {
    fn filter(&self) -> Result<ringmx::admin::query::QueueFilter, ExitCode> {
        let mut f = ringmx::admin::query::QueueFilter::default();
        let given = [
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("domain", &self.domain),
            ("state", &self.state),
            ("older_than", &self.older_than),
            ("newer_than", &self.newer_than),
            ("min_size", &self.min_size),
            ("max_size", &self.max_size),
        ];
        for (k, v) in given {
            if let Some(v) = v {
                f.set(k, v).map_err(|e| {
                    eprintln!("ringmx: --{}", e.replacen('_', "-", 1));
                    ExitCode::from(2)
                })?;
            }
        }
        Ok(f)
    }
}

fn load(config: Option<&PathBuf>) -> Result<Config, ExitCode> {
    match config {
        None => Ok(Config::embedded()),
        Some(p) => Config::load(p).map_err(|e| {
            for p in &e.problems {
                eprintln!("ringmx: {p}");
            }
            ExitCode::from(2)
        }),
    }
}

fn data_and_spool(at: &Where) -> Result<(PathBuf, PathBuf), ExitCode> {
    let mut cfg = load(at.config.as_ref())?;
    if let Some(d) = &at.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok((cfg.data_dir.clone(), cfg.spool_dir()))
}

/// `queue retry|delete|bounce`: prints one line per message it applied to; an id that is
/// not queued is an error (exit 1) after the others are done.
fn queue_control(
    op: QueueOp,
    t: Targets,
    out: &mut dyn Write,
) -> Result<Result<(), ringmx::admin::AdminError>, ExitCode> {
    use ringmx::admin::control::Selection;
    let (data, spool) = data_and_spool(&t.at)?;
    let filter = t.filters.filter()?;
    let sel = match (t.ids.is_empty(), t.all, filter.is_empty()) {
        (false, false, true) => Selection::Ids(t.ids),
        (true, true, true) => Selection::All,
        (true, false, false) => Selection::Filter(filter),
        (true, false, true) => {
            eprintln!("ringmx: name the messages: queue ids, --all, or a filter (--sender, --domain, --state, …)");
            return Err(ExitCode::from(2));
        }
        _ => {
            eprintln!("ringmx: name the messages one way: queue ids, --all, or a filter");
            return Err(ExitCode::from(2));
        }
    };
    Ok(ringmx::admin::control::request(&data, &spool, op, &sel).and_then(|a| {
        let verb = match op {
            QueueOp::Retry => "retry now",
            QueueOp::Delete => "deleted",
            QueueOp::Bounce => "bounced",
            QueueOp::Locate => "located",
            QueueOp::Release => "released",
            QueueOp::Hold => "held",
        };
        for id in &a.done {
            writeln!(out, "{id}: {verb}")?;
        }
        match (a.not_found.first(), a.skipped.first()) {
            (Some(id), _) => Err(ringmx::admin::AdminError::NotFound(id.clone())),
            (None, Some(why)) => Err(ringmx::admin::AdminError::Server(why.clone())),
            (None, None) => Ok(()),
        }
    }))
}

/// `queue suspend|resume|suspended`: prints the suspended destinations after the change.
fn destinations(
    op: &str,
    domains: &[String],
    at: &Where,
    out: &mut dyn Write,
) -> Result<Result<(), ringmx::admin::AdminError>, ExitCode> {
    let (data, _) = data_and_spool(at)?;
    Ok(ringmx::admin::control::destinations(&data, op, domains).and_then(|list| {
        for d in &list {
            writeln!(out, "{d}: suspended")?;
        }
        Ok(())
    }))
}

/// `log summary FILE...`.
fn log_summary(files: &[PathBuf]) -> Result<(), ExitCode> {
    let mut s = ringmx::obs::summary::Summary::default();
    for f in files {
        let text = if f.as_os_str() == "-" {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
        } else {
            std::fs::read(f).map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        match text {
            Ok(t) => s.add(&t),
            Err(e) => {
                eprintln!("ringmx: {}: {e}", f.display());
                return Err(ExitCode::from(1));
            }
        }
    }
    print!("{}", s.render());
    Ok(())
}

/// `backup DIR` / `restore DIR`: what was copied, or why not (exit 1).
fn backup_cmd(dir: &std::path::Path, at: &Where, restore: bool) -> Result<(), ExitCode> {
    let mut cfg = load(at.config.as_ref())?;
    if let Some(d) = &at.data_dir {
        cfg.data_dir = d.clone();
    }
    let r = if restore {
        ringmx::admin::backup::restore(&cfg, dir)
    } else {
        ringmx::admin::backup::backup(&cfg, at.config.as_deref(), dir).map_err(|e| e.to_string())
    };
    match r {
        Ok(c) => {
            let what = if restore { "restored" } else { "backed up" };
            println!("{what}: {} file(s), {} spool segment(s), {} bytes", c.files, c.segments, c.bytes);
            Ok(())
        }
        Err(e) => {
            eprintln!("ringmx: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// `reload`: the errors of a refused configuration on standard error, exit 1.
fn reload(at: &Where) -> Result<(), ExitCode> {
    let (data, _) = data_and_spool(at)?;
    let a = ringmx::admin::control::reload_request(&data).map_err(|e| {
        eprintln!("ringmx: {e}");
        ExitCode::from(1)
    })?;
    if a.applied {
        println!("configuration reloaded: new sessions use it (what needs a restart is named in the server's log)");
        return Ok(());
    }
    for e in &a.errors {
        eprintln!("ringmx: {e}");
    }
    match &a.note {
        Some(n) => eprintln!("ringmx: {n}"),
        None => eprintln!("ringmx: configuration refused ({} error(s)): the one in force stays", a.errors.len()),
    }
    Err(ExitCode::from(1))
}

/// `log debug on|off|status`: prints the state after the request.
fn log_debug(state: DebugState, clients: Vec<String>, at: &Where) -> Result<(), ExitCode> {
    use ringmx::obs::debug::DebugOp;
    let op = match state {
        DebugState::On => DebugOp::On { clients },
        DebugState::Off => DebugOp::Off,
        DebugState::Status => DebugOp::Status,
    };
    let (data, _) = data_and_spool(at)?;
    let a = ringmx::admin::control::debug_request(&data, op).map_err(|e| {
        eprintln!("ringmx: {e}");
        ExitCode::from(1)
    })?;
    let whom = if a.clients.is_empty() { "every client".to_string() } else { a.clients.join(", ") };
    if a.on {
        println!("debug log on for {whom}");
    } else {
        println!("debug log off");
    }
    Ok(())
}

fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    ringmx::util::units::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (30m, 2h, 7d)"))
}

/// `ban list|lift|add`: a lift of an address that was not banned is an error (exit 1)
/// after the others are done.
fn ban(cmd: BanCmd) -> Result<(), ExitCode> {
    use ringmx::admin::bans::{BanOp, print_list, request};
    let (at, op, json) = match cmd {
        BanCmd::List { at, json } => (at, BanOp::List, json),
        BanCmd::Lift { ips, at } => (at, BanOp::Lift { ips }, false),
        BanCmd::Add { ip, duration, at } => {
            (at, BanOp::Add { ip, seconds: duration.map_or(0, |d| d.as_secs().max(1)) }, false)
        }
    };
    let (data, spool) = data_and_spool(&at)?;
    let verb = match op {
        BanOp::List => "",
        BanOp::Lift { .. } => "lifted",
        BanOp::Add { .. } => "banned",
    };
    let a = request(&data, &spool, op).map_err(|e| {
        eprintln!("ringmx: {e}");
        ExitCode::from(1)
    })?;
    let mut out = std::io::stdout().lock();
    let printed = if verb.is_empty() {
        print_list(&a, json, &mut out)
    } else {
        a.done.iter().try_for_each(|ip| writeln!(out, "{ip}: {verb}"))
    };
    if let Err(e) = printed {
        eprintln!("ringmx: writing output: {e}");
        return Err(ExitCode::from(1));
    }
    match a.not_banned.first() {
        Some(ip) => {
            eprintln!("ringmx: {ip} is not banned");
            Err(ExitCode::from(1))
        }
        None => Ok(()),
    }
}

fn serve(args: ServeArgs) -> Result<(), ExitCode> {
    let mut cfg = load(args.config.as_ref())?;
    apply_serve_args(&mut cfg, &args);
    if let Err(e) = cfg.validate("", "command line") {
        for p in &e.problems {
            eprintln!("ringmx: {p}");
        }
        return Err(ExitCode::from(2));
    }
    // SIGHUP reads the file again, with the same command-line overrides.
    let reload = args.config.clone().map(|path| {
        move || -> Result<Config, Vec<String>> {
            let mut c = Config::load(&path).map_err(|e| e.problems)?;
            apply_serve_args(&mut c, &args);
            c.validate("", "command line").map_err(|e| e.problems)?;
            Ok(c)
        }
    });
    let reload = reload.as_ref().map(|f| f as &dyn Fn() -> Result<Config, Vec<String>>);
    ringmx::rt::serve(&cfg, reload).map(|_| ()).map_err(|e| {
        log::error!("{e}");
        ExitCode::from(1)
    })
}

/// The command line's settings over the file's.
fn apply_serve_args(cfg: &mut Config, args: &ServeArgs) {
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if !args.listen.is_empty() {
        cfg.listeners = args.listen.iter().map(|a| ListenerConfig::new(a.port(), vec![a.ip()])).collect();
    }
    if !args.local_domain.is_empty() {
        cfg.local_domains = args.local_domain.clone();
    }
    if let Some(io) = args.io {
        cfg.runtime.io = io;
    }
    if args.ingress_cores.is_some() {
        cfg.runtime.ingress_cores = args.ingress_cores;
    }
    if let Some(n) = args.delivery_cores {
        cfg.runtime.delivery_cores = n;
    }
    cfg.takeover = args.takeover;
}

fn main() -> ExitCode {
    ringmx::util::logger::init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Serve(ServeArgs::default()));
    if !matches!(command, Cmd::Serve(_)) {
        // A command whose reader went away (`ringmx queue list | head`) ends quietly, as Unix
        // tools do, instead of failing on EPIPE. (`serve` ignores SIGPIPE: a peer that closes
        // its socket must not end the server.)
        // SAFETY: signal(2) with SIG_DFL installs no handler, so nothing runs in signal
        // context; the process is single-threaded here.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let r = match command {
        Cmd::Serve(args) => serve(args),
        Cmd::CheckConfig { config } => load(config.as_ref()).map(|c| {
            // The directory is data, not configuration: what it lacks is a warning.
            let store = ringmx::directory::JsonFileStore::in_data_dir(&c.data_dir);
            if c.delivery.postmaster.is_none()
                && let Ok(d) = ringmx::directory::DirectoryHandle::open(Box::new(store))
            {
                for name in d.current().domains_without_postmaster() {
                    println!(
                        "warning: mail to postmaster@{name} has nowhere to go: add a postmaster mailbox or address \
                         for it, or set [delivery] postmaster (RFC 5321 section 4.5.1)"
                    );
                }
            }
            println!("configuration ok: {} listener(s), {} local domain(s)", c.listeners.len(), c.local_domains.len());
        }),
        Cmd::Directory(args) => return ringmx::admin::directory::run(args),
        Cmd::Reload { at } => reload(&at),
        Cmd::Backup { dir, at } => backup_cmd(&dir, &at, false),
        Cmd::Restore { dir, at } => backup_cmd(&dir, &at, true),
        Cmd::Diagnose { config, json } => {
            let r = ringmx::admin::diagnose::run(config.as_deref());
            let text = if json { serde_json::to_string_pretty(&r).unwrap_or_default() + "\n" } else { r.render() };
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            if r.failed() { Err(ExitCode::from(1)) } else { Ok(()) }
        }
        Cmd::Ban { cmd } => ban(cmd),
        Cmd::Dkim { cmd: DkimCmd::Keygen { domain, algorithm, bits, selector, out } } => {
            dkim_keygen(&domain, &algorithm, bits, &selector, &out)
        }
        Cmd::Log { cmd: LogCmd::Summary { files } } => log_summary(&files),
        Cmd::Log { cmd: LogCmd::Debug { state, clients, at } } => log_debug(state, clients, &at),
        Cmd::Queue { cmd } => {
            let mut out = std::io::stdout().lock();
            let r = match cmd {
                QueueCmd::List { at, json, filters } => filters.filter().and_then(|f| {
                    data_and_spool(&at).map(|(data, spool)| {
                        ringmx::admin::queue_list_at(&data, &spool, &f, json, &mut out).map(|_| ())
                    })
                }),
                QueueCmd::Show { id, at } => {
                    data_and_spool(&at).map(|(data, spool)| ringmx::admin::queue_show(&data, &spool, &id, &mut out))
                }
                QueueCmd::Retry(t) => queue_control(QueueOp::Retry, t, &mut out),
                QueueCmd::Delete(t) => queue_control(QueueOp::Delete, t, &mut out),
                QueueCmd::Bounce(t) => queue_control(QueueOp::Bounce, t, &mut out),
                QueueCmd::Release(t) => queue_control(QueueOp::Release, t, &mut out),
                QueueCmd::Hold(t) => queue_control(QueueOp::Hold, t, &mut out),
                QueueCmd::Suspend { domains, at } => destinations("suspend", &domains, &at, &mut out),
                QueueCmd::Resume { domains, at } => destinations("resume", &domains, &at, &mut out),
                QueueCmd::Suspended { at } => destinations("list", &[], &at, &mut out),
            };
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    eprintln!("ringmx: {e}");
                    Err(ExitCode::from(1))
                }
                Err(code) => Err(code),
            }
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// `ringmx dkim keygen`: the key file (never over an existing one) and the record.
fn dkim_keygen(
    domain: &str,
    algorithm: &str,
    bits: usize,
    selector: &str,
    out: &std::path::Path,
) -> Result<(), ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: String| {
        eprintln!("ringmx: {e}");
        ExitCode::from(1)
    };
    // Refuse an existing file before the (slow) RSA generation.
    if out.exists() {
        return Err(fail(format!("{}: exists already", out.display())));
    }
    let (pem, record) = match algorithm {
        "ed25519" => ringmx::policy::dkim_sign::keygen_ed25519(domain, selector),
        _ => ringmx::policy::dkim_sign::keygen_rsa(domain, selector, bits),
    }
    .map_err(fail)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| fail(format!("{}: {e}", out.display())))?;
    f.write_all(pem.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    println!("{record}");
    println!("# [[dkim.sign]] domain = \"{domain}\", selector = \"{selector}\", key = \"{}\"", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the whole command line (duplicate names, bad defaults), which
    /// it otherwise makes only when a command is first parsed.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

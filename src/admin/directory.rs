//! `ringmx directory …`: create, list, change and remove postoffices, domains, mailboxes,
//! groups and blocked addresses; import and export mailboxes as CSV.
//!
//! # Layout
//!
//! - [`DirectoryArgs`] and the `*Cmd` enums: the command line (clap).
//! - [`run`]: resolves the data directory, takes the store's writer lock, loads, applies one
//!   command, checks the result with [`Directory::build`] and saves it atomically.
//! - `import` / `export`: the `email,password,quota` CSV.
//!
//! Every change is validated as a whole before it is written, so the store never holds a
//! directory the server would refuse. Passwords are hashed with argon2 (default parameters)
//! and never printed; a generated password is printed once, on stdout, when it is made.
//!
//! Exit codes: 0 success, 1 the store could not be read or written, 2 a usage error (unknown
//! or duplicate record, invalid name or address) or, for `import`, any refused line.

use crate::config::{Config, parse_size};
use crate::directory::model::{normalize_address, normalize_domain, normalize_name, split};
use crate::directory::{
    AutoResponder, Directory, DirectoryData, DirectoryError, DirectoryStore, Domain, Group, JsonFileStore, Mailbox,
    Postoffice,
};
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `ringmx directory`: the directory of postoffices, domains, mailboxes, groups.
#[derive(Debug, Args)]
pub struct DirectoryArgs {
    /// Configuration file (TOML): the directory lives under its `data_dir`.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Data directory; overrides the configuration's `data_dir`.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: DirectoryCmd,
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCmd {
    /// Postoffices: they hold domains and mailboxes.
    Postoffice {
        #[command(subcommand)]
        cmd: PostofficeCmd,
    },
    /// Domains whose mail is accepted here.
    Domain {
        #[command(subcommand)]
        cmd: DomainCmd,
    },
    /// Mailboxes and their addresses.
    Mailbox {
        #[command(subcommand)]
        cmd: MailboxCmd,
    },
    /// Group addresses that expand to their members.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Recipient addresses refused as if unknown (550 5.1.1).
    Blocked {
        #[command(subcommand)]
        cmd: BlockedCmd,
    },
    /// Mailing lists, and their held posts.
    List {
        #[command(subcommand)]
        cmd: super::lists::ListCmd,
    },
    /// The members of mailing lists.
    Member {
        #[command(subcommand)]
        cmd: super::lists::MemberCmd,
    },
    /// Create mailboxes from a CSV file of `email,password,quota` lines.
    Import { file: PathBuf },
    /// Write every mailbox as `email,password,quota` (password empty) to FILE or stdout.
    Export { file: Option<PathBuf> },
    /// Remove messages older than a duration from mailboxes: every one, a postoffice's,
    /// or one mailbox's (by its address).
    Purge {
        /// Messages older than this (30d, 12h) go (by the time they were written).
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        #[arg(long)]
        postoffice: Option<String>,
        #[arg(long, value_name = "ADDRESS")]
        mailbox: Option<String>,
    },
}

/// A postoffice's defaults for new mailboxes (`postoffice add|set`); an empty text clears.
#[derive(Debug, Args, Default)]
pub struct MailboxDefaultsArgs {
    /// Quota of a new mailbox when `mailbox add` gives none (512M, 2G; 0: none).
    #[arg(long, value_name = "SIZE")]
    pub default_quota: Option<String>,
    /// A new mailbox also gets its name at every other domain of the postoffice.
    #[arg(long, value_name = "BOOL")]
    pub address_every_domain: Option<bool>,
    /// A welcome message placed in each new mailbox: its subject and text.
    #[arg(long)]
    pub welcome_subject: Option<String>,
    #[arg(long)]
    pub welcome_body: Option<String>,
}

impl MailboxDefaultsArgs {
    fn any(&self) -> bool {
        self.default_quota.is_some()
            || self.address_every_domain.is_some()
            || self.welcome_subject.is_some()
            || self.welcome_body.is_some()
    }

    fn apply(self, d: &mut crate::directory::model::MailboxDefaults) -> Result<(), CommandError> {
        if let Some(q) = self.default_quota {
            d.quota_bytes = if q.trim() == "0" { 0 } else { quota(&q)? };
        }
        if let Some(v) = self.address_every_domain {
            d.address_every_domain = v;
        }
        let text = |v: String| (!v.trim().is_empty()).then(|| v.replace("\\n", "\n"));
        if let Some(v) = self.welcome_subject {
            d.welcome_subject = text(v);
        }
        if let Some(v) = self.welcome_body {
            d.welcome_body = text(v);
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum PostofficeCmd {
    /// Create a postoffice (the first one becomes the default postoffice).
    Add {
        name: String,
        /// Accept mail to it only from authenticated connections.
        #[arg(long)]
        require_auth_inbound: bool,
        #[command(flatten)]
        defaults: MailboxDefaultsArgs,
    },
    /// Change a postoffice: what `add` sets, and whether it is the default.
    Set {
        name: String,
        /// Accept mail to it only from authenticated connections.
        #[arg(long, value_name = "BOOL")]
        require_auth_inbound: Option<bool>,
        /// Make it the default postoffice (bare logins and new domains go there).
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        defaults: MailboxDefaultsArgs,
    },
    /// Put a message in every mailbox of the postoffice (an announcement to its users).
    Broadcast {
        name: String,
        #[arg(long)]
        subject: String,
        /// The text (or --body-file).
        #[arg(long, conflicts_with = "body_file", required_unless_present = "body_file")]
        body: Option<String>,
        #[arg(long, value_name = "FILE")]
        body_file: Option<PathBuf>,
        /// Its From (default: postmaster@ the postoffice's first domain).
        #[arg(long, value_name = "ADDR")]
        from: Option<String>,
    },
    /// Count the quota usage of every mailbox of the postoffice again (from its files), and
    /// have a running server take the new figures.
    ResetQuota { name: String },
    /// Remove an empty postoffice.
    Remove { name: String },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DomainCmd {
    /// Add a domain to a postoffice (default: the default postoffice).
    Add {
        domain: String,
        #[arg(long)]
        postoffice: Option<String>,
        /// Relay all of the domain's mail to HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        smart_host: Option<String>,
        /// Deliver mail for unknown local parts to ADDR.
        #[arg(long, value_name = "ADDR")]
        catch_all: Option<String>,
    },
    /// Remove a domain that no address uses any more.
    Remove { domain: String },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a domain; an empty value ('') clears an address or the smart host.
    Set {
        domain: String,
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: Option<bool>,
        #[arg(long, value_name = "ADDR")]
        abuse: Option<String>,
        #[arg(long, value_name = "ADDR")]
        postmaster: Option<String>,
        #[arg(long, value_name = "ADDR")]
        catch_all: Option<String>,
        #[arg(long, value_name = "HOST:PORT")]
        smart_host: Option<String>,
        /// Refuse mail from this sender domain (repeatable).
        #[arg(long, value_name = "DOMAIN")]
        blacklist_add: Vec<String>,
        #[arg(long, value_name = "DOMAIN")]
        blacklist_remove: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// The password (visible to other local users in the process list: prefer
    /// --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum MailboxCmd {
    /// Create a mailbox in the postoffice of the address's domain.
    Add {
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// Quota: bytes or with a unit (512M, 2G); 0 for none.
        #[arg(long)]
        quota: Option<String>,
    },
    /// Remove a mailbox (its Maildir stays on disk).
    Remove { address: String },
    List {
        /// Only this postoffice's mailboxes.
        #[arg(long)]
        postoffice: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Show {
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a mailbox, named by any of its addresses.
    Set {
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[arg(long)]
        quota: Option<String>,
        /// `--disabled` or `--disabled true` disables, `--disabled false` enables.
        #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        disabled: Option<bool>,
        #[arg(long, value_name = "ADDR")]
        add_address: Vec<String>,
        #[arg(long, value_name = "ADDR")]
        remove_address: Vec<String>,
        /// Redirect to these addresses (replaces the list; none clears it).
        #[arg(long, value_name = "ADDR", num_args = 0..)]
        redirect: Option<Vec<String>>,
        /// With a redirect, keep a copy here too (`--keep-copy false` to stop).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        keep_copy: Option<bool>,
        #[arg(long)]
        autoresponder_subject: Option<String>,
        #[arg(long)]
        autoresponder_body: Option<String>,
        #[arg(long, value_name = "ADDR")]
        autoresponder_reply_to: Option<String>,
        #[arg(long, conflicts_with_all = ["autoresponder_subject", "autoresponder_body"])]
        autoresponder_off: bool,
        /// Program run after each delivery ('' removes it).
        #[arg(long, value_name = "PROGRAM")]
        delivery_event: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    Add {
        address: String,
        #[arg(long, value_name = "ADDR", num_args = 1..)]
        member: Vec<String>,
    },
    Remove {
        address: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        address: String,
        #[arg(long)]
        json: bool,
    },
    Set {
        address: String,
        #[arg(long, value_name = "ADDR")]
        add_member: Vec<String>,
        #[arg(long, value_name = "ADDR")]
        remove_member: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BlockedCmd {
    Add {
        address: String,
    },
    Remove {
        address: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Errors of the directory commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The directory refused the change, or its store failed.
    #[error("{0}")]
    Directory(#[from] DirectoryError),
    /// A value on the command line that is not what it should be.
    #[error("{0}")]
    Usage(String),
    /// Nothing of that name.
    #[error("{0}")]
    NotFound(String),
    /// Lines of an import that were refused (each already reported).
    #[error("imported {imported} mailbox(es), refused {refused} line(s)")]
    ImportRefused { refused: usize, imported: usize },
    /// Reading input or writing output.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_status())
    }

    /// 1: the directory or its store failed; 2: the command was wrong.
    pub fn exit_status(&self) -> u8 {
        match self {
            CommandError::Directory(e) if !e.is_usage() => 1,
            CommandError::Io(_) => 1,
            _ => 2,
        }
    }

    /// The admin API's status for it.
    fn http_status(&self) -> u16 {
        match self {
            CommandError::NotFound(_) => 404,
            CommandError::Directory(e) if !e.is_usage() => 500,
            CommandError::Io(_) => 500,
            _ => 400,
        }
    }
}

/// The arguments after `ringmx directory`, as the admin API takes them.
#[derive(Debug, clap::Parser)]
#[command(name = "ringmx directory", no_binary_name = true, disable_help_subcommand = true)]
struct RemoteCommand {
    #[command(subcommand)]
    cmd: DirectoryCmd,
}

/// Does `cmd` name files of the caller's (`import FILE`, `export FILE`, `broadcast
/// --body-file`)? Those run on the command line, not in the server.
fn names_files(cmd: &DirectoryCmd) -> bool {
    matches!(
        cmd,
        DirectoryCmd::Import { .. }
            | DirectoryCmd::Export { file: Some(_) }
            | DirectoryCmd::Postoffice { cmd: PostofficeCmd::Broadcast { body_file: Some(_), .. } }
    )
}

/// The admin API's `POST /v1/directory/commands`: `args` as after `ringmx directory`, run
/// on the directory of `data_dir`. An error is the HTTP status, the text and the command
/// line's exit status.
pub fn run_args(
    data_dir: &Path,
    maildir_root: &Path,
    args: &[String],
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), (u16, String, u8)> {
    use clap::Parser;
    let c = RemoteCommand::try_parse_from(args).map_err(|e| (400, e.to_string(), 2))?;
    if names_files(&c.cmd) {
        return Err((
            400,
            "a command that names files runs on the command line (the files are the caller's)".into(),
            2,
        ));
    }
    dispatch(data_dir, maildir_root, c.cmd, input, out).map_err(|e| (e.http_status(), e.to_string(), e.exit_status()))
}

/// Runs `cmd` on the directory of `data_dir` (mailboxes under `maildir_root`).
pub fn dispatch(
    data_dir: &Path,
    maildir_root: &Path,
    cmd: DirectoryCmd,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let store = JsonFileStore::in_data_dir(data_dir);
    match cmd {
        DirectoryCmd::Purge { older_than, postoffice, mailbox } => {
            purge(&store, maildir_root, &older_than, postoffice.as_deref(), mailbox.as_deref(), out)
        }
        DirectoryCmd::List { cmd: super::lists::ListCmd::Moderate(m) } => {
            store.load().map_err(CommandError::from).and_then(|d| super::lists::moderate(data_dir, &d, m, out))
        }
        DirectoryCmd::Postoffice { cmd: PostofficeCmd::Broadcast { name, subject, body, body_file, from } } => {
            broadcast(&store, maildir_root, &name, &subject, body, body_file, from, out)
        }
        DirectoryCmd::Postoffice { cmd: PostofficeCmd::ResetQuota { name } } => {
            reset_quota(&store, maildir_root, data_dir, &name, out)
        }
        cmd => execute(&store, maildir_root, cmd, input, out),
    }
}

/// The arguments of this process after `directory`, without the options that choose the
/// server (`--config`, `--data-dir`): what goes to the admin API.
fn own_args() -> Vec<String> {
    let all: Vec<String> = std::env::args().skip_while(|a| a != "directory").skip(1).collect();
    let mut v = Vec::new();
    let mut it = all.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "--data-dir" => {
                it.next();
            }
            _ if a.starts_with("--config=") || a.starts_with("--data-dir=") => {}
            _ => v.push(a),
        }
    }
    v
}

/// Sends the command to the running server; `None` when no server answers (or the command
/// runs here).
fn through_server(data_dir: &Path, cmd: &DirectoryCmd, out: &mut dyn Write) -> Option<Result<(), CommandError>> {
    if names_files(cmd) {
        return None;
    }
    let s = super::api::connect(data_dir)?;
    let args = own_args();
    let mut input = String::new();
    if args.iter().any(|a| a == "--password-stdin") {
        use std::io::Read;
        if let Err(e) = std::io::stdin().read_to_string(&mut input) {
            return Some(Err(e.into()));
        }
    }
    let body = crate::rt::admin_http::CommandBody { args, input };
    let r = super::api::json::<crate::rt::admin_http::CommandAnswer>(s, "POST", "/v1/directory/commands", Some(&body));
    Some(match r {
        Err(e) => Err(CommandError::Usage(e.to_string())),
        Ok((_, a)) => {
            if let Err(e) = out.write_all(a.output.as_bytes()) {
                return Some(Err(e.into()));
            }
            match a.error {
                None => Ok(()),
                Some(e) if a.exit == 1 => Err(CommandError::Io(std::io::Error::other(e))),
                Some(e) => Err(CommandError::Usage(e)),
            }
        }
    })
}

/// Runs one `ringmx directory` command; errors are printed on stderr.
pub fn run(args: DirectoryArgs) -> ExitCode {
    let mut cfg = match &args.config {
        Some(c) => match Config::load(c) {
            Ok(cfg) => cfg,
            Err(e) => {
                for p in &e.problems {
                    eprintln!("ringmx: {p}");
                }
                return ExitCode::from(2);
            }
        },
        None => Config::embedded(),
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    let mut stdout = std::io::stdout().lock();
    // A running server carries the command out (its admin API); else it runs here, on the
    // files, under the directory's writers' lock.
    let result = match through_server(&cfg.data_dir, &args.cmd, &mut stdout) {
        Some(r) => r,
        None => dispatch(&cfg.data_dir, &cfg.maildir_root(), args.cmd, &mut std::io::stdin().lock(), &mut stdout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = stdout.flush();
            eprintln!("ringmx: {e}");
            e.exit_code()
        }
    }
}

/// `purge`: removes the messages older than `older_than` from the Maildirs (`new` and
/// `cur`) of the mailboxes chosen; prints how many went. A message's age is its file's
/// modification time (when it was delivered, unless a client changed it since). The
/// `maildirsize` of a mailbox that lost messages goes too: its quota usage is counted
/// again at its next delivery.
pub fn purge(
    store: &JsonFileStore,
    maildir_root: &Path,
    older_than: &str,
    postoffice: Option<&str>,
    mailbox: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let age = crate::util::units::parse_duration(older_than)
        .ok_or_else(|| CommandError::Usage(format!("{older_than:?} is not a duration (30d, 12h)")))?;
    let data = store.load()?;
    let dir = Directory::build(data.clone())?;
    let chosen: Vec<(String, String)> = match (postoffice, mailbox) {
        (_, Some(address)) => {
            let (po, name) = dir
                .mailbox_by_address(&address.to_ascii_lowercase())
                .map(|(m, _)| (m.postoffice.clone(), m.name.clone()))
                .ok_or_else(|| CommandError::Usage(format!("no mailbox has the address {address}")))?;
            vec![(po, name)]
        }
        (Some(po), None) => {
            let po = po.to_ascii_lowercase();
            find_postoffice(&data, &po)?;
            data.mailboxes.iter().filter(|m| m.postoffice == po).map(|m| (po.clone(), m.name.clone())).collect()
        }
        (None, None) => data.mailboxes.iter().map(|m| (m.postoffice.clone(), m.name.clone())).collect(),
    };
    let cutoff = std::time::SystemTime::now() - age;
    let (mut removed, mut bytes) = (0u64, 0u64);
    for (po, name) in &chosen {
        let maildir = maildir_root.join(po).join(name).join("Maildir");
        let before = removed;
        for sub in ["new", "cur"] {
            let d = maildir.join(sub);
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let Ok(md) = e.metadata() else { continue };
                if md.is_file() && md.modified().is_ok_and(|t| t < cutoff) {
                    std::fs::remove_file(e.path())?;
                    removed += 1;
                    bytes += md.len();
                }
            }
        }
        // The quota's count is rebuilt from what is left at the next delivery.
        if removed > before {
            let _ = std::fs::remove_file(maildir.join("maildirsize"));
        }
    }
    writeln!(
        out,
        "{removed} message(s) ({bytes} bytes) older than {older_than} removed from {} mailbox(es)",
        chosen.len()
    )?;
    Ok(())
}

/// Applies `cmd` to the directory in `store`. `input` is read for `--password-stdin`. New
/// mailboxes get their postoffice's welcome message under `maildir_root`.
pub fn execute(
    store: &JsonFileStore,
    maildir_root: &Path,
    cmd: DirectoryCmd,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let writes = !matches!(
        &cmd,
        DirectoryCmd::Export { .. }
            | DirectoryCmd::Postoffice { cmd: PostofficeCmd::List { .. } | PostofficeCmd::Show { .. } }
            | DirectoryCmd::Domain { cmd: DomainCmd::List { .. } | DomainCmd::Show { .. } }
            | DirectoryCmd::Mailbox { cmd: MailboxCmd::List { .. } | MailboxCmd::Show { .. } }
            | DirectoryCmd::Group { cmd: GroupCmd::List { .. } | GroupCmd::Show { .. } }
            | DirectoryCmd::Blocked { cmd: BlockedCmd::List { .. } }
            | DirectoryCmd::List {
                cmd: super::lists::ListCmd::List { .. }
                    | super::lists::ListCmd::Show { .. }
                    | super::lists::ListCmd::Moderate(_)
            }
            | DirectoryCmd::Member {
                cmd: super::lists::MemberCmd::List { .. } | super::lists::MemberCmd::Export { .. }
            }
    );
    let _lock = if writes { Some(store.lock()?) } else { None };
    let mut data = store.load()?;
    let before: Vec<String> = data.mailboxes.iter().map(|m| m.maildir()).collect();
    // Refuse to work on a store the server would not load either.
    Directory::build(data.clone())?;
    let result = match cmd {
        DirectoryCmd::Postoffice { cmd } => postoffice(&mut data, cmd, out),
        DirectoryCmd::Domain { cmd } => domain(&mut data, cmd, out),
        DirectoryCmd::Mailbox { cmd } => mailbox(&mut data, cmd, input, out),
        DirectoryCmd::Group { cmd } => group(&mut data, cmd, out),
        DirectoryCmd::Blocked { cmd } => blocked(&mut data, cmd, out),
        DirectoryCmd::List { cmd } => super::lists::list(&mut data, cmd, out),
        DirectoryCmd::Member { cmd } => super::lists::member(&mut data, cmd, out),
        DirectoryCmd::Import { file } => import(&mut data, &file, out),
        DirectoryCmd::Export { file } => export(&data, file.as_deref(), out),
        DirectoryCmd::Purge { .. } => {
            Err(CommandError::Usage("purge works on the mailboxes: run it as `ringmx directory purge`".into()))
        }
    };
    // An import saves what it could even when some lines were refused.
    if writes && matches!(result, Ok(()) | Err(CommandError::ImportRefused { .. })) {
        Directory::build(data.clone())?;
        store.save(&data)?;
        welcome_new_mailboxes(&before, &data, maildir_root, out)?;
    }
    result
}

/// Places the postoffice's welcome message in each mailbox that `after` has and `before`
/// did not.
fn welcome_new_mailboxes(
    before: &[String],
    after: &DirectoryData,
    maildir_root: &Path,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    for m in after.mailboxes.iter().filter(|m| !before.contains(&m.maildir())) {
        let Some(po) = after.postoffices.iter().find(|p| p.name == m.postoffice) else { continue };
        let d = &po.mailbox_defaults;
        if d.welcome_subject.is_none() && d.welcome_body.is_none() {
            continue;
        }
        let to = m.primary_address().unwrap_or_default();
        let domain = split(to).map_or("localhost", |(_, d)| d);
        let from = format!("postmaster@{domain}");
        let msg = notice_message(
            &from,
            to,
            d.welcome_subject.as_deref().unwrap_or("Welcome"),
            d.welcome_body.as_deref().unwrap_or(""),
        );
        place(maildir_root, m, &from, &msg)?;
        writeln!(out, "welcome message placed in {}", m.maildir())?;
    }
    Ok(())
}

/// Writes `msg` into a mailbox's Maildir (durable when this returns), quota or not.
fn place(maildir_root: &Path, m: &Mailbox, from: &str, msg: &[u8]) -> Result<(), CommandError> {
    let path = crate::delivery::maildir::mailbox_path(maildir_root, &m.maildir());
    crate::delivery::maildir::Maildir::open(&path)
        .and_then(|md| md.deliver(from, m.primary_address().unwrap_or_default(), msg))
        .map(|_| ())
        .map_err(|e| CommandError::Io(std::io::Error::other(e.to_string())))
}

/// A plain text message from an administrator (welcome, broadcast).
fn notice_message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut m = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{}.{}@{}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        clean(from),
        clean(to),
        clean(subject),
        crate::util::time::rfc5322(now.as_secs()),
        now.as_nanos(),
        std::process::id(),
        split(from).map_or("localhost", |(_, d)| d),
    );
    m.push_str(&body.replace("\r\n", "\n").replace('\n', "\r\n"));
    if !m.ends_with("\r\n") {
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// `postoffice broadcast`: the message in every mailbox of the postoffice, written to each
/// Maildir directly (an administrator's notice: quotas do not refuse it).
#[allow(clippy::too_many_arguments)]
pub fn broadcast(
    store: &JsonFileStore,
    maildir_root: &Path,
    name: &str,
    subject: &str,
    body: Option<String>,
    body_file: Option<PathBuf>,
    from: Option<String>,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let data = store.load()?;
    let po = name.to_ascii_lowercase();
    find_postoffice(&data, &po)?;
    let body = match (body, body_file) {
        (Some(b), _) => b.replace("\\n", "\n"),
        (None, Some(f)) => {
            std::fs::read_to_string(&f).map_err(|e| CommandError::Usage(format!("{}: {e}", f.display())))?
        }
        (None, None) => return Err(CommandError::Usage("give --body or --body-file".into())),
    };
    let first_domain = data.domains.iter().find(|d| d.postoffice == po).map_or("localhost", |d| d.name.as_str());
    let from = match from {
        Some(f) => normalize_address(&f)?,
        None => format!("postmaster@{first_domain}"),
    };
    let mut n = 0;
    for m in data.mailboxes.iter().filter(|m| m.postoffice == po) {
        let to = m.primary_address().unwrap_or_default();
        let msg = notice_message(&from, to, subject, &body);
        place(maildir_root, m, &from, &msg)?;
        n += 1;
    }
    writeln!(out, "message placed in {n} mailbox(es) of {po}")?;
    Ok(())
}

/// `postoffice reset-quota`: each mailbox's usage counted again from its files (its
/// `maildirsize` rebuilt); a running server is told to read the new figures.
pub fn reset_quota(
    store: &JsonFileStore,
    maildir_root: &Path,
    data_dir: &Path,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let data = store.load()?;
    let po = name.to_ascii_lowercase();
    find_postoffice(&data, &po)?;
    for m in data.mailboxes.iter().filter(|m| m.postoffice == po) {
        let path = crate::delivery::maildir::mailbox_path(maildir_root, &m.maildir());
        let _ = std::fs::remove_file(path.join("maildirsize"));
        let usage = crate::delivery::maildir::Maildir::open(&path)
            .and_then(|md| md.with_quota(m.quota_bytes).usage())
            .map_err(|e| CommandError::Io(std::io::Error::other(e.to_string())))?;
        let quota = if m.quota_bytes > 0 { format!(" of {}", m.quota_bytes) } else { String::new() };
        writeln!(out, "{}: {} bytes in {} message(s){quota}", m.maildir(), usage.bytes, usage.messages)?;
    }
    match super::control::refresh_usage(data_dir) {
        Ok(()) => writeln!(out, "the running server has the new figures")?,
        Err(_) => writeln!(out, "no server running: it reads the figures at its start")?,
    }
    Ok(())
}

fn postoffice(data: &mut DirectoryData, cmd: PostofficeCmd, out: &mut dyn Write) -> Result<(), CommandError> {
    match cmd {
        PostofficeCmd::Add { name, require_auth_inbound, defaults } => {
            let name = normalize_name(&name)?;
            if data.postoffices.iter().any(|p| p.name == name) {
                return Err(DirectoryError::DuplicatePostoffice(name).into());
            }
            if data.default_postoffice.is_none() {
                data.default_postoffice = Some(name.clone());
            }
            let mut p = Postoffice::new(name.clone(), require_auth_inbound);
            defaults.apply(&mut p.mailbox_defaults)?;
            data.postoffices.push(p);
            writeln!(out, "postoffice {name} added")?;
        }
        PostofficeCmd::Set { name, require_auth_inbound, default, defaults } => {
            let name = name.to_ascii_lowercase();
            let i = find_postoffice(data, &name)?;
            if require_auth_inbound.is_none() && !default && !defaults.any() {
                return Err(CommandError::Usage(
                    "nothing to change: give --require-auth-inbound, --default or a mailbox default".into(),
                ));
            }
            defaults.apply(&mut data.postoffices[i].mailbox_defaults)?;
            if let Some(v) = require_auth_inbound {
                data.postoffices[i].require_auth_inbound = v;
            }
            if default {
                data.default_postoffice = Some(name.clone());
            }
            writeln!(out, "postoffice {name} changed")?;
        }
        PostofficeCmd::Remove { name } => {
            let name = name.to_ascii_lowercase();
            let i = find_postoffice(data, &name)?;
            let domains: Vec<_> =
                data.domains.iter().filter(|d| d.postoffice == name).map(|d| d.name.as_str()).collect();
            let mailboxes = data.mailboxes.iter().filter(|m| m.postoffice == name).count();
            if !domains.is_empty() || mailboxes > 0 {
                let what = format!("{} domain(s) ({}) and {mailboxes} mailbox(es)", domains.len(), domains.join(", "));
                return Err(DirectoryError::InUse(format!("postoffice {name}"), what).into());
            }
            data.postoffices.remove(i);
            if data.default_postoffice.as_deref() == Some(&name) {
                data.default_postoffice = data.postoffices.first().map(|p| p.name.clone());
            }
            writeln!(out, "postoffice {name} removed")?;
        }
        PostofficeCmd::List { json } => {
            for p in &data.postoffices {
                if json {
                    writeln!(out, "{}", postoffice_json(data, p))?;
                } else {
                    let default = if data.default_postoffice.as_ref() == Some(&p.name) { " (default)" } else { "" };
                    writeln!(out, "{}{default}", p.name)?;
                }
            }
        }
        PostofficeCmd::Broadcast { .. } | PostofficeCmd::ResetQuota { .. } => {
            return Err(CommandError::Usage(
                "this works on the mailboxes: run it as `ringmx directory postoffice`".into(),
            ));
        }
        PostofficeCmd::Show { name, json } => {
            let p = &data.postoffices[find_postoffice(data, &name.to_ascii_lowercase())?];
            let v = postoffice_json(data, p);
            if json {
                writeln!(out, "{v}")?;
            } else {
                show_text(&v, out)?;
            }
        }
    }
    Ok(())
}

fn postoffice_json(data: &DirectoryData, p: &Postoffice) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "default": data.default_postoffice.as_ref() == Some(&p.name),
        "require_auth_inbound": p.require_auth_inbound,
        "mailbox_defaults": p.mailbox_defaults,
        "domains": data.domains.iter().filter(|d| d.postoffice == p.name).map(|d| &d.name).collect::<Vec<_>>(),
        "mailboxes": data.mailboxes.iter().filter(|m| m.postoffice == p.name).count(),
    })
}

fn find_postoffice(data: &DirectoryData, name: &str) -> Result<usize, DirectoryError> {
    data.postoffices.iter().position(|p| p.name == name).ok_or_else(|| DirectoryError::UnknownPostoffice(name.into()))
}

fn find_domain(data: &DirectoryData, name: &str) -> Result<usize, DirectoryError> {
    let name = normalize_domain(name)?;
    data.domains.iter().position(|d| d.name == name).ok_or(DirectoryError::UnknownDomain(name))
}

/// `Some(None)` for an empty value (clear), `Some(Some(v))` for a value checked by `check`.
fn optional(
    v: Option<String>,
    check: fn(&str) -> Result<String, DirectoryError>,
) -> Result<Option<Option<String>>, DirectoryError> {
    v.map(|v| if v.trim().is_empty() { Ok(None) } else { check(&v).map(Some) }).transpose()
}

fn domain(data: &mut DirectoryData, cmd: DomainCmd, out: &mut dyn Write) -> Result<(), CommandError> {
    use crate::directory::model::check_smart_host;
    match cmd {
        DomainCmd::Add { domain, postoffice, smart_host, catch_all } => {
            let name = normalize_domain(&domain)?;
            if data.domains.iter().any(|d| d.name == name) {
                return Err(DirectoryError::DuplicateDomain(name).into());
            }
            let po = match postoffice {
                Some(p) => p.to_ascii_lowercase(),
                None => data.default_postoffice.clone().ok_or_else(|| {
                    CommandError::Usage(
                        "no postoffice yet: create one with `ringmx directory postoffice add NAME`".into(),
                    )
                })?,
            };
            find_postoffice(data, &po)?;
            data.domains.push(Domain {
                name: name.clone(),
                postoffice: po.clone(),
                enabled: true,
                abuse: None,
                postmaster: None,
                catch_all: optional(catch_all, normalize_address)?.flatten(),
                smart_host: optional(smart_host, check_smart_host)?.flatten(),
                sender_blacklist: vec![],
            });
            writeln!(out, "domain {name} added to postoffice {po}")?;
            // RFC 5321 §4.5.1: postmaster must work for every domain.
            if let Ok(d) = crate::directory::Directory::build(data.clone())
                && d.domains_without_postmaster().contains(&name)
            {
                writeln!(
                    out,
                    "warning: mail to postmaster@{name} has nowhere to go yet: add a postmaster mailbox or \
                     address for it, or set [delivery] postmaster (RFC 5321 section 4.5.1)"
                )?;
            }
        }
        DomainCmd::Remove { domain } => {
            let i = find_domain(data, &domain)?;
            let name = data.domains[i].name.clone();
            let suffix = format!("@{name}");
            let mut users: Vec<String> = data
                .mailboxes
                .iter()
                .flat_map(|m| m.addresses.iter())
                .chain(data.groups.iter().map(|g| &g.address))
                .filter(|a| a.ends_with(&suffix))
                .cloned()
                .collect();
            users.truncate(5);
            if !users.is_empty() {
                return Err(
                    DirectoryError::InUse(format!("domain {name}"), format!("addresses {}", users.join(", "))).into()
                );
            }
            data.domains.remove(i);
            writeln!(out, "domain {name} removed")?;
        }
        DomainCmd::List { json } => {
            for d in &data.domains {
                if json {
                    writeln!(out, "{}", serde_json::to_value(d).unwrap_or_default())?;
                } else {
                    let state = if d.enabled { "" } else { " (disabled)" };
                    writeln!(out, "{}  postoffice {}{state}", d.name, d.postoffice)?;
                }
            }
        }
        DomainCmd::Show { domain, json } => {
            let v = serde_json::to_value(&data.domains[find_domain(data, &domain)?]).unwrap_or_default();
            if json {
                writeln!(out, "{v}")?;
            } else {
                show_text(&v, out)?;
            }
        }
        DomainCmd::Set {
            domain,
            enabled,
            abuse,
            postmaster,
            catch_all,
            smart_host,
            blacklist_add,
            blacklist_remove,
        } => {
            let i = find_domain(data, &domain)?;
            let abuse = optional(abuse, normalize_address)?;
            let postmaster = optional(postmaster, normalize_address)?;
            let catch_all = optional(catch_all, normalize_address)?;
            let smart_host = optional(smart_host, check_smart_host)?;
            let add = blacklist_add.iter().map(|d| normalize_domain(d)).collect::<Result<Vec<_>, _>>()?;
            let remove = blacklist_remove.iter().map(|d| normalize_domain(d)).collect::<Result<Vec<_>, _>>()?;
            let d = &mut data.domains[i];
            if let Some(e) = enabled {
                d.enabled = e;
            }
            for (field, v) in [(&mut d.abuse, abuse), (&mut d.postmaster, postmaster), (&mut d.catch_all, catch_all)] {
                if let Some(v) = v {
                    *field = v;
                }
            }
            if let Some(v) = smart_host {
                d.smart_host = v;
            }
            for a in add {
                if !d.sender_blacklist.contains(&a) {
                    d.sender_blacklist.push(a);
                }
            }
            d.sender_blacklist.retain(|b| !remove.contains(b));
            writeln!(out, "domain {} changed", d.name)?;
        }
    }
    Ok(())
}

/// Hashes a password with argon2 (default parameters) into a PHC string.
pub fn hash_password(password: &str) -> Result<String, CommandError> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| CommandError::Usage(format!("cannot hash the password: {e}")))
}

/// True when `password` matches the argon2 PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::Argon2::default().verify_password(password.as_bytes(), hash).is_ok()
}

/// A random password: 16 characters from an alphabet without look-alikes (≈ 92 bits).
pub fn random_password() -> Result<String, CommandError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(16);
    let mut bytes = [0u8; 64];
    while out.len() < 16 {
        // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - 256 % ALPHABET.len();
        for &b in bytes[..n as usize].iter().filter(|&&b| (b as usize) < limit) {
            if out.len() < 16 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

fn read_password(p: &PasswordArgs, input: &mut dyn BufRead) -> Result<Option<String>, CommandError> {
    if p.password_stdin {
        let mut line = String::new();
        input.read_line(&mut line)?;
        let pw = line.trim_end_matches(['\r', '\n']).to_string();
        if pw.is_empty() {
            return Err(CommandError::Usage("--password-stdin: no password on standard input".into()));
        }
        return Ok(Some(pw));
    }
    match &p.password {
        Some(pw) if pw.is_empty() => Err(CommandError::Usage("--password: the password is empty".into())),
        other => Ok(other.clone()),
    }
}

fn quota(s: &str) -> Result<u64, CommandError> {
    parse_size(s).ok_or_else(|| CommandError::Usage(format!("invalid quota {s:?}: bytes or a size such as 512M, 2G")))
}

fn find_mailbox(data: &DirectoryData, address: &str) -> Result<usize, CommandError> {
    let a = normalize_address(address)?;
    data.mailboxes.iter().position(|m| m.addresses.contains(&a)).ok_or_else(|| DirectoryError::UnknownMailbox(a).into())
}

/// Creates a mailbox for `address` in the postoffice of its domain, with the postoffice's
/// defaults: its quota when `quota_bytes` is `None`, and with `address_every_domain` the
/// same name at its other domains (those not taken).
fn add_mailbox(
    data: &mut DirectoryData,
    address: &str,
    password_hash: Option<String>,
    quota_bytes: Option<u64>,
) -> Result<String, CommandError> {
    let a = normalize_address(address)?;
    let (local, domain) = split(&a).ok_or_else(|| DirectoryError::InvalidAddress(a.clone()))?;
    let po = data.domains[find_domain(data, domain)?].postoffice.clone();
    let name = normalize_name(local)?;
    if address_in_use(data, &a) {
        return Err(DirectoryError::DuplicateAddress(a).into());
    }
    let defaults = data.postoffices[find_postoffice(data, &po)?].mailbox_defaults.clone();
    let quota_bytes = quota_bytes.unwrap_or(defaults.quota_bytes);
    let mut addresses = vec![a.clone()];
    if defaults.address_every_domain {
        for d in data.domains.iter().filter(|d| d.postoffice == po && d.name != domain) {
            let other = format!("{local}@{}", d.name);
            if !address_in_use(data, &other) {
                addresses.push(other);
            }
        }
    }
    if data.mailboxes.iter().any(|m| m.postoffice == po && m.name == name) {
        return Err(DirectoryError::DuplicateMailbox(format!("{po}/{name}")).into());
    }
    data.mailboxes.push(Mailbox {
        postoffice: po.clone(),
        name: name.clone(),
        password_hash,
        quota_bytes,
        disabled: false,
        addresses,
        redirect: vec![],
        redirect_keep_copy: false,
        autoresponder: None,
        delivery_event: None,
    });
    Ok(format!("{po}/{name}"))
}

pub(super) fn address_in_use(data: &DirectoryData, a: &str) -> bool {
    data.mailboxes.iter().any(|m| m.addresses.iter().any(|x| x == a))
        || data.groups.iter().any(|g| g.address == a)
        || data.lists.iter().any(|l| {
            let (local, domain) = l.parts();
            l.address == a || ["request", "owner", "bounces"].iter().any(|s| format!("{local}-{s}@{domain}") == a)
        })
}

fn mailbox_json(m: &Mailbox) -> serde_json::Value {
    serde_json::json!({
        "address": m.primary_address(),
        "postoffice": m.postoffice,
        "name": m.name,
        "maildir": m.maildir(),
        "addresses": m.addresses,
        "password_set": m.password_hash.is_some(),
        "quota_bytes": m.quota_bytes,
        "disabled": m.disabled,
        "redirect": m.redirect,
        "redirect_keep_copy": m.redirect_keep_copy,
        "autoresponder": m.autoresponder,
        "delivery_event": m.delivery_event,
    })
}

fn mailbox(
    data: &mut DirectoryData,
    cmd: MailboxCmd,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    match cmd {
        MailboxCmd::Add { address, password, quota: q } => {
            let pw = read_password(&password, input)?;
            let quota_bytes = q.as_deref().map(quota).transpose()?;
            // Check everything before the (slow) hash.
            let mut trial = data.clone();
            add_mailbox(&mut trial, &address, None, quota_bytes)?;
            let hash = pw.as_deref().map(hash_password).transpose()?;
            let maildir = add_mailbox(data, &address, hash, quota_bytes)?;
            writeln!(out, "mailbox {} added ({maildir})", normalize_address(&address)?)?;
        }
        MailboxCmd::Remove { address } => {
            let i = find_mailbox(data, &address)?;
            let m = data.mailboxes.remove(i);
            writeln!(
                out,
                "mailbox {} removed (its Maildir {} stays on disk)",
                normalize_address(&address)?,
                m.maildir()
            )?;
        }
        MailboxCmd::List { postoffice, json } => {
            let po = postoffice.map(|p| p.to_ascii_lowercase());
            if let Some(p) = &po {
                find_postoffice(data, p)?;
            }
            for m in data.mailboxes.iter().filter(|m| po.as_ref().is_none_or(|p| &m.postoffice == p)) {
                if json {
                    writeln!(out, "{}", mailbox_json(m))?;
                } else {
                    let mut flags = String::new();
                    if m.disabled {
                        flags.push_str(" disabled");
                    }
                    if m.quota_bytes > 0 {
                        flags.push_str(&format!(" quota={}", m.quota_bytes));
                    }
                    if !m.redirect.is_empty() {
                        flags.push_str(&format!(" redirect={}", m.redirect.join(",")));
                    }
                    writeln!(out, "{}  {}{flags}", m.primary_address().unwrap_or("-"), m.maildir())?;
                }
            }
        }
        MailboxCmd::Show { address, json } => {
            let v = mailbox_json(&data.mailboxes[find_mailbox(data, &address)?]);
            if json {
                writeln!(out, "{v}")?;
            } else {
                show_text(&v, out)?;
            }
        }
        MailboxCmd::Set {
            address,
            password,
            quota: q,
            disabled,
            add_address,
            remove_address,
            redirect,
            keep_copy,
            autoresponder_subject,
            autoresponder_body,
            autoresponder_reply_to,
            autoresponder_off,
            delivery_event,
        } => {
            let i = find_mailbox(data, &address)?;
            let pw = read_password(&password, input)?;
            let quota_bytes = q.as_deref().map(quota).transpose()?;
            let add = add_address.iter().map(|a| normalize_address(a)).collect::<Result<Vec<_>, _>>()?;
            let remove = remove_address.iter().map(|a| normalize_address(a)).collect::<Result<Vec<_>, _>>()?;
            let redirect =
                redirect.map(|r| r.iter().map(|a| normalize_address(a)).collect::<Result<Vec<_>, _>>()).transpose()?;
            let reply_to = optional(autoresponder_reply_to, normalize_address)?;
            for a in &add {
                if address_in_use(data, a) {
                    return Err(DirectoryError::DuplicateAddress(a.clone()).into());
                }
                // Its domain must exist and belong to the mailbox's postoffice (checked again
                // as a whole before saving).
                find_domain(data, split(a).map_or("", |(_, d)| d))?;
            }
            for a in &remove {
                if !data.mailboxes[i].addresses.contains(a) {
                    return Err(CommandError::NotFound(format!("{a} is not an address of this mailbox")));
                }
            }
            let m = &mut data.mailboxes[i];
            if let Some(pw) = pw {
                m.password_hash = Some(hash_password(&pw)?);
            }
            if let Some(q) = quota_bytes {
                m.quota_bytes = q;
            }
            if let Some(d) = disabled {
                m.disabled = d;
            }
            m.addresses.extend(add);
            m.addresses.retain(|a| !remove.contains(a));
            if m.addresses.is_empty() {
                return Err(CommandError::Usage("a mailbox keeps at least one address".into()));
            }
            if let Some(r) = redirect {
                m.redirect = r;
            }
            if let Some(k) = keep_copy {
                m.redirect_keep_copy = k;
            }
            if autoresponder_off {
                m.autoresponder = None;
            } else if autoresponder_subject.is_some() || autoresponder_body.is_some() || reply_to.is_some() {
                let ar = m.autoresponder.get_or_insert(AutoResponder {
                    subject: "Automatic reply".into(),
                    body: String::new(),
                    reply_to: None,
                });
                if let Some(s) = autoresponder_subject {
                    ar.subject = s;
                }
                if let Some(b) = autoresponder_body {
                    ar.body = b;
                }
                if let Some(r) = reply_to {
                    ar.reply_to = r;
                }
            }
            if let Some(p) = delivery_event {
                m.delivery_event = if p.is_empty() { None } else { Some(p) };
            }
            writeln!(out, "mailbox {} changed", m.maildir())?;
        }
    }
    Ok(())
}

fn group(data: &mut DirectoryData, cmd: GroupCmd, out: &mut dyn Write) -> Result<(), CommandError> {
    let find = |data: &DirectoryData, a: &str| -> Result<usize, CommandError> {
        let a = normalize_address(a)?;
        data.groups.iter().position(|g| g.address == a).ok_or_else(|| DirectoryError::UnknownGroup(a).into())
    };
    let members = |m: &[String]| m.iter().map(|a| normalize_address(a)).collect::<Result<Vec<_>, _>>();
    match cmd {
        GroupCmd::Add { address, member } => {
            let a = normalize_address(&address)?;
            find_domain(data, split(&a).map_or("", |(_, d)| d))?;
            if address_in_use(data, &a) {
                return Err(DirectoryError::DuplicateAddress(a).into());
            }
            let mut list: Vec<String> = Vec::new();
            for m in members(&member)? {
                if !list.contains(&m) {
                    list.push(m);
                }
            }
            writeln!(out, "group {a} added with {} member(s)", list.len())?;
            data.groups.push(Group { address: a, members: list });
        }
        GroupCmd::Remove { address } => {
            let i = find(data, &address)?;
            let g = data.groups.remove(i);
            writeln!(out, "group {} removed", g.address)?;
        }
        GroupCmd::List { json } => {
            for g in &data.groups {
                if json {
                    writeln!(out, "{}", serde_json::to_value(g).unwrap_or_default())?;
                } else {
                    writeln!(out, "{}  {} member(s)", g.address, g.members.len())?;
                }
            }
        }
        GroupCmd::Show { address, json } => {
            let v = serde_json::to_value(&data.groups[find(data, &address)?]).unwrap_or_default();
            if json {
                writeln!(out, "{v}")?;
            } else {
                show_text(&v, out)?;
            }
        }
        GroupCmd::Set { address, add_member, remove_member } => {
            let i = find(data, &address)?;
            let add = members(&add_member)?;
            let remove = members(&remove_member)?;
            let g = &mut data.groups[i];
            for m in add {
                if !g.members.contains(&m) {
                    g.members.push(m);
                }
            }
            g.members.retain(|m| !remove.contains(m));
            writeln!(out, "group {} changed: {} member(s)", g.address, g.members.len())?;
        }
    }
    Ok(())
}

fn blocked(data: &mut DirectoryData, cmd: BlockedCmd, out: &mut dyn Write) -> Result<(), CommandError> {
    match cmd {
        BlockedCmd::Add { address } => {
            let a = normalize_address(&address)?;
            if data.blocked.contains(&a) {
                return Err(CommandError::Usage(format!("{a} is already blocked")));
            }
            writeln!(out, "{a} blocked")?;
            data.blocked.push(a);
        }
        BlockedCmd::Remove { address } => {
            let a = normalize_address(&address)?;
            let i = data
                .blocked
                .iter()
                .position(|b| *b == a)
                .ok_or_else(|| CommandError::NotFound(format!("{a} is not blocked")))?;
            data.blocked.remove(i);
            writeln!(out, "{a} no longer blocked")?;
        }
        BlockedCmd::List { json } => {
            for a in &data.blocked {
                if json {
                    writeln!(out, "{}", serde_json::json!({ "address": a }))?;
                } else {
                    writeln!(out, "{a}")?;
                }
            }
        }
    }
    Ok(())
}

/// `key: value` lines of a JSON object, for `show` without `--json`.
pub(super) fn show_text(v: &serde_json::Value, out: &mut dyn Write) -> std::io::Result<()> {
    let Some(map) = v.as_object() else { return writeln!(out, "{v}") };
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => writeln!(out, "{k}: {s}")?,
            serde_json::Value::Null => writeln!(out, "{k}: -")?,
            serde_json::Value::Array(a) => {
                let items: Vec<String> =
                    a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect();
                writeln!(out, "{k}: {}", items.join(", "))?
            }
            other => writeln!(out, "{k}: {other}")?,
        }
    }
    Ok(())
}

/// The fields of one CSV line: comma-separated, a field in double quotes may hold commas and
/// `""` for a quote.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// `import FILE`: one mailbox per `email,password,quota` line. An empty password gets a
/// random one, printed once on `out` as `email,password`; an empty quota means none.
/// Unknown domains are created in the default postoffice (a postoffice `main` is created if
/// there is none). Refused lines are reported on stderr with their number; the others are
/// imported.
fn import(data: &mut DirectoryData, file: &Path, out: &mut dyn Write) -> Result<(), CommandError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CommandError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let (mut imported, mut refused) = (0, 0);
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 1 && line.to_ascii_lowercase().starts_with("email,")) {
            continue;
        }
        match import_line(data, line, out) {
            Ok(()) => imported += 1,
            Err(e) => {
                refused += 1;
                eprintln!("ringmx: {}:{n}: {e}", file.display());
            }
        }
    }
    // The summary, once: as the error when a line was refused.
    if refused > 0 {
        return Err(CommandError::ImportRefused { refused, imported });
    }
    eprintln!("ringmx: imported {imported} mailbox(es), refused 0 line(s)");
    Ok(())
}

fn import_line(data: &mut DirectoryData, line: &str, out: &mut dyn Write) -> Result<(), CommandError> {
    let fields = csv_fields(line).map_err(CommandError::Usage)?;
    if fields.len() > 3 {
        return Err(CommandError::Usage(format!("{} fields, expected email,password,quota", fields.len())));
    }
    let field = |i: usize| fields.get(i).map(|s| s.trim()).unwrap_or("");
    let address = normalize_address(field(0))?;
    let quota_bytes = if field(2).is_empty() { None } else { Some(quota(field(2))?) };
    let (_, domain) = split(&address).ok_or_else(|| DirectoryError::InvalidAddress(address.clone()))?;
    let mut trial = data.clone();
    if find_domain(&trial, domain).is_err() {
        let po = match trial.default_postoffice.clone() {
            Some(po) => po,
            None => {
                trial.postoffices.push(Postoffice::new("main".into(), false));
                trial.default_postoffice = Some("main".into());
                "main".into()
            }
        };
        trial.domains.push(Domain {
            name: normalize_domain(domain)?,
            postoffice: po,
            enabled: true,
            abuse: None,
            postmaster: None,
            catch_all: None,
            smart_host: None,
            sender_blacklist: vec![],
        });
    }
    add_mailbox(&mut trial, &address, None, quota_bytes)?;
    Directory::build(trial.clone())?;
    let (password, generated) = match field(1) {
        "" => (random_password()?, true),
        p => (p.to_string(), false),
    };
    let hash = hash_password(&password)?;
    if let Some(m) = trial.mailboxes.last_mut() {
        m.password_hash = Some(hash);
    }
    *data = trial;
    if generated {
        writeln!(out, "{},{}", address, csv_quote(&password))?;
    }
    Ok(())
}

/// `export [FILE]`: `email,password,quota` for every mailbox, by its primary address; the
/// password column is empty (only hashes are kept), quota in bytes (0: none).
fn export(data: &DirectoryData, file: Option<&Path>, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut text = String::from("email,password,quota\n");
    for m in &data.mailboxes {
        if let Some(a) = m.primary_address() {
            text.push_str(&format!("{},,{}\n", csv_quote(a), m.quota_bytes));
        }
    }
    match file {
        Some(path) => std::fs::write(path, text)?,
        None => out.write_all(text.as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines() {
        let cases: &[(&str, &[&str])] = &[
            ("a@x.test,pw,10M", &["a@x.test", "pw", "10M"]),
            ("a@x.test", &["a@x.test"]),
            ("a@x.test,,", &["a@x.test", "", ""]),
            ("a@x.test,\"p,w\"\"q\",1", &["a@x.test", "p,w\"q", "1"]),
        ];
        for (line, want) in cases {
            assert_eq!(csv_fields(line).unwrap(), *want, "{line}");
        }
        assert!(csv_fields("a@x.test,\"open").is_err());
        assert_eq!(csv_quote("p,w\"q"), "\"p,w\"\"q\"");
        assert_eq!(csv_fields(&format!("a,{}", csv_quote("p,w\"q"))).unwrap(), ["a", "p,w\"q"]);
    }

    #[test]
    fn random_passwords_differ_and_hash() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        let h = hash_password(&a).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&a, &h));
        assert!(!verify_password(&b, &h));
    }
}

//! `ringmx directory list …` and `ringmx directory member …`: mailing lists and their
//! members (the records in the directory, [`crate::directory::List`]), and the moderation
//! of held posts (`list moderate`, through the running server's control socket).

use super::directory::CommandError;
use crate::directory::model::{
    FromRewrite, Posting, ReplyToMode, SendFrom, SubjectPrefix, Subscription, normalize_address, split,
};
use crate::directory::{DirectoryData, DirectoryError, List, Member};
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum ListCmd {
    /// Create a list at ADDRESS (on a hosted domain); its -request, -owner and -bounces
    /// addresses come with it.
    Add {
        address: String,
        #[command(flatten)]
        settings: Box<ListSettings>,
    },
    /// Change a list's settings.
    Set {
        address: String,
        #[command(flatten)]
        settings: Box<ListSettings>,
    },
    Show {
        address: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a list and its members (its held posts and archive stay on disk).
    Remove { address: String },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Held posts: listed without an option; approved (distributed) or rejected (the poster
    /// told) on the running server.
    Moderate(ModerateArgs),
}

#[derive(Debug, Args)]
pub struct ModerateArgs {
    pub address: String,
    #[arg(long, value_name = "CODE", conflicts_with = "reject")]
    pub approve: Option<String>,
    #[arg(long, value_name = "CODE")]
    pub reject: Option<String>,
    /// Told to the poster of a rejected post.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

/// A list's settings; on `set`, only those given change (an empty text clears it).
#[derive(Debug, Args, Default)]
pub struct ListSettings {
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long, value_name = "ADDR")]
    pub add_owner: Vec<String>,
    #[arg(long, value_name = "ADDR")]
    pub remove_owner: Vec<String>,
    #[arg(long, value_name = "ADDR")]
    pub add_moderator: Vec<String>,
    #[arg(long, value_name = "ADDR")]
    pub remove_moderator: Vec<String>,
    #[arg(long, action = clap::ArgAction::Set)]
    pub disabled: Option<bool>,
    /// Answer the `help` command (`--help` is clap's).
    #[arg(long, action = clap::ArgAction::Set)]
    pub help_command: Option<bool>,
    #[arg(long)]
    pub help_text: Option<String>,
    /// `list` or `moderator`.
    #[arg(long)]
    pub send_from: Option<String>,
    /// Hold posts for the moderators.
    #[arg(long, action = clap::ArgAction::Set)]
    pub moderated: Option<bool>,
    /// `anyone`, `closed` or `confirm`.
    #[arg(long)]
    pub subscription: Option<String>,
    #[arg(long, action = clap::ArgAction::Set)]
    pub unsubscribe_confirm: Option<bool>,
    /// `anyone`, `members`, `moderators` or `password`.
    #[arg(long)]
    pub posting: Option<String>,
    /// The password of `--posting password`, written `[:password:]` in the subject.
    #[arg(long)]
    pub password: Option<String>,
    /// `list`, `poster`, `moderator`, or an address.
    #[arg(long)]
    pub reply_to: Option<String>,
    /// `name` (`[name]`), `none`, or the prefix itself.
    #[arg(long)]
    pub prefix: Option<String>,
    #[arg(long)]
    pub header_text: Option<String>,
    #[arg(long)]
    pub footer_text: Option<String>,
    /// Largest post (10M, 512K; 0: the server's limit).
    #[arg(long, value_name = "SIZE")]
    pub max_message_size: Option<String>,
    /// `dmarc`, `always` or `never`.
    #[arg(long)]
    pub from_rewrite: Option<String>,
    #[arg(long, action = clap::ArgAction::Set)]
    pub archive: Option<bool>,
    #[arg(long, value_name = "URL")]
    pub archive_url: Option<String>,
    #[arg(long, value_name = "HOURS")]
    pub digest_hours: Option<u32>,
    #[arg(long, value_name = "SIZE")]
    pub digest_max_size: Option<String>,
    #[arg(long, value_name = "N")]
    pub bounce_limit: Option<u32>,
    #[arg(long, value_name = "DAYS")]
    pub bounce_window_days: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// Add members to a list.
    Add {
        list: String,
        #[arg(required = true)]
        address: Vec<String>,
        /// Digests instead of each post.
        #[arg(long)]
        digest: bool,
    },
    Remove {
        list: String,
        #[arg(required = true)]
        address: Vec<String>,
    },
    /// Change a member: digests, or disabled (a member disabled by bounces is enabled again
    /// with `--disabled false`).
    Set {
        list: String,
        address: String,
        #[arg(long, action = clap::ArgAction::Set)]
        digest: Option<bool>,
        #[arg(long, action = clap::ArgAction::Set)]
        disabled: Option<bool>,
    },
    List {
        list: String,
        #[arg(long)]
        json: bool,
    },
    /// Add the addresses of FILE, one per line (or the first field of a CSV line; `#`
    /// starts a comment).
    Import { list: String, file: PathBuf },
    /// Write the members, one address per line, to FILE or stdout.
    Export { list: String, file: Option<PathBuf> },
}

fn find(data: &DirectoryData, address: &str) -> Result<usize, CommandError> {
    let a = normalize_address(address)?;
    data.lists.iter().position(|l| l.address == a).ok_or_else(|| DirectoryError::UnknownList(a).into())
}

fn choice<T: serde::de::DeserializeOwned>(what: &str, v: &str, allowed: &str) -> Result<T, CommandError> {
    serde_json::from_value(serde_json::Value::String(v.trim().to_ascii_lowercase()))
        .map_err(|_| CommandError::Usage(format!("--{what} {v:?}: expected one of {allowed}")))
}

fn text(v: String) -> Option<String> {
    (!v.trim().is_empty()).then_some(v)
}

fn size(what: &str, v: &str) -> Result<u64, CommandError> {
    if v.trim() == "0" {
        return Ok(0);
    }
    crate::config::parse_size(v).ok_or_else(|| CommandError::Usage(format!("--{what} {v:?}: not a size (10M, 512K)")))
}

fn addresses(v: &[String]) -> Result<Vec<String>, CommandError> {
    v.iter().map(|a| normalize_address(a).map_err(CommandError::from)).collect()
}

fn apply_settings(l: &mut List, s: ListSettings) -> Result<(), CommandError> {
    if let Some(v) = s.description {
        l.description = v.trim().to_string();
    }
    for a in addresses(&s.add_owner)? {
        if !l.owners.contains(&a) {
            l.owners.push(a);
        }
    }
    let gone = addresses(&s.remove_owner)?;
    l.owners.retain(|o| !gone.contains(o));
    for a in addresses(&s.add_moderator)? {
        if !l.moderators.contains(&a) {
            l.moderators.push(a);
        }
    }
    let gone = addresses(&s.remove_moderator)?;
    l.moderators.retain(|o| !gone.contains(o));
    if let Some(v) = s.disabled {
        l.disabled = v;
    }
    if let Some(v) = s.help_command {
        l.help = v;
    }
    if let Some(v) = s.help_text {
        l.help_text = text(v);
    }
    if let Some(v) = s.send_from {
        l.send_from = choice::<SendFrom>("send-from", &v, "list, moderator")?;
    }
    if let Some(v) = s.moderated {
        l.moderated = v;
    }
    if let Some(v) = s.subscription {
        l.subscription = choice::<Subscription>("subscription", &v, "anyone, closed, confirm")?;
    }
    if let Some(v) = s.unsubscribe_confirm {
        l.unsubscribe_confirm = v;
    }
    if let Some(v) = s.posting {
        l.posting = choice::<Posting>("posting", &v, "anyone, members, moderators, password")?;
    }
    if let Some(v) = s.password {
        if v.contains([':', '[', ']']) || v.chars().any(char::is_whitespace) {
            return Err(CommandError::Usage("--password: no spaces, ':', '[' or ']' (it goes in [:password:])".into()));
        }
        l.password = text(v);
    }
    if let Some(v) = s.reply_to {
        match v.trim().to_ascii_lowercase().as_str() {
            "list" => l.reply_to = ReplyToMode::List,
            "poster" => l.reply_to = ReplyToMode::Poster,
            "moderator" => l.reply_to = ReplyToMode::Moderator,
            a => {
                l.reply_to = ReplyToMode::Address;
                l.reply_to_address = Some(normalize_address(a)?);
            }
        }
    }
    if let Some(v) = s.prefix {
        match v.trim() {
            "name" => l.prefix = SubjectPrefix::Name,
            "none" | "" => l.prefix = SubjectPrefix::None,
            custom => {
                l.prefix = SubjectPrefix::Custom;
                l.prefix_text = Some(custom.to_string());
            }
        }
    }
    if let Some(v) = s.header_text {
        l.header_text = text(v.replace("\\n", "\n"));
    }
    if let Some(v) = s.footer_text {
        l.footer_text = text(v.replace("\\n", "\n"));
    }
    if let Some(v) = s.max_message_size {
        l.max_message_bytes = size("max-message-size", &v)?;
    }
    if let Some(v) = s.from_rewrite {
        l.from_rewrite = choice::<FromRewrite>("from-rewrite", &v, "dmarc, always, never")?;
    }
    if let Some(v) = s.archive {
        l.archive = v;
    }
    if let Some(v) = s.archive_url {
        l.archive_url = text(v);
    }
    if let Some(v) = s.digest_hours {
        l.digest_hours = v.max(1);
    }
    if let Some(v) = s.digest_max_size {
        l.digest_max_bytes = size("digest-max-size", &v)?;
    }
    if let Some(v) = s.bounce_limit {
        l.bounce_limit = v;
    }
    if let Some(v) = s.bounce_window_days {
        l.bounce_window_days = v.max(1);
    }
    Ok(())
}

/// `list add|set|show|remove|list` (not `moderate`: [`moderate`]).
pub fn list(data: &mut DirectoryData, cmd: ListCmd, out: &mut dyn Write) -> Result<(), CommandError> {
    match cmd {
        ListCmd::Add { address, settings } => {
            let a = normalize_address(&address)?;
            let (local, domain) = split(&a).unwrap_or_default();
            if !data.domains.iter().any(|d| d.name == domain) {
                return Err(DirectoryError::UnknownDomain(domain.to_string()).into());
            }
            for own in [
                a.clone(),
                format!("{local}-request@{domain}"),
                format!("{local}-owner@{domain}"),
                format!("{local}-bounces@{domain}"),
            ] {
                if super::directory::address_in_use(data, &own) {
                    return Err(DirectoryError::DuplicateAddress(own).into());
                }
            }
            let mut l: List = serde_json::from_value(serde_json::json!({ "address": a }))
                .map_err(|e| CommandError::Usage(e.to_string()))?;
            apply_settings(&mut l, *settings)?;
            if l.owners.is_empty() {
                writeln!(
                    out,
                    "warning: {a} has no owner: bounces that disable members and list errors go unseen (--add-owner)"
                )?;
            }
            writeln!(out, "list {a} added (posts to {a}, commands to {local}-request@{domain})")?;
            data.lists.push(l);
        }
        ListCmd::Set { address, settings } => {
            let i = find(data, &address)?;
            apply_settings(&mut data.lists[i], *settings)?;
            writeln!(out, "list {} changed", data.lists[i].address)?;
        }
        ListCmd::Show { address, json } => {
            let l = &data.lists[find(data, &address)?];
            let mut v = serde_json::to_value(l).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.remove("members");
                m.remove("password");
                m.insert("members".into(), serde_json::json!(l.members.len()));
                m.insert("disabled_members".into(), serde_json::json!(l.members.iter().filter(|m| m.disabled).count()));
                m.insert("digest_members".into(), serde_json::json!(l.members.iter().filter(|m| m.digest).count()));
            }
            if json {
                writeln!(out, "{v}")?;
            } else {
                super::directory::show_text(&v, out)?;
            }
        }
        ListCmd::Remove { address } => {
            let i = find(data, &address)?;
            let l = data.lists.remove(i);
            writeln!(out, "list {} removed with its {} member(s)", l.address, l.members.len())?;
        }
        ListCmd::List { json } => {
            for l in &data.lists {
                if json {
                    let v = serde_json::json!({
                        "address": l.address, "description": l.description, "members": l.members.len(),
                        "moderated": l.moderated, "disabled": l.disabled,
                    });
                    writeln!(out, "{v}")?;
                } else {
                    let flags = [(l.moderated, " moderated"), (l.disabled, " disabled")]
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, s)| *s)
                        .collect::<String>();
                    writeln!(out, "{}  {} member(s){flags}  {}", l.address, l.members.len(), l.description)?;
                }
            }
        }
        ListCmd::Moderate(_) => {
            return Err(CommandError::Usage("moderate is answered by `ringmx directory list moderate`".into()));
        }
    }
    Ok(())
}

/// `member add|remove|set|list|import|export`.
pub fn member(data: &mut DirectoryData, cmd: MemberCmd, out: &mut dyn Write) -> Result<(), CommandError> {
    match cmd {
        MemberCmd::Add { list, address, digest } => {
            let i = find(data, &list)?;
            let mut added = 0;
            for a in addresses(&address)? {
                added += add_member(&mut data.lists[i], a, digest)? as usize;
            }
            writeln!(out, "{added} member(s) added to {}", data.lists[i].address)?;
        }
        MemberCmd::Remove { list, address } => {
            let i = find(data, &list)?;
            let gone = addresses(&address)?;
            let l = &mut data.lists[i];
            let before = l.members.len();
            l.members.retain(|m| !gone.contains(&m.address));
            writeln!(out, "{} member(s) removed from {}", before - l.members.len(), l.address)?;
        }
        MemberCmd::Set { list, address, digest, disabled } => {
            let i = find(data, &list)?;
            let a = normalize_address(&address)?;
            let l = &mut data.lists[i];
            let m = l
                .members
                .iter_mut()
                .find(|m| m.address == a)
                .ok_or_else(|| CommandError::NotFound(format!("{a} is not a member of {}", l.address)))?;
            if let Some(d) = digest {
                m.digest = d;
            }
            if let Some(d) = disabled {
                m.disabled = d;
                if !d {
                    m.bounces = 0;
                    m.first_bounce_ms = 0;
                }
            }
            writeln!(out, "member {a} of {} changed", l.address)?;
        }
        MemberCmd::List { list, json } => {
            let l = &data.lists[find(data, &list)?];
            for m in &l.members {
                if json {
                    writeln!(out, "{}", serde_json::to_value(m).unwrap_or_default())?;
                } else {
                    let mut flags = String::new();
                    if m.digest {
                        flags.push_str(" digest");
                    }
                    if m.disabled {
                        flags.push_str(" disabled");
                    }
                    if m.bounces > 0 {
                        flags.push_str(&format!(" bounces={}", m.bounces));
                    }
                    writeln!(out, "{}{flags}", m.address)?;
                }
            }
        }
        MemberCmd::Import { list, file } => {
            let i = find(data, &list)?;
            import(&mut data.lists[i], &file, out)?;
        }
        MemberCmd::Export { list, file } => {
            let l = &data.lists[find(data, &list)?];
            let text: String = l.members.iter().map(|m| format!("{}\n", m.address)).collect();
            match file {
                Some(f) => {
                    std::fs::write(&f, text)?;
                    writeln!(out, "{} member(s) written to {}", l.members.len(), f.display())?;
                }
                None => out.write_all(text.as_bytes())?,
            }
        }
    }
    Ok(())
}

/// Adds a member; false when it already is one. A list is never its own member: its copy
/// would come back to it (the `X-Loop` check would drop it, but that is a mistake to refuse).
fn add_member(l: &mut List, a: String, digest: bool) -> Result<bool, CommandError> {
    let (local, domain) = l.parts();
    let own = [
        l.address.clone(),
        format!("{local}-request@{domain}"),
        format!("{local}-bounces@{domain}"),
        format!("{local}-owner@{domain}"),
    ];
    if own.contains(&a) {
        return Err(CommandError::Usage(format!("{a} is an address of the list {} itself", l.address)));
    }
    if l.member(&a).is_some() {
        return Ok(false);
    }
    let mut m = Member::new(a);
    m.digest = digest;
    l.members.push(m);
    Ok(true)
}

fn import(l: &mut List, file: &Path, out: &mut dyn Write) -> Result<(), CommandError> {
    let f = std::fs::File::open(file).map_err(|e| CommandError::Usage(format!("{}: {e}", file.display())))?;
    let (mut added, mut known, mut refused) = (0usize, 0usize, 0usize);
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        let field = line.split('#').next().unwrap_or_default().split([',', ';', '\t']).next().unwrap_or_default();
        let field = field.trim().trim_matches('"');
        if field.is_empty() {
            continue;
        }
        match normalize_address(field) {
            Ok(a) => match add_member(l, a, false) {
                Ok(true) => added += 1,
                Ok(false) => known += 1,
                Err(e) => {
                    refused += 1;
                    writeln!(out, "line {}: {e}", n + 1)?;
                }
            },
            Err(e) => {
                refused += 1;
                writeln!(out, "line {}: {e}", n + 1)?;
            }
        }
    }
    writeln!(out, "{added} member(s) added to {}, {known} already members, {refused} line(s) refused", l.address)?;
    if refused > 0 {
        return Err(CommandError::ImportRefused { refused, imported: added });
    }
    Ok(())
}

/// `list moderate`: the held posts, or one approved or rejected through the running
/// server (which queues the distribution or the poster's notice).
pub fn moderate(
    data_dir: &Path,
    dir: &DirectoryData,
    args: ModerateArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let ModerateArgs { address, approve, reject, reason, json } = args;
    let l = &dir.lists[find(dir, &address)?];
    let (op, code) = match (approve, reject) {
        (Some(c), _) => ("approve", c),
        (None, Some(c)) => ("reject", c),
        (None, None) => {
            let held = crate::lists::store::FileStore::in_data_dir(data_dir).held_posts(&l.address)?;
            for h in &held {
                if json {
                    let v = serde_json::json!({"code": h.code, "from": h.from, "subject": h.subject, "size": h.size, "held": crate::util::time::rfc3339_ms(h.held_s * 1000)});
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(
                        out,
                        "{}  {}  {} bytes  from {}  {}",
                        h.code,
                        crate::util::time::rfc3339_ms(h.held_s * 1000),
                        h.size,
                        h.from,
                        h.subject
                    )?;
                }
            }
            if !json {
                writeln!(out, "{} post(s) held for {}", held.len(), l.address)?;
            }
            return Ok(());
        }
    };
    let body = serde_json::json!({ "op": op, "code": code, "reason": reason });
    let s = super::api::connect_or_fail(data_dir, ": approving or rejecting a post needs it, to queue its mail")
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let path = format!("/v1/lists/{}/moderate", super::api::seg(&l.address));
    let (_, a): (u16, crate::rt::lists::ModerateAnswer) =
        super::api::json(s, "POST", &path, Some(&body)).map_err(|e| CommandError::Usage(e.to_string()))?;
    match (a.done, a.error) {
        (_, Some(e)) => Err(CommandError::NotFound(e)),
        (Some(d), None) => {
            writeln!(out, "{d}")?;
            Ok(())
        }
        (None, None) => Err(CommandError::Usage("the server gave no answer".into())),
    }
}

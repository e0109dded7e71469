//! Mailing lists (SPEC §6 "Lists"): what a list does with a message that reaches one of its
//! addresses. Pure apart from the [`ListStore`] it is given (held posts, confirmation codes,
//! the digest and the archive): the directory's list record, the message and a [`Ctx`] in,
//! a [`Handled`] (messages to send, directory changes, held posts approved) out. The
//! driver (`rt/lists.rs`) reads and writes the files, asks DNS, and applies the changes.
//!
//! # A post's way
//!
//! `name@domain` ← post → loop check (`X-Loop` naming this list: dropped) → a subject that
//! is only a command is a command (MailEnable) → posting rule (`members`, `moderators`:
//! checked at RCPT already; `password`: `[:pw:]` in the subject) → size → held for the
//! moderators when moderated (a notice with the code goes to them) → distributed: one
//! message with every member as a recipient (one spool record; the queue groups them by
//! destination and sends each with its own VERP reverse path), the copy rewritten by
//! [`message::rewrite`] (prefix, reply-to, header and footer, RFC 2369/2919 fields,
//! `Precedence: list`, `X-Loop`, and the From replaced when the poster's DMARC policy
//! asks); the digest and the archive keep their copy.
//!
//! # Layout
//!
//! - `mod.rs`: [`handle`], [`distribute`], [`approve`], [`apply`] and the list's own
//!   messages.
//! - [`commands`]: the commands in a subject or body.
//! - [`message`]: rewriting a post, MIME-aware; digests; DSNs and VERP.
//! - [`store`]: [`ListStore`], the files of a list.

pub mod commands;
pub mod message;
pub mod store;

use crate::delivery::client::Response;
use crate::directory::model::{FromRewrite, Posting, ReplyToMode, SendFrom, Subscription};
use crate::directory::{DirectoryData, List, ListRole, Member};
use crate::queue::actions::{Draft, LocalFailure};
use commands::Command;
use store::{ListStore, Pending};

/// Most members one distribution message names (a queued message numbers its recipients in
/// 16 bits); a bigger list is distributed as several.
pub const MAX_RECIPIENTS: usize = 50_000;

/// How long a confirmation code works.
pub const CONFIRM_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// What the driver knows that the list does not.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub now_ms: u64,
    /// Our host name (message ids).
    pub hostname: &'a str,
    /// The poster's From domain publishes DMARC `p=reject` or `p=quarantine` (asked of DNS
    /// by the driver, or listed in `[lists] dmarc_domains`).
    pub poster_dmarc_strict: bool,
    /// Each member's copy gets its own `List-Unsubscribe` at delivery (RFC 8058): the
    /// shared copy carries none.
    pub one_click: bool,
}

/// RFC 8058 one-click unsubscription: the URL the POST goes to, the key of its tokens, and
/// the keys that sign each member's copy (§4: the fields must be under a DKIM signature).
#[derive(Clone)]
pub struct OneClick {
    pub url: String,
    pub key: (u64, u64),
    pub signers: Vec<std::sync::Arc<crate::policy::dkim_sign::SignKey>>,
}

impl std::fmt::Debug for OneClick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("OneClick").field("url", &self.url).finish_non_exhaustive()
    }
}

impl OneClick {
    /// The token of `member` on `list` (RFC 8058 §3.1: the URL names the list and the
    /// recipient with something hard to forge): SipHash-2-4 under the server's key.
    pub fn token(&self, list: &str, member: &str) -> String {
        use std::hash::Hasher;
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(self.key.0, self.key.1);
        h.write(list.to_ascii_lowercase().as_bytes());
        h.write_u8(0);
        h.write(member.to_ascii_lowercase().as_bytes());
        format!("{:016x}", h.finish())
    }

    /// The URL of `member`'s one-click unsubscription from `list`.
    pub fn link(&self, list: &str, member: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}l={}&m={}&t={}", self.url, pct(list), pct(member), self.token(list, member))
    }

    /// `member`'s copy of a list's message: its `List-Unsubscribe` (the URL, then the mailto)
    /// and `List-Unsubscribe-Post` on top, and a DKIM signature over them by the list
    /// domain's key when there is one.
    pub fn personalize(&self, list: &str, member: &str, content: &[u8]) -> Vec<u8> {
        let (local, domain) = list.rsplit_once('@').unwrap_or((list, ""));
        let fields = format!(
            "List-Unsubscribe: <{}>, <mailto:{local}-request@{domain}?subject=unsubscribe>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            self.link(list, member)
        );
        let mut out = Vec::with_capacity(fields.len() + content.len() + 1024);
        out.extend_from_slice(fields.as_bytes());
        out.extend_from_slice(content);
        if let Some(k) = self.signers.iter().find(|k| k.domain.eq_ignore_ascii_case(domain))
            && let Ok(h) = k.sign(&out)
        {
            let mut signed = Vec::with_capacity(h.len() + 2 + out.len());
            signed.extend_from_slice(h.as_bytes());
            signed.extend_from_slice(b"\r\n");
            signed.extend_from_slice(&out);
            return signed;
        }
        out
    }
}

/// Percent-encodes what is not unreserved (RFC 3986 §2.3).
fn pct(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Decodes what [`pct`] encodes (and `+` as a space, as forms send it).
pub fn unpct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A change to the directory a message asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Subscribe {
        list: String,
        address: String,
    },
    Unsubscribe {
        list: String,
        address: String,
    },
    /// A member's address bounced once more.
    Bounce {
        list: String,
        member: String,
    },
}

/// What became of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// Nothing to do (already a member, not a member, list gone).
    Nothing,
    /// The member reached the list's bounce limit and no longer gets mail.
    Disabled {
        bounces: u32,
    },
}

/// What a list did with a message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Handled {
    /// Messages to send along with the message's mark.
    pub drafts: Vec<Draft>,
    /// Changes to the directory (made before the mark).
    pub changes: Vec<Change>,
    /// Held posts a moderator approved (by code): the driver distributes each and removes
    /// it once the distribution is durable.
    pub approved: Vec<String>,
    /// Why nothing was sent, for the log (a loop, a bounce not understood, …).
    pub note: Option<String>,
}

fn fail(code: u16, status: &str, text: &str) -> LocalFailure {
    LocalFailure { permanent: code >= 500, reply: Response::new(code, Some(status), text) }
}

fn io_fail(e: std::io::Error) -> LocalFailure {
    fail(451, "4.3.0", &format!("list storage: {e}"))
}

/// Takes a message that reached `role` of `list` from the reverse path `from`.
pub fn handle(
    list: &List,
    role: &ListRole,
    from: &str,
    content: &[u8],
    ctx: &Ctx<'_>,
    store: &mut dyn ListStore,
) -> Result<Handled, LocalFailure> {
    match role {
        ListRole::Post => post(list, from, content, ctx, store),
        ListRole::Request => {
            let subject = message::header(content, "Subject").unwrap_or_default();
            let cmds = commands::parse(&subject, &body_text(content));
            run_commands(list, from, content, cmds, ctx, store)
        }
        ListRole::Owner => {
            let mut h = Handled::default();
            if !list.owners.is_empty() {
                let to = list.owners.clone();
                h.drafts.push(Draft { from: from.to_string(), to, data: content.to_vec(), kind: "list-owner" });
            }
            Ok(h)
        }
        ListRole::Bounces(member) => Ok(bounce(list, from, member.as_deref(), content, ctx)),
    }
}

/// The text of a message's body (its first text part's, roughly: enough to find commands).
fn body_text(content: &[u8]) -> String {
    let start = memchr::memmem::find(content, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| memchr::memmem::find(content, b"\n\n").map(|i| i + 2));
    let body = &content[start.unwrap_or(content.len())..];
    String::from_utf8_lossy(&body[..body.len().min(8192)]).into_owned()
}

/// The address a request speaks for: its From, else its reverse path.
fn requester(from: &str, content: &[u8]) -> String {
    message::header(content, "From").and_then(|f| message::address_of(&f)).unwrap_or_else(|| from.to_ascii_lowercase())
}

/// True when the message already went through this list (RFC 2369 lists mark their mail;
/// we add `X-Loop: <list>`).
fn looped(list: &List, content: &[u8]) -> bool {
    let head_end = memchr::memmem::find(content, b"\r\n\r\n").unwrap_or(content.len());
    let head = String::from_utf8_lossy(&content[..head_end]);
    head.split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("X-Loop") && value.trim().eq_ignore_ascii_case(&list.address)
        })
    })
}

fn post(
    list: &List,
    from: &str,
    content: &[u8],
    ctx: &Ctx<'_>,
    store: &mut dyn ListStore,
) -> Result<Handled, LocalFailure> {
    if looped(list, content) {
        return Ok(Handled {
            note: Some("dropped: it already went through this list (X-Loop)".into()),
            ..Default::default()
        });
    }
    let subject = message::header(content, "Subject").unwrap_or_default();
    // MailEnable: "subscribe", "unsubscribe", "help" as the subject of a mail to the list.
    if !from.is_empty()
        && let Some(c) = commands::parse_subject(&subject)
        && !matches!(c, Command::Approve(_) | Command::Reject(..))
        && (subject.trim().len() < 64)
    {
        return run_commands(list, from, content, vec![c], ctx, store);
    }
    if list.disabled {
        return Err(fail(550, "5.2.1", "the list is disabled"));
    }
    if !crate::directory::may_post(list, from) {
        return Err(fail(550, "5.7.1", "this list takes posts from its members only"));
    }
    if list.posting == Posting::Password {
        let ok =
            message::subject_password(&subject).is_some_and(|(pw, _)| Some(pw.as_str()) == list.password.as_deref());
        if !ok {
            return Err(fail(550, "5.7.1", "this list takes posts with its password in the subject only"));
        }
    }
    if list.max_message_bytes > 0 && content.len() as u64 > list.max_message_bytes {
        return Err(fail(552, "5.3.4", &format!("the list takes posts of {} bytes at most", list.max_message_bytes)));
    }
    if list.moderated && !list.is_moderator(from) {
        let code = store.new_code();
        store.hold(&list.address, &code, from, content).map_err(io_fail)?;
        let mut h = Handled::default();
        if let Some(n) = held_notice(list, &code, from, content, ctx) {
            h.drafts.push(n);
        }
        h.note = Some(format!("held for the moderators, code {code}"));
        return Ok(h);
    }
    let drafts = distribute(list, from, content, ctx, store).map_err(io_fail)?;
    Ok(Handled { drafts, ..Default::default() })
}

/// The RFC 2369 and RFC 2919 fields of a list's mail, `Precedence: list` and `X-Loop`;
/// `List-Unsubscribe` unless each member's copy gets its own (`one_click`).
pub fn list_fields(list: &List, one_click: bool) -> Vec<(String, String)> {
    let (local, domain) = list.parts();
    let request = list.role_address("request");
    let id = if list.description.is_empty() {
        format!("<{local}.{domain}>")
    } else {
        format!("\"{}\" <{local}.{domain}>", list.description.replace(['"', '\\', '\r', '\n'], " "))
    };
    let mut f = vec![("List-Id".to_string(), id)];
    if list.help {
        f.push(("List-Help".into(), format!("<mailto:{request}?subject=help>")));
    }
    f.push(("List-Subscribe".into(), format!("<mailto:{request}?subject=subscribe>")));
    if !one_click {
        f.push(("List-Unsubscribe".into(), format!("<mailto:{request}?subject=unsubscribe>")));
    }
    let post =
        if list.posting == Posting::Moderators { "NO".to_string() } else { format!("<mailto:{}>", list.address) };
    f.push(("List-Post".into(), post));
    f.push(("List-Owner".into(), format!("<mailto:{}>", list.role_address("owner"))));
    if let Some(a) = &list.archive_url {
        f.push(("List-Archive".into(), format!("<{a}>")));
    }
    f.push(("Precedence".into(), "list".into()));
    f.push(("X-Loop".into(), list.address.clone()));
    f
}

/// The distribution of a post: the rewritten copy to every member who gets each post (one
/// message, reverse path `name-bounces@domain`); the digest and the archive keep a copy.
pub fn distribute(
    list: &List,
    from: &str,
    content: &[u8],
    ctx: &Ctx<'_>,
    store: &mut dyn ListStore,
) -> std::io::Result<Vec<Draft>> {
    let moderator = list.moderator().unwrap_or(&list.address).to_string();
    let reply_to = match list.reply_to {
        ReplyToMode::List => message::ReplyTo::List,
        ReplyToMode::Poster => message::ReplyTo::Poster,
        ReplyToMode::Moderator => message::ReplyTo::Fixed(&moderator),
        ReplyToMode::Address => {
            list.reply_to_address.as_deref().map_or(message::ReplyTo::Poster, message::ReplyTo::Fixed)
        }
    };
    let rewrite_from = match list.from_rewrite {
        FromRewrite::Always => true,
        FromRewrite::Never => false,
        FromRewrite::Dmarc => ctx.poster_dmarc_strict,
    };
    let added = list_fields(list, ctx.one_click);
    let prefix = list.prefix();
    let r = message::Rewrite {
        list_address: &list.address,
        list_display: list.parts().0,
        subject_prefix: prefix.as_deref(),
        password: if list.posting == Posting::Password { list.password.as_deref() } else { None },
        reply_to,
        header_text: list.header_text.as_deref(),
        footer_text: list.footer_text.as_deref(),
        rewrite_from,
        added: &added,
    };
    let copy = message::rewrite(content, &r);
    let active = |m: &&Member| !m.disabled;
    let to: Vec<String> = list.members.iter().filter(active).filter(|m| !m.digest).map(|m| m.address.clone()).collect();
    if list.members.iter().filter(active).any(|m| m.digest) {
        store.digest_add(&list.address, &copy)?;
    }
    if list.archive {
        store.archive(&list.address, &copy)?;
    }
    let _ = from;
    // One spool record for up to MAX_RECIPIENTS members (recipients are numbered in 16 bits).
    Ok(to
        .chunks(MAX_RECIPIENTS)
        .map(|c| Draft { from: list.role_address("bounces"), to: c.to_vec(), data: copy.clone(), kind: "list" })
        .collect())
}

/// A held post approved: its distribution (the caller removes it from the store once the
/// distribution is durable).
pub fn approve(
    list: &List,
    code: &str,
    ctx: &Ctx<'_>,
    store: &mut dyn ListStore,
) -> std::io::Result<Option<Vec<Draft>>> {
    let Some((poster, post)) = store.held(&list.address, code)? else { return Ok(None) };
    distribute(list, &poster, &post, ctx, store).map(Some)
}

/// A held post rejected: removed, and its poster told why.
pub fn reject(
    list: &List,
    code: &str,
    reason: &str,
    ctx: &Ctx<'_>,
    store: &mut dyn ListStore,
) -> std::io::Result<Option<Vec<Draft>>> {
    let Some((poster, post)) = store.held(&list.address, code)? else { return Ok(None) };
    store.drop_held(&list.address, code)?;
    let subject = message::header(&post, "Subject").unwrap_or_default();
    let mut body = format!(
        "Your post to {} was not accepted by the list's moderators.\r\n\r\nSubject: {subject}\r\n",
        list.address
    );
    if !reason.trim().is_empty() {
        body.push_str(&format!("Reason: {}\r\n", reason.trim()));
    }
    if poster.is_empty() {
        return Ok(Some(Vec::new()));
    }
    Ok(Some(vec![notice(
        list,
        &[poster],
        &format!("Your post to {} was rejected", list.address),
        &body,
        "auto-replied",
        ctx,
    )]))
}

fn run_commands(
    list: &List,
    from: &str,
    content: &[u8],
    cmds: Vec<Command>,
    ctx: &Ctx<'_>,
    store: &mut dyn ListStore,
) -> Result<Handled, LocalFailure> {
    let mut h = Handled::default();
    // Never answer the null reverse path (a bounce to the request address) or a list.
    if from.is_empty() || message::header(content, "List-Id").is_some() {
        h.note = Some("not answered: a bounce or list mail".into());
        return Ok(h);
    }
    let who = requester(from, content);
    let mut answers: Vec<String> = Vec::new();
    if cmds.is_empty() {
        answers.push("No command was found in your message.".into());
        answers.push(help_text(list));
    }
    for c in cmds {
        match c {
            Command::Help => answers.push(help_text(list)),
            Command::Subscribe(addr) => {
                let address = addr.unwrap_or_else(|| who.clone());
                if list.member(&address).is_some() {
                    answers.push(format!("{address} is already a member of {}.", list.address));
                    continue;
                }
                match list.subscription {
                    Subscription::Closed => answers.push(format!(
                        "{} does not take subscriptions by mail; ask its owner ({}).",
                        list.address,
                        list.role_address("owner")
                    )),
                    // `subscribe OTHER` always needs the other address's confirmation.
                    Subscription::Anyone if address == who => {
                        h.changes.push(Change::Subscribe { list: list.address.clone(), address: address.clone() });
                        h.drafts.push(welcome(list, &address, ctx));
                    }
                    _ => h.drafts.push(ask_code(list, "subscribe", &address, ctx, store)?),
                }
            }
            Command::Unsubscribe(addr) => {
                let address = addr.unwrap_or_else(|| who.clone());
                if list.member(&address).is_none() {
                    answers.push(format!("{address} is not a member of {}.", list.address));
                } else if list.unsubscribe_confirm || address != who {
                    h.drafts.push(ask_code(list, "unsubscribe", &address, ctx, store)?);
                } else {
                    h.changes.push(Change::Unsubscribe { list: list.address.clone(), address: address.clone() });
                    answers.push(format!("{address} was removed from {}.", list.address));
                }
            }
            Command::Confirm(code) => match store.take_confirm(&list.address, &code).map_err(io_fail)? {
                Some(p) if p.expires_ms >= ctx.now_ms && p.action == "subscribe" => {
                    h.changes.push(Change::Subscribe { list: list.address.clone(), address: p.address.clone() });
                    h.drafts.push(welcome(list, &p.address, ctx));
                }
                Some(p) if p.expires_ms >= ctx.now_ms => {
                    h.changes.push(Change::Unsubscribe { list: list.address.clone(), address: p.address.clone() });
                    let body = format!("{} was removed from {}.\r\n", p.address, list.address);
                    h.drafts.push(notice(
                        list,
                        &[p.address],
                        &format!("Goodbye from {}", list.address),
                        &body,
                        "auto-replied",
                        ctx,
                    ));
                }
                _ => answers.push(format!("The code {code} is unknown or expired.")),
            },
            Command::Approve(code) => {
                if store.held(&list.address, &code).map_err(io_fail)?.is_some() {
                    h.approved.push(code.clone());
                    answers.push(format!("The post {code} was approved and goes to the list."));
                } else {
                    answers.push(format!("No post is held with the code {code}."));
                }
            }
            Command::Reject(code, reason) => match reject(list, &code, &reason, ctx, store).map_err(io_fail)? {
                Some(d) => {
                    h.drafts.extend(d);
                    answers.push(format!("The post {code} was rejected."));
                }
                None => answers.push(format!("No post is held with the code {code}.")),
            },
        }
    }
    if !answers.is_empty() {
        let body = answers.join("\r\n\r\n") + "\r\n";
        h.drafts.push(notice(
            list,
            &[who],
            &format!("Re: your request to {}", list.address),
            &body,
            "auto-replied",
            ctx,
        ));
    }
    Ok(h)
}

fn help_text(list: &List) -> String {
    let request = list.role_address("request");
    let mut t = String::new();
    if !list.description.is_empty() {
        t.push_str(&format!("{}: {}\r\n\r\n", list.address, list.description));
    }
    if let Some(ht) = &list.help_text {
        t.push_str(ht.trim_end());
        t.push_str("\r\n\r\n");
    }
    t.push_str(&format!(
        "Commands go to {request}, one per line in the body or as the subject:\r\n\
         \x20 help                 this text\r\n\
         \x20 subscribe            join the list\r\n\
         \x20 unsubscribe          leave the list\r\n\
         \x20 confirm CODE         confirm a subscription or unsubscription\r\n\
         Posts go to {}; the owners are at {}.",
        list.address,
        list.role_address("owner")
    ));
    t
}

/// Sends a confirmation code to `address`.
fn ask_code(
    list: &List,
    action: &str,
    address: &str,
    ctx: &Ctx<'_>,
    store: &mut dyn ListStore,
) -> Result<Draft, LocalFailure> {
    let code = store.new_code();
    let p = Pending { action: action.into(), address: address.into(), expires_ms: ctx.now_ms + CONFIRM_TTL_MS };
    store.ask_confirm(&list.address, &code, &p).map_err(io_fail)?;
    let body = format!(
        "Someone (perhaps you) asked to {action} {address} {} the list {}.\r\n\r\n\
         To confirm, reply to this message keeping its subject, or send a message to {}\r\n\
         with the subject: confirm {code}\r\n\r\n\
         If you did not ask for this, ignore this message.\r\n",
        if action == "subscribe" { "to" } else { "from" },
        list.address,
        list.role_address("request"),
    );
    Ok(notice(list, &[address.to_string()], &format!("confirm {code}"), &body, "auto-replied", ctx))
}

fn welcome(list: &List, address: &str, ctx: &Ctx<'_>) -> Draft {
    let body = format!("Welcome to {}. {address} is now a member.\r\n\r\n{}\r\n", list.address, help_text(list));
    notice(list, &[address.to_string()], &format!("Welcome to {}", list.address), &body, "auto-replied", ctx)
}

/// Tells the moderators a post is held, with the code that approves or rejects it.
fn held_notice(list: &List, code: &str, from: &str, content: &[u8], ctx: &Ctx<'_>) -> Option<Draft> {
    let mut to: Vec<String> = list.moderators.clone();
    if to.is_empty() {
        to = list.owners.clone();
    }
    if to.is_empty() {
        return None;
    }
    let subject = message::header(content, "Subject").unwrap_or_default();
    let poster = message::header(content, "From").unwrap_or_else(|| from.to_string());
    let excerpt: String = body_text(content).lines().take(20).map(|l| format!("  {l}\r\n")).collect();
    let body = format!(
        "A post to {list} is held for approval.\r\n\r\n\
         From: {poster}\r\nSubject: {subject}\r\nSize: {size} bytes\r\n\r\n{excerpt}\r\n\
         To approve it, reply to this message keeping its subject, or send \"approve {code}\" to {request}.\r\n\
         To reject it, send \"reject {code} REASON\" to {request} (the poster is told the reason).\r\n\
         On the server: ringmx directory list moderate {list} --approve {code} (or --reject {code}).\r\n",
        list = list.address,
        size = content.len(),
        request = list.role_address("request"),
    );
    Some(notice(
        list,
        &to,
        &format!("Post to {} held for approval: approve {code}", list.address),
        &body,
        "auto-generated",
        ctx,
    ))
}

/// A message of the list itself (RFC 3834: `Auto-Submitted`, so that auto-responders stay
/// quiet; `List-Id`, so that our own do too).
pub fn notice(list: &List, to: &[String], subject: &str, body: &str, auto: &str, ctx: &Ctx<'_>) -> Draft {
    let from = match list.send_from {
        SendFrom::List => list.role_address("request"),
        SendFrom::Moderator => list.moderator().unwrap_or(&list.address).to_string(),
    };
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let mut m = String::with_capacity(512 + body.len());
    m.push_str(&format!("From: <{from}>\r\n"));
    m.push_str(&format!("To: {}\r\n", to.iter().map(|t| format!("<{}>", clean(t))).collect::<Vec<_>>().join(", ")));
    m.push_str(&format!("Subject: {}\r\n", clean(subject)));
    m.push_str(&format!("Date: {}\r\n", crate::util::time::rfc5322(ctx.now_ms / 1000)));
    m.push_str(&format!("Message-ID: <{}.{}@{}>\r\n", store::random_code(), list.parts().0, ctx.hostname));
    m.push_str(&format!("Reply-To: <{}>\r\n", list.role_address("request")));
    m.push_str(&format!("Auto-Submitted: {auto}\r\n"));
    let (local, domain) = list.parts();
    m.push_str(&format!("List-Id: <{local}.{domain}>\r\n"));
    m.push_str(
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    m.push_str(&body.replace("\r\n", "\n").replace('\n', "\r\n"));
    Draft { from: list.role_address("bounces"), to: to.to_vec(), data: m.into_bytes(), kind: "list-notice" }
}

/// A bounce: the member it names (VERP, else the DSN's failed recipients) counts one.
/// A message that is neither from the null sender nor a report is not a bounce.
fn bounce(list: &List, from: &str, member: Option<&str>, content: &[u8], ctx: &Ctx<'_>) -> Handled {
    let mut h = Handled::default();
    let report = message::dsn_failed_recipients(content);
    if !from.is_empty() && report.is_empty() {
        h.note = Some(format!("not a bounce (from {from}): dropped"));
        return h;
    }
    let named: Vec<String> = match member {
        Some(m) => vec![m.to_ascii_lowercase()],
        None => report,
    };
    let members: Vec<String> = named.into_iter().filter(|m| list.member(m).is_some()).collect();
    if members.is_empty() {
        h.note = Some("a bounce that names no member".into());
        // An owner may want to see it; with the null sender, so it cannot bounce back.
        if !list.owners.is_empty() {
            let mut d = notice(
                list,
                &list.owners,
                &format!("Unrecognised bounce for {}", list.address),
                "",
                "auto-generated",
                ctx,
            );
            d.data = content.to_vec();
            d.from = String::new();
            d.kind = "list-owner";
            h.drafts.push(d);
        }
        return h;
    }
    for m in members {
        h.changes.push(Change::Bounce { list: list.address.clone(), member: m });
    }
    h
}

/// Applies a change to the stored directory.
pub fn apply(data: &mut DirectoryData, change: &Change, now_ms: u64) -> Applied {
    let list_of =
        |data: &mut DirectoryData, a: &str| data.lists.iter_mut().position(|l| l.address.eq_ignore_ascii_case(a));
    match change {
        Change::Subscribe { list, address } => {
            let Some(i) = list_of(data, list) else { return Applied::Nothing };
            let l = &mut data.lists[i];
            match l.members.iter_mut().find(|m| m.address.eq_ignore_ascii_case(address)) {
                Some(m) if m.disabled => {
                    m.disabled = false;
                    m.bounces = 0;
                    m.first_bounce_ms = 0;
                    Applied::Done
                }
                Some(_) => Applied::Nothing,
                None => {
                    l.members.push(Member::new(address.to_ascii_lowercase()));
                    Applied::Done
                }
            }
        }
        Change::Unsubscribe { list, address } => {
            let Some(i) = list_of(data, list) else { return Applied::Nothing };
            let before = data.lists[i].members.len();
            data.lists[i].members.retain(|m| !m.address.eq_ignore_ascii_case(address));
            if data.lists[i].members.len() < before { Applied::Done } else { Applied::Nothing }
        }
        Change::Bounce { list, member } => {
            let Some(i) = list_of(data, list) else { return Applied::Nothing };
            let l = &mut data.lists[i];
            let (limit, window) = (l.bounce_limit, l.bounce_window_days as u64 * 86_400_000);
            let Some(m) = l.members.iter_mut().find(|m| m.address.eq_ignore_ascii_case(member)) else {
                return Applied::Nothing;
            };
            if m.disabled {
                return Applied::Nothing;
            }
            if m.bounces == 0 || now_ms.saturating_sub(m.first_bounce_ms) > window {
                m.bounces = 1;
                m.first_bounce_ms = now_ms;
            } else {
                m.bounces += 1;
            }
            if limit > 0 && m.bounces >= limit {
                m.disabled = true;
                return Applied::Disabled { bounces: m.bounces };
            }
            Applied::Done
        }
    }
}

/// Tells the owners a member was disabled by bounces.
pub fn disabled_notice(list: &List, member: &str, bounces: u32, ctx: &Ctx<'_>) -> Option<Draft> {
    if list.owners.is_empty() {
        return None;
    }
    let body = format!(
        "{member} bounced {bounces} time(s) within {} day(s) and no longer gets mail from {}.\r\n\
         To enable it again: ringmx directory member enable {} {member}\r\n",
        list.bounce_window_days, list.address, list.address
    );
    Some(notice(
        list,
        &list.owners,
        &format!("{member} disabled on {} by bounces", list.address),
        &body,
        "auto-generated",
        ctx,
    ))
}

/// The next digest of a list, when one is due at `now_ms`: its drafts (one message to the
/// digest members), built from the posts waiting. `None` when no digest member or no post.
pub fn digest(
    list: &List,
    posts: &[Vec<u8>],
    state: &store::DigestState,
    ctx: &Ctx<'_>,
) -> Option<(Draft, store::DigestState)> {
    let to: Vec<String> = list.members.iter().filter(|m| m.digest && !m.disabled).map(|m| m.address.clone()).collect();
    if to.is_empty() || posts.is_empty() {
        return None;
    }
    let next = store::DigestState { volume: state.volume.max(1), issue: state.issue + 1, last_ms: ctx.now_ms };
    let subject = format!("{} digest, Vol {}, Issue {}", list.parts().0, next.volume, next.issue);
    let date = crate::util::time::rfc5322(ctx.now_ms / 1000);
    let message_id = format!("<{}.digest.{}@{}>", store::random_code(), list.parts().0, ctx.hostname);
    let data = message::digest(&list.address, &subject, &date, &message_id, &list_fields(list, false), posts);
    Some((Draft { from: list.role_address("bounces"), to, data, kind: "list-digest" }, next))
}

#[cfg(test)]
mod tests;

//! The list manager's thread: the I/O around [`crate::lists`]. The control thread hands it
//! the messages that reach a list's addresses ([`ListsHandle::submit`]); it asks DNS for
//! the poster's DMARC policy, runs the list, writes the list's files (held posts, codes,
//! digest, archive) and the directory's changes (subscriptions, bounce counts), then sends
//! the outcome back with the messages to queue. It never blocks the control thread: the
//! control thread only ever sends to it, on an unbounded channel.
//!
//! Two things are queued outside any message's outcome, and the thread waits until the
//! control thread has made them durable before it removes what they were made from: an
//! approved post's distribution (the held file goes after) and a digest (its posts go
//! after). A crash in between sends one of them twice, never loses it.

use super::control::link::ControlMsg;
use crate::delivery::client::Response;
use crate::directory::{Directory, DirectoryHandle, DirectoryStore, JsonFileStore, List, ListRole};
use crate::dns::{Dns, DnsAnswer, DnsQuery};
use crate::lists::store::{FileStore, ListStore};
use crate::lists::{self, Applied, Ctx};
use crate::queue::actions::{Draft, ListJob, LocalFailure, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::time::Duration;

/// `[lists]`: what every list shares.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListsConfig {
    /// Ask DNS for the poster's DMARC policy (`from_rewrite = "dmarc"`). Default true.
    #[serde(default = "yes")]
    pub dmarc_dns: bool,
    /// Domains treated as publishing `p=reject` whatever DNS says (lower case). Default none.
    #[serde(default)]
    pub dmarc_domains: Vec<String>,
    /// RFC 8058 one-click unsubscription: the public URL (HTTPS, through the operator's
    /// proxy) that reaches `POST /lists/unsubscribe` of the `[metrics] listen` endpoint. Each
    /// member's copy then names its own link. Default none: only the mailto.
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
    /// ARC-seal each post's distribution (RFC 8617) with the `[[dkim.sign]]` key of the
    /// list's domain, so that receivers can see what the post's authentication was before
    /// the list changed it. Default false.
    #[serde(default)]
    pub arc_seal: bool,
}

fn yes() -> bool {
    true
}

impl Default for ListsConfig {
    fn default() -> Self {
        ListsConfig { dmarc_dns: true, dmarc_domains: Vec::new(), unsubscribe_url: None, arc_seal: false }
    }
}

/// What ARC sealing needs besides the key: a resolver for the post's own authentication
/// (its signatures, its chain, its DMARC policy), verified again before the list changes it.
struct ArcChecker {
    rt: tokio::runtime::Runtime,
    auth: Arc<mail_auth::MessageAuthenticator>,
}

/// `ringmx directory list moderate LIST --approve|--reject CODE` on a running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModerateRequest {
    pub moderate: Moderate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moderate {
    pub list: String,
    /// `approve` or `reject`.
    pub op: String,
    pub code: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModerateAnswer {
    /// What was done, for the operator.
    pub done: Option<String>,
    pub error: Option<String>,
}

enum Work {
    Job(ListJob),
    Moderate(Moderate, Sender<ModerateAnswer>),
    /// A one-click unsubscription (its token already checked): list, member.
    Unsubscribe(String, String, Sender<Result<bool, String>>),
    /// Look at the stop flag now (the server is stopping).
    Wake,
}

/// The way to the list thread. Cheap to clone.
#[derive(Clone)]
pub struct ListsHandle {
    tx: Sender<Work>,
}

impl std::fmt::Debug for ListsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListsHandle").finish_non_exhaustive()
    }
}

impl ListsHandle {
    /// Wakes the thread to see its stop flag at once.
    pub fn wake(&self) {
        let _ = self.tx.send(Work::Wake);
    }

    /// Hands a message to its list; the outcome comes back to the control thread.
    pub fn submit(&self, job: ListJob) {
        let id = job.id;
        if self.tx.send(Work::Job(job)).is_err() {
            log::warn!("lists: {id}: the list thread is gone; the message waits for the next start");
        }
    }

    /// Removes a member (a one-click unsubscription whose token was checked); `Ok(false)`
    /// when it was not a member.
    pub fn unsubscribe(&self, list: &str, member: &str, timeout: Duration) -> Result<bool, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Work::Unsubscribe(list.to_string(), member.to_string(), tx))
            .map_err(|_| "the server is stopping".to_string())?;
        rx.recv_timeout(timeout).unwrap_or_else(|_| Err("the list thread did not answer in time".into()))
    }

    /// Approves or rejects a held post (the control socket's request).
    pub fn moderate(&self, m: Moderate, timeout: Duration) -> ModerateAnswer {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Work::Moderate(m, tx)).is_err() {
            return ModerateAnswer { error: Some("the server is stopping".into()), ..Default::default() };
        }
        rx.recv_timeout(timeout).unwrap_or_else(|_| ModerateAnswer {
            error: Some("the list thread did not answer in time".into()),
            ..Default::default()
        })
    }
}

/// What the list thread needs.
pub struct ListsSetup {
    pub cfg: ListsConfig,
    pub data_dir: PathBuf,
    pub hostname: String,
    pub directory: Arc<DirectoryHandle>,
    pub dns: Option<Dns>,
    /// `[[dkim.sign]]` keys: the list's messages are signed with the key of their From
    /// domain, else of the list's domain.
    pub signers: Vec<Arc<crate::policy::dkim_sign::SignKey>>,
    /// One-click unsubscription, when `[lists] unsubscribe_url` is set.
    pub one_click: Option<Arc<lists::OneClick>>,
    pub control: SyncSender<ControlMsg>,
    pub stop: Arc<AtomicBool>,
    /// Name servers and time-out of the post's verification before ARC sealing.
    pub auth_servers: Vec<std::net::SocketAddr>,
    pub auth_timeout: Duration,
}

/// The key of the one-click tokens: `<data_dir>/lists/unsubscribe.key` (made at the first
/// start with `[lists] unsubscribe_url`, mode 0600; a new key voids the links already sent).
pub fn one_click_key(data_dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("lists").join("unsubscribe.key");
    let parse = |t: &str| -> Option<(u64, u64)> {
        let t = t.trim();
        Some((u64::from_str_radix(t.get(..16)?, 16).ok()?, u64::from_str_radix(t.get(16..32)?, 16).ok()?))
    };
    if let Ok(t) = std::fs::read_to_string(&path) {
        return parse(&t).ok_or_else(|| std::io::Error::other(format!("{}: not a key", path.display())));
    }
    std::fs::create_dir_all(path.parent().unwrap_or(data_dir))?;
    let key = format!("{}{}\n", crate::lists::store::random_code(), crate::lists::store::random_code());
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut f, key.as_bytes())?;
    f.sync_all()?;
    parse(&key).ok_or_else(|| std::io::Error::other("a key that does not parse"))
}

/// How often the thread looks for digests that came due.
const DIGEST_CHECK: Duration = Duration::from_secs(60);
/// How long the thread waits for the control thread to make queued messages durable.
const DURABLE_WAIT: Duration = Duration::from_secs(30);

/// Starts the list thread.
pub fn spawn(setup: ListsSetup) -> std::io::Result<(ListsHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::Builder::new().name("lists".into()).spawn(move || {
        let arc = match setup.cfg.arc_seal {
            true => {
                crate::policy::spf::runtime_and_authenticator("lists (ARC)", &setup.auth_servers, setup.auth_timeout)
                    .map(|(rt, auth)| ArcChecker { rt, auth })
            }
            false => None,
        };
        let mut w = Worker { store: FileStore::in_data_dir(&setup.data_dir), setup, arc };
        w.run(rx)
    })?;
    Ok((ListsHandle { tx }, t))
}

struct Worker {
    setup: ListsSetup,
    store: FileStore,
    arc: Option<ArcChecker>,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Work>) {
        let mut next_digest = 0u64;
        while !self.setup.stop.load(Ordering::Relaxed) {
            // Nothing else is periodic: the next digest check, or a message (a stop's too).
            let now = crate::util::time::Now::system().unix_ms;
            let wait = Duration::from_millis(next_digest.saturating_sub(now).clamp(1, DIGEST_CHECK.as_millis() as u64));
            match rx.recv_timeout(wait) {
                Ok(Work::Wake) => {}
                Ok(Work::Job(job)) => {
                    self.job(job);
                    // A post may have filled a digest past its size.
                    next_digest = 0;
                }
                Ok(Work::Moderate(m, answer)) => {
                    let _ = answer.send(self.moderate(&m));
                }
                Ok(Work::Unsubscribe(list, member, answer)) => {
                    let now = crate::util::time::Now::system().unix_ms;
                    let change = lists::Change::Unsubscribe { list: list.clone(), address: member.clone() };
                    let r = self.change(std::slice::from_ref(&change), now).map_err(|e| e.to_string());
                    let r = r.map(|a| a.first() == Some(&Applied::Done));
                    log::info!("lists: {list}: one-click unsubscription of {member}: {r:?}");
                    let _ = answer.send(r);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = crate::util::time::Now::system().unix_ms;
            if now >= next_digest {
                next_digest = now + DIGEST_CHECK.as_millis() as u64;
                self.digests(now, false);
            }
        }
    }

    fn job(&mut self, job: ListJob) {
        let now = crate::util::time::Now::system().unix_ms;
        let dir = self.setup.directory.current();
        let result = match dir.list(&job.list) {
            None => Err(LocalFailure {
                permanent: true,
                reply: Response::new(550, Some("5.1.1"), "no such list (removed meanwhile)"),
            }),
            Some(list) => self.run_list(list, &job, now),
        };
        if let Err(f) = &result {
            log::info!("lists: {}: {} ({:?}): {}", job.id, job.list, job.role, f.reply);
        }
        let o = Outcome::List { id: job.id, copy: job.copy, result };
        if self.setup.control.send(ControlMsg::Outcome(o)).is_err() {
            log::warn!("lists: {}: the control thread is gone; the message is taken again after the restart", job.id);
        }
    }

    fn run_list(&mut self, list: &List, job: &ListJob, now: u64) -> Result<Vec<Draft>, LocalFailure> {
        let strict = job.role == ListRole::Post && self.poster_strict(list, &job.content);
        let host = self.setup.hostname.clone();
        let ctx = Ctx {
            now_ms: now,
            hostname: &host,
            poster_dmarc_strict: strict,
            one_click: self.setup.one_click.is_some(),
        };
        let h = lists::handle(list, &job.role, &job.from, &job.content, &ctx, &mut self.store)?;
        if let Some(n) = &h.note {
            log::info!("lists: {}: {}: {n}", job.id, list.address);
        }
        let mut drafts = h.drafts;
        self.sign_all(&mut drafts, list);
        if job.role == ListRole::Post {
            self.seal_all(&mut drafts, list, &job.content, &job.from);
        }
        if !h.changes.is_empty() {
            let applied = self.change(&h.changes, now).map_err(|e| LocalFailure {
                permanent: false,
                reply: Response::new(451, Some("4.3.0"), &format!("list directory: {e}")),
            })?;
            for (c, a) in h.changes.iter().zip(applied) {
                log::info!("lists: {}: {}: {c:?}: {a:?}", job.id, list.address);
                if let (lists::Change::Bounce { member, .. }, Applied::Disabled { bounces }) = (c, a)
                    && let Some(mut n) = lists::disabled_notice(list, member, bounces, &ctx)
                {
                    self.sign(&mut n, list);
                    drafts.push(n);
                }
            }
        }
        for code in &h.approved {
            if let Err(e) = self.approve(list, code, &ctx) {
                log::warn!("lists: {}: approving {code}: {e}", list.address);
            }
        }
        Ok(drafts)
    }

    /// Applies changes to the stored directory (under the writers' lock) and reloads it.
    fn change(&self, changes: &[lists::Change], now: u64) -> Result<Vec<Applied>, crate::directory::DirectoryError> {
        let store = JsonFileStore::in_data_dir(&self.setup.data_dir);
        let _lock = store.lock()?;
        let mut data = store.load()?;
        let applied: Vec<Applied> = changes.iter().map(|c| lists::apply(&mut data, c, now)).collect();
        if applied.iter().any(|a| *a != Applied::Nothing) {
            Directory::build(data.clone())?;
            store.save(&data)?;
            self.setup.directory.reload()?;
        }
        Ok(applied)
    }

    /// Distributes a held post, then removes it once the distribution is durable.
    fn approve(&mut self, list: &List, code: &str, ctx: &Ctx<'_>) -> std::io::Result<bool> {
        // The post as it was held, for the ARC seal's verification of it.
        let held = match self.arc {
            Some(_) => self.store.held(&list.address, code)?,
            None => None,
        };
        let Some(mut drafts) = lists::approve(list, code, ctx, &mut self.store)? else { return Ok(false) };
        self.sign_all(&mut drafts, list);
        if let Some((poster, post)) = &held {
            self.seal_all(&mut drafts, list, post, poster);
        }
        if !self.queue_durably(drafts) {
            return Err(std::io::Error::other("the control thread did not queue the distribution"));
        }
        self.store.drop_held(&list.address, code)?;
        log::info!("lists: {}: held post {code} approved and distributed", list.address);
        Ok(true)
    }

    /// Signs the list's own messages (not mail forwarded to its owners as it came).
    fn sign_all(&self, drafts: &mut [Draft], list: &List) {
        for d in drafts.iter_mut().filter(|d| d.kind != "list-owner") {
            self.sign(d, list);
        }
    }

    /// A `DKIM-Signature` on top (RFC 6376), by the key of the message's From domain, else
    /// of the list's domain (`[[dkim.sign]]`): a rewritten From is the list's, and then
    /// aligns for DMARC.
    fn sign(&self, d: &mut Draft, list: &List) {
        if self.setup.signers.is_empty() {
            return;
        }
        let by = |domain: &str| self.setup.signers.iter().find(|k| k.domain == domain);
        let key = crate::policy::dkim_sign::from_domain(&d.data).and_then(|f| by(&f)).or_else(|| by(list.parts().1));
        let Some(key) = key else { return };
        match key.sign(&d.data) {
            Ok(h) => prepend(d, &h),
            Err(e) => log::warn!("lists: {}: DKIM signing with {}: {e}", list.address, key.domain),
        }
    }

    /// ARC-seals a post's distribution (`[lists] arc_seal`, RFC 8617) with the RSA key of the
    /// list's domain among the `[[dkim.sign]]` keys: the post as it came
    /// (`original`) is verified again — its DKIM signatures, its ARC chain, DMARC with the
    /// SPF result this server recorded when it arrived — and each copy gets an ARC set of
    /// the list's domain on top, its ARC-Authentication-Results saying what was found. A
    /// chain that fails verification is sealed with cv=fail; one whose latest seal already
    /// says cv=fail is not sealed again (RFC 8617 §5.1.2).
    fn seal_all(&self, drafts: &mut [Draft], list: &List, original: &[u8], mail_from: &str) {
        use mail_auth::dmarc::verify::DmarcParameters;
        use mail_auth::{AuthenticatedMessage, AuthenticationResults, SpfOutput};
        let Some(arc) = &self.arc else { return };
        // ARC verifiers know rsa-sha256 only (RFC 8617 §4.1.3).
        let Some(key) = self.setup.signers.iter().find(|k| k.domain == list.parts().1 && k.is_rsa()) else {
            log::warn!(
                "lists: {}: [lists] arc_seal needs an RSA [[dkim.sign]] key of {}",
                list.address,
                list.parts().1
            );
            return;
        };
        if !drafts.iter().any(|d| d.kind == "list") {
            return;
        }
        let Some(post) = AuthenticatedMessage::parse(original) else { return };
        let hostname = self.setup.hostname.as_str();
        let from_domain = mail_from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        let spf = SpfOutput::new(from_domain.clone()).with_result(recorded_spf(original, hostname));
        let (dkim, chain, dmarc) = arc.rt.block_on(async {
            let dkim = arc.auth.verify_dkim(&post).await;
            let chain = arc.auth.verify_arc(&post).await;
            let dmarc = arc.auth.verify_dmarc(DmarcParameters::new(&post, &dkim, &from_domain, &spf)).await;
            (dkim, chain, dmarc)
        });
        let header_from = crate::policy::dkim_sign::from_domain(original).unwrap_or_default();
        let mut results = AuthenticationResults::new(hostname).with_dkim_results(&dkim, &header_from);
        if let Some(ip) = received_ip(original, hostname) {
            results = results.with_arc_result(&chain, ip);
        }
        let results = results.with_dmarc_result(&dmarc);
        for d in drafts.iter_mut().filter(|d| d.kind == "list") {
            let Some(copy) = AuthenticatedMessage::parse(&d.data) else { continue };
            match key.seal(&copy, &results, &chain) {
                Ok(set) => prepend(d, &set),
                Err(e) => log::warn!("lists: {}: ARC sealing with {}: {e}", list.address, key.domain),
            }
        }
    }

    /// Queues messages and waits until the control thread made them durable.
    fn queue_durably(&self, drafts: Vec<Draft>) -> bool {
        if drafts.is_empty() {
            return true;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if self.setup.control.send(ControlMsg::Drafts(drafts, tx)).is_err() {
            return false;
        }
        rx.recv_timeout(DURABLE_WAIT).unwrap_or(false)
    }

    fn moderate(&mut self, m: &Moderate) -> ModerateAnswer {
        let dir = self.setup.directory.current();
        let Some(list) = dir.list(&m.list) else {
            return ModerateAnswer { error: Some(format!("no list with address {:?}", m.list)), ..Default::default() };
        };
        let now_ms = crate::util::time::Now::system().unix_ms;
        let host = self.setup.hostname.clone();
        let code = m.code.to_ascii_lowercase();
        let r = match m.op.as_str() {
            "approve" => {
                let strict = match self.store.held(&list.address, &code) {
                    Ok(Some((_, post))) => self.poster_strict(list, &post),
                    _ => false,
                };
                let ctx = Ctx {
                    now_ms,
                    hostname: &host,
                    poster_dmarc_strict: strict,
                    one_click: self.setup.one_click.is_some(),
                };
                self.approve(list, &code, &ctx).map(|ok| ok.then(|| format!("post {code} approved and distributed")))
            }
            "reject" => {
                let ctx = Ctx {
                    now_ms,
                    hostname: &host,
                    poster_dmarc_strict: false,
                    one_click: self.setup.one_click.is_some(),
                };
                match lists::reject(list, &code, &m.reason, &ctx, &mut self.store) {
                    Ok(Some(mut drafts)) => {
                        self.sign_all(&mut drafts, list);
                        if self.queue_durably(drafts) {
                            Ok(Some(format!("post {code} rejected; its poster is told")))
                        } else {
                            Err(std::io::Error::other("the control thread did not queue the notice"))
                        }
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            other => {
                return ModerateAnswer { error: Some(format!("unknown operation {other:?}")), ..Default::default() };
            }
        };
        match r {
            Ok(Some(done)) => ModerateAnswer { done: Some(done), error: None },
            Ok(None) => ModerateAnswer { error: Some(format!("no post is held with the code {code}")), done: None },
            Err(e) => ModerateAnswer { error: Some(e.to_string()), done: None },
        }
    }

    /// Sends the digests that are due: by time (`digest_hours` since the last), or by size
    /// (`digest_max_bytes` waiting), or every waiting one when `all`.
    fn digests(&mut self, now: u64, all: bool) {
        let dir = self.setup.directory.current();
        for list in &dir.data().lists {
            if !list.members.iter().any(|m| m.digest && !m.disabled) {
                continue;
            }
            let bytes = self.store.digest_bytes(&list.address);
            if bytes == 0 {
                continue;
            }
            let mut state = self.store.digest_state(&list.address);
            if state.last_ms == 0 {
                // The first post waiting starts the clock of the first digest.
                state.last_ms = now;
                if let Err(e) = self.store.set_digest_state(&list.address, &state) {
                    log::warn!("lists: {}: digest state: {e}", list.address);
                }
            }
            let by_time = now.saturating_sub(state.last_ms) >= list.digest_hours as u64 * 3_600_000;
            let by_size = list.digest_max_bytes > 0 && bytes >= list.digest_max_bytes;
            if !(all || by_time || by_size) {
                continue;
            }
            if let Err(e) = self.send_digest(list, &state, now) {
                log::warn!("lists: {}: digest: {e}", list.address);
            }
        }
    }

    fn send_digest(&mut self, list: &List, state: &lists::store::DigestState, now: u64) -> std::io::Result<()> {
        let files = self.store.digest_posts(&list.address)?;
        let posts: Vec<Vec<u8>> = files.iter().map(|(_, d)| d.clone()).collect();
        let host = self.setup.hostname.clone();
        let ctx =
            Ctx { now_ms: now, hostname: &host, poster_dmarc_strict: false, one_click: self.setup.one_click.is_some() };
        let Some((mut draft, next)) = lists::digest(list, &posts, state, &ctx) else { return Ok(()) };
        self.sign(&mut draft, list);
        if !self.queue_durably(vec![draft]) {
            return Err(std::io::Error::other("the control thread did not queue it"));
        }
        self.store.set_digest_state(&list.address, &next)?;
        let paths: Vec<PathBuf> = files.into_iter().map(|(p, _)| p).collect();
        self.store.digest_sent(&paths)?;
        log::info!("lists: {}: digest issue {} sent with {} post(s)", list.address, next.issue, posts.len());
        Ok(())
    }

    /// Whether the poster's From domain asks receivers to reject or quarantine mail that
    /// fails DMARC (RFC 7489 §6.3), as a list's rewritten copy would: `[lists]
    /// dmarc_domains`, else DNS (the domain's record, else its ancestors', `sp=` first
    /// for them, as DMARCbis's tree walk does). A DNS failure counts as no policy, as in
    /// Mailman: logged, and the From kept.
    fn poster_strict(&self, list: &List, content: &[u8]) -> bool {
        if list.from_rewrite != crate::directory::model::FromRewrite::Dmarc {
            return false;
        }
        let Some(from) = lists::message::header(content, "From").and_then(|f| lists::message::address_of(&f)) else {
            return false;
        };
        let Some((_, domain)) = from.rsplit_once('@') else { return false };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let listed: HashSet<&str> = self.setup.cfg.dmarc_domains.iter().map(|d| d.as_str()).collect();
        if listed.contains(domain.as_str()) {
            return true;
        }
        let Some(dns) = self.setup.dns.as_ref().filter(|_| self.setup.cfg.dmarc_dns) else { return false };
        let labels: Vec<&str> = domain.split('.').collect();
        for start in 0..labels.len().saturating_sub(1).min(8) {
            let d = labels[start..].join(".");
            match dns.resolve_blocking(DnsQuery::Txt(format!("_dmarc.{d}"))) {
                DnsAnswer::Found(txts) => {
                    if let Some(p) = txts.iter().find_map(|t| dmarc_policy(t, start > 0)) {
                        return p == "reject" || p == "quarantine";
                    }
                }
                DnsAnswer::TempFail => {
                    log::warn!("lists: {}: DMARC policy of {d}: DNS did not answer; From kept", list.address);
                    return false;
                }
                _ => {}
            }
        }
        false
    }
}

/// The policy of a DMARC record (`sp=` before `p=` for a subdomain's ancestor); `None` when
/// the text is not a DMARC record.
fn dmarc_policy(txt: &str, ancestor: bool) -> Option<String> {
    let mut tags = txt.split(';').map(|t| t.trim()).filter(|t| !t.is_empty());
    if !tags.next()?.replace(' ', "").eq_ignore_ascii_case("v=DMARC1") {
        return None;
    }
    let mut p = None;
    let mut sp = None;
    let mut testing = false;
    for t in tags {
        let Some((k, v)) = t.split_once('=') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "p" => p = Some(v.trim().to_ascii_lowercase()),
            "sp" => sp = Some(v.trim().to_ascii_lowercase()),
            "t" => testing = v.trim().eq_ignore_ascii_case("y"),
            _ => {}
        }
    }
    let policy = if ancestor { sp.or(p) } else { p };
    // DMARCbis `t=y`: applied one level lower.
    match (policy, testing) {
        (Some(p), true) if p == "reject" => Some("quarantine".into()),
        (Some(p), true) if p == "quarantine" => Some("none".into()),
        (p, _) => p,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dmarc_policy_of_records() {
        use super::dmarc_policy;
        assert_eq!(dmarc_policy("v=DMARC1; p=reject; rua=mailto:x@y", false).as_deref(), Some("reject"));
        assert_eq!(dmarc_policy("v=DMARC1; p=reject; sp=none", true).as_deref(), Some("none"));
        assert_eq!(dmarc_policy("v=DMARC1;p=quarantine", true).as_deref(), Some("quarantine"));
        assert_eq!(dmarc_policy("v=spf1 -all", false), None);
        assert_eq!(dmarc_policy("v=DMARC1; p=quarantine; t=y", false).as_deref(), Some("none"), "DMARCbis testing");
    }
}

/// Puts header fields (CRLF-separated, without the final CRLF) on top of a draft.
fn prepend(d: &mut Draft, fields: &str) {
    let mut data = Vec::with_capacity(fields.len() + 2 + d.data.len());
    data.extend_from_slice(fields.as_bytes());
    data.extend_from_slice(b"\r\n");
    data.extend_from_slice(&d.data);
    d.data = data;
}

/// The SPF result this server recorded for `message` when it arrived: `spf=` of its own
/// `Authentication-Results` (authserv-id `hostname`); none when it has none.
fn recorded_spf(message: &[u8], hostname: &str) -> mail_auth::SpfResult {
    use mail_auth::SpfResult;
    let Some(ar) = own_field(message, "authentication-results", hostname) else { return SpfResult::None };
    let result = ar.split(';').find_map(|m| m.trim().strip_prefix("spf=")).map(|r| r.split_whitespace().next());
    match result.flatten() {
        Some("pass") => SpfResult::Pass,
        Some("fail") => SpfResult::Fail,
        Some("softfail") => SpfResult::SoftFail,
        Some("neutral") => SpfResult::Neutral,
        Some("temperror") => SpfResult::TempError,
        Some("permerror") => SpfResult::PermError,
        _ => SpfResult::None,
    }
}

/// The client address of this server's own `Received` field (the first one, naming
/// `hostname` after `by`): the bracketed address of its `from` clause.
fn received_ip(message: &[u8], hostname: &str) -> Option<std::net::IpAddr> {
    let r = own_field(message, "received", hostname)?;
    let open = r.find('[')?;
    let close = open + r[open..].find(']')?;
    r[open + 1..close].trim_start_matches("IPv6:").parse().ok()
}

/// The first header field `name` (lower case) of `message` that is this server's (its value
/// names `hostname`), unfolded.
fn own_field(message: &[u8], name: &str, hostname: &str) -> Option<String> {
    let (fields, _) = crate::policy::milter::split_message(message);
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.replace(['\r', '\n'], " "))
        .find(|v| v.contains(hostname))
}

#[cfg(test)]
mod arc_tests {
    use super::*;

    #[test]
    fn what_this_server_recorded() {
        let m = b"Authentication-Results: other.example; spf=fail\r\n\
                  Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=a@b.example;\r\n\tdkim=none\r\n\
                  Received: from c (host.example [192.0.2.7])\r\n\tby mx.example.test with ESMTP id 1; date\r\n\
                  Subject: x\r\n\r\nbody\r\n";
        assert_eq!(recorded_spf(m, "mx.example.test"), mail_auth::SpfResult::Pass);
        assert_eq!(recorded_spf(b"Subject: x\r\n\r\n", "mx.example.test"), mail_auth::SpfResult::None);
        assert_eq!(received_ip(m, "mx.example.test"), Some("192.0.2.7".parse().unwrap()));
        let v6 = b"Received: from c (unknown [IPv6:2001:db8::1])\r\n\tby mx.example.test; d\r\n\r\n";
        assert_eq!(received_ip(v6, "mx.example.test"), Some("2001:db8::1".parse().unwrap()));
    }
}

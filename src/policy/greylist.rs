//! [`Greylist`]: greylisting at RCPT (issue 14), as postgrey does it, built in.
//!
//! A delivery attempt is known by its triplet: the client's network (its /24, or /64 for
//! IPv6), the sender and the recipient. The first attempt of a triplet is refused with
//! 451 4.7.1; a retry after `delay` passes, and the triplet stays passed for `lifetime`
//! after it was last seen. A triplet not retried within `retry_window` is forgotten. A
//! network whose triplets passed `auto_whitelist` times skips greylisting from then on (for
//! `lifetime` after its last pass). Exempt: the networks configured, authenticated clients
//! (the session does not ask), and loopback.
//!
//! Memory is bounded: at most `max_entries` triplets (each a 64-bit key and two times) and
//! as many networks; past it, expired ones are swept, and if none are, a new triplet passes
//! without greylisting (logged once a minute): an attacker filling the table must not turn
//! greylisting into a refusal of all mail.
//!
//! The state survives restarts: `<data_dir>/greylist`, rewritten atomically by a thread of
//! its own every [`SAVE_EVERY`] when it changed, and at shutdown ([`Greylist::save`]).
//! Triplets are kept as keyed 64-bit hashes (FNV-1a over a random salt kept in the file), so
//! the file holds no addresses.

use super::IpList;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the saver thread writes a changed state.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// The settings of `[greylist]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub delay: Duration,
    pub retry_window: Duration,
    pub lifetime: Duration,
    /// Passes of a network after which it skips greylisting; 0: never.
    pub auto_whitelist: u32,
    pub exempt: IpList,
    /// `exempt` as written (what a reload compares).
    pub exempt_spec: Vec<String>,
    pub max_entries: usize,
    /// Senders whose SPF passed are not greylisted (the session applies it).
    pub exempt_spf_pass: bool,
}

impl PartialEq for Settings {
    fn eq(&self, o: &Self) -> bool {
        (self.delay, self.retry_window, self.lifetime, self.auto_whitelist, &self.exempt_spec, self.max_entries)
            == (o.delay, o.retry_window, o.lifetime, o.auto_whitelist, &o.exempt_spec, o.max_entries)
            && self.exempt_spf_pass == o.exempt_spf_pass
    }
}

/// A triplet's state: when first seen, and when it passed (0: not yet) or was last seen
/// passing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Triplet {
    first: u64,
    /// Last time it passed; 0 while it waits for its retry.
    passed: u64,
}

#[derive(Debug, Default)]
struct State {
    triplets: HashMap<u64, Triplet>,
    /// Network key → (passes, last pass).
    networks: HashMap<u64, (u32, u64)>,
}

/// What [`Greylist::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Go on: passed before, exempt, or whitelisted.
    Pass,
    /// Refuse for now; the retry is welcome in this many seconds.
    Greylisted { retry_in: u64 },
}

struct Inner {
    settings: Settings,
    salt: u64,
    state: Mutex<State>,
    dirty: AtomicBool,
    path: Option<PathBuf>,
    /// When a full table was last logged (Unix seconds).
    full_logged: AtomicU64,
}

/// See the module documentation. Shared by every shard.
pub struct Greylist {
    inner: Arc<Inner>,
    /// Dropping it ends the saver thread (after a last save).
    _saver: Option<std::sync::mpsc::Sender<()>>,
}

impl std::fmt::Debug for Greylist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greylist").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

fn fnv(salt: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The client's network as bytes: its /24 (IPv4) or /64 (IPv6).
fn network(ip: IpAddr) -> Vec<u8> {
    match super::iplist::canonical(ip) {
        IpAddr::V4(a) => a.octets()[..3].to_vec(),
        IpAddr::V6(a) => a.octets()[..8].to_vec(),
    }
}

impl Greylist {
    /// An in-memory greylist (tests).
    pub fn in_memory(settings: Settings, salt: u64) -> Self {
        Greylist { inner: Arc::new(Inner::new(settings, salt, None, State::default())), _saver: None }
    }

    /// Loads `path` (missing: empty, with a new salt), dropping what expired by `now`, and
    /// starts the saver thread.
    pub fn load(settings: Settings, path: &Path, now: u64) -> Result<Self, String> {
        let (salt, state) = match std::fs::read_to_string(path) {
            Ok(text) => parse(&text, &settings, now).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (random_salt(), State::default()),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let inner = Arc::new(Inner::new(settings, salt, Some(path.to_path_buf()), state));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let saver = inner.clone();
        std::thread::Builder::new()
            .name("greylist-saver".into())
            .spawn(move || {
                loop {
                    let done =
                        matches!(rx.recv_timeout(SAVE_EVERY), Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
                    if let Err(e) = saver.save_if_dirty() {
                        log::error!("greylist: {e}");
                    }
                    if done {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the greylist saver thread: {e}"))?;
        Ok(Greylist { inner, _saver: Some(tx) })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The decision for `client` sending from `sender` to `recipient` at `now` (Unix
    /// seconds); counts the attempt.
    pub fn check(&self, client: IpAddr, sender: &str, recipient: &str, now: u64) -> Check {
        let s = &self.inner.settings;
        if client.to_canonical().is_loopback() || s.exempt.contains(client) {
            return Check::Pass;
        }
        let net = network(client);
        let salt = self.inner.salt;
        let net_key = fnv(salt, &[b"net", &net]);
        let key = fnv(salt, &[&net, sender.to_ascii_lowercase().as_bytes(), recipient.to_ascii_lowercase().as_bytes()]);
        let lifetime = s.lifetime.as_secs();
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.auto_whitelist > 0
            && let Some(&(passes, last)) = st.networks.get(&net_key)
            && passes >= s.auto_whitelist
            && now < last + lifetime
        {
            st.networks.insert(net_key, (passes, now));
            self.inner.dirty.store(true, Ordering::Relaxed);
            return Check::Pass;
        }
        let delay = s.delay.as_secs();
        let verdict = match st.triplets.get(&key).copied() {
            Some(t) if t.passed > 0 && now < t.passed + lifetime => {
                st.triplets.insert(key, Triplet { passed: now, ..t });
                Check::Pass
            }
            Some(t) if t.passed == 0 && now < t.first + s.retry_window.as_secs() => {
                if now >= t.first + delay {
                    st.triplets.insert(key, Triplet { passed: now, ..t });
                    let n = st.networks.entry(net_key).or_insert((0, now));
                    *n = (n.0.saturating_add(1), now);
                    Check::Pass
                } else {
                    return Check::Greylisted { retry_in: t.first + delay - now };
                }
            }
            // New, or expired: seen now for the first time.
            _ => {
                if st.triplets.len() >= s.max_entries {
                    sweep(&mut st, s, now);
                }
                if st.triplets.len() >= s.max_entries {
                    self.log_full(now);
                    return Check::Pass;
                }
                st.triplets.insert(key, Triplet { first: now, passed: 0 });
                Check::Greylisted { retry_in: delay }
            }
        };
        self.inner.dirty.store(true, Ordering::Relaxed);
        verdict
    }

    fn log_full(&self, now: u64) {
        let last = self.inner.full_logged.load(Ordering::Relaxed);
        if now >= last + 60
            && self.inner.full_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            log::warn!(
                "greylist: {} triplets, none expired: new ones pass without greylisting ([greylist] max_entries)",
                self.inner.settings.max_entries
            );
        }
    }

    /// Writes the state now (shutdown; tests).
    pub fn save(&self) -> Result<(), String> {
        self.inner.dirty.store(true, Ordering::Relaxed);
        self.inner.save_if_dirty()
    }

    /// Triplets and networks held.
    pub fn len(&self) -> (usize, usize) {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.triplets.len(), st.networks.len())
    }
}

/// Drops triplets and networks past their time.
fn sweep(st: &mut State, s: &Settings, now: u64) {
    let (window, lifetime) = (s.retry_window.as_secs(), s.lifetime.as_secs());
    st.triplets.retain(|_, t| if t.passed == 0 { now < t.first + window } else { now < t.passed + lifetime });
    st.networks.retain(|_, (_, last)| now < *last + lifetime);
}

impl Inner {
    fn new(settings: Settings, salt: u64, path: Option<PathBuf>, state: State) -> Self {
        Inner {
            settings,
            salt,
            state: Mutex::new(state),
            dirty: AtomicBool::new(false),
            path,
            full_logged: AtomicU64::new(0),
        }
    }

    fn save_if_dirty(&self) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let mut text = String::with_capacity(64 * 1024);
        text.push_str("# ringmx greylist: salt, then KEY FIRST PASSED (triplets) and net KEY PASSES LAST\n");
        text.push_str(&format!("salt {:016x}\n", self.salt));
        {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for (k, t) in &st.triplets {
                text.push_str(&format!("{k:016x} {} {}\n", t.first, t.passed));
            }
            for (k, (n, last)) in &st.networks {
                text.push_str(&format!("net {k:016x} {n} {last}\n"));
            }
        }
        write_atomically(path, text.as_bytes()).map_err(|e| format!("saving {}: {e}", path.display()))
    }
}

fn parse(text: &str, s: &Settings, now: u64) -> Result<(u64, State), String> {
    let mut salt = None;
    let mut st = State::default();
    for (i, line) in text.lines().enumerate() {
        let bad = || format!("line {}: not a greylist entry", i + 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|_| bad());
        let num = |v: &str| v.parse::<u64>().map_err(|_| bad());
        match f.as_slice() {
            [] => {}
            [c, ..] if c.starts_with('#') => {}
            ["salt", v] => salt = Some(hex(v)?),
            ["net", k, n, last] => {
                st.networks.insert(hex(k)?, (num(n)?.min(u32::MAX as u64) as u32, num(last)?));
            }
            [k, first, passed] => {
                st.triplets.insert(hex(k)?, Triplet { first: num(first)?, passed: num(passed)? });
            }
            _ => return Err(bad()),
        }
    }
    sweep(&mut st, s, now);
    Ok((salt.ok_or("no salt line")?, st))
}

fn random_salt() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        // No /dev/urandom: the clock and the process id, which a client cannot observe.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b)
}

/// Temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(2 * 86400),
            lifetime: Duration::from_secs(35 * 86400),
            auto_whitelist: 3,
            exempt: IpList::parse(&["198.51.100.0/24".to_string()]).unwrap(),
            exempt_spec: vec!["198.51.100.0/24".to_string()],
            max_entries: 100,
            exempt_spf_pass: true,
        }
    }

    const T: u64 = 1_800_000_000;

    #[test]
    fn first_attempt_refused_retry_after_the_delay_passes() {
        let g = Greylist::in_memory(settings(), 7);
        let c: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(g.check(c, "a@x.example", "b@y.example", T), Check::Greylisted { retry_in: 300 });
        assert_eq!(g.check(c, "a@x.example", "b@y.example", T + 100), Check::Greylisted { retry_in: 200 });
        assert_eq!(g.check(c, "a@x.example", "b@y.example", T + 300), Check::Pass);
        // Same /24, other host, case differs: the same triplet.
        let c2: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(g.check(c2, "A@X.example", "b@y.example", T + 400), Check::Pass);
        // Another recipient: greylisted on its own.
        assert_eq!(g.check(c, "a@x.example", "other@y.example", T + 400), Check::Greylisted { retry_in: 300 });
        // A retry that comes after the window starts over.
        let w = T + 400 + 2 * 86400;
        assert_eq!(g.check(c, "a@x.example", "other@y.example", w), Check::Greylisted { retry_in: 300 });
        // Exempt networks and loopback pass at once.
        assert_eq!(g.check("198.51.100.7".parse().unwrap(), "a@x.example", "b@y.example", T), Check::Pass);
        assert_eq!(g.check("127.0.0.1".parse().unwrap(), "a@x.example", "b@y.example", T), Check::Pass);
    }

    #[test]
    fn a_network_that_passed_enough_is_whitelisted() {
        let g = Greylist::in_memory(settings(), 7);
        let c: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        for i in 0..3 {
            let to = format!("r{i}@y.example");
            assert!(matches!(g.check(c, "a@x.example", &to, T), Check::Greylisted { .. }));
            assert_eq!(g.check(c, "a@x.example", &to, T + 301), Check::Pass);
        }
        // Three passes: a new triplet from the same /64 passes at once.
        assert_eq!(g.check("2001:db8:1:2::9".parse().unwrap(), "new@x.example", "r@y.example", T + 302), Check::Pass);
        // Another /64 does not.
        assert!(matches!(
            g.check("2001:db8:1:3::9".parse().unwrap(), "new@x.example", "r@y.example", T + 302),
            Check::Greylisted { .. }
        ));
    }

    #[test]
    fn a_full_table_lets_mail_through_and_sweeps_what_expired() {
        let g = Greylist::in_memory(Settings { max_entries: 10, auto_whitelist: 0, ..settings() }, 1);
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..10 {
            assert!(matches!(g.check(c, "a@x.example", &format!("{i}@y.example"), T), Check::Greylisted { .. }));
        }
        assert_eq!(g.check(c, "a@x.example", "new@y.example", T), Check::Pass, "full: not a refusal");
        // Two days on, the unanswered ones expired and make room.
        let later = T + 2 * 86400 + 1;
        assert!(matches!(g.check(c, "a@x.example", "new@y.example", later), Check::Greylisted { .. }));
        assert_eq!(g.len().0, 1);
    }

    #[test]
    fn the_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("greylist");
        let c: IpAddr = "192.0.2.10".parse().unwrap();
        {
            let g = Greylist::load(settings(), &path, T).unwrap();
            g.check(c, "a@x.example", "b@y.example", T);
            g.check(c, "a@x.example", "c@y.example", T);
            assert_eq!(g.check(c, "a@x.example", "c@y.example", T + 300), Check::Pass);
            g.save().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("192.0.2") && !text.contains("example"), "no addresses in the file: {text}");
        let g = Greylist::load(settings(), &path, T + 310).unwrap();
        assert_eq!(g.check(c, "a@x.example", "b@y.example", T + 310), Check::Pass, "its first attempt was remembered");
        assert_eq!(g.check(c, "a@x.example", "c@y.example", T + 311), Check::Pass);
        std::fs::write(dir.path().join("bad"), "salt 1\nnonsense here too many\n").unwrap();
        assert!(Greylist::load(settings(), &dir.path().join("bad"), T).is_err());
    }
}

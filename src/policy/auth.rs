//! SMTP AUTH (RFC 4954) server side: the SASL mechanisms PLAIN (RFC 4616) and LOGIN, decoded
//! here without I/O, and the [`Verifier`] that checks passwords off the ingress shards.
//!
//! Argon2 costs tens of milliseconds per check by design: a shard that verified in line would
//! stall every other session. The session therefore hands an [`AuthRequest`] to its driver,
//! which gives it to [`Verifier::submit`]; a pool thread verifies it and calls back. Recent
//! successes are cached (keyed by a keyed hash of hash string and password, never the
//! password itself) so that a client sending many messages pays once. A fixed relay
//! username/password is compared in constant time and needs no thread.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// The mechanisms offered, in the EHLO `AUTH` line.
pub const MECHANISMS: &str = "PLAIN LOGIN";

/// Why a SASL exchange failed before any password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// Not valid base64 (RFC 4954 §4: 501).
    #[error("invalid base64")]
    BadBase64,
    /// The decoded message does not follow the mechanism's grammar.
    #[error("malformed SASL message")]
    Malformed,
    /// The client sent `*` (RFC 4954 §4: 501).
    #[error("authentication cancelled")]
    Cancelled,
}

/// A login and password, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub login: String,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, not even in a debug log.
        f.debug_struct("Credentials").field("login", &self.login).finish_non_exhaustive()
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.password.iter_mut().for_each(|b| *b = 0);
    }
}

/// Decodes standard base64 with padding (RFC 4648 §4); an empty line is an empty message.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, SaslError> {
    ringmx_b64::decode(s.trim_end_matches([' ', '\t']).as_bytes()).ok_or(SaslError::BadBase64)
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. An authorization identity other than
/// the authentication identity is refused (we do not act on behalf of others).
pub fn decode_plain(line: &str) -> Result<Credentials, SaslError> {
    if line.trim() == "*" {
        return Err(SaslError::Cancelled);
    }
    let raw = decode_base64(line)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed);
    };
    if authc.is_empty() || pass.is_empty() || (!authz.is_empty() && authz != authc) {
        return Err(SaslError::Malformed);
    }
    let login = String::from_utf8(authc.to_vec()).map_err(|_| SaslError::Malformed)?;
    Ok(Credentials { login, password: pass.to_vec() })
}

/// One base64 line of the LOGIN mechanism (user name or password).
pub fn decode_login_line(line: &str) -> Result<Vec<u8>, SaslError> {
    if line.trim() == "*" {
        return Err(SaslError::Cancelled);
    }
    decode_base64(line)
}

/// Equality that takes the same time whatever the position of the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// What the session asks the verifier: does `password` match the stored argon2 `hash`?
/// `hash` is `None` for an unknown login: the verifier then spends the same time and says
/// no, so that timing does not tell which logins exist.
#[derive(Debug)]
pub struct AuthRequest {
    pub credentials: Credentials,
    pub hash: Option<String>,
}

/// The verifier's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// 235 2.7.0.
    Success,
    /// 535 5.7.8.
    Failure,
    /// The verifier could not work (454 4.7.0).
    Unavailable,
}

type Job = (AuthRequest, Box<dyn FnOnce(AuthOutcome) + Send>);

/// Successful checks remembered, and for how long.
const CACHE_TTL_SECS: u64 = 600;
const CACHE_MAX: usize = 10_000;

/// The argon2 verifier pool; see the module documentation. Cheap to share behind an `Arc`;
/// its threads start on the first request and end when it is dropped.
pub struct Verifier {
    threads: usize,
    tx: OnceLock<Mutex<mpsc::Sender<Job>>>,
    cache: Arc<Mutex<HashMap<u64, u64>>>,
    keys: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("threads", &self.threads).finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(threads: usize) -> Self {
        Verifier { threads: threads.max(1), tx: OnceLock::new(), cache: Arc::default(), keys: Default::default() }
    }

    fn cache_key(&self, req: &AuthRequest) -> Option<u64> {
        let hash = req.hash.as_deref()?;
        let mut h = self.keys.build_hasher();
        h.write(hash.as_bytes());
        h.write_u8(0);
        h.write(&req.credentials.password);
        Some(h.finish())
    }

    /// Verifies `req` and calls `reply_to` with the outcome: at once on a cache hit,
    /// otherwise from a pool thread.
    pub fn submit(&self, req: AuthRequest, reply_to: Box<dyn FnOnce(AuthOutcome) + Send>) {
        let now = unix_now();
        if let Some(k) = self.cache_key(&req) {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.get(&k).is_some_and(|&until| until > now) {
                drop(cache);
                return reply_to(AuthOutcome::Success);
            }
        }
        let key = self.cache_key(&req);
        let cache = self.cache.clone();
        let job: Job = (
            req,
            Box::new(move |outcome| {
                if let (AuthOutcome::Success, Some(k)) = (outcome, key) {
                    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                    if c.len() >= CACHE_MAX {
                        let now = unix_now();
                        c.retain(|_, until| *until > now);
                        if c.len() >= CACHE_MAX {
                            c.clear();
                        }
                    }
                    c.insert(k, unix_now() + CACHE_TTL_SECS);
                }
                reply_to(outcome)
            }),
        );
        let tx = self.tx.get_or_init(|| Mutex::new(self.spawn()));
        let sent = tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
        if let Err(mpsc::SendError((_, reply))) = sent {
            reply(AuthOutcome::Unavailable);
        }
    }

    fn spawn(&self) -> mpsc::Sender<Job> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.threads {
            let rx = rx.clone();
            let r = std::thread::Builder::new().name(format!("auth-{i}")).spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((req, reply)) = job else { return };
                    reply(verify(&req));
                }
            });
            if let Err(e) = r {
                log::error!("auth: cannot start a verifier thread: {e}");
            }
        }
        tx
    }
}

/// The argon2 check itself (slow by design).
pub fn verify(req: &AuthRequest) -> AuthOutcome {
    use argon2::password_hash::PasswordVerifier;
    let a = argon2::Argon2::default();
    match &req.hash {
        Some(h) if a.verify_password(&req.credentials.password, h.as_str()).is_ok() => AuthOutcome::Success,
        Some(_) => AuthOutcome::Failure,
        None => {
            // As long as a real check, and always no.
            let _ = a.verify_password(&req.credentials.password, DUMMY_HASH);
            AuthOutcome::Failure
        }
    }
}

/// An argon2id hash (default parameters) of a random password nobody knows.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$cmluZ214ZHVtbXlzYWx0$0Ct4jXFq0vV1l1l9c1+qzP8m8y6r9hYk1gO8sQ6q2mE";

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_strict() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zg==").unwrap(), b"f");
        assert_eq!(decode_base64("Zm8=").unwrap(), b"fo");
        assert_eq!(decode_base64("Zm9vYmFy").unwrap(), b"foobar");
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!mFy", "Zm9vY"] {
            assert_eq!(decode_base64(bad), Err(SaslError::BadBase64), "{bad}");
        }
    }

    #[test]
    fn plain_messages() {
        let b = |s: &[u8]| crate::delivery::client::base64(s);
        let c = decode_plain(&b(b"\0alice@example.net\0secret")).unwrap();
        assert_eq!((c.login.as_str(), c.password.as_slice()), ("alice@example.net", &b"secret"[..]));
        assert!(decode_plain(&b(b"alice\0alice\0pw")).is_ok());
        assert_eq!(decode_plain(&b(b"bob\0alice\0pw")), Err(SaslError::Malformed));
        assert_eq!(decode_plain(&b(b"\0alice")), Err(SaslError::Malformed));
        assert_eq!(decode_plain(&b(b"\0alice\0")), Err(SaslError::Malformed));
        assert_eq!(decode_plain("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_login_line("*"), Err(SaslError::Cancelled));
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"relay-pw", b"relay-pw"));
        assert!(!constant_time_eq(b"relay-pw", b"relay-px"));
        assert!(!constant_time_eq(b"relay-pw", b"relay-pw2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    /// An unknown login costs a real argon2 computation: the dummy hash must parse (else
    /// the check would fail at once) and carry the default parameters.
    #[test]
    fn dummy_hash_is_a_real_default_hash() {
        use argon2::password_hash::PasswordHasher;
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
        let real = argon2::Argon2::default().hash_password(b"x").unwrap().to_string();
        let params = |h: &str| h.split('$').take(4).collect::<Vec<_>>().join("$");
        assert_eq!(params(DUMMY_HASH), params(&real));
    }

    #[test]
    fn pool_verifies_and_caches() {
        use argon2::password_hash::PasswordHasher;
        let hash = argon2::Argon2::default().hash_password(b"right").unwrap().to_string();
        let v = Verifier::new(1);
        let ask = |pw: &[u8], hash: Option<String>| {
            let (tx, rx) = mpsc::channel();
            let req = AuthRequest { credentials: Credentials { login: "a".into(), password: pw.to_vec() }, hash };
            v.submit(req, Box::new(move |o| tx.send(o).unwrap()));
            rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap()
        };
        assert_eq!(ask(b"wrong", Some(hash.clone())), AuthOutcome::Failure);
        assert_eq!(ask(b"right", Some(hash.clone())), AuthOutcome::Success);
        assert_eq!(v.cache.lock().unwrap().len(), 1);
        assert_eq!(ask(b"right", Some(hash.clone())), AuthOutcome::Success);
        assert_eq!(ask(b"right", None), AuthOutcome::Failure);
    }
}

//! DKIM verification (RFC 6376, RFC 8463), ARC (RFC 8617) and DMARC (RFC 7489) at the end
//! of the content (issue 14), off the shards: the message's signatures and ARC chain are
//! checked and the sender's domain's DMARC policy applied, on a thread of its own with a
//! tokio runtime, by Stalwart's `mail-auth` (rsa-sha256, ed25519-sha256, simple and relaxed
//! canonicalisation; DMARC alignment, `p`, `sp`). The session waits for the verdict before
//! its 250.
//!
//! The results join the SPF result in the message's `Authentication-Results` field (RFC
//! 8601). A DMARC failure under `p=reject` is refused with 550 5.7.1 when `[dmarc] reject`
//! says so (else only recorded, as `p=quarantine` always is, for the mailbox's filters),
//! unless a valid ARC chain was last sealed by a sealer the operator trusts (a mailing list
//! or forwarder that authenticated the message before changing it, RFC 8617 §7.2).

use crate::wire::Reply;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `[dkim]` and `[dmarc]` as the session uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Verify signatures (`[dkim] verify`, or DMARC on).
    pub verify: bool,
    /// `[[dkim.sign]]`: the keys of our domains.
    pub signers: Vec<Arc<super::dkim_sign::SignKey>>,
    /// DMARC evaluated (else DKIM only).
    pub dmarc: bool,
    /// Refuse a DMARC failure whose policy is `reject` (550 5.7.1).
    pub dmarc_reject: bool,
    /// ARC sealers (their `d=` domains, lower case) whose valid chain overrides a DMARC
    /// failure.
    pub trusted_sealers: Vec<String>,
    /// ARC-seal (RFC 8617) mail forwarded elsewhere by a redirect or a group, with the RSA
    /// key of the forwarding recipient's domain (`[dkim] arc_seal_forwards`).
    pub arc_seal_forwards: bool,
    /// Threads verifying at once (`[dkim] threads`; 1: the DKIM thread alone).
    pub threads: usize,
    pub timeout: Duration,
    pub servers: Vec<SocketAddr>,
}

/// One message to judge.
#[derive(Debug, Clone)]
pub struct Request {
    /// The content as received (without our Received header).
    pub message: Arc<[u8]>,
    /// The envelope sender's domain (the HELO name for `<>`) and its SPF result.
    pub mail_from_domain: String,
    pub spf: Option<super::spf::Result>,
    /// Verify the message's signatures (else only sign).
    pub verify: bool,
    /// Sign it with this key (an authenticated client's mail from one of our domains).
    pub sign: Option<Arc<super::dkim_sign::SignKey>>,
    /// ARC-seal it once verified: a recipient forwards it elsewhere.
    pub seal: Option<Box<Seal>>,
}

/// What an ARC set for a forwarded message needs beside the verification's results.
#[derive(Debug, Clone)]
pub struct Seal {
    /// The forwarding domain's RSA key (ARC knows rsa-sha256 only, RFC 8617 §4.1.3).
    pub key: Arc<super::dkim_sign::SignKey>,
    /// Our authserv-id (the host name), the client's address, the envelope sender and the
    /// HELO name, for the ARC-Authentication-Results.
    pub authserv_id: String,
    pub client: std::net::IpAddr,
    pub mail_from: String,
    pub helo: String,
}

/// One signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `pass`, `fail`, `neutral`, `permerror`, `temperror` (RFC 8601 §2.7.1).
    pub result: &'static str,
    pub domain: String,
    pub selector: String,
    pub algorithm: &'static str,
    /// Why it did not pass.
    pub reason: Option<String>,
}

/// The verdict on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Each signature (none: `dkim=none`).
    pub signatures: Vec<Signature>,
    /// The DMARC result and the From domain, when evaluated.
    pub dmarc: Option<(&'static str, String)>,
    /// The domain's policy for this message (`none`, `quarantine`, `reject`).
    pub policy: &'static str,
    /// The ARC chain's result (`pass`, `fail`, …; none without ARC sets) and the domain
    /// of its latest seal.
    pub arc: Option<(&'static str, String)>,
    /// The message was verified (its results belong in `Authentication-Results`).
    pub verified: bool,
    /// Our `DKIM-Signature` field, when asked to sign.
    pub signature: Option<String>,
    /// Our ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results), when
    /// asked to seal and the chain as it came was not already marked failed.
    pub arc_set: Option<String>,
}

impl Default for Outcome {
    /// Nothing verified, nothing signed.
    fn default() -> Self {
        Outcome {
            signatures: Vec::new(),
            dmarc: None,
            policy: "none",
            arc: None,
            verified: false,
            signature: None,
            arc_set: None,
        }
    }
}

impl Outcome {
    fn temperror() -> Outcome {
        Outcome {
            signatures: Vec::new(),
            dmarc: Some(("temperror", String::new())),
            policy: "none",
            arc: None,
            verified: true,
            signature: None,
            arc_set: None,
        }
    }

    /// The `Authentication-Results` methods (after the SPF one), one per line.
    pub fn methods(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.signatures.is_empty() {
            v.push("dkim=none".to_string());
        }
        for s in &self.signatures {
            let reason =
                s.reason.as_ref().map(|r| format!(" reason=\"{}\"", r.replace(['"', '\\'], ""))).unwrap_or_default();
            v.push(format!(
                "dkim={}{reason} header.d={} header.s={} header.a={}",
                s.result, s.domain, s.selector, s.algorithm
            ));
        }
        if let Some((r, sealer)) = &self.arc {
            v.push(format!("arc={r} header.d={sealer}"));
        }
        if let Some((r, from)) = &self.dmarc {
            let policy = if *r == "fail" { format!(" policy.dmarc={}", self.policy) } else { String::new() };
            v.push(format!("dmarc={r}{policy} header.from={from}"));
        }
        v
    }
}

impl Settings {
    /// The key for mail from `domain`, if it is one of ours.
    pub fn signer_for(&self, domain: &str) -> Option<Arc<super::dkim_sign::SignKey>> {
        self.signers.iter().find(|k| k.domain == domain).cloned()
    }

    /// The refusal the outcome calls for.
    pub fn refusal(&self, o: &Outcome) -> Option<Reply> {
        let vouched = o.arc.as_ref().is_some_and(|(r, sealer)| *r == "pass" && self.trusted_sealers.contains(sealer));
        match &o.dmarc {
            Some(("fail", from)) if self.dmarc_reject && o.policy == "reject" && !vouched => Some(Reply::new(
                550,
                "5.7.1",
                format!("Error: the DMARC policy of {from} rejects this message (not authenticated)"),
            )),
            _ => None,
        }
    }
}

type Done = Box<dyn FnOnce(Outcome) + Send>;

/// Checks waiting for the thread at most; past it, temperror at once.
const QUEUE: usize = 1024;

/// The verification thread.
pub struct DkimService {
    pub settings: Settings,
    tx: tokio::sync::mpsc::Sender<(Request, Done)>,
}

impl std::fmt::Debug for DkimService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimService").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl DkimService {
    pub fn start(settings: Settings) -> std::io::Result<DkimService> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Request, Done)>(QUEUE);
        let s = settings.clone();
        std::thread::Builder::new().name("dkim".into()).spawn(move || {
            // One thread takes the work; with more than one, that many workers verify.
            let workers = if s.threads > 1 { s.threads } else { 0 };
            let Some((rt, auth)) = super::spf::runtime_with_workers("dkim", &s.servers, s.timeout, workers) else {
                return;
            };
            rt.block_on(async move {
                while let Some((req, done)) = rx.recv().await {
                    let (auth, dmarc) = (auth.clone(), s.dmarc);
                    let timeout = s.timeout;
                    tokio::spawn(async move {
                        let mut o = if req.verify {
                            tokio::time::timeout(timeout, verify(&auth, &req, dmarc))
                                .await
                                .unwrap_or_else(|_| Outcome::temperror())
                        } else {
                            Outcome::default()
                        };
                        if let Some(key) = &req.sign {
                            match key.sign(&req.message) {
                                Ok(sig) => o.signature = Some(sig),
                                Err(e) => log::error!("dkim: signing for {}: {e}; sent unsigned", key.domain),
                            }
                        }
                        done(o);
                    });
                }
            });
        })?;
        Ok(DkimService { settings, tx })
    }

    /// Hands a message to the thread; `done` is called there (at once with temperror when
    /// the thread is gone or too far behind).
    pub fn submit(&self, req: Request, done: Done) {
        if let Err(e) = self.tx.try_send((req, done)) {
            let (_, done) = match e {
                tokio::sync::mpsc::error::TrySendError::Full(v) | tokio::sync::mpsc::error::TrySendError::Closed(v) => {
                    v
                }
            };
            done(Outcome::temperror());
        }
    }
}

fn dkim_name(r: &DkimResult) -> (&'static str, Option<String>) {
    match r {
        DkimResult::Pass => ("pass", None),
        // RFC 6376 §6.1.3: a body that does not match is a failed verification (PERMFAIL),
        // "fail" in RFC 8601 §2.7.1, not the library's neutral.
        DkimResult::Neutral(e @ mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)) => {
            ("fail", Some(e.to_string()))
        }
        DkimResult::Neutral(e) => ("neutral", Some(e.to_string())),
        DkimResult::Fail(e) => ("fail", Some(e.to_string())),
        DkimResult::PermError(e) => ("permerror", Some(e.to_string())),
        DkimResult::TempError(e) => ("temperror", Some(e.to_string())),
        DkimResult::None => ("none", None),
    }
}

fn dmarc_name(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

async fn verify(auth: &MessageAuthenticator, req: &Request, dmarc: bool) -> Outcome {
    let Some(msg) = AuthenticatedMessage::parse(&req.message) else {
        return Outcome { verified: true, ..Outcome::default() };
    };
    let arc_out = auth.verify_arc(&msg).await;
    let arc = arc_out.sets().last().map(|set| (dkim_name(arc_out.result()).0, set.seal.header.d.to_ascii_lowercase()));
    let dkim = auth.verify_dkim(&msg).await;
    let signatures = dkim
        .iter()
        .filter_map(|o| {
            let sig = o.signature()?;
            let (result, reason) = dkim_name(o.result());
            let algorithm = match sig.a {
                mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
            };
            Some(Signature { result, domain: sig.d.clone(), selector: sig.s.clone(), algorithm, reason })
        })
        .collect();
    let spf_result = match req.spf {
        Some(super::spf::Result::Pass) => SpfResult::Pass,
        Some(super::spf::Result::Fail) => SpfResult::Fail,
        Some(super::spf::Result::SoftFail) => SpfResult::SoftFail,
        Some(super::spf::Result::Neutral) => SpfResult::Neutral,
        Some(super::spf::Result::TempError) => SpfResult::TempError,
        Some(super::spf::Result::PermError) => SpfResult::PermError,
        Some(super::spf::Result::None) | None => SpfResult::None,
    };
    let spf = SpfOutput::new(req.mail_from_domain.clone()).with_result(spf_result);
    if !dmarc {
        let checked = req.spf.is_some().then_some(&spf);
        let arc_set = req.seal.as_ref().and_then(|s| seal(s, &msg, &dkim, &arc_out, checked, None));
        return Outcome { signatures, arc, verified: true, arc_set, ..Outcome::default() };
    }
    let out = auth.verify_dmarc(DmarcParameters::new(&msg, &dkim, &req.mail_from_domain, &spf)).await;
    // DMARCbis `t=y` (testing): the policy is applied one level lower, reject as
    // quarantine, quarantine as none, as RFC 7489's `pct=0` did. RFC 7489's `pct=N`
    // (§6.6.4), which mail-auth's DMARCbis parser drops: a failing message outside the
    // sampled N % gets the next lower policy too; the sample is a hash of the message, so
    // the same message always gets the same verdict.
    let failing = dmarc_name(&out.result()) == "fail" && matches!(out.policy(), Policy::Reject | Policy::Quarantine);
    let sampled_out = failing
        && match record_pct(auth, out.domain()).await {
            Some(pct) => !in_sample(&req.message, pct),
            None => false,
        };
    let testing = out.dmarc_record().is_some_and(|r| r.t) || sampled_out;
    let policy = match (out.policy(), testing) {
        (Policy::Reject, false) => "reject",
        (Policy::Reject, true) | (Policy::Quarantine, false) => "quarantine",
        (Policy::Quarantine, true) | (Policy::None | Policy::Unspecified, _) => "none",
    };
    let dmarc = Some((dmarc_name(&out.result()), out.domain().to_string()));
    let checked = req.spf.is_some().then_some(&spf);
    let arc_set = req.seal.as_ref().and_then(|s| seal(s, &msg, &dkim, &arc_out, checked, Some(&out)));
    Outcome { signatures, dmarc, policy, arc, verified: true, signature: None, arc_set }
}

/// The ARC set of the next instance for a message forwarded elsewhere (RFC 8617 §5.1): its
/// ARC-Authentication-Results say what this server found (DKIM, SPF when checked at MAIL,
/// the chain as it came, DMARC when evaluated). A chain that failed verification is sealed
/// with cv=fail; none when its latest seal already says cv=fail (§5.1.2).
fn seal(
    s: &Seal,
    msg: &AuthenticatedMessage<'_>,
    dkim: &[mail_auth::DkimOutput<'_>],
    chain: &mail_auth::ArcOutput<'_>,
    spf: Option<&SpfOutput>,
    dmarc: Option<&mail_auth::DmarcOutput>,
) -> Option<String> {
    let header_from = super::dkim_sign::from_domain(msg.raw_message).unwrap_or_default();
    let mut results = mail_auth::AuthenticationResults::new(&s.authserv_id).with_dkim_results(dkim, &header_from);
    if let Some(spf) = spf {
        results = results.with_spf_mailfrom_result(spf, s.client, &s.mail_from, &s.helo);
    }
    results = results.with_arc_result(chain, s.client);
    if let Some(d) = dmarc {
        results = results.with_dmarc_result(d);
    }
    match s.key.seal(msg, &results, chain) {
        Ok(set) => Some(set),
        Err(e) => {
            log::debug!("dkim: not ARC-sealed by {}: {e}", s.key.domain);
            None
        }
    }
}

/// The `pct=` of the DMARC record that governs `from_domain`: the first record found
/// walking up from `_dmarc.<from_domain>` (the DMARCbis tree walk, at most 8 levels, never
/// the bare top-level domain); `None` without a record or a `pct=`.
async fn record_pct(auth: &MessageAuthenticator, from_domain: &str) -> Option<u8> {
    let mut d = from_domain.trim_end_matches('.');
    for _ in 0..8 {
        if let Ok(raw) = auth.txt_raw_lookup(format!("_dmarc.{d}.")).await {
            let text = String::from_utf8_lossy(&raw);
            if text.trim_start().starts_with("v=DMARC1") {
                return parse_pct(&text);
            }
        }
        match d.split_once('.') {
            Some((_, parent)) if parent.contains('.') => d = parent,
            _ => return None,
        }
    }
    None
}

/// `pct=N` of a DMARC record (0 to 100; a larger number counts as 100, a bad one as none).
fn parse_pct(record: &str) -> Option<u8> {
    record.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("pct")).then(|| v.trim().parse::<u32>().ok().map(|n| n.min(100) as u8))?
    })
}

/// Is this message in the sampled `pct` % (RFC 7489 §6.6.4)? By a hash of its bytes.
fn in_sample(message: &[u8], pct: u8) -> bool {
    (crc32c::crc32c(message) % 100) < pct as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_tags_and_sampling() {
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=20"), Some(20));
        assert_eq!(parse_pct("v=DMARC1;p=quarantine;PCT = 0 ;rua=mailto:d@x"), Some(0));
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=250"), Some(100));
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=lots"), None);
        assert_eq!(parse_pct("v=DMARC1; p=reject"), None);
        let msgs: Vec<Vec<u8>> = (0..1000).map(|i| format!("Subject: {i}\r\n\r\nbody").into_bytes()).collect();
        assert!(msgs.iter().all(|m| !in_sample(m, 0) && in_sample(m, 100)));
        let sampled = msgs.iter().filter(|m| in_sample(m, 30)).count();
        assert!((200..400).contains(&sampled), "about 30 % of 1000: {sampled}");
        assert!(msgs.iter().all(|m| in_sample(m, 30) == in_sample(m, 30)), "the same verdict each time");
    }

    #[test]
    fn fields_and_refusal() {
        let sig = |result| Signature {
            result,
            domain: "example.org".into(),
            selector: "s1".into(),
            algorithm: "ed25519-sha256",
            reason: (result == "fail").then(|| "body \"hash\" mismatch".to_string()),
        };
        let o = Outcome {
            signatures: vec![sig("pass"), sig("fail")],
            dmarc: Some(("fail", "example.org".into())),
            policy: "reject",
            arc: None,
            verified: true,
            signature: None,
            arc_set: None,
        };
        assert_eq!(
            o.methods(),
            [
                "dkim=pass header.d=example.org header.s=s1 header.a=ed25519-sha256",
                "dkim=fail reason=\"body hash mismatch\" header.d=example.org header.s=s1 header.a=ed25519-sha256",
                "dmarc=fail policy.dmarc=reject header.from=example.org",
            ]
        );
        let s = Settings {
            verify: true,
            signers: Vec::new(),
            dmarc: true,
            dmarc_reject: true,
            trusted_sealers: vec!["list.example".into()],
            arc_seal_forwards: false,
            threads: 1,
            timeout: Duration::from_secs(1),
            servers: Vec::new(),
        };
        assert_eq!(s.refusal(&o).map(|r| (r.code, r.status)), Some((550, "5.7.1")));
        assert_eq!(Settings { dmarc_reject: false, ..s.clone() }.refusal(&o), None);
        // A valid chain sealed by a trusted sealer vouches; a broken one or another sealer not.
        let sealed = |r: &'static str, d: &str| Outcome { arc: Some((r, d.to_string())), ..o.clone() };
        assert_eq!(s.refusal(&sealed("pass", "list.example")), None);
        assert!(s.refusal(&sealed("fail", "list.example")).is_some());
        assert!(s.refusal(&sealed("pass", "other.example")).is_some());
        assert_eq!(sealed("pass", "list.example").methods()[2], "arc=pass header.d=list.example");
        let quarantine = Outcome { policy: "quarantine", ..o };
        assert_eq!(s.refusal(&quarantine), None);
        let none = Outcome { verified: true, ..Outcome::default() };
        assert_eq!(none.methods(), ["dkim=none"]);
    }
}

//! DKIM signing (RFC 6376) of mail our own users send (issue 14): an authenticated client's
//! message whose From domain has a `[[dkim.sign]]` key gets a `DKIM-Signature` at the end of
//! the content, made on the DKIM thread (never on a shard; an RSA-2048 signature costs a
//! millisecond) before the 250. rsa-sha256 (PKCS#1 or PKCS#8 PEM, as `opendkim-genkey`
//! writes) or ed25519-sha256 (RFC 8463; PKCS#8 PEM, as `ringmx dkim keygen` writes),
//! relaxed/relaxed.

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use std::path::{Path, PathBuf};

/// The header fields signed, when present (RFC 6376 §5.4.1's recommendations; and a list's
/// one-click unsubscription fields, which RFC 8058 §4 wants signed).
const SIGNED: [&str; 15] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// The same key as an ARC sealer (RFC 8617).
enum Sealer {
    Rsa(ArcSealer<RsaKey<Sha256>, Done>),
    Ed25519(ArcSealer<Ed25519Key, Done>),
}

/// Header fields an ARC-Message-Signature covers: those of [`SIGNED`] that stay the same
/// for every member's copy (not the one-click `List-Unsubscribe` fields, added per member
/// after sealing), and the DKIM signature under it.
fn sealed() -> impl Iterator<Item = String> {
    SIGNED.iter().filter(|h| !h.starts_with("List-Unsubscribe")).chain(&["DKIM-Signature"]).map(|h| h.to_string())
}

fn sealer<T: mail_auth::common::crypto::SigningKey<Hasher = Sha256>>(
    key: T,
    domain: &str,
    selector: &str,
) -> ArcSealer<T, Done> {
    ArcSealer::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(sealed())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// A signer of `domain` with `key`: relaxed/relaxed, [`SIGNED`].
fn signer<T: mail_auth::common::crypto::SigningKey>(key: T, domain: &str, selector: &str) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED.iter().map(|h| h.to_string()))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// One domain's key.
pub struct SignKey {
    pub domain: String,
    pub selector: String,
    pub path: PathBuf,
    signer: Signer,
    sealer: Sealer,
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "SignKey({} {} {})", self.domain, self.selector, self.path.display())
    }
}

impl PartialEq for SignKey {
    fn eq(&self, o: &Self) -> bool {
        (&self.domain, &self.selector, &self.path) == (&o.domain, &o.selector, &o.path)
    }
}

impl Eq for SignKey {}

impl SignKey {
    /// Reads the PEM key at `path`: ed25519 (PKCS#8) or RSA (PKCS#1 or PKCS#8).
    pub fn load(domain: &str, selector: &str, path: &Path) -> Result<SignKey, String> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{}: not a PEM private key ({e})", path.display()))?;
        // Loaded twice: the signer and the sealer each own their key.
        let (signer, sealer) = match &der {
            PrivateKeyDer::Pkcs8(p) if Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()).is_ok() => {
                let load =
                    || Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()).map_err(|e| e.to_string());
                (Signer::Ed25519(signer(load()?, domain, selector)), Sealer::Ed25519(sealer(load()?, domain, selector)))
            }
            _ => {
                let load = || {
                    RsaKey::<Sha256>::from_key_der(der.clone_key())
                        .map_err(|e| format!("{}: neither an ed25519 nor an RSA key ({e})", path.display()))
                };
                (Signer::Rsa(signer(load()?, domain, selector)), Sealer::Rsa(sealer(load()?, domain, selector)))
            }
        };
        Ok(SignKey {
            domain: domain.to_ascii_lowercase(),
            selector: selector.into(),
            path: path.into(),
            signer,
            sealer,
        })
    }

    /// The `DKIM-Signature` field for `message` (CRLF-folded, without the final CRLF).
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let sig = match &self.signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| e.to_string())?;
        let h = sig.to_header();
        Ok(h.trim_end_matches(['\r', '\n']).to_string())
    }
}

impl SignKey {
    /// An RSA key (ARC, RFC 8617 §4.1.3, knows no other algorithm).
    pub fn is_rsa(&self) -> bool {
        matches!(self.signer, Signer::Rsa(_))
    }

    /// The ARC set (RFC 8617 §4: ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results,
    /// CRLF-separated, without the final CRLF) for `message` as it is forwarded: `results` are
    /// what was found of the message as it arrived, `arc` its chain as verified then (cv=fail
    /// when it failed). Fails when the latest seal already says cv=fail (RFC 8617 §5.1.2:
    /// a chain marked failed is not sealed again).
    pub fn seal(
        &self,
        message: &mail_auth::AuthenticatedMessage<'_>,
        results: &mail_auth::AuthenticationResults<'_>,
        arc: &mail_auth::ArcOutput<'_>,
    ) -> Result<String, String> {
        let set = match &self.sealer {
            Sealer::Rsa(s) => s.seal(message, results, arc),
            Sealer::Ed25519(s) => s.seal(message, results, arc),
        }
        .map_err(|e| e.to_string())?;
        Ok(set.to_header().trim_end_matches(['\r', '\n']).to_string())
    }
}

/// The domain of the message's first From address, lower case.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let (fields, _) = super::milter::split_message(message);
    let (_, value) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case("from"))?;
    let v = value.replace(['\r', '\n'], " ");
    let addr = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].to_string(),
        _ => v.trim().to_string(),
    };
    let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

/// `ringmx dkim keygen`: a new ed25519 key as PKCS#8 PEM, and the TXT record to publish
/// (`SELECTOR._domainkey.DOMAIN`).
pub fn keygen_ed25519(domain: &str, selector: &str) -> Result<(String, String), String> {
    let der = Ed25519Key::generate_pkcs8().map_err(|e| e.to_string())?;
    let key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| e.to_string())?;
    let b64 = ringmx_b64::encode(&der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let record = format!(
        "{selector}._domainkey.{domain}. IN TXT \"v=DKIM1; k=ed25519; p={}\"",
        ringmx_b64::encode(&key.public_key())
    );
    Ok((pem, record))
}

/// RSA key sizes `keygen_rsa` makes (RFC 8301 §3.2: at least 1024 bits; 2048 is usual).
pub const RSA_BITS: [usize; 4] = [1024, 2048, 3072, 4096];

/// `ringmx dkim keygen --algorithm rsa`: a new RSA key of `bits` as PKCS#8 PEM, and the TXT
/// record to publish, its `p=` (the SubjectPublicKeyInfo, RFC 6376 §3.6.1) split into
/// strings of at most 255 characters (RFC 1035 §3.3.14) as a zone file takes them.
pub fn keygen_rsa(domain: &str, selector: &str, bits: usize) -> Result<(String, String), String> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    if !RSA_BITS.contains(&bits) {
        return Err(format!("{bits} bits: one of 1024, 2048, 3072, 4096"));
    }
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits).map_err(|e| e.to_string())?;
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?.to_string();
    let public = key.to_public_key().to_public_key_der().map_err(|e| e.to_string())?;
    // What `[[dkim.sign]]` loads must load.
    let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
    RsaKey::<Sha256>::from_key_der(der.into()).map_err(|e| format!("the new key does not load: {e}"))?;
    let p = format!("p={}", ringmx_b64::encode(public.as_bytes()));
    let strings: Vec<String> =
        p.as_bytes().chunks(255).map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap_or_default())).collect();
    let record = format!("{selector}._domainkey.{domain}. IN TXT ( \"v=DKIM1; k=rsa; \" {} )", strings.join(" "));
    Ok((pem, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_rsa_key_loads_and_its_record_splits() {
        let (pem, record) = keygen_rsa("example.net", "r1", 2048).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(
            record.starts_with(
                "r1._domainkey.example.net. IN TXT ( \"v=DKIM1; k=rsa; \" \"p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"
            ),
            "{record}"
        );
        let strings: Vec<&str> = record.split('"').skip(1).step_by(2).collect();
        assert!(strings.len() >= 3 && strings.iter().all(|s| s.len() <= 255), "{strings:?}");
        assert!(keygen_rsa("example.net", "r1", 512).is_err());
    }

    #[test]
    fn from_domains() {
        assert_eq!(from_domain(b"Subject: x\r\nFrom: Joe <Joe@Example.NET>\r\n\r\nb").as_deref(), Some("example.net"));
        assert_eq!(from_domain(b"From: joe@example.org\r\n\r\n").as_deref(), Some("example.org"));
        assert_eq!(from_domain(b"Subject: none\r\n\r\n"), None);
    }

    #[test]
    fn a_generated_key_signs() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, record) = keygen_ed25519("example.net", "s1").unwrap();
        assert!(record.starts_with("s1._domainkey.example.net. IN TXT \"v=DKIM1; k=ed25519; p="), "{record}");
        let path = dir.path().join("k.pem");
        std::fs::write(&path, pem).unwrap();
        let k = SignKey::load("example.net", "s1", &path).unwrap();
        let sig = k.sign(b"From: a@example.net\r\nSubject: x\r\n\r\nbody\r\n").unwrap();
        for tag in ["DKIM-Signature: v=1;", "a=ed25519-sha256;", "s=s1;", "d=example.net;", "c=relaxed/relaxed;"] {
            assert!(sig.contains(tag), "{tag} in {sig}");
        }
        assert!(!sig.ends_with('\n'));
        std::fs::write(&path, "not a key").unwrap();
        assert!(SignKey::load("example.net", "s1", &path).is_err());
    }
}

//! SMTP command parser (RFC 5321 §4.1, with the parameters of RFC 1870, 6152, 3030, 3461,
//! 4954 and 6531).
//!
//! [`parse_command`] takes one command line without its line ending and returns a
//! [`Command`] that borrows from it. Verbs are matched case-insensitively as packed `u32`
//! tokens. Addresses are checked against the RFC 5321 §4.1.2 grammar, extended with UTF-8
//! for SMTPUTF8 (RFC 6531 §3.3); whether non-ASCII is allowed in a given transaction is the
//! session's decision ([`Mailbox::is_ascii`]).

use super::reply::Reply;

/// RFC 5321 §4.5.3.1.1: maximum length of a local part.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: maximum length of a domain.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: maximum length of a path, including the angle brackets.
pub const MAX_PATH: usize = 256;

/// One parsed SMTP command, borrowing the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain` (RFC 5321 §4.1.1.1); the argument as sent, possibly an address literal.
    Ehlo(&'a str),
    /// `HELO domain`.
    Helo(&'a str),
    /// `MAIL FROM:<reverse-path> [params]` (§4.1.1.2).
    Mail {
        from: Path<'a>,
        params: MailParams<'a>,
    },
    /// `RCPT TO:<forward-path> [params]` (§4.1.1.3).
    Rcpt {
        to: Mailbox<'a>,
        params: RcptParams<'a>,
    },
    /// `DATA` (§4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2).
    Bdat {
        size: u64,
        last: bool,
    },
    /// `RSET` (§4.1.1.5).
    Rset,
    /// `NOOP [string]` (§4.1.1.9).
    Noop,
    /// `QUIT` (§4.1.1.10).
    Quit,
    /// `VRFY string` (§4.1.1.6).
    Vrfy(&'a str),
    /// `EXPN string` (§4.1.1.7).
    Expn(&'a str),
    /// `HELP [string]` (§4.1.1.8).
    Help(&'a str),
    /// `STARTTLS` (RFC 3207 §4).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
    /// `ETRN`, `TURN`, `ATRN`: recognised so that they can be refused as disabled.
    Etrn(&'a str),
    Turn,
}

impl Command<'_> {
    /// The verb, upper case, for logs and for the disabled-commands list.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
            Command::Etrn(_) => "ETRN",
            Command::Turn => "TURN",
        }
    }
}

/// A reverse path: the null sender `<>` or a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path<'a> {
    Null,
    Mailbox(Mailbox<'a>),
}

/// An address as sent: the local part keeps its quotes, the domain may be an address literal.
///
/// `RCPT TO:<Postmaster>` (RFC 5321 §4.1.1.3) parses to a mailbox with an empty domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox<'a> {
    pub local: &'a str,
    pub domain: &'a str,
}

impl Mailbox<'_> {
    /// False when the address needs SMTPUTF8 (RFC 6531).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// True for an address literal such as `[192.0.2.1]`.
    pub fn is_domain_literal(&self) -> bool {
        self.domain.starts_with('[')
    }

    /// Appends `local@domain` (or `local` alone for bare postmaster) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.local.as_bytes());
        if !self.domain.is_empty() {
            out.push(b'@');
            out.extend_from_slice(self.domain.as_bytes());
        }
    }
}

impl std::fmt::Display for Mailbox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.domain.is_empty() { f.write_str(self.local) } else { write!(f, "{}@{}", self.local, self.domain) }
    }
}

/// `BODY=` (RFC 6152 §2, RFC 3030 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// `NOTIFY=` (RFC 3461 §4.1) as bit flags; `NEVER` is the empty set with `never` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// Packs into one byte for the spool: bit 0 success, 1 failure, 2 delay, 3 never.
    pub fn to_bits(self) -> u8 {
        (self.success as u8) | (self.failure as u8) << 1 | (self.delay as u8) << 2 | (self.never as u8) << 3
    }

    pub fn from_bits(b: u8) -> Self {
        Notify { success: b & 1 != 0, failure: b & 2 != 0, delay: b & 4 != 0, never: b & 8 != 0 }
    }

    /// The value as written in `NOTIFY=` (RFC 3461 §4.1): `NEVER`, or the keywords joined by
    /// commas.
    pub fn keywords(self) -> String {
        if self.never {
            return "NEVER".into();
        }
        let words = [(self.success, "SUCCESS"), (self.failure, "FAILURE"), (self.delay, "DELAY")];
        words.iter().filter(|(on, _)| *on).map(|(_, w)| *w).collect::<Vec<_>>().join(",")
    }
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    /// `SIZE=` (RFC 1870 §6): the client's estimate of the message size.
    pub size: Option<u64>,
    pub body: Option<Body>,
    /// `SMTPUTF8` (RFC 6531 §3.4).
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461 §4.4), still xtext-encoded.
    pub envid: Option<&'a str>,
    /// `AUTH=` (RFC 4954 §5), still xtext-encoded; `<>` when the submitter is unknown.
    pub auth: Option<&'a str>,
}

/// Parameters of RCPT TO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    pub notify: Option<Notify>,
    /// `ORCPT=addr-type;xtext` (RFC 3461 §4.2), as sent.
    pub orcpt: Option<&'a str>,
}

/// Why a command line was refused. Each maps to one reply ([`CommandError::reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The verb is not one we know.
    #[error("command unrecognized")]
    Unrecognized,
    /// The verb is known but its arguments do not follow the grammar.
    #[error("syntax error in arguments: {0}")]
    Syntax(&'static str),
    /// The reverse path of MAIL is malformed.
    #[error("bad sender address syntax")]
    BadSender,
    /// The forward path of RCPT is malformed.
    #[error("bad recipient address syntax")]
    BadRecipient,
    /// A MAIL or RCPT parameter we do not implement (RFC 5321 §4.1.1.11: 555).
    #[error("parameter not recognized")]
    UnknownParameter,
    /// A known parameter with a bad or repeated value.
    #[error("bad parameter value: {0}")]
    BadParameter(&'static str),
    /// The line contains a NUL or another control character.
    #[error("invalid character in command")]
    InvalidCharacter,
}

impl CommandError {
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => Reply::new(500, "5.5.2", "Syntax error, command unrecognized"),
            CommandError::Syntax(m) => Reply::new(501, "5.5.4", *m),
            CommandError::BadSender => Reply::new(501, "5.1.7", "Bad sender address syntax"),
            CommandError::BadRecipient => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
            CommandError::UnknownParameter => {
                Reply::new(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized or not implemented")
            }
            CommandError::BadParameter(m) => Reply::new(501, "5.5.4", *m),
            CommandError::InvalidCharacter => Reply::new(500, "5.5.2", "Invalid character in command"),
        }
    }
}

const fn tok(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// Parses one command line (without CR LF).
pub fn parse_command(line: &[u8]) -> Result<Command<'_>, CommandError> {
    // Control characters other than HT never belong in a command (and a NUL is an attack).
    if line.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(CommandError::InvalidCharacter);
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax("Invalid UTF-8 in command"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let vb = verb.as_bytes();
    if vb.len() == 4 {
        let t = u32::from_le_bytes([vb[0], vb[1], vb[2], vb[3]]) & 0xdfdf_dfdf;
        return match t {
            t if t == tok(b"MAIL") => parse_mail(rest),
            t if t == tok(b"RCPT") => parse_rcpt(rest),
            t if t == tok(b"DATA") => no_args(rest, Command::Data),
            t if t == tok(b"BDAT") => parse_bdat(rest),
            t if t == tok(b"EHLO") => parse_hello(rest).map(Command::Ehlo),
            t if t == tok(b"HELO") => parse_hello(rest).map(Command::Helo),
            t if t == tok(b"RSET") => no_args(rest, Command::Rset),
            t if t == tok(b"NOOP") => Ok(Command::Noop),
            t if t == tok(b"QUIT") => no_args(rest, Command::Quit),
            t if t == tok(b"VRFY") => required(rest).map(Command::Vrfy),
            t if t == tok(b"EXPN") => required(rest).map(Command::Expn),
            t if t == tok(b"HELP") => Ok(Command::Help(rest.trim())),
            t if t == tok(b"AUTH") => parse_auth(rest),
            t if t == tok(b"ETRN") => Ok(Command::Etrn(rest.trim())),
            t if t == tok(b"TURN") || t == tok(b"ATRN") => Ok(Command::Turn),
            _ => Err(CommandError::Unrecognized),
        };
    }
    if verb.eq_ignore_ascii_case("STARTTLS") {
        return no_args(rest, Command::StartTls);
    }
    Err(CommandError::Unrecognized)
}

fn no_args<'a>(rest: &str, c: Command<'a>) -> Result<Command<'a>, CommandError> {
    if rest.trim().is_empty() { Ok(c) } else { Err(CommandError::Syntax("Syntax error, no parameters allowed")) }
}

fn required(rest: &str) -> Result<&str, CommandError> {
    let r = rest.trim();
    if r.is_empty() { Err(CommandError::Syntax("Syntax error, argument required")) } else { Ok(r) }
}

fn parse_hello(rest: &str) -> Result<&str, CommandError> {
    // RFC 5321 §4.1.1.1: a domain or an address literal. Clients send all sorts of names
    // here; we require one non-empty token and leave judgement to policy.
    let r = rest.trim();
    if r.is_empty() {
        return Err(CommandError::Syntax("Syntax error, domain name required"));
    }
    Ok(r.split([' ', '\t']).next().unwrap_or(r))
}

fn parse_bdat(rest: &str) -> Result<Command<'_>, CommandError> {
    let mut it = rest.split(' ').filter(|s| !s.is_empty());
    let size = it
        .next()
        .and_then(|s| if s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 19 { s.parse::<u64>().ok() } else { None })
        .ok_or(CommandError::Syntax("Syntax error, BDAT chunk size required"))?;
    let last = match it.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("Syntax error, BDAT takes a size and LAST")),
    };
    if it.next().is_some() {
        return Err(CommandError::Syntax("Syntax error, BDAT takes a size and LAST"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(rest: &str) -> Result<Command<'_>, CommandError> {
    let mut it = rest.split(' ').filter(|s| !s.is_empty());
    let mechanism = it.next().ok_or(CommandError::Syntax("Syntax error, mechanism required"))?;
    if !mechanism.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(CommandError::Syntax("Syntax error, bad mechanism name"));
    }
    let initial = it.next();
    if it.next().is_some() {
        return Err(CommandError::Syntax("Syntax error, too many arguments"));
    }
    Ok(Command::Auth { mechanism, initial })
}

/// Strips `FROM:` / `TO:` (case-insensitive) and the optional spaces after the colon that
/// many clients send.
fn strip_keyword<'a>(rest: &'a str, kw: &str) -> Option<&'a str> {
    let head = rest.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    Some(rest[kw.len()..].trim_start_matches(' '))
}

/// Splits `<path> params` or `path params` into the path text (brackets removed) and the
/// parameter text.
fn split_path(s: &str) -> Option<(&str, &str)> {
    if let Some(inner) = s.strip_prefix('<') {
        // The closing bracket is the first '>' outside a quoted string.
        let b = inner.as_bytes();
        let mut i = 0;
        let mut quoted = false;
        while i < b.len() {
            match b[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'>' if !quoted => {
                    let params = &inner[i + 1..];
                    if !params.is_empty() && !params.starts_with(' ') {
                        return None;
                    }
                    if i + 2 > MAX_PATH {
                        return None;
                    }
                    return Some((&inner[..i], params.trim_start_matches(' ')));
                }
                _ => {}
            }
            i += 1;
        }
        None
    } else {
        // Without brackets (tolerated, as Postfix does): the path runs to the first space.
        let (p, params) = match s.find(' ') {
            Some(i) => (&s[..i], s[i + 1..].trim_start_matches(' ')),
            None => (s, ""),
        };
        if p.is_empty() || p.len() > MAX_PATH {
            return None;
        }
        Some((p, params))
    }
}

fn parse_mail(rest: &str) -> Result<Command<'_>, CommandError> {
    let s = strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax("Syntax error, expected MAIL FROM:<address>"))?;
    let (path, params) = split_path(s).ok_or(CommandError::BadSender)?;
    let from = if path.is_empty() {
        if !s.starts_with('<') {
            return Err(CommandError::BadSender);
        }
        Path::Null
    } else {
        Path::Mailbox(parse_path(path, false).ok_or(CommandError::BadSender)?)
    };
    let mut p = MailParams::default();
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (k, v) = match param.find('=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if k.eq_ignore_ascii_case("SIZE") {
            let v = v.filter(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()));
            let n = v.and_then(|v| v.parse().ok()).ok_or(CommandError::BadParameter("Bad SIZE parameter"))?;
            set_once(&mut p.size, n, "Duplicate SIZE parameter")?;
        } else if k.eq_ignore_ascii_case("BODY") {
            let b = match v {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                Some(v) if v.eq_ignore_ascii_case("BINARYMIME") => Body::BinaryMime,
                _ => return Err(CommandError::BadParameter("Bad BODY parameter")),
            };
            set_once(&mut p.body, b, "Duplicate BODY parameter")?;
        } else if k.eq_ignore_ascii_case("SMTPUTF8") {
            if v.is_some() || p.smtputf8 {
                return Err(CommandError::BadParameter("Bad SMTPUTF8 parameter"));
            }
            p.smtputf8 = true;
        } else if k.eq_ignore_ascii_case("RET") {
            let r = match v {
                Some(v) if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                Some(v) if v.eq_ignore_ascii_case("HDRS") => Ret::Hdrs,
                _ => return Err(CommandError::BadParameter("Bad RET parameter")),
            };
            set_once(&mut p.ret, r, "Duplicate RET parameter")?;
        } else if k.eq_ignore_ascii_case("ENVID") {
            // RFC 3461 §4.4: xtext, at most 100 characters.
            let v = v
                .filter(|v| !v.is_empty() && v.len() <= 100 && is_xtext(v))
                .ok_or(CommandError::BadParameter("Bad ENVID parameter"))?;
            set_once(&mut p.envid, v, "Duplicate ENVID parameter")?;
        } else if k.eq_ignore_ascii_case("AUTH") {
            let v = v
                .filter(|v| !v.is_empty() && (*v == "<>" || is_xtext(v)))
                .ok_or(CommandError::BadParameter("Bad AUTH parameter"))?;
            set_once(&mut p.auth, v, "Duplicate AUTH parameter")?;
        } else {
            return Err(CommandError::UnknownParameter);
        }
    }
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(rest: &str) -> Result<Command<'_>, CommandError> {
    let s = strip_keyword(rest, "TO:").ok_or(CommandError::Syntax("Syntax error, expected RCPT TO:<address>"))?;
    let (path, params) = split_path(s).ok_or(CommandError::BadRecipient)?;
    let to = if path.eq_ignore_ascii_case("postmaster") {
        Mailbox { local: path, domain: "" }
    } else {
        parse_path(path, true).ok_or(CommandError::BadRecipient)?
    };
    let mut p = RcptParams::default();
    for param in params.split(' ').filter(|s| !s.is_empty()) {
        let (k, v) = match param.find('=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if k.eq_ignore_ascii_case("NOTIFY") {
            let v = v.ok_or(CommandError::BadParameter("Bad NOTIFY parameter"))?;
            let mut n = Notify::default();
            for item in v.split(',') {
                if item.eq_ignore_ascii_case("NEVER") {
                    n.never = true;
                } else if item.eq_ignore_ascii_case("SUCCESS") {
                    n.success = true;
                } else if item.eq_ignore_ascii_case("FAILURE") {
                    n.failure = true;
                } else if item.eq_ignore_ascii_case("DELAY") {
                    n.delay = true;
                } else {
                    return Err(CommandError::BadParameter("Bad NOTIFY parameter"));
                }
            }
            // RFC 3461 §4.1: NEVER excludes every other keyword.
            if n.never && (n.success || n.failure || n.delay) {
                return Err(CommandError::BadParameter("NOTIFY=NEVER cannot be combined"));
            }
            set_once(&mut p.notify, n, "Duplicate NOTIFY parameter")?;
        } else if k.eq_ignore_ascii_case("ORCPT") {
            // RFC 3461 §4.2: addr-type ";" xtext.
            let v = v
                .filter(|v| {
                    v.len() <= 500 && v.find(';').is_some_and(|i| i > 0 && is_atom(&v[..i]) && is_xtext(&v[i + 1..]))
                })
                .ok_or(CommandError::BadParameter("Bad ORCPT parameter"))?;
            set_once(&mut p.orcpt, v, "Duplicate ORCPT parameter")?;
        } else {
            return Err(CommandError::UnknownParameter);
        }
    }
    Ok(Command::Rcpt { to, params: p })
}

fn set_once<T>(slot: &mut Option<T>, v: T, dup: &'static str) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::BadParameter(dup));
    }
    *slot = Some(v);
    Ok(())
}

/// Encodes `s` as xtext (RFC 3461 §4): bytes outside "!".."~", and "+" and "=", become
/// `+XX`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// RFC 3461 §4: xtext = *( xchar / hexchar ), xchar = "!".."~" except "+" and "=".
fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                if i + 2 >= b.len() {
                    return false;
                }
                let h = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(h(b[i + 1]) && h(b[i + 2])) {
                    return false;
                }
                i += 3;
                continue;
            }
            b'=' => return false,
            0x21..=0x7e => {}
            // RFC 6533 utf-8-addr-xtext allows UTF-8 as well.
            c if c >= 0x80 => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

fn is_atom(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_atext)
}

/// RFC 5322 §3.2.3 atext, plus UTF-8 bytes (RFC 6531 §3.3 extends atext with UTF8-non-ascii).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// Parses a path without its angle brackets: optional source route, then a mailbox.
///
/// RFC 5321 §4.1.2: `[A-d-l ":"] Mailbox`. The source route is checked and dropped
/// (§C: "SHOULD ignore").
fn parse_path(path: &str, _recipient: bool) -> Option<Mailbox<'_>> {
    let mailbox = if path.starts_with('@') {
        let colon = path.find(':')?;
        for hop in path[..colon].split(',') {
            let d = hop.strip_prefix('@')?;
            if !is_domain(d) {
                return None;
            }
        }
        &path[colon + 1..]
    } else {
        path
    };
    parse_mailbox(mailbox)
}

/// `Local-part "@" ( Domain / address-literal )`.
pub fn parse_mailbox(s: &str) -> Option<Mailbox<'_>> {
    let b = s.as_bytes();
    let at = if b.first() == Some(&b'"') {
        // Quoted-string: the closing quote, then '@'.
        let mut i = 1;
        loop {
            match *b.get(i)? {
                b'\\' => {
                    // quoted-pairSMTP = %d92 %d32-126
                    let c = *b.get(i + 1)?;
                    if !(32..=126).contains(&c) {
                        return None;
                    }
                    i += 2;
                }
                b'"' => break,
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8.
                c if (32..=126).contains(&c) || c >= 0x80 => i += 1,
                _ => return None,
            }
        }
        if b.get(i + 1) != Some(&b'@') {
            return None;
        }
        i + 1
    } else {
        let at = s.rfind('@')?;
        let local = &s[..at];
        // Dot-string = Atom *("." Atom)
        if local.is_empty() || !local.split('.').all(is_atom) {
            return None;
        }
        at
    };
    let local = &s[..at];
    let domain = &s[at + 1..];
    if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
        return None;
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return None;
    }
    Some(Mailbox { local, domain })
}

/// `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`, with U-labels
/// allowed (RFC 6531 §3.3).
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= MAX_DOMAIN
        && d.split('.').all(|label| {
            let l = label.as_bytes();
            !l.is_empty()
                && l.len() <= 63
                && (l[0].is_ascii_alphanumeric() || l[0] >= 0x80)
                && (l[l.len() - 1].is_ascii_alphanumeric() || l[l.len() - 1] >= 0x80)
                && l.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80)
        })
}

/// `address-literal = "[" ( IPv4 / "IPv6:" IPv6 / General-address-literal ) "]"`.
fn is_address_literal(d: &str) -> bool {
    let Some(inner) = d.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")).map(|_| &inner[5..]) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if inner.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent
    match inner.find(':') {
        Some(i) if i > 0 => {
            let tag = &inner[..i];
            let content = &inner[i + 1..];
            tag.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !content.is_empty()
                && content.bytes().all(|c| (33..=90).contains(&c) || (94..=126).contains(&c))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb<'a>(local: &'a str, domain: &'a str) -> Mailbox<'a> {
        Mailbox { local, domain }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        for l in ["DATA", "data", "DaTa"] {
            assert_eq!(parse_command(l.as_bytes()), Ok(Command::Data));
        }
        assert_eq!(parse_command(b"starttls"), Ok(Command::StartTls));
        assert_eq!(parse_command(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse_command(b"RSET"), Ok(Command::Rset));
        assert_eq!(parse_command(b"NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(parse_command(b"HELP"), Ok(Command::Help("")));
        assert_eq!(parse_command(b"VRFY bob"), Ok(Command::Vrfy("bob")));
        assert_eq!(parse_command(b"EXPN staff"), Ok(Command::Expn("staff")));
        assert_eq!(parse_command(b"ETRN example.org"), Ok(Command::Etrn("example.org")));
        assert_eq!(parse_command(b"TURN"), Ok(Command::Turn));
    }

    #[test]
    fn unknown_and_malformed_verbs() {
        for l in ["", "X", "MAILX FROM:<a@b>", "DATAX", "FOO bar", "STARTTLSX"] {
            assert_eq!(parse_command(l.as_bytes()), Err(CommandError::Unrecognized), "{l:?}");
        }
        assert_eq!(parse_command(b"DATA now"), Err(CommandError::Syntax("Syntax error, no parameters allowed")));
        assert_eq!(parse_command(b"MAIL\0FROM:<a@b>"), Err(CommandError::InvalidCharacter));
        assert_eq!(parse_command(b"VRFY"), Err(CommandError::Syntax("Syntax error, argument required")));
    }

    #[test]
    fn hello() {
        assert_eq!(parse_command(b"EHLO client.example"), Ok(Command::Ehlo("client.example")));
        assert_eq!(parse_command(b"HELO [192.0.2.1]"), Ok(Command::Helo("[192.0.2.1]")));
        assert_eq!(parse_command(b"ehlo  spaced.example  "), Ok(Command::Ehlo("spaced.example")));
        assert!(matches!(parse_command(b"EHLO"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn mail_from_table() {
        let ok: &[(&str, Path)] = &[
            ("MAIL FROM:<a@b.example>", Path::Mailbox(mb("a", "b.example"))),
            ("mail from:<A.B+c@Example.ORG>", Path::Mailbox(mb("A.B+c", "Example.ORG"))),
            ("MAIL FROM: <a@b.example>", Path::Mailbox(mb("a", "b.example"))),
            ("MAIL FROM:a@b.example", Path::Mailbox(mb("a", "b.example"))),
            ("MAIL FROM:<>", Path::Null),
            ("MAIL FROM:<\"john doe\"@example.org>", Path::Mailbox(mb("\"john doe\"", "example.org"))),
            ("MAIL FROM:<\"a\\\"b@c\"@example.org>", Path::Mailbox(mb("\"a\\\"b@c\"", "example.org"))),
            ("MAIL FROM:<u@[192.0.2.1]>", Path::Mailbox(mb("u", "[192.0.2.1]"))),
            ("MAIL FROM:<u@[IPv6:2001:db8::1]>", Path::Mailbox(mb("u", "[IPv6:2001:db8::1]"))),
            ("MAIL FROM:<@relay.example,@r2.example:u@example.org>", Path::Mailbox(mb("u", "example.org"))),
            ("MAIL FROM:<jörg@bücher.example>", Path::Mailbox(mb("jörg", "bücher.example"))),
        ];
        for (line, want) in ok {
            match parse_command(line.as_bytes()) {
                Ok(Command::Mail { from, .. }) => assert_eq!(&from, want, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let bad = [
            "MAIL FROM:<a@>",
            "MAIL FROM:<@b.example>",
            "MAIL FROM:<a@b..example>",
            "MAIL FROM:<a@-b.example>",
            "MAIL FROM:<a b@example.org>",
            "MAIL FROM:<a@b.example",
            "MAIL FROM:<a@b.example>x",
            "MAIL FROM:<.a@b.example>",
            "MAIL FROM:<a.@b.example>",
            "MAIL FROM:<a@[300.1.1.1]>",
            "MAIL FROM:<a@[IPv6:zz]>",
            "MAIL FROM:<a@b.example.>",
            "MAIL FROM:<\"unterminated@b.example>",
        ];
        for line in bad {
            assert_eq!(parse_command(line.as_bytes()), Err(CommandError::BadSender), "{line}");
        }
        assert!(matches!(parse_command(b"MAIL <a@b>"), Err(CommandError::Syntax(_))));
        let long_local = format!("MAIL FROM:<{}@b.example>", "x".repeat(65));
        assert_eq!(parse_command(long_local.as_bytes()), Err(CommandError::BadSender));
    }

    #[test]
    fn mail_parameters() {
        let Ok(Command::Mail { params, .. }) =
            parse_command(b"MAIL FROM:<a@b.example> SIZE=1024 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159 AUTH=<>")
        else {
            panic!()
        };
        assert_eq!(
            params,
            MailParams {
                size: Some(1024),
                body: Some(Body::EightBitMime),
                smtputf8: true,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ314159"),
                auth: Some("<>"),
            }
        );
        let Ok(Command::Mail { params, .. }) = parse_command(b"MAIL FROM:<> body=binarymime ret=full") else {
            panic!()
        };
        assert_eq!(params.body, Some(Body::BinaryMime));
        assert_eq!(params.ret, Some(Ret::Full));
        for (line, err) in [
            ("MAIL FROM:<a@b.example> SIZE=", CommandError::BadParameter("Bad SIZE parameter")),
            ("MAIL FROM:<a@b.example> SIZE=-1", CommandError::BadParameter("Bad SIZE parameter")),
            ("MAIL FROM:<a@b.example> SIZE=1 SIZE=2", CommandError::BadParameter("Duplicate SIZE parameter")),
            ("MAIL FROM:<a@b.example> BODY=9BIT", CommandError::BadParameter("Bad BODY parameter")),
            ("MAIL FROM:<a@b.example> SMTPUTF8=yes", CommandError::BadParameter("Bad SMTPUTF8 parameter")),
            ("MAIL FROM:<a@b.example> ENVID=a=b", CommandError::BadParameter("Bad ENVID parameter")),
            ("MAIL FROM:<a@b.example> XFOO=1", CommandError::UnknownParameter),
        ] {
            assert_eq!(parse_command(line.as_bytes()), Err(err), "{line}");
        }
    }

    #[test]
    fn rcpt_to_table() {
        let Ok(Command::Rcpt { to, params }) =
            parse_command(b"RCPT TO:<u@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;u+40example.org")
        else {
            panic!()
        };
        assert_eq!(to, mb("u", "example.org"));
        assert_eq!(params.notify, Some(Notify { success: true, delay: true, ..Default::default() }));
        assert_eq!(params.orcpt, Some("rfc822;u+40example.org"));
        // RFC 5321 §4.1.1.3: <Postmaster> without a domain.
        let Ok(Command::Rcpt { to, .. }) = parse_command(b"RCPT TO:<Postmaster>") else { panic!() };
        assert_eq!(to, mb("Postmaster", ""));
        for line in [
            "RCPT TO:<>",
            "RCPT TO:<user>",
            "RCPT TO:<user@remote@local.example>",
            "RCPT TO:<a@b.example> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<a@b.example> NOTIFY=SOMETIMES",
            "RCPT TO:<a@b.example> ORCPT=noxtext",
        ] {
            assert!(parse_command(line.as_bytes()).is_err(), "{line}");
        }
        // Relay tricks parse as what they literally are; the policy decides.
        let Ok(Command::Rcpt { to, .. }) = parse_command(b"RCPT TO:<user%remote.example@local.example>") else {
            panic!()
        };
        assert_eq!(to, mb("user%remote.example", "local.example"));
        let Ok(Command::Rcpt { to, .. }) = parse_command(b"RCPT TO:<@local.example:user@remote.example>") else {
            panic!()
        };
        assert_eq!(to, mb("user", "remote.example"));
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(parse_command(b"BDAT 1000"), Ok(Command::Bdat { size: 1000, last: false }));
        assert_eq!(parse_command(b"BDAT 0 LAST"), Ok(Command::Bdat { size: 0, last: true }));
        assert_eq!(parse_command(b"bdat 12 last"), Ok(Command::Bdat { size: 12, last: true }));
        for l in ["BDAT", "BDAT x", "BDAT -1", "BDAT 1 FIRST", "BDAT 1 LAST more", "BDAT 99999999999999999999"] {
            assert!(matches!(parse_command(l.as_bytes()), Err(CommandError::Syntax(_))), "{l}");
        }
        assert_eq!(
            parse_command(b"AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q="),
            Ok(Command::Auth { mechanism: "PLAIN", initial: Some("dGVzdAB0ZXN0AHRlc3Q=") })
        );
        assert_eq!(parse_command(b"AUTH LOGIN"), Ok(Command::Auth { mechanism: "LOGIN", initial: None }));
        assert!(parse_command(b"AUTH").is_err());
    }

    #[test]
    fn xtext_encoding_round_trips() {
        let raw = "a+b=c d@exämple.test";
        let enc = xtext_encode(raw);
        assert_eq!(enc, "a+2Bb+3Dc+20d@ex+C3+A4mple.test");
        assert!(is_xtext(&enc));
        assert_eq!(crate::delivery::dsn::xtext_decode(&enc), raw);
    }

    #[test]
    fn xtext() {
        assert!(is_xtext("abc+2Bdef"));
        assert!(!is_xtext("abc+2"));
        assert!(!is_xtext("abc+zz"));
        assert!(!is_xtext("a=b"));
        assert!(!is_xtext("a b"));
    }
}

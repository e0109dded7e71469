//! The message transformations of the mailing-list manager, all pure: bytes in, bytes out, no I/O.
//!
//! * [`rewrite`] turns a post into the copy distributed to the members: the list's own header fields
//!   (RFC 2369 `List-Help` and friends, RFC 2919 `List-Id`, RFC 8058 `List-Unsubscribe-Post`) replace any
//!   the post carried, the Subject gets the list's prefix, Reply-To follows the list's policy, `From` is
//!   optionally rewritten so that the copy passes the poster's DMARC policy, and a header and a footer text
//!   are added without breaking the MIME structure (RFC 2046) or a signature (RFC 1847).
//! * [`digest`] collects posts into one MIME digest (RFC 2046 §5.1.5).
//! * [`dsn_failed_recipients`], [`verp_encode`] and [`verp_decode`] serve bounce processing (RFC 3464).
//! * [`header`], [`address_of`], [`display_name`], [`prefixed_subject`] and [`subject_password`] are the
//!   small readers the rest of the list manager needs (commands, moderation, approval).
//!
//! Messages are byte slices. Input lines may end in CRLF or in a bare LF; output lines always end in CRLF
//! (RFC 5322 §2.1). A message whose header section uses bare LF has its body converted as well; the body of
//! a CRLF message is copied byte for byte, so the signed entity of a multipart/signed post still verifies.
//! Header field names compare case-insensitively and folded values are unfolded when read (RFC 5322
//! §2.2.3); fields that the rewrite does not change are copied as they were folded.

use std::borrow::Cow;

/// The line end of everything written (RFC 5322 §2.1).
const CRLF: &[u8] = b"\r\n";

/// How deep [`dsn_failed_recipients`] descends into nested multiparts: a report sits at depth 1, a
/// forwarded one a level or two deeper; more is not a bounce worth reading.
const MAX_DEPTH: usize = 8;

/// Where replies to a list post go (the `Reply-To` field, RFC 5322 §3.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo<'a> {
    /// To the list, so that the discussion stays on it: `Reply-To: <list address>`.
    List,
    /// Wherever the poster asked: the post's own Reply-To, if any, is kept.
    Poster,
    /// To a fixed address (`Reply-To: <address>`), e.g. an announcement list pointing replies at a help desk.
    Fixed(&'a str),
}

/// Everything [`rewrite`] needs to turn a post into the copy distributed to members.
#[derive(Debug, Clone)]
pub struct Rewrite<'a> {
    /// The list's posting address, e.g. `dev@example.org`.
    pub list_address: &'a str,
    /// The list's display name, e.g. `dev`, used in a rewritten From (`"Ann via dev"`).
    pub list_display: &'a str,
    /// The Subject prefix, e.g. `[dev]`; `None` leaves the Subject alone (but for the password).
    pub subject_prefix: Option<&'a str>,
    /// The list's posting password: a `[:password:]` token in the Subject is removed so that members
    /// never see it.
    pub password: Option<&'a str>,
    /// Where replies go.
    pub reply_to: ReplyTo<'a>,
    /// Text put before the body (one or more lines, LF or CRLF).
    pub header_text: Option<&'a str>,
    /// Text put after the body (one or more lines, LF or CRLF).
    pub footer_text: Option<&'a str>,
    /// Rewrite From to the list address (DMARC mitigation, as Mailman 3 and mlmmj do): a copy whose body
    /// changed no longer carries a valid DKIM signature of the poster's domain, and with the poster's
    /// address in From a `p=reject` domain would have it refused.
    pub rewrite_from: bool,
    /// Header fields (name, value) to add at the top, in order: List-Id, List-Help, List-Post, X-Loop...
    /// Values are one line each; nothing is folded.
    pub added: &'a [(String, String)],
}

/// One header field as it appeared: its name and its physical lines (without line ends), folding kept.
struct Field<'m> {
    /// The name as written, without the colon; empty for a line that is not a field.
    name: &'m [u8],
    /// The first line and its continuation lines.
    lines: Vec<&'m [u8]>,
}

impl Field<'_> {
    /// Whether this is a `name` field (names compare case-insensitively, RFC 5322 §1.2.2).
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// Whether this is a MIME field describing the entity (RFC 2045 §9: all begin with `Content-`).
    fn is_content(&self) -> bool {
        self.name.get(..8).is_some_and(|p| p.eq_ignore_ascii_case(b"content-"))
    }

    /// The value unfolded (RFC 5322 §2.2.3: the CRLF before each continuation line is removed, its
    /// whitespace kept) and trimmed.
    fn value(&self) -> Vec<u8> {
        let first = self.lines[0];
        let mut v = first.iter().position(|&b| b == b':').map_or(&b""[..], |i| &first[i + 1..]).to_vec();
        for line in &self.lines[1..] {
            v.extend_from_slice(line);
        }
        v.trim_ascii().to_vec()
    }

    /// The field as it was folded, with CRLF line ends.
    fn write(&self, out: &mut Vec<u8>) {
        for line in &self.lines {
            out.extend_from_slice(line);
            out.extend_from_slice(CRLF);
        }
    }
}

/// A message split into its header fields and its body.
struct Parsed<'m> {
    fields: Vec<Field<'m>>,
    /// Everything after the blank line that ends the header section.
    body: &'m [u8],
    /// The first line ends in a bare LF: the message was stored with Unix line ends.
    lf_form: bool,
}

impl Parsed<'_> {
    /// The first `name` field.
    fn first(&self, name: &str) -> Option<&Field<'_>> {
        self.fields.iter().find(|f| f.is(name))
    }
}

/// One line of a buffer: where it starts, its text without the line end, where the next line starts.
#[derive(Clone, Copy)]
struct Line<'a> {
    start: usize,
    text: &'a [u8],
    next: usize,
}

/// The lines of `buf`, each ended by CRLF or a bare LF (the last one may lack its end).
fn lines(buf: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        let start = pos;
        let text = match buf[start..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                pos = start + i + 1;
                let t = &buf[start..start + i];
                t.strip_suffix(b"\r").unwrap_or(t)
            }
            None => {
                pos = buf.len();
                &buf[start..]
            }
        };
        Some(Line { start, text, next: pos })
    })
}

/// Splits `msg` at the first empty line (RFC 5322 §2.1); without one, all of it is header.
fn parse(msg: &[u8]) -> Parsed<'_> {
    let mut fields = Vec::new();
    let mut body: &[u8] = b"";
    for line in lines(msg) {
        if line.text.is_empty() {
            body = &msg[line.next..];
            break;
        }
        push_line(&mut fields, line.text);
    }
    let lf_form = msg.iter().position(|&b| b == b'\n').is_some_and(|i| i == 0 || msg[i - 1] != b'\r');
    Parsed { fields, body, lf_form }
}

/// Adds a header line: a continuation line (leading space or tab) joins the field before it.
fn push_line<'m>(fields: &mut Vec<Field<'m>>, line: &'m [u8]) {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t')
        && let Some(last) = fields.last_mut()
    {
        last.lines.push(line);
        return;
    }
    let name = line.iter().position(|&b| b == b':').map_or(&b""[..], |i| line[..i].trim_ascii_end());
    fields.push(Field { name, lines: vec![line] });
}

/// `buf` with every bare LF turned into CRLF.
fn to_crlf(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + buf.len() / 32 + 2);
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' && (i == 0 || buf[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A message with CRLF line ends: unchanged when it already has them.
fn normalized(msg: &[u8]) -> Cow<'_, [u8]> {
    if parse(msg).lf_form { Cow::Owned(to_crlf(msg)) } else { Cow::Borrowed(msg) }
}

/// Bytes as text, invalid UTF-8 replaced.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes the field `name: value` on one line. CR and LF in the value become spaces, so that no value
/// given by a caller or copied from a post can end the field early and inject another one.
fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend(value.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(CRLF);
}

/// The first header field `name` of `msg`'s header section, unfolded (CRLF+WSP → the WSP) and trimmed;
/// `None` when absent. The name compares case-insensitively (RFC 5322 §1.2.2); invalid UTF-8 is replaced.
pub fn header(msg: &[u8], name: &str) -> Option<String> {
    parse(msg).first(name).map(|f| lossy(&f.value()))
}

/// `subject` with the list's `prefix`, so that members can filter and recognize list traffic: unchanged
/// when it already contains the prefix (case-insensitively, anywhere: `Re: [dev] hi` is never doubled into
/// `[dev] Re: [dev] hi`); otherwise `prefix subject`, or just `prefix` when the subject is empty.
/// Encoded words (RFC 2047) are opaque text here: the prefix goes before them.
pub fn prefixed_subject(subject: &str, prefix: &str) -> String {
    let rest = subject.trim_start();
    if rest.trim_end().is_empty() {
        return prefix.to_string();
    }
    if subject.to_lowercase().contains(&prefix.to_lowercase()) {
        return subject.to_string();
    }
    format!("{prefix} {rest}")
}

/// Finds a `[:secret:]` token in a subject, by which a poster proves the right to post to a moderated
/// list without waiting for approval: `Some((secret, subject without the token and one space next to
/// it))`. The secret is not empty and has no whitespace; the first such token counts.
pub fn subject_password(subject: &str) -> Option<(String, String)> {
    let (start, end) = find_token(subject)?;
    let secret = subject[start + 2..end - 2].to_string();
    Some((secret, lossy(&without(subject.as_bytes(), start, end))))
}

/// The byte range of the first `[:secret:]` token of `s`.
fn find_token(s: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = s[from..].find("[:") {
        let open = from + i;
        if let Some(j) = s[open + 2..].find(":]") {
            let secret = &s[open + 2..open + 2 + j];
            if !secret.is_empty() && !secret.contains(char::is_whitespace) && !secret.contains('[') {
                return Some((open, open + j + 4));
            }
        }
        from = open + 1;
    }
    None
}

/// `s` without `start..end` and one adjacent space (the one after, else the one before), so that
/// `[:pw:] hi`, `hi [:pw:]` and `a [:pw:] b` become `hi`, `hi` and `a b`.
fn without(s: &[u8], start: usize, end: usize) -> Vec<u8> {
    let (before, after) = (&s[..start], &s[end..]);
    let (before, after) = match (before.strip_suffix(b" "), after.strip_prefix(b" ")) {
        (_, Some(a)) => (before, a),
        (Some(b), None) => (b, after),
        (None, None) => (before, after),
    };
    [before, after].concat()
}

/// The lexical pieces of a From-style value (RFC 5322 §3.4) that the readers need.
#[derive(Default)]
struct Mailbox {
    /// The text before `<`, quotes removed and comments dropped.
    phrase: String,
    /// The text between `<` and `>`.
    angle: Option<String>,
    /// The whole value with comments dropped (quoted strings kept quoted).
    bare: String,
    /// The first comment's text (`ann@x.org (Ann)` names Ann).
    comment: Option<String>,
}

/// Reads a quoted string after its opening quote, unescaping quoted pairs (RFC 5322 §3.2.4).
fn read_quoted(chars: &mut std::str::Chars<'_>) -> String {
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.extend(chars.next()),
            '"' => break,
            _ => text.push(c),
        }
    }
    text
}

/// Reads a comment after its opening parenthesis; comments nest (RFC 5322 §3.2.2).
fn read_comment(chars: &mut std::str::Chars<'_>) -> String {
    let mut text = String::new();
    let mut depth = 1;
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.extend(chars.next()),
            '(' => {
                depth += 1;
                text.push(c);
            }
            ')' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
                text.push(c);
            }
            _ => text.push(c),
        }
    }
    text
}

/// Splits a From-style value; `<` inside a quoted string or a comment does not start the address.
fn mailbox(value: &str) -> Mailbox {
    let mut m = Mailbox::default();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let q = read_quoted(&mut chars);
                if m.angle.is_none() {
                    m.phrase.push_str(&q);
                }
                m.bare.push('"');
                m.bare.push_str(&q);
                m.bare.push('"');
            }
            '(' => {
                let text = read_comment(&mut chars);
                m.comment.get_or_insert(text);
                m.bare.push(' ');
                m.phrase.push(' ');
            }
            '<' if m.angle.is_none() => m.angle = Some(chars.by_ref().take_while(|&c| c != '>').collect()),
            _ => {
                if m.angle.is_none() {
                    m.phrase.push(c);
                }
                m.bare.push(c);
            }
        }
    }
    m
}

/// The bare address of a From/Reply-To style value, lower-cased entirely (so that it compares with the
/// member roster as is): `"Ann" <ann@x.org>` → `ann@x.org`, `ann@x.org (Ann)` → `ann@x.org`. A source
/// route (`<@a,@b:ann@x.org>`, RFC 5322 §4.4) is dropped. `None` without an `@`.
pub fn address_of(value: &str) -> Option<String> {
    let m = mailbox(value);
    let addr = match &m.angle {
        Some(a) => {
            let a = a.trim();
            a.rsplit_once(':').filter(|_| a.starts_with('@')).map_or(a, |(_, rest)| rest).trim()
        }
        None => m.bare.split_whitespace().find(|w| w.contains('@'))?.trim_matches([',', ';']),
    };
    addr.contains('@').then(|| addr.to_lowercase())
}

/// The display name of a From value, quotes removed and whitespace collapsed: `"Ann Lee" <a@x>` →
/// `Ann Lee`, and the old comment form `a@x (Ann Lee)` → `Ann Lee`. `None` for a bare address. Encoded
/// words (RFC 2047) are returned as they are, not decoded.
pub fn display_name(value: &str) -> Option<String> {
    let m = mailbox(value);
    let name = if m.angle.is_some() { m.phrase } else { m.comment.unwrap_or_default() };
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    (!name.is_empty()).then_some(name)
}

/// `s` as a quoted string (RFC 5322 §3.2.4): `"` and `\` escaped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether `w` looks like an encoded word (RFC 2047 §2: `=?charset?encoding?text?=`).
fn is_encoded_word(w: &str) -> bool {
    w.len() >= 8 && w.starts_with("=?") && w.ends_with("?=") && w.matches('?').count() == 4
}

/// Whether `w` is an atom (RFC 5322 §3.2.3), which a phrase may hold unquoted.
fn is_atom(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
}

/// The display name of a rewritten From: `"NAME via LIST"`. A name made of encoded words stays outside
/// the quotes (`=?utf-8?q?J=C3=B6rg?= "via dev"`), because an encoded word inside a quoted string is not
/// decoded (RFC 2047 §5) and readers would see it raw.
fn from_phrase(name: &str, list_display: &str) -> String {
    let words = || name.split_whitespace();
    if words().any(is_encoded_word) && words().all(|w| is_encoded_word(w) || is_atom(w)) {
        format!("{name} {}", quoted(&format!("via {list_display}")))
    } else {
        quoted(&format!("{name} via {list_display}"))
    }
}

/// The From of the distributed copy when `rewrite_from` is set: the poster's display name (or address)
/// "via" the list, at the list address. `None` when the original From names nobody.
fn rewritten_from(original: &[u8], r: &Rewrite<'_>) -> Option<String> {
    let v = lossy(original);
    let name = display_name(&v).or_else(|| address_of(&v))?;
    Some(format!("{} <{}>", from_phrase(&name, r.list_display), r.list_address))
}

/// The Reply-To to write in place of the post's, or `None` to keep the post's own (or none).
/// `original_from` is the post's From value when From was rewritten.
fn new_reply_to(r: &Rewrite<'_>, original_from: Option<&[u8]>, poster_has_one: bool) -> Option<Vec<u8>> {
    match (r.reply_to, original_from) {
        (ReplyTo::Poster, None) => None,
        // The rewritten From no longer reaches the poster: a private reply must go somewhere.
        (ReplyTo::Poster, Some(from)) => (!poster_has_one).then(|| from.to_vec()),
        (ReplyTo::List, None) => Some(angle_addr(r.list_address).into_bytes()),
        (ReplyTo::List, Some(from)) => Some([angle_addr(r.list_address).as_bytes(), b", ", from].concat()),
        (ReplyTo::Fixed(a), _) => Some(angle_addr(a).into_bytes()),
    }
}

/// An address as an angle-addr (RFC 5322 §3.4), `<dev@example.org>`; a value that already has its angle
/// brackets (`Help <help@example.org>`) is kept as it is.
fn angle_addr(a: &str) -> String {
    let a = a.trim();
    if a.contains('<') { a.to_string() } else { format!("<{a}>") }
}

/// The Subject to write in place of the post's (or to add), or `None` to keep the post's field as it was.
/// Works on bytes so that a raw 8-bit subject survives; a UTF-8 one goes through [`prefixed_subject`].
fn new_subject(old: Option<&[u8]>, r: &Rewrite<'_>) -> Option<Vec<u8>> {
    let mut subject = old.unwrap_or_default().to_vec();
    let mut changed = false;
    if let Some(pw) = r.password.filter(|p| !p.is_empty()) {
        let token = format!("[:{pw}:]");
        if let Some(i) = find(&subject, token.as_bytes()) {
            subject = without(&subject, i, i + token.len());
            changed = true;
        }
    }
    if let Some(prefix) = r.subject_prefix.filter(|p| !p.is_empty()) {
        let new = match std::str::from_utf8(&subject) {
            Ok(s) => prefixed_subject(s, prefix).into_bytes(),
            Err(_) if subject.windows(prefix.len().max(1)).any(|w| w.eq_ignore_ascii_case(prefix.as_bytes())) => {
                subject.clone()
            }
            Err(_) => [prefix.as_bytes(), b" ", subject.trim_ascii_start()].concat(),
        };
        changed |= new != subject;
        subject = new;
    }
    changed.then_some(subject)
}

/// A parsed Content-Type (RFC 2045 §5.1).
struct ContentType {
    /// `type/subtype`, lower-cased; garbage when the field was.
    mtype: String,
    /// Parameters in order: lower-cased name, unquoted value.
    params: Vec<(String, String)>,
}

impl ContentType {
    /// The value of parameter `name` (lower-case).
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The multipart boundary, when there is a usable one.
    fn boundary(&self) -> Option<&str> {
        self.param("boundary").filter(|b| !b.is_empty())
    }
}

/// Parses a Content-Type value: `type/subtype` and `; name=value` parameters, quoted or not.
fn parse_content_type(value: &str) -> ContentType {
    let (mtype, mut rest) = value.split_once(';').unwrap_or((value, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ';' || c.is_ascii_whitespace());
        if rest.is_empty() {
            break;
        }
        let end = rest.find(['=', ';']).unwrap_or(rest.len());
        let name = rest[..end].trim().to_ascii_lowercase();
        rest = &rest[end..];
        let Some(after) = rest.strip_prefix('=') else { continue };
        let after = after.trim_start();
        let value = if let Some(q) = after.strip_prefix('"') {
            let mut chars = q.chars();
            let v = read_quoted(&mut chars);
            rest = chars.as_str();
            v
        } else {
            let e = after.find([';', ' ', '\t']).unwrap_or(after.len());
            rest = &after[e..];
            after[..e].to_string()
        };
        params.push((name, value));
    }
    ContentType { mtype: mtype.trim().to_ascii_lowercase(), params }
}

/// The Content-Type of an entity, if it has one.
fn content_type(p: &Parsed<'_>) -> Option<ContentType> {
    p.first("Content-Type").map(|f| parse_content_type(&lossy(&f.value())))
}

/// Whether a parameter value can be written without quotes (RFC 2045 §5.1 token).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// `text/plain` with the parameters of `ct` and `charset=utf-8`, for a plain-text body that stays as it
/// is (it is ASCII, hence UTF-8) but gains UTF-8 text.
fn text_plain_utf8(ct: Option<&ContentType>) -> String {
    let mut v = String::from("text/plain");
    for (name, value) in ct.map_or(&[][..], |c| &c.params[..]) {
        if name != "charset" {
            v.push_str("; ");
            v.push_str(name);
            v.push('=');
            v.push_str(&if is_token(value) { value.clone() } else { quoted(value) });
        }
    }
    v.push_str("; charset=utf-8");
    v
}

/// A multipart delimiter line (RFC 2046 §5.1.1): an opening one or the closing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimiter {
    Open,
    Close,
}

/// Whether line `text` is a delimiter of `boundary`; whitespace may follow it (transport padding).
fn delimiter(text: &[u8], boundary: &str) -> Option<Delimiter> {
    let rest = text.strip_prefix(b"--")?.strip_prefix(boundary.as_bytes())?;
    if rest.starts_with(b"--") {
        Some(Delimiter::Close)
    } else if rest.iter().all(|&b| b == b' ' || b == b'\t') {
        Some(Delimiter::Open)
    } else {
        None
    }
}

/// Where the first delimiter line and the closing delimiter line of a multipart body start.
fn mixed_delimiters(body: &[u8], boundary: &str) -> Option<(usize, usize)> {
    let mut first = None;
    for line in lines(body) {
        match delimiter(line.text, boundary) {
            Some(Delimiter::Open) => {
                first.get_or_insert(line.start);
            }
            Some(Delimiter::Close) => return first.map(|f| (f, line.start)),
            None => {}
        }
    }
    None
}

/// The body parts of a multipart body, each without the line end before the next delimiter (which
/// belongs to the delimiter, RFC 2046 §5.1.1). A part left open by a truncated body runs to its end.
fn body_parts<'b>(body: &'b [u8], boundary: &str) -> Vec<&'b [u8]> {
    let mut parts = Vec::new();
    let mut start = None;
    for line in lines(body) {
        let Some(kind) = delimiter(line.text, boundary) else { continue };
        if let Some(s) = start {
            let before = &body[s..line.start];
            let before = before.strip_suffix(b"\n").unwrap_or(before);
            parts.push(before.strip_suffix(b"\r").unwrap_or(before));
        }
        if kind == Delimiter::Close {
            return parts;
        }
        start = Some(line.next);
    }
    parts.extend(start.map(|s| &body[s..]));
    parts
}

/// 64-bit FNV-1a over `parts`: the seed of a boundary, so that the output depends on the input only.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A boundary that occurs in none of `avoid` (RFC 2046 §5.1.1 requires that). `=_` cannot start a
/// quoted-printable escape nor appear in base64, so a clash is rare; each retry takes the next candidate.
/// All candidates have the same length, so no two of them can be a prefix of one another.
fn fresh_boundary(seed: u64, avoid: &[&[u8]]) -> String {
    let mut n: u64 = 0;
    loop {
        // The splitmix64 finalizer: neighbouring seeds give unrelated candidates.
        let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let candidate = format!("=_ringmx_{z:016x}");
        if !avoid.iter().any(|a| find(a, candidate.as_bytes()).is_some()) {
            return candidate;
        }
        n += 1;
    }
}

/// Text given as lines (LF or CRLF) with CRLF line ends, the last one ended too; `None` when empty.
fn text_lines(text: Option<&str>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for line in text?.lines() {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(CRLF);
    }
    (!out.is_empty()).then_some(out)
}

/// Writes a body part holding list text (header or footer): a delimiter, its MIME fields, the text.
/// The text's last CRLF becomes the one before the next delimiter.
fn text_part(out: &mut Vec<u8>, boundary: &str, text: &[u8]) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(CRLF);
    put(out, "Content-Type", b"text/plain; charset=utf-8");
    put(out, "Content-Transfer-Encoding", if text.is_ascii() { b"7bit" } else { b"8bit" });
    out.extend_from_slice(CRLF);
    out.extend_from_slice(text);
}

/// How the body gets the header and footer text.
enum BodyPlan {
    /// No text: not a byte changes.
    Untouched,
    /// Plain text: the texts go before and after the body itself (rule a).
    Inline,
    /// multipart/mixed: the texts become the first and last parts, inserted at these offsets of the body:
    /// the first delimiter line and the closing one (rule b).
    Mixed { boundary: String, first: usize, close: usize },
    /// Anything else: a new multipart/mixed around the original entity (rule c).
    Wrap { boundary: String },
}

/// What the header section and the body need for the texts.
struct Plan {
    body: BodyPlan,
    /// A new top-level Content-Type value (inline text that brings UTF-8 to an ASCII body).
    content_type: Option<String>,
    /// `Content-Transfer-Encoding: 8bit` replaces the 7bit one (or is added): 8-bit text was added.
    eight_bit: bool,
}

impl Plan {
    fn body(body: BodyPlan) -> Plan {
        Plan { body, content_type: None, eight_bit: false }
    }
}

/// Whether text can go inline, and with which new Content-Type and transfer encoding: plain text
/// (RFC 2046 §4.1) in an identity encoding (RFC 2045 §6.2) whose charset can carry the text.
fn inline_plan(ct: Option<&ContentType>, cte: Option<&str>, body: &[u8], text_ascii: bool) -> Option<Plan> {
    if ct.is_some_and(|c| c.mtype != "text/plain") || !matches!(cte, None | Some("7bit" | "8bit")) {
        return None;
    }
    let charset = ct.and_then(|c| c.param("charset")).map(str::to_ascii_lowercase);
    if text_ascii {
        // ASCII is the same bytes in every charset but the 16- and 32-bit ones.
        let wide = charset.as_deref().is_some_and(|c| c.starts_with("utf-16") || c.starts_with("utf-32"));
        return (!wide).then(|| Plan::body(BodyPlan::Inline));
    }
    let eight_bit = cte != Some("8bit");
    match charset.as_deref() {
        Some("utf-8" | "utf8") => Some(Plan { body: BodyPlan::Inline, content_type: None, eight_bit }),
        // An ASCII body is valid UTF-8 too, so declaring UTF-8 changes nothing for it.
        None | Some("us-ascii" | "ascii") if body.is_ascii() => {
            Some(Plan { body: BodyPlan::Inline, content_type: Some(text_plain_utf8(ct)), eight_bit })
        }
        _ => None,
    }
}

/// Decides how the texts join the body (see [`rewrite`], rule 6).
fn plan(p: &Parsed<'_>, body: &[u8], header_text: Option<&[u8]>, footer_text: Option<&[u8]>) -> Plan {
    if header_text.is_none() && footer_text.is_none() {
        return Plan::body(BodyPlan::Untouched);
    }
    let ct = content_type(p);
    let cte = p.first("Content-Transfer-Encoding").map(|f| lossy(&f.value()).to_ascii_lowercase());
    let text_ascii = header_text.is_none_or(<[u8]>::is_ascii) && footer_text.is_none_or(<[u8]>::is_ascii);
    if let Some(plan) = inline_plan(ct.as_ref(), cte.as_deref(), body, text_ascii) {
        return plan;
    }
    if let Some(ct) = ct.as_ref().filter(|c| c.mtype == "multipart/mixed")
        && let Some(boundary) = ct.boundary()
        && let Some((first, close)) = mixed_delimiters(body, boundary)
    {
        let body = BodyPlan::Mixed { boundary: boundary.to_string(), first, close };
        // The parts are inside the top-level entity: an explicit 7bit would now be a lie.
        return Plan { body, content_type: None, eight_bit: !text_ascii && cte.as_deref() == Some("7bit") };
    }
    let mut moved = Vec::new();
    for f in p.fields.iter().filter(|f| f.is_content()) {
        f.write(&mut moved);
    }
    let avoid = [body, &moved, header_text.unwrap_or_default(), footer_text.unwrap_or_default()];
    Plan::body(BodyPlan::Wrap { boundary: fresh_boundary(fnv(&avoid), &avoid) })
}

/// Fields of a post that a list copy must not carry: other lists' `List-*` fields (RFC 2369, RFC 2919;
/// ours come in `added`), `Precedence`, and the delivery trace `Return-Path` and `Delivered-To`, which
/// the re-delivery writes anew (a stale `Delivered-To` would make the next hop see a loop).
fn is_removed(f: &Field<'_>) -> bool {
    f.name.get(..5).is_some_and(|p| p.eq_ignore_ascii_case(b"list-"))
        || f.is("Precedence")
        || f.is("Return-Path")
        || f.is("Delivered-To")
}

/// The copy of `original` distributed to the members.
///
/// 1. `List-*`, `Precedence`, `Return-Path` and `Delivered-To` fields are removed; everything else keeps
///    its order (X-Loop fields of other lists are kept: ours comes in `added`).
/// 2. Subject: a `[:password:]` token is removed, then the prefix applied ([`prefixed_subject`]); the new
///    Subject takes the old one's place, or is added at the end of the header section when there was none.
/// 3. Reply-To per [`ReplyTo`]; a new Reply-To replaces every old one, at the first one's place.
/// 4. With `rewrite_from`, `From: "NAME via LIST" <list address>` replaces the From in place, followed by
///    `X-Original-From: <original From>` (an X-Original-From of the post is dropped); Reply-To then
///    preserves a way to the poster: Poster → the poster's Reply-To, else the original From; List → the
///    list and the original From; Fixed → the fixed address.
/// 5. `added` fields come first, in order, like trace fields.
/// 6. Header and footer text (RFC 2046): plain text in an identity encoding gets them inline (and
///    `charset=utf-8` when UTF-8 text meets an ASCII body declared us-ascii); multipart/mixed gets them as
///    a first and a last text/plain part; anything else (multipart/alternative, multipart/signed whose
///    bytes must stay intact for the signature to verify (RFC 1847), encrypted or encoded content, HTML...)
///    is wrapped: the top level becomes multipart/mixed of [header text, the original entity with its
///    `Content-*` fields as they were, footer text].
/// 7. The body bytes are never changed otherwise (but for bare LF line ends, which become CRLF).
pub fn rewrite(original: &[u8], r: &Rewrite<'_>) -> Vec<u8> {
    let p = parse(original);
    let body = if p.lf_form { Cow::Owned(to_crlf(p.body)) } else { Cow::Borrowed(p.body) };
    let subject = new_subject(p.first("Subject").map(Field::value).as_deref(), r);
    let original_from = p.first("From").map(Field::value);
    let from = original_from.as_deref().filter(|_| r.rewrite_from).and_then(|f| rewritten_from(f, r));
    let reply_to = new_reply_to(r, original_from.as_deref().filter(|_| from.is_some()), p.first("Reply-To").is_some());
    let header_text = text_lines(r.header_text);
    let footer_text = text_lines(r.footer_text);
    let plan = plan(&p, &body, header_text.as_deref(), footer_text.as_deref());
    let has_mime_version = p.first("MIME-Version").is_some();
    let wrapped = match &plan.body {
        BodyPlan::Wrap { boundary } => Some(format!("multipart/mixed; boundary=\"{boundary}\"")),
        _ => None,
    };
    let new_content_type = wrapped.as_ref().or(plan.content_type.as_ref());

    let mut out = Vec::with_capacity(original.len() + 1024);
    for (name, value) in r.added {
        put(&mut out, name, value.as_bytes());
    }
    let (mut subject_seen, mut from_seen, mut reply_to_placed, mut ct_placed, mut cte_placed) =
        (false, false, false, false, false);
    for f in &p.fields {
        if is_removed(f) || (from.is_some() && f.is("X-Original-From")) {
            continue;
        }
        if f.is("Subject") && !subject_seen {
            subject_seen = true;
            if let Some(s) = &subject {
                put(&mut out, "Subject", s);
                continue;
            }
        } else if f.is("From") && !from_seen {
            from_seen = true;
            if let (Some(new), Some(old)) = (&from, &original_from) {
                put(&mut out, "From", new.as_bytes());
                put(&mut out, "X-Original-From", old);
                continue;
            }
        } else if f.is("Reply-To")
            && let Some(rt) = &reply_to
        {
            if !reply_to_placed {
                reply_to_placed = true;
                put(&mut out, "Reply-To", rt);
            }
            continue;
        } else if wrapped.is_some() && f.is_content() {
            // Moved to the inner entity; the new Content-Type takes the first one's place.
            if !ct_placed {
                ct_placed = true;
                if !has_mime_version {
                    put(&mut out, "MIME-Version", b"1.0");
                }
                put(&mut out, "Content-Type", new_content_type.map_or(&b""[..], |c| c.as_bytes()));
            }
            continue;
        } else if f.is("Content-Type")
            && !ct_placed
            && let Some(ct) = new_content_type
        {
            ct_placed = true;
            put(&mut out, "Content-Type", ct.as_bytes());
            continue;
        } else if f.is("Content-Transfer-Encoding") && plan.eight_bit && !cte_placed {
            cte_placed = true;
            put(&mut out, "Content-Transfer-Encoding", b"8bit");
            continue;
        }
        f.write(&mut out);
    }
    if !subject_seen && let Some(s) = &subject {
        put(&mut out, "Subject", s);
    }
    if !reply_to_placed && let Some(rt) = &reply_to {
        put(&mut out, "Reply-To", rt);
    }
    if !ct_placed && let Some(ct) = new_content_type {
        if !has_mime_version {
            put(&mut out, "MIME-Version", b"1.0");
        }
        put(&mut out, "Content-Type", ct.as_bytes());
    }
    if plan.eight_bit && !cte_placed {
        put(&mut out, "Content-Transfer-Encoding", b"8bit");
    }
    out.extend_from_slice(CRLF);

    match &plan.body {
        BodyPlan::Untouched => out.extend_from_slice(&body),
        BodyPlan::Inline => {
            out.extend_from_slice(header_text.as_deref().unwrap_or_default());
            out.extend_from_slice(&body);
            if let Some(t) = &footer_text {
                if !body.is_empty() && !body.ends_with(CRLF) {
                    out.extend_from_slice(CRLF);
                }
                out.extend_from_slice(t);
            }
        }
        BodyPlan::Mixed { boundary, first, close } => {
            out.extend_from_slice(&body[..*first]);
            if let Some(t) = &header_text {
                text_part(&mut out, boundary, t);
            }
            out.extend_from_slice(&body[*first..*close]);
            if let Some(t) = &footer_text {
                text_part(&mut out, boundary, t);
            }
            out.extend_from_slice(&body[*close..]);
        }
        BodyPlan::Wrap { boundary } => {
            if let Some(t) = &header_text {
                text_part(&mut out, boundary, t);
            }
            out.extend_from_slice(b"--");
            out.extend_from_slice(boundary.as_bytes());
            out.extend_from_slice(CRLF);
            for f in p.fields.iter().filter(|f| f.is_content()) {
                f.write(&mut out);
            }
            out.extend_from_slice(CRLF);
            out.extend_from_slice(&body);
            out.extend_from_slice(CRLF);
            if let Some(t) = &footer_text {
                text_part(&mut out, boundary, t);
            }
            out.extend_from_slice(b"--");
            out.extend_from_slice(boundary.as_bytes());
            out.extend_from_slice(b"--\r\n");
        }
    }
    out
}

/// The failed recipients named by a delivery status notification (RFC 3464), so that the list can
/// count bounces per member: for each per-recipient block of a message/delivery-status part with
/// `Action: failed`, the address of `Final-Recipient` (or `Original-Recipient` when Final is absent),
/// address type (`rfc822;`) removed, lower-cased, each once, in order.
///
/// The parts are found by walking the MIME structure (a multipart/report with report-type
/// delivery-status, RFC 6522, possibly nested in other multiparts; message/global-delivery-status of
/// RFC 6533 counts too). When that finds none, a `Content-Type: message/delivery-status` part is looked
/// for line by line anywhere in the message, for reports whose structure is broken. Empty for anything
/// else.
pub fn dsn_failed_recipients(msg: &[u8]) -> Vec<String> {
    let mut reports = Vec::new();
    status_parts(msg, 0, &mut reports);
    if reports.is_empty() {
        reports = scanned_status_parts(msg);
    }
    let mut failed = Vec::new();
    for report in reports {
        failed_in(report, &mut failed);
    }
    failed
}

/// Whether a media type is a delivery-status report body.
fn is_status_type(mtype: &str) -> bool {
    mtype == "message/delivery-status" || mtype == "message/global-delivery-status"
}

/// Collects the bodies of the delivery-status parts of `entity`, descending into multiparts.
fn status_parts<'m>(entity: &'m [u8], depth: usize, found: &mut Vec<&'m [u8]>) {
    let p = parse(entity);
    let Some(ct) = content_type(&p) else { return };
    if is_status_type(&ct.mtype) {
        found.push(p.body);
    } else if ct.mtype.starts_with("multipart/")
        && depth < MAX_DEPTH
        && let Some(boundary) = ct.boundary()
    {
        for part in body_parts(p.body, boundary) {
            status_parts(part, depth + 1, found);
        }
    }
}

/// Delivery-status part bodies found by looking for their Content-Type line: each runs from the blank
/// line after that field to the next line that looks like a delimiter (`--`), or to the end.
fn scanned_status_parts(msg: &[u8]) -> Vec<&[u8]> {
    let all: Vec<Line<'_>> = lines(msg).collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let text = all[i].text.to_ascii_lowercase();
        let is_status = text
            .strip_prefix(b"content-type:")
            .map(|v| lossy(v.trim_ascii()))
            .is_some_and(|v| is_status_type(v.split(';').next().unwrap_or_default().trim()));
        if !is_status {
            i += 1;
            continue;
        }
        let blank = (i + 1..all.len()).find(|&j| all[j].text.is_empty()).unwrap_or(all.len());
        let start = all.get(blank).map_or(msg.len(), |l| l.next);
        let end_line = (blank + 1..all.len()).find(|&k| all[k].text.starts_with(b"--")).unwrap_or(all.len());
        let end = all.get(end_line).map_or(msg.len(), |l| l.start);
        found.push(&msg[start..end.max(start)]);
        i = end_line;
    }
    found
}

/// Adds the failed recipients of one delivery-status body: groups of fields separated by blank lines,
/// the first per message, the others per recipient (RFC 3464 §2.1).
fn failed_in(report: &[u8], out: &mut Vec<String>) {
    let mut block: Vec<&[u8]> = Vec::new();
    for line in lines(report).map(|l| l.text).chain(std::iter::once(&b""[..])) {
        if !line.trim_ascii().is_empty() {
            block.push(line);
            continue;
        }
        let mut fields = Vec::new();
        for l in block.drain(..) {
            push_line(&mut fields, l);
        }
        let get = |name: &str| fields.iter().find(|f| f.is(name)).map(|f| lossy(&f.value()));
        // `Action: failed` may carry a comment (RFC 3464 §2.3.3 allows none, but some MTAs add one).
        let failed = get("Action").is_some_and(|a| {
            a.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("failed"))
        });
        let Some(rcpt) = get("Final-Recipient").or_else(|| get("Original-Recipient")).filter(|_| failed) else {
            continue;
        };
        // `address-type ; generic-address` (RFC 3464 §2.3.2); a few MTAs bracket the address.
        let addr = rcpt.split_once(';').map_or(rcpt.as_str(), |(_, a)| a).trim();
        let addr = addr.trim_start_matches('<').trim_end_matches('>').trim().to_lowercase();
        if !addr.is_empty() && !out.contains(&addr) {
            out.push(addr);
        }
    }
}

/// The VERP (variable envelope return path) sender for one member's copy, so that a bounce names the
/// member even when its DSN is unreadable: `bounces@d` + `ann@x.org` → `bounces+ann=x.org@d`.
pub fn verp_encode(bounce_address: &str, member: &str) -> String {
    let member = member.rsplit_once('@').map_or_else(|| member.to_string(), |(l, d)| format!("{l}={d}"));
    match bounce_address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}+{member}@{domain}"),
        None => format!("{bounce_address}+{member}"),
    }
}

/// The member named by a VERP local-part suffix, lower-cased: `ann=x.org` → `ann@x.org`. The last `=`
/// separates, since a domain has none but a local part may (`a=b=x.org` → `a=b@x.org`).
pub fn verp_decode(suffix: &str) -> Option<String> {
    let (local, domain) = suffix.rsplit_once('=')?;
    (!local.is_empty() && !domain.is_empty() && !domain.contains('@'))
        .then(|| format!("{local}@{domain}").to_lowercase())
}

/// A MIME digest of `posts` (RFC 2046 §5.1.5), for members who want one message a day rather than every
/// post. The top level is multipart/mixed of a text/plain table of contents (one line per post,
/// `N. Subject (Poster)`, the poster by display name or else address) and one multipart/digest part
/// holding each post as a message/rfc822 part: the default type in a digest, so each part has no header
/// fields, only the blank line after the delimiter that RFC 2046 §5.1.1 requires. Posts are copied whole
/// (bare LF line ends become CRLF). Without posts the multipart/digest part, which must have at least one
/// part, is left out.
///
/// Header fields: From and To are the list address, Subject (`dev digest, Vol 1, Issue 2`), Date
/// (formatted) and Message-ID (with its angle brackets) are written as given, then MIME-Version and
/// `added`.
pub fn digest(
    list_address: &str,
    subject: &str,
    date: &str,
    message_id: &str,
    added: &[(String, String)],
    posts: &[Vec<u8>],
) -> Vec<u8> {
    let posts: Vec<Cow<'_, [u8]>> = posts.iter().map(|p| normalized(p)).collect();
    let mut toc = String::new();
    for (n, post) in posts.iter().enumerate() {
        let subject = header(post, "Subject").filter(|s| !s.is_empty());
        toc.push_str(&(n + 1).to_string());
        toc.push_str(". ");
        toc.push_str(subject.as_deref().unwrap_or("(no subject)"));
        if let Some(poster) = header(post, "From").and_then(|f| display_name(&f).or_else(|| address_of(&f))) {
            toc.push_str(" (");
            toc.push_str(&poster);
            toc.push(')');
        }
        toc.push_str("\r\n");
    }
    let mut avoid: Vec<&[u8]> = posts.iter().map(|p| p.as_ref()).collect();
    avoid.push(toc.as_bytes());
    let seed = fnv(&avoid);
    let outer = fresh_boundary(seed, &avoid);
    avoid.push(outer.as_bytes());
    let inner = fresh_boundary(seed, &avoid);

    let mut out = Vec::with_capacity(posts.iter().map(|p| p.len() + 64).sum::<usize>() + toc.len() + 1024);
    put(&mut out, "From", list_address.as_bytes());
    put(&mut out, "To", list_address.as_bytes());
    put(&mut out, "Subject", subject.as_bytes());
    put(&mut out, "Date", date.as_bytes());
    put(&mut out, "Message-ID", message_id.as_bytes());
    put(&mut out, "MIME-Version", b"1.0");
    for (name, value) in added {
        put(&mut out, name, value.as_bytes());
    }
    put(&mut out, "Content-Type", format!("multipart/mixed; boundary=\"{outer}\"").as_bytes());
    out.extend_from_slice(CRLF);
    text_part(&mut out, &outer, if toc.is_empty() { b"No posts.\r\n" } else { toc.as_bytes() });
    if !posts.is_empty() {
        out.extend_from_slice(format!("--{outer}\r\n").as_bytes());
        put(&mut out, "Content-Type", format!("multipart/digest; boundary=\"{inner}\"").as_bytes());
        out.extend_from_slice(CRLF);
        for post in &posts {
            out.extend_from_slice(format!("--{inner}\r\n\r\n").as_bytes());
            out.extend_from_slice(post);
            out.extend_from_slice(CRLF);
        }
        out.extend_from_slice(format!("--{inner}--\r\n").as_bytes());
    }
    out.extend_from_slice(format!("--{outer}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `s` with LF line ends turned into CRLF.
    fn m(s: &str) -> Vec<u8> {
        to_crlf(s.as_bytes())
    }

    /// The names of the header fields of `msg`, in order.
    fn names(msg: &[u8]) -> Vec<String> {
        parse(msg).fields.iter().map(|f| lossy(f.name)).collect()
    }

    fn body(msg: &[u8]) -> &[u8] {
        parse(msg).body
    }

    fn all(msg: &[u8], name: &str) -> Vec<String> {
        parse(msg).fields.iter().filter(|f| f.is(name)).map(|f| lossy(&f.value())).collect()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        find(hay, needle).is_some()
    }

    fn rw<'a>() -> Rewrite<'a> {
        Rewrite {
            list_address: "dev@example.org",
            list_display: "dev",
            subject_prefix: None,
            password: None,
            reply_to: ReplyTo::Poster,
            header_text: None,
            footer_text: None,
            rewrite_from: false,
            added: &[],
        }
    }

    const PLAIN: &str = "From: Ann Lee <ann@x.org>\nTo: dev@example.org\nSubject: hi\n\
        Message-ID: <1@x.org>\n\nHello list.\n";

    // ---- readers ----

    #[test]
    fn header_unfolds_trims_and_ignores_case() {
        let msg = m("Subject: a long\n\tsubject\n  folded \nX-A: 1\n\nSubject: not me\n");
        assert_eq!(header(&msg, "subject").as_deref(), Some("a long\tsubject  folded"));
        assert_eq!(header(&msg, "x-a").as_deref(), Some("1"));
        assert_eq!(header(&msg, "To"), None);
        // Bare LF input, and the body is not the header section.
        let lf = b"From: a@b\nX-Empty:\n\nTo: c@d\n";
        assert_eq!(header(lf, "from").as_deref(), Some("a@b"));
        assert_eq!(header(lf, "X-Empty").as_deref(), Some(""));
        assert_eq!(header(lf, "To"), None);
    }

    #[test]
    fn header_first_of_several() {
        let msg = m("Received: one\nReceived: two\n\n");
        assert_eq!(header(&msg, "received").as_deref(), Some("one"));
    }

    #[test]
    fn prefixed_subject_adds_once() {
        assert_eq!(prefixed_subject("hi", "[dev]"), "[dev] hi");
        assert_eq!(prefixed_subject("Re: [dev] hi", "[dev]"), "Re: [dev] hi");
        assert_eq!(prefixed_subject("[DEV] hi", "[dev]"), "[DEV] hi");
        assert_eq!(prefixed_subject("", "[dev]"), "[dev]");
        assert_eq!(prefixed_subject("   ", "[dev]"), "[dev]");
        assert_eq!(prefixed_subject("=?utf-8?q?J=C3=B6rg?=", "[dev]"), "[dev] =?utf-8?q?J=C3=B6rg?=");
        assert_eq!(prefixed_subject("Grüße", "[dév]"), "[dév] Grüße");
    }

    #[test]
    fn subject_password_finds_and_removes_token() {
        assert_eq!(subject_password("[:s3cret:] hello"), Some(("s3cret".into(), "hello".into())));
        assert_eq!(subject_password("hello [:s3cret:]"), Some(("s3cret".into(), "hello".into())));
        assert_eq!(subject_password("a [:pw:] b"), Some(("pw".into(), "a b".into())));
        assert_eq!(subject_password("a[:pw:]b"), Some(("pw".into(), "ab".into())));
        assert_eq!(subject_password("[: :] [::] [:x"), None);
        assert_eq!(subject_password("no token"), None);
        assert_eq!(subject_password("[:[:pw:] x"), Some(("pw".into(), "[:x".into())));
    }

    #[test]
    fn address_of_usual_forms() {
        assert_eq!(address_of("\"Ann\" <ann@x.org>").as_deref(), Some("ann@x.org"));
        assert_eq!(address_of("Ann Lee <Ann@X.Org>").as_deref(), Some("ann@x.org"));
        assert_eq!(address_of("ann@x.org (Ann)").as_deref(), Some("ann@x.org"));
        assert_eq!(address_of("  ANN@x.org  ").as_deref(), Some("ann@x.org"));
        assert_eq!(address_of("<ann@x.org>").as_deref(), Some("ann@x.org"));
        assert_eq!(address_of("=?utf-8?q?J=C3=B6rg?= <jorg@x.org>").as_deref(), Some("jorg@x.org"));
        assert_eq!(address_of("\"a@evil <b@evil>\" <real@x.org>").as_deref(), Some("real@x.org"));
        assert_eq!(address_of("(<c@evil>) real@x.org").as_deref(), Some("real@x.org"));
        assert_eq!(address_of("<@relay.net:ann@x.org>").as_deref(), Some("ann@x.org"));
        assert_eq!(address_of("Ann <ann@x.org>, Bob <bob@y.org>").as_deref(), Some("ann@x.org"));
        assert_eq!(address_of("Ann"), None);
        assert_eq!(address_of("<>"), None);
        assert_eq!(address_of("undisclosed-recipients:;"), None);
    }

    #[test]
    fn display_name_usual_forms() {
        assert_eq!(display_name("\"Ann Lee\" <a@x>").as_deref(), Some("Ann Lee"));
        assert_eq!(display_name("Ann   Lee <a@x>").as_deref(), Some("Ann Lee"));
        assert_eq!(display_name("\"Lee, Ann \\\"A\\\"\" <a@x>").as_deref(), Some("Lee, Ann \"A\""));
        assert_eq!(display_name("a@x (Ann Lee)").as_deref(), Some("Ann Lee"));
        assert_eq!(display_name("=?utf-8?q?J=C3=B6rg?= <j@x>").as_deref(), Some("=?utf-8?q?J=C3=B6rg?="));
        assert_eq!(display_name("Ann (work) <a@x>").as_deref(), Some("Ann"));
        assert_eq!(display_name("a@x"), None);
        assert_eq!(display_name("<a@x>"), None);
        assert_eq!(display_name("\"\" <a@x>"), None);
    }

    // ---- VERP ----

    #[test]
    fn verp_round_trip() {
        let v = verp_encode("bounces@d", "ann@x.org");
        assert_eq!(v, "bounces+ann=x.org@d");
        let suffix = v.strip_prefix("bounces+").and_then(|s| s.strip_suffix("@d")).unwrap();
        assert_eq!(verp_decode(suffix).as_deref(), Some("ann@x.org"));

        let v = verp_encode("bounces@d", "a+b@x.org");
        assert_eq!(v, "bounces+a+b=x.org@d");
        assert_eq!(verp_decode("a+b=x.org").as_deref(), Some("a+b@x.org"));

        assert_eq!(verp_encode("dev-bounces@example.org", "a=b@x.org"), "dev-bounces+a=b=x.org@example.org");
        assert_eq!(verp_decode("a=b=x.org").as_deref(), Some("a=b@x.org"));
        assert_eq!(verp_decode("Ann=X.Org").as_deref(), Some("ann@x.org"));
        assert_eq!(verp_decode("ann"), None);
        assert_eq!(verp_decode("=x.org"), None);
        assert_eq!(verp_decode("ann="), None);
    }

    // ---- rewrite: header section ----

    #[test]
    fn rewrite_removes_list_fields_and_trace_keeps_the_rest_in_order() {
        let msg = m("Return-Path: <ann@x.org>\nDelivered-To: dev@example.org\nReceived: from a by b\n\
            From: Ann <ann@x.org>\nTo: dev@example.org\nList-Id: Other <other.x.org>\n\
            List-Unsubscribe: <mailto:u@x.org>,\n <https://x.org/u>\nlist-help: <mailto:h@x.org>\n\
            List-Unsubscribe-Post: List-Unsubscribe=One-Click\nList-Post: <mailto:o@x.org>\n\
            List-Owner: <mailto:w@x.org>\nList-Archive: <https://a>\nList-Subscribe: <mailto:s@x>\n\
            Precedence: list\nX-Loop: other@x.org\nSubject: hi\nDKIM-Signature: v=1;\n\tb=abc\n\n\
            List-Id: stays in the body\n");
        let added = [
            ("List-Id".to_string(), "dev <dev.example.org>".to_string()),
            ("List-Post".to_string(), "<mailto:dev@example.org>".to_string()),
            ("X-Loop".to_string(), "dev@example.org".to_string()),
        ];
        let out = rewrite(&msg, &Rewrite { added: &added, ..rw() });
        assert_eq!(
            names(&out),
            ["List-Id", "List-Post", "X-Loop", "Received", "From", "To", "X-Loop", "Subject", "DKIM-Signature"]
        );
        assert_eq!(all(&out, "List-Id"), ["dev <dev.example.org>"]);
        assert_eq!(all(&out, "X-Loop"), ["dev@example.org", "other@x.org"]);
        assert!(contains(&out, b"DKIM-Signature: v=1;\r\n\tb=abc\r\n"), "folding kept");
        assert_eq!(body(&out), b"List-Id: stays in the body\r\n");
        assert!(out.starts_with(b"List-Id: dev <dev.example.org>\r\nList-Post: <mailto:dev@example.org>\r\n"));
    }

    #[test]
    fn rewrite_without_changes_is_identity() {
        let msg = m(PLAIN);
        assert_eq!(rewrite(&msg, &rw()), msg);
    }

    #[test]
    fn rewrite_converts_bare_lf_to_crlf() {
        let out = rewrite(PLAIN.as_bytes(), &rw());
        assert_eq!(out, m(PLAIN));
    }

    #[test]
    fn added_values_cannot_inject_fields() {
        let added = [("X-Loop".to_string(), "dev@example.org\r\nBcc: evil@x".to_string())];
        let out = rewrite(&m(PLAIN), &Rewrite { added: &added, ..rw() });
        assert_eq!(header(&out, "Bcc"), None);
        assert_eq!(header(&out, "X-Loop").as_deref(), Some("dev@example.org  Bcc: evil@x"));
    }

    // ---- rewrite: Subject ----

    #[test]
    fn subject_prefix_added_in_place() {
        let out = rewrite(&m(PLAIN), &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert_eq!(names(&out), ["From", "To", "Subject", "Message-ID"]);
        assert_eq!(header(&out, "Subject").as_deref(), Some("[dev] hi"));
    }

    #[test]
    fn subject_prefix_not_doubled() {
        let msg = m("From: a@x.org\nSubject: Re: [dev] hi\n\nx\n");
        let out = rewrite(&msg, &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert_eq!(out, msg, "nothing to change: the field is copied as it was");
        let msg = m("From: a@x.org\nSubject: Re: [DEV]\n hi\n\nx\n");
        let out = rewrite(&msg, &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert_eq!(out, msg);
    }

    #[test]
    fn subject_missing_or_empty_gets_the_prefix() {
        let msg = m("From: a@x.org\n\nx\n");
        let out = rewrite(&msg, &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert_eq!(names(&out), ["From", "Subject"]);
        assert!(contains(&out, b"\r\nSubject: [dev]\r\n\r\nx\r\n"));
        let msg = m("Subject:\nFrom: a@x.org\n\nx\n");
        let out = rewrite(&msg, &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert!(out.starts_with(b"Subject: [dev]\r\nFrom: a@x.org\r\n"));
    }

    #[test]
    fn subject_encoded_words_and_8bit_are_opaque() {
        let msg = m("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\nx\n");
        let out = rewrite(&msg, &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert_eq!(header(&out, "Subject").as_deref(), Some("[dev] =?utf-8?q?Gr=C3=BC=C3=9Fe?="));
        let msg = b"Subject: Gr\xfc\xdfe\r\n\r\nx\r\n";
        let out = rewrite(msg, &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert!(out.starts_with(b"Subject: [dev] Gr\xfc\xdfe\r\n"));
        let msg = b"Subject: [DEV] Gr\xfc\xdfe\r\n\r\nx\r\n";
        assert_eq!(rewrite(msg, &Rewrite { subject_prefix: Some("[dev]"), ..rw() }), msg);
        let msg = b"Subject: Gr\xfc\xdfe\r\n\r\nx\r\n";
        assert_eq!(rewrite(msg, &Rewrite { subject_prefix: Some(""), ..rw() }), msg, "an empty prefix is none");
    }

    #[test]
    fn subject_password_stripped_then_prefixed() {
        let msg = m("Subject: [:s3cret:] release 1.0\nFrom: a@x.org\n\nx\n");
        let out = rewrite(&msg, &Rewrite { password: Some("s3cret"), subject_prefix: Some("[dev]"), ..rw() });
        assert_eq!(header(&out, "Subject").as_deref(), Some("[dev] release 1.0"));
        let out = rewrite(&msg, &Rewrite { password: Some("s3cret"), ..rw() });
        assert_eq!(header(&out, "Subject").as_deref(), Some("release 1.0"));
        // Another token is not the password: left alone.
        let out = rewrite(&msg, &Rewrite { password: Some("other"), ..rw() });
        assert_eq!(out, msg);
        // Only the first occurrence goes.
        let msg = m("Subject: a [:pw:] b [:pw:]\n\nx\n");
        let out = rewrite(&msg, &Rewrite { password: Some("pw"), ..rw() });
        assert_eq!(header(&out, "Subject").as_deref(), Some("a b [:pw:]"));
    }

    // ---- rewrite: Reply-To ----

    #[test]
    fn reply_to_list_replaces_all() {
        let msg = m("From: a@x.org\nReply-To: me@x.org\nTo: dev@example.org\nReply-To: other@x.org\n\nx\n");
        let out = rewrite(&msg, &Rewrite { reply_to: ReplyTo::List, ..rw() });
        assert_eq!(names(&out), ["From", "Reply-To", "To"]);
        assert_eq!(all(&out, "Reply-To"), ["<dev@example.org>"]);
        let out = rewrite(&m(PLAIN), &Rewrite { reply_to: ReplyTo::List, ..rw() });
        assert_eq!(names(&out), ["From", "To", "Subject", "Message-ID", "Reply-To"]);
        assert_eq!(all(&out, "Reply-To"), ["<dev@example.org>"]);
    }

    #[test]
    fn reply_to_fixed_and_poster() {
        let msg = m("From: a@x.org\nReply-To: me@x.org\n\nx\n");
        let out = rewrite(&msg, &Rewrite { reply_to: ReplyTo::Fixed("help@example.org"), ..rw() });
        assert_eq!(all(&out, "Reply-To"), ["<help@example.org>"]);
        let out = rewrite(&m(PLAIN), &Rewrite { reply_to: ReplyTo::Fixed("Help <help@example.org>"), ..rw() });
        assert_eq!(all(&out, "Reply-To"), ["Help <help@example.org>"]);
        assert_eq!(rewrite(&msg, &Rewrite { reply_to: ReplyTo::Poster, ..rw() }), msg);
        let out = rewrite(&m(PLAIN), &Rewrite { reply_to: ReplyTo::Poster, ..rw() });
        assert_eq!(header(&out, "Reply-To"), None);
    }

    // ---- rewrite: From (DMARC) ----

    #[test]
    fn from_rewrite_with_display_name() {
        let msg = m("From: \"Ann Lee\" <ann@x.org>\nSubject: hi\n\nx\n");
        let out = rewrite(&msg, &Rewrite { rewrite_from: true, ..rw() });
        assert_eq!(names(&out), ["From", "X-Original-From", "Subject", "Reply-To"]);
        assert_eq!(header(&out, "From").as_deref(), Some("\"Ann Lee via dev\" <dev@example.org>"));
        assert_eq!(header(&out, "X-Original-From").as_deref(), Some("\"Ann Lee\" <ann@x.org>"));
        // Poster policy and no Reply-To of the poster's: replies reach the poster.
        assert_eq!(header(&out, "Reply-To").as_deref(), Some("\"Ann Lee\" <ann@x.org>"));
        assert_eq!(address_of(&header(&out, "From").unwrap()).as_deref(), Some("dev@example.org"));
    }

    #[test]
    fn from_rewrite_without_display_name() {
        let msg = m("From: ann@x.org\n\nx\n");
        let out = rewrite(&msg, &Rewrite { rewrite_from: true, ..rw() });
        assert_eq!(header(&out, "From").as_deref(), Some("\"ann@x.org via dev\" <dev@example.org>"));
        assert_eq!(header(&out, "X-Original-From").as_deref(), Some("ann@x.org"));
        let msg = m("From: <Ann@X.org>\n\nx\n");
        let out = rewrite(&msg, &Rewrite { rewrite_from: true, ..rw() });
        assert_eq!(header(&out, "From").as_deref(), Some("\"ann@x.org via dev\" <dev@example.org>"));
    }

    #[test]
    fn from_rewrite_quotes_the_name() {
        let msg = m("From: \"Ann \\\"the\\\" Lee\\\\\" <ann@x.org>\n\nx\n");
        let out = rewrite(&msg, &Rewrite { rewrite_from: true, ..rw() });
        let from = header(&out, "From").unwrap();
        assert_eq!(from, r#""Ann \"the\" Lee\\ via dev" <dev@example.org>"#);
        assert_eq!(display_name(&from).as_deref(), Some("Ann \"the\" Lee\\ via dev"));
        assert_eq!(address_of(&from).as_deref(), Some("dev@example.org"));
    }

    #[test]
    fn from_rewrite_keeps_encoded_words_outside_quotes() {
        let msg = m("From: =?utf-8?q?J=C3=B6rg?= <j@x.org>\n\nx\n");
        let out = rewrite(&msg, &Rewrite { rewrite_from: true, ..rw() });
        assert_eq!(header(&out, "From").as_deref(), Some("=?utf-8?q?J=C3=B6rg?= \"via dev\" <dev@example.org>"));
    }

    #[test]
    fn from_rewrite_reply_to_modes() {
        let msg = m("From: Ann <ann@x.org>\nReply-To: home@x.org\n\nx\n");
        let poster = rewrite(&msg, &Rewrite { rewrite_from: true, reply_to: ReplyTo::Poster, ..rw() });
        assert_eq!(all(&poster, "Reply-To"), ["home@x.org"]);
        let list = rewrite(&msg, &Rewrite { rewrite_from: true, reply_to: ReplyTo::List, ..rw() });
        assert_eq!(all(&list, "Reply-To"), ["<dev@example.org>, Ann <ann@x.org>"]);
        let fixed = rewrite(&msg, &Rewrite { rewrite_from: true, reply_to: ReplyTo::Fixed("h@example.org"), ..rw() });
        assert_eq!(all(&fixed, "Reply-To"), ["<h@example.org>"]);
        let msg = m("From: Ann <ann@x.org>\n\nx\n");
        let list = rewrite(&msg, &Rewrite { rewrite_from: true, reply_to: ReplyTo::List, ..rw() });
        assert_eq!(all(&list, "Reply-To"), ["<dev@example.org>, Ann <ann@x.org>"]);
    }

    #[test]
    fn from_rewrite_replaces_a_forged_x_original_from_and_needs_a_from() {
        let msg = m("X-Original-From: forged@x.org\nFrom: Ann <ann@x.org>\n\nx\n");
        let out = rewrite(&msg, &Rewrite { rewrite_from: true, ..rw() });
        assert_eq!(all(&out, "X-Original-From"), ["Ann <ann@x.org>"]);
        let msg = m("Subject: no from\n\nx\n");
        assert_eq!(rewrite(&msg, &Rewrite { rewrite_from: true, ..rw() }), msg);
    }

    // ---- rewrite: header and footer text ----

    #[test]
    fn no_text_leaves_the_body_alone() {
        let msg = m("Content-Type: multipart/signed; boundary=b\n\n--b\nx\n--b--\n");
        let out = rewrite(&msg, &Rewrite { header_text: Some(""), footer_text: None, ..rw() });
        assert_eq!(out, msg);
    }

    #[test]
    fn footer_inline_on_plain_text() {
        let out = rewrite(&m(PLAIN), &Rewrite { footer_text: Some("-- \ndev mailing list\n"), ..rw() });
        assert_eq!(body(&out), b"Hello list.\r\n-- \r\ndev mailing list\r\n");
        assert_eq!(names(&out), ["From", "To", "Subject", "Message-ID"], "ASCII text: no MIME fields needed");
        let msg = m("Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\nno newline");
        let out = rewrite(&msg, &Rewrite { header_text: Some("top"), footer_text: Some("bottom"), ..rw() });
        assert_eq!(body(&out), b"top\r\nno newline\r\nbottom\r\n");
        assert_eq!(header(&out, "Content-Type").as_deref(), Some("text/plain; charset=us-ascii"));
        assert_eq!(header(&out, "Content-Transfer-Encoding").as_deref(), Some("7bit"));
    }

    #[test]
    fn header_inline_and_crlf_text() {
        let msg = m("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGrüße\n");
        let out = rewrite(&msg, &Rewrite { header_text: Some("Posted to dev\r\n\r\n"), ..rw() });
        assert_eq!(body(&out), "Posted to dev\r\n\r\nGrüße\r\n".as_bytes());
    }

    #[test]
    fn utf8_footer_on_ascii_body_declares_utf8() {
        let msg = m("Content-Type: text/plain; format=flowed; charset=\"us-ascii\"\n\nhello\n");
        let out = rewrite(&msg, &Rewrite { footer_text: Some("Grüße, dev"), ..rw() });
        assert_eq!(header(&out, "Content-Type").as_deref(), Some("text/plain; format=flowed; charset=utf-8"));
        assert_eq!(header(&out, "Content-Transfer-Encoding").as_deref(), Some("8bit"));
        assert_eq!(body(&out), "hello\r\nGrüße, dev\r\n".as_bytes());
        // A message without MIME fields gets them.
        let out = rewrite(&m(PLAIN), &Rewrite { footer_text: Some("Grüße"), ..rw() });
        assert_eq!(
            names(&out),
            ["From", "To", "Subject", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
        );
        assert_eq!(header(&out, "Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
        // A 7bit field becomes 8bit in place.
        let msg = m("Content-Transfer-Encoding: 7bit\nContent-Type: text/plain; charset=utf-8\nX: y\n\nhi\n");
        let out = rewrite(&msg, &Rewrite { footer_text: Some("é"), ..rw() });
        assert!(out.starts_with(b"Content-Transfer-Encoding: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"));
        assert_eq!(names(&out), ["Content-Transfer-Encoding", "Content-Type", "X"]);
    }

    #[test]
    fn utf8_footer_on_other_charsets_wraps() {
        let msg = b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe\r\n";
        let out = rewrite(msg, &Rewrite { footer_text: Some("Grüße"), ..rw() });
        assert!(header(&out, "Content-Type").unwrap().starts_with("multipart/mixed; boundary="));
        assert!(contains(&out, b"\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe\r\n\r\n--"));
        // An 8-bit body declared (or defaulting to) us-ascii cannot be relabelled either.
        let msg = b"Subject: x\r\n\r\nGr\xfc\xdfe\r\n";
        let out = rewrite(msg, &Rewrite { footer_text: Some("Grüße"), ..rw() });
        let ct = parse_content_type(&header(&out, "Content-Type").unwrap());
        let parts = body_parts(body(&out), ct.boundary().unwrap());
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], b"\r\nGr\xfc\xdfe\r\n", "no MIME fields to move: an empty part header");
        // ASCII text goes inline whatever the (ASCII-compatible) charset.
        let msg = b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe\r\n";
        let out = rewrite(msg, &Rewrite { footer_text: Some("bye"), ..rw() });
        assert_eq!(body(&out), b"Gr\xfc\xdfe\r\nbye\r\n");
    }

    const MIXED: &str = "From: a@x.org\nContent-Type: multipart/mixed;\n boundary=\"outer b\"\n\n\
        This is a preamble.\n--outer b\nContent-Type: text/plain\n\nbody text\n--outer b\n\
        Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0=\n--outer b--\nepilogue\n";

    #[test]
    fn footer_and_header_as_parts_of_multipart_mixed() {
        let msg = m(MIXED);
        let out = rewrite(&msg, &Rewrite { header_text: Some("HEAD"), footer_text: Some("FOOT\n"), ..rw() });
        assert_eq!(names(&out), ["From", "Content-Type"]);
        let b = body(&out);
        assert!(b.starts_with(b"This is a preamble.\r\n--outer b\r\n"));
        assert!(b.ends_with(b"--outer b--\r\nepilogue\r\n"));
        let parts = body_parts(b, "outer b");
        assert_eq!(parts.len(), 4);
        let head = parse(parts[0]);
        assert_eq!(header(parts[0], "Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(header(parts[0], "Content-Transfer-Encoding").as_deref(), Some("7bit"));
        assert_eq!(head.body, b"HEAD");
        assert_eq!(parts[1], b"Content-Type: text/plain\r\n\r\nbody text");
        assert_eq!(parts[2], b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=");
        assert_eq!(parse(parts[3]).body, b"FOOT");
        // The original parts are byte for byte where they were.
        let original_inner = &body(&msg)[find(body(&msg), b"--outer b").unwrap()..];
        assert!(contains(b, &original_inner[..original_inner.len() - b"--outer b--\r\nepilogue\r\n".len()]));
    }

    #[test]
    fn footer_part_with_unquoted_boundary_and_utf8() {
        let msg = m("Content-Type: multipart/mixed; boundary=xyz\nContent-Transfer-Encoding: 7bit\n\n\
            --xyz\n\none\n--xyz--\n");
        let out = rewrite(&msg, &Rewrite { footer_text: Some("Grüße"), ..rw() });
        assert_eq!(header(&out, "Content-Transfer-Encoding").as_deref(), Some("8bit"));
        let parts = body_parts(body(&out), "xyz");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], b"\r\none");
        assert_eq!(header(parts[1], "Content-Transfer-Encoding").as_deref(), Some("8bit"));
        assert_eq!(parse(parts[1]).body, "Grüße".as_bytes());
        assert!(body(&out).starts_with(b"--xyz\r\n\r\none\r\n--xyz\r\nContent-Type"), "no preamble, none added");
    }

    #[test]
    fn multipart_mixed_without_closing_delimiter_is_wrapped() {
        let msg = m("Content-Type: multipart/mixed; boundary=xyz\n\n--xyz\n\ntruncated\n");
        let out = rewrite(&msg, &Rewrite { footer_text: Some("F"), ..rw() });
        let ct = parse_content_type(&header(&out, "Content-Type").unwrap());
        assert!(ct.boundary().unwrap().starts_with("=_ringmx_"));
        let parts = body_parts(body(&out), ct.boundary().unwrap());
        assert_eq!(parts[0], b"Content-Type: multipart/mixed; boundary=xyz\r\n\r\n--xyz\r\n\r\ntruncated\r\n");
    }

    /// Rewrites `msg` with both texts and checks the wrapped structure; returns the inner entity.
    fn wrapped(msg: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let out = rewrite(msg, &Rewrite { header_text: Some("HEAD"), footer_text: Some("FOOT"), ..rw() });
        assert_eq!(all(&out, "MIME-Version"), ["1.0"]);
        let ct = parse_content_type(&header(&out, "Content-Type").unwrap());
        assert_eq!(ct.mtype, "multipart/mixed");
        let boundary = ct.boundary().unwrap();
        assert!(boundary.starts_with("=_ringmx_"));
        assert!(find(msg, boundary.as_bytes()).is_none());
        assert!(contains(&out, format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n").as_bytes()));
        assert!(!names(&out).iter().any(|n| n.to_ascii_lowercase().starts_with("content-") && n != "Content-Type"));
        let parts = body_parts(body(&out), boundary);
        assert_eq!(parts.len(), 3);
        assert_eq!(parse(parts[0]).body, b"HEAD");
        assert_eq!(header(parts[0], "Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(parse(parts[2]).body, b"FOOT");
        assert!(body(&out).ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()));
        let inner = parts[1].to_vec();
        (out, inner)
    }

    #[test]
    fn multipart_alternative_is_wrapped() {
        let msg = m("From: a@x.org\nMIME-Version: 1.0\nContent-Type: multipart/alternative;\n\tboundary=\"alt\"\n\
            Subject: hi\n\n--alt\nContent-Type: text/plain\n\nhi\n--alt\nContent-Type: text/html\n\n<p>hi</p>\n\
            --alt--\n");
        let (out, inner) = wrapped(&msg);
        assert_eq!(names(&out), ["From", "MIME-Version", "Content-Type", "Subject"]);
        let expected =
            [&b"Content-Type: multipart/alternative;\r\n\tboundary=\"alt\"\r\n\r\n"[..], body(&msg)].concat();
        assert_eq!(inner, expected);
    }

    #[test]
    fn multipart_signed_is_wrapped_byte_identical() {
        let signed_body = "--sig\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSigned text.\r\n--sig\r\n\
            Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n\
            iQEzBAEBCAAdFiEE\r\n-----END PGP SIGNATURE-----\r\n\r\n--sig--\r\n";
        let msg = format!(
            "From: Ann <ann@x.org>\r\nSubject: signed\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; \
            boundary=\"sig\"\r\nContent-Description: OpenPGP signed\r\n\r\n{signed_body}"
        );
        let (out, inner) = wrapped(msg.as_bytes());
        assert!(contains(&out, signed_body.as_bytes()));
        let entity = parse(&inner);
        assert_eq!(entity.body, signed_body.as_bytes());
        assert_eq!(names(&inner), ["Content-Type", "Content-Description"]);
        assert!(inner.starts_with(
            b"Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; \
            boundary=\"sig\"\r\nContent-Description: OpenPGP signed\r\n\r\n"
        ));
        let ct = content_type(&entity).unwrap();
        assert_eq!(ct.param("protocol"), Some("application/pgp-signature"));
        assert_eq!(ct.param("micalg"), Some("pgp-sha256"));
        // The outer header lost the moved fields and kept the rest in place.
        assert_eq!(names(&out), ["From", "Subject", "MIME-Version", "Content-Type"]);
    }

    #[test]
    fn base64_text_and_html_are_wrapped() {
        let msg = m("From: a@x.org\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\
            Content-Disposition: inline\nContent-Language: de\nContent-ID: <c1@x>\n\nR3LDvMOfZQ==\n");
        let (out, inner) = wrapped(&msg);
        assert_eq!(names(&out), ["From", "MIME-Version", "Content-Type"]);
        assert_eq!(
            names(&inner),
            ["Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-Language", "Content-ID"]
        );
        assert_eq!(parse(&inner).body, b"R3LDvMOfZQ==\r\n");
        let msg = m("Content-Type: text/html\n\n<p>hi</p>\n");
        let (_, inner) = wrapped(&msg);
        assert_eq!(inner, b"Content-Type: text/html\r\n\r\n<p>hi</p>\r\n");
        let msg = m("Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\nGr=C3=BC=C3=9Fe\n");
        let (_, inner) = wrapped(&msg);
        assert!(inner.ends_with(b"\r\n\r\nGr=C3=BC=C3=9Fe\r\n"));
    }

    #[test]
    fn wrap_with_only_a_footer() {
        let msg = m("Content-Type: application/pkcs7-mime; smime-type=enveloped-data\n\
            Content-Transfer-Encoding: base64\n\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\n");
        let out = rewrite(&msg, &Rewrite { footer_text: Some("FOOT"), ..rw() });
        let ct = parse_content_type(&header(&out, "Content-Type").unwrap());
        let parts = body_parts(body(&out), ct.boundary().unwrap());
        assert_eq!(parts.len(), 2);
        assert_eq!(parse(parts[0]).body, b"MIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n");
        assert_eq!(parse(parts[1]).body, b"FOOT");
        assert!(body(&out).starts_with(b"--=_ringmx_"));
    }

    #[test]
    fn fresh_boundary_avoids_the_content() {
        let first = fresh_boundary(7, &[]);
        assert!(first.starts_with("=_ringmx_") && first.len() == "=_ringmx_".len() + 16);
        let body = format!("text\r\n--{first}\r\n");
        let second = fresh_boundary(7, &[body.as_bytes()]);
        assert_ne!(first, second);
        assert!(!body.contains(&second));
        assert_eq!(fresh_boundary(7, &[b"unrelated"]), first, "deterministic");
    }

    #[test]
    fn rewrite_everything_at_once() {
        let msg = m("Return-Path: <ann@x.org>\nFrom: \"Ann Lee\" <ann@x.org>\nTo: dev@example.org\n\
            Subject: [:pw:] news\nList-Id: <old>\nContent-Type: multipart/alternative; boundary=a\n\n\
            --a\nContent-Type: text/plain\n\nhi\n--a--\n");
        let added = [("List-Id".to_string(), "<dev.example.org>".to_string())];
        let r = Rewrite {
            subject_prefix: Some("[dev]"),
            password: Some("pw"),
            reply_to: ReplyTo::List,
            footer_text: Some("bye"),
            rewrite_from: true,
            added: &added,
            ..rw()
        };
        let out = rewrite(&msg, &r);
        assert_eq!(
            names(&out),
            ["List-Id", "From", "X-Original-From", "To", "Subject", "MIME-Version", "Content-Type", "Reply-To"]
        );
        assert_eq!(header(&out, "Subject").as_deref(), Some("[dev] news"));
        assert_eq!(header(&out, "Reply-To").as_deref(), Some("<dev@example.org>, \"Ann Lee\" <ann@x.org>"));
        assert!(contains(&out, b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n"));
    }

    // ---- digest ----

    #[test]
    fn digest_structure() {
        let posts = vec![
            m("From: \"Ann Lee\" <ann@x.org>\nSubject: first\nMessage-ID: <1@x>\n\nOne.\n"),
            m("From: bob@y.org\nSubject: =?utf-8?q?zw=C3=B6lf?=\n\nTwo.\n--not-a-boundary\n"),
            b"From: carol@z.org\n\nThree, bare LF.\n".to_vec(),
        ];
        let added = [("List-Id".to_string(), "<dev.example.org>".to_string())];
        let d = digest(
            "dev@example.org",
            "dev digest, Vol 1, Issue 2",
            "Tue, 14 Nov 2023 22:13:20 +0000",
            "<digest.1.2@example.org>",
            &added,
            &posts,
        );
        assert_eq!(
            names(&d),
            ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "List-Id", "Content-Type"]
        );
        assert_eq!(header(&d, "From").as_deref(), Some("dev@example.org"));
        assert_eq!(header(&d, "To").as_deref(), Some("dev@example.org"));
        assert_eq!(header(&d, "Subject").as_deref(), Some("dev digest, Vol 1, Issue 2"));
        assert_eq!(header(&d, "Message-ID").as_deref(), Some("<digest.1.2@example.org>"));
        let ct = parse_content_type(&header(&d, "Content-Type").unwrap());
        assert_eq!(ct.mtype, "multipart/mixed");
        let outer = ct.boundary().unwrap();
        let parts = body_parts(body(&d), outer);
        assert_eq!(parts.len(), 2);
        assert_eq!(header(parts[0], "Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
        let toc = lossy(parse(parts[0]).body);
        let lines: Vec<&str> = toc.lines().collect();
        assert_eq!(
            lines,
            ["1. first (Ann Lee)", "2. =?utf-8?q?zw=C3=B6lf?= (bob@y.org)", "3. (no subject) (carol@z.org)"]
        );
        let inner_ct = content_type(&parse(parts[1])).unwrap();
        assert_eq!(inner_ct.mtype, "multipart/digest");
        let inner = inner_ct.boundary().unwrap();
        assert_ne!(inner, outer);
        assert!(!inner.starts_with(outer) && !outer.starts_with(inner));
        let entries = body_parts(parse(parts[1]).body, inner);
        assert_eq!(entries.len(), 3);
        for (entry, post) in entries.iter().zip(&posts) {
            let e = parse(entry);
            assert!(e.fields.is_empty(), "message/rfc822 by default: no part header");
            assert!(entry.starts_with(b"\r\n"), "a blank line after the delimiter");
            assert_eq!(e.body, &normalized(post)[..]);
        }
        assert!(d.ends_with(format!("--{inner}--\r\n--{outer}--\r\n").as_bytes()));
        for post in &posts {
            assert!(find(post, outer.as_bytes()).is_none() && find(post, inner.as_bytes()).is_none());
        }
    }

    #[test]
    fn digest_without_posts() {
        let d = digest("dev@example.org", "dev digest", "date", "<m@x>", &[], &[]);
        let ct = parse_content_type(&header(&d, "Content-Type").unwrap());
        let parts = body_parts(body(&d), ct.boundary().unwrap());
        assert_eq!(parts.len(), 1);
        assert_eq!(parse(parts[0]).body, b"No posts.");
    }

    // ---- DSN ----

    const RFC3464: &str = "From: Mail Delivery Subsystem <MAILER-DAEMON@cs.utk.edu>\n\
        To: dev-bounces@example.org\nSubject: Returned mail: Cannot send message for 5 days\nMIME-Version: 1.0\n\
        Content-Type: multipart/report; report-type=delivery-status;\n\
        \x20   boundary=\"RAA14128.773615765/CS.UTK.EDU\"\n\n\
        --RAA14128.773615765/CS.UTK.EDU\n\n\
        The original message was received at Sat, 2 Jul 1994 17:10:28 -0400\n\
        ----- The following addresses had delivery problems -----\n\
        <louisl@larry.slip.umd.edu>  (unrecoverable error)\n\n\
        --RAA14128.773615765/CS.UTK.EDU\ncontent-type: message/delivery-status\n\n\
        Reporting-MTA: dns; cs.utk.edu\n\n\
        Original-Recipient: rfc822;louisl@larry.slip.umd.edu\nFinal-Recipient: rfc822;LOUISL@LARRY.SLIP.UMD.EDU\n\
        Action: failed\nStatus: 4.0.0\nDiagnostic-Code: smtp; 426 connection timed out\n\
        Last-Attempt-Date: Thu, 7 Jul 1994 17:15:49 -0400\n\n\
        Final-Recipient: rfc822; ok@example.com\nAction: delivered\nStatus: 2.0.0\n\n\
        --RAA14128.773615765/CS.UTK.EDU\ncontent-type: message/rfc822\n\n\
        From: dev@example.org\nSubject: hi\n\nAction: failed\nFinal-Recipient: rfc822; not@me.org\n\
        --RAA14128.773615765/CS.UTK.EDU--\n";

    #[test]
    fn dsn_rfc3464_one_failed_one_delivered() {
        assert_eq!(dsn_failed_recipients(&m(RFC3464)), ["louisl@larry.slip.umd.edu"]);
        assert_eq!(dsn_failed_recipients(RFC3464.as_bytes()), ["louisl@larry.slip.umd.edu"], "bare LF");
    }

    #[test]
    fn dsn_postfix_bounce() {
        let msg = m("Return-Path: <>\nDelivered-To: dev-bounces+ann=x.org@example.org\n\
            From: MAILER-DAEMON@mail.example.org (Mail Delivery System)\n\
            Subject: Undelivered Mail Returned to Sender\nTo: dev-bounces+ann=x.org@example.org\n\
            Auto-Submitted: auto-replied\nMIME-Version: 1.0\n\
            Content-Type: multipart/report; report-type=delivery-status;\n\
            \tboundary=\"4B2A41C0B3E.1700000000/mail.example.org\"\nContent-Transfer-Encoding: 8bit\n\
            Message-Id: <20231114221320.4B2A41C0B3E@mail.example.org>\n\n\
            This is a MIME-encapsulated message.\n\n\
            --4B2A41C0B3E.1700000000/mail.example.org\nContent-Description: Notification\n\
            Content-Type: text/plain; charset=us-ascii\n\n\
            This is the mail system at host mail.example.org.\n\n\
            <ann@x.org>: host mx.x.org[192.0.2.1] said: 550 5.1.1 <ann@x.org>: Recipient\n\
            \x20   address rejected: User unknown (in reply to RCPT TO command)\n\n\
            --4B2A41C0B3E.1700000000/mail.example.org\nContent-Description: Delivery report\n\
            Content-Type: message/delivery-status\n\n\
            Reporting-MTA: dns; mail.example.org\nX-Postfix-Queue-ID: 4B2A41C0B3E\n\
            X-Postfix-Sender: rfc822; dev-bounces+ann=x.org@example.org\n\
            Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000 (UTC)\n\n\
            Final-Recipient: rfc822; Ann@X.org\nOriginal-Recipient: rfc822;ann@x.org\nAction: failed\n\
            Status: 5.1.1\nRemote-MTA: dns; mx.x.org\n\
            Diagnostic-Code: smtp; 550 5.1.1 <ann@x.org>: Recipient address rejected: User\n    unknown\n\n\
            --4B2A41C0B3E.1700000000/mail.example.org\nContent-Description: Undelivered Message Headers\n\
            Content-Type: text/rfc822-headers\n\n\
            Return-Path: <dev-bounces+ann=x.org@example.org>\nFrom: dev@example.org\n\
            --4B2A41C0B3E.1700000000/mail.example.org--\n");
        assert_eq!(dsn_failed_recipients(&msg), ["ann@x.org"]);
    }

    #[test]
    fn dsn_original_recipient_when_final_is_absent_and_duplicates_once() {
        let msg = m("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n\
            --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n\
            Original-Recipient: rfc822; <Bob@Y.org>\nAction: failed (permanent)\n\n\
            Final-Recipient: rfc822; bob@y.org\nAction: FAILED\n\n\
            Final-Recipient: rfc822; slow@y.org\nAction: delayed\n\n\
            Final-Recipient: rfc822; gone@y.org\nAction: failed\n--b--\n");
        assert_eq!(dsn_failed_recipients(&msg), ["bob@y.org", "gone@y.org"]);
    }

    #[test]
    fn dsn_found_by_scanning_when_the_structure_is_broken() {
        // A report without its boundary parameter: the MIME walk finds nothing.
        let msg = m("Content-Type: multipart/report; report-type=delivery-status\n\n\
            --x\nContent-Type: text/plain\n\nbounce\n--x\n\
            Content-Type: Message/Delivery-Status; charset=us-ascii\n\n\
            Reporting-MTA: dns; mx\n\nFinal-Recipient: rfc822; ann@x.org\nAction: failed\n--x--\n");
        assert_eq!(dsn_failed_recipients(&msg), ["ann@x.org"]);
        // A bare delivery-status entity at the top level.
        let msg = m("Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n\
            Final-Recipient: rfc822;ann@x.org\nAction: failed\n");
        assert_eq!(dsn_failed_recipients(&msg), ["ann@x.org"]);
    }

    #[test]
    fn dsn_not_a_report() {
        assert!(dsn_failed_recipients(&m(PLAIN)).is_empty());
        let msg = m("Subject: quoting a bounce\n\nFinal-Recipient: rfc822; ann@x.org\nAction: failed\n");
        assert!(dsn_failed_recipients(&msg).is_empty());
        assert!(dsn_failed_recipients(&m(MIXED)).is_empty());
        assert!(dsn_failed_recipients(b"").is_empty());
    }

    // ---- internals ----

    #[test]
    fn content_type_parameters() {
        let ct = parse_content_type("Multipart/Mixed; BOUNDARY=\"a \\\"b\\\" c\";charset=x ; junk; n=v");
        assert_eq!(ct.mtype, "multipart/mixed");
        assert_eq!(ct.boundary(), Some("a \"b\" c"));
        assert_eq!(ct.param("charset"), Some("x"));
        assert_eq!(ct.param("n"), Some("v"));
        assert_eq!(parse_content_type("text/plain; boundary=").boundary(), None);
        assert_eq!(parse_content_type("").mtype, "");
    }

    #[test]
    fn delimiters_need_the_whole_boundary() {
        assert_eq!(delimiter(b"--abc", "abc"), Some(Delimiter::Open));
        assert_eq!(delimiter(b"--abc \t", "abc"), Some(Delimiter::Open));
        assert_eq!(delimiter(b"--abc--", "abc"), Some(Delimiter::Close));
        assert_eq!(delimiter(b"--abcd", "abc"), None);
        assert_eq!(delimiter(b"-abc", "abc"), None);
    }

    #[test]
    fn header_only_message_and_empty_input() {
        let out = rewrite(b"Subject: x", &Rewrite { subject_prefix: Some("[dev]"), ..rw() });
        assert_eq!(out, b"Subject: [dev] x\r\n\r\n");
        let out = rewrite(b"", &Rewrite { footer_text: Some("F"), ..rw() });
        assert_eq!(out, b"\r\nF\r\n");
    }
}

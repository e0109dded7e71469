//! The admin API: HTTP/1.1 and JSON on the admin socket (and `[admin] listen`), versioned
//! paths under `/v1/`. docs/admin-api.yaml describes it (OpenAPI 3.1); the server also
//! serves that file at `/v1/openapi.yaml`.
//!
//! One request per connection (`Connection: close`), a body only by `Content-Length`, at
//! most [`MAX_HEAD`] bytes of head and [`MAX_BODY`] of body, the whole request within the
//! socket's deadline. On TCP every request carries `Authorization: Bearer <token>`.

use super::admin_socket::{Admin, Stream, TIMEOUT};
use crate::admin::query::{self, QueueFilter};
use crate::queue::requests::{DestinationsOp, QueueAnswer, QueueOp, QueueRequest};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::Instant;

/// The request line and headers, at most.
pub const MAX_HEAD: usize = 64 << 10;
/// A request's body, at most (a directory import's lines, a list of ids).
pub const MAX_BODY: usize = 16 << 20;
/// Ids sent to the control thread in one request of a bulk operation (its turn stays short).
const BULK_CHUNK: usize = 1000;
/// How long a reading of the spool serves the pages after a first one.
pub const LISTING_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../../docs/admin-api.yaml");

/// A parsed request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// Path segments, percent-decoded.
    pub segments: Vec<String>,
    /// Query pairs, percent-decoded (`+` is a plus sign).
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// An answer: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn reply(status: u16, v: Value) -> Reply {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    Reply { status, content_type: "application/json", body }
}

fn error(status: u16, msg: impl Into<String>) -> Reply {
    reply(status, json!({ "error": msg.into() }))
}

/// An answer whose `error` says how it went: 503 when the server could not answer (it is
/// stopping, or the control thread was late), else 400 (a request it refused).
fn answered<A: serde::Serialize>(a: &A, err: Option<&String>) -> Reply {
    let status = match err {
        None => 200,
        Some(e) if e.contains("stopping") || e.contains("in time") || e.contains("did not answer") => 503,
        Some(_) => 400,
    };
    reply(status, serde_json::to_value(a).unwrap_or_default())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes `r` and ends the exchange.
pub fn write_reply(w: &mut impl Write, r: &Reply) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 401 {
        head.push_str("WWW-Authenticate: Bearer realm=\"ringmx\"\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(&r.body)?;
    w.flush()
}

pub fn write_error(w: &mut impl Write, status: u16, msg: &str) -> std::io::Result<()> {
    write_reply(w, &error(status, msg))
}

/// Serves one request on `s` (whose first byte, `first`, is read already).
pub fn serve(first: u8, mut s: Stream, token: Option<&str>, admin: &Admin) -> std::io::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    let req = match read_request(first, &mut s, deadline) {
        Ok(r) => r,
        Err((status, msg)) => return write_error(&mut s, status, &msg),
    };
    if let Some(t) = token {
        let given = req.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
        if !same(given.trim().as_bytes(), t.as_bytes()) {
            return write_error(&mut s, 401, "a bearer token is required ([admin] token_file)");
        }
    }
    let r = route(&req, admin);
    write_reply(&mut s, &r)
}

/// Compares without a timing difference by where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads one request; an error is the status and text to answer with.
pub fn read_request(first: u8, r: &mut impl ReadWithin, deadline: Instant) -> Result<Request, (u16, String)> {
    let mut buf = vec![first];
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err((431, format!("the request's head is over {MAX_HEAD} bytes")));
        }
        let n = r.read_within(&mut chunk, deadline).map_err(|e| (408, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err((400, "the request ended early".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| (400, "the request's head is not UTF-8".to_string()))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, format!("not a request line: {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((400, format!("{version}: HTTP/1.1 only")));
    }
    let mut req = Request { method: method.to_string(), ..Request::default() };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        req.segments.push(decode(seg).ok_or_else(|| (400, format!("bad escape in {path:?}")))?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k).ok_or_else(|| (400, format!("bad escape in {pair:?}")))?;
        let v = decode(v).ok_or_else(|| (400, format!("bad escape in {pair:?}")))?;
        req.query.push((k, v));
    }
    let mut length = 0usize;
    for h in lines {
        let Some((name, value)) = h.split_once(':') else {
            return Err((400, format!("not a header field: {h:?}")));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value.parse().map_err(|_| (400, format!("Content-Length: {value:?}")))?;
                if length > MAX_BODY {
                    return Err((413, format!("the body is over {MAX_BODY} bytes")));
                }
            }
            "transfer-encoding" => return Err((411, "send the body with a Content-Length".into())),
            "authorization" => req.authorization = Some(value.to_string()),
            _ => {}
        }
    }
    let mut body = buf.split_off(head_end + 4);
    while body.len() < length {
        let n = r.read_within(&mut chunk, deadline).map_err(|e| (408, format!("reading the body: {e}")))?;
        if n == 0 {
            return Err((400, "the body ended early".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    req.body = body;
    Ok(req)
}

/// A reader that stops at a deadline however slowly the peer sends.
pub trait ReadWithin {
    fn read_within(&mut self, buf: &mut [u8], deadline: Instant) -> std::io::Result<usize>;
}

impl ReadWithin for Stream {
    fn read_within(&mut self, buf: &mut [u8], deadline: Instant) -> std::io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the request took too long"));
        }
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(left))?,
            Stream::Tcp(s) => s.set_read_timeout(Some(left))?,
        }
        self.read(buf)
    }
}

impl ReadWithin for &[u8] {
    fn read_within(&mut self, buf: &mut [u8], _: Instant) -> std::io::Result<usize> {
        self.read(buf)
    }
}

/// Percent-decoding (RFC 3986 §2.1); `None` for a bad escape or text that is not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encoding of a path segment or query value (what the command line sends).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => out.push(c as char),
            _ => out.push_str(&format!("%{c:02X}")),
        }
    }
    out
}

fn body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Reply> {
    let text: &[u8] = if req.body.is_empty() { b"{}" } else { &req.body };
    serde_json::from_slice(text).map_err(|e| error(400, format!("the body: {e}")))
}

/// The endpoints. See docs/admin-api.yaml.
pub fn route(req: &Request, admin: &Admin) -> Reply {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let r = match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["v1", "openapi.yaml"]) => {
            Ok(Reply { status: 200, content_type: "application/yaml", body: OPENAPI.as_bytes().to_vec() })
        }
        ("GET", ["v1", "status"]) => Ok(reply(200, json!(crate::admin::diagnose::status(&admin.answerers.metrics)))),
        ("GET", ["v1", "queue"]) => queue_page(req, admin),
        ("GET", ["v1", "queue", id]) => queue_show(id, admin),
        ("GET", ["v1", "queue", id, "content"]) => queue_content(id, admin),
        ("POST", ["v1", "queue", id, op]) => queue_op(op, Some(vec![id.to_string()]), admin).map(|(a, _)| {
            let status = if a.not_found.is_empty() { 200 } else { 404 };
            match a.error {
                Some(_) => answered(&a, a.error.as_ref()),
                None => reply(status, json!(a)),
            }
        }),
        ("POST", ["v1", "queue", op]) => queue_bulk(op, req, admin),
        ("GET", ["v1", "destinations"]) => {
            let a = super::admin_socket::destinations(admin, DestinationsOp { op: "list".into(), domains: vec![] });
            Ok(answered(&a, a.error.as_ref()))
        }
        ("POST", ["v1", "destinations", domain, op @ ("suspend" | "resume")]) => {
            match crate::directory::model::normalize_domain(domain) {
                Err(e) => Err(error(400, e.to_string())),
                Ok(_) => {
                    let op = DestinationsOp { op: op.to_string(), domains: vec![domain.to_string()] };
                    let a = super::admin_socket::destinations(admin, op);
                    Ok(answered(&a, a.error.as_ref()))
                }
            }
        }
        ("GET", ["v1", "bans"]) => Ok(bans(admin, &crate::admin::bans::BanOp::List)),
        ("POST", ["v1", "bans"]) => body::<BanBody>(req)
            .map(|b| bans(admin, &crate::admin::bans::BanOp::Add { ip: b.ip, seconds: b.seconds.unwrap_or(0) })),
        ("POST", ["v1", "bans", "lift"]) => {
            body::<LiftBody>(req).map(|b| bans(admin, &crate::admin::bans::BanOp::Lift { ips: b.ips }))
        }
        ("DELETE", ["v1", "bans", ip]) => match ip.parse() {
            Err(_) => Err(error(400, format!("{ip:?} is not an IP address"))),
            Ok(ip) => {
                let r = bans(admin, &crate::admin::bans::BanOp::Lift { ips: vec![ip] });
                match r.status {
                    200 if serde_json::from_slice::<Value>(&r.body)
                        .is_ok_and(|v| v["done"].as_array().is_some_and(Vec::is_empty)) =>
                    {
                        Ok(Reply { status: 404, ..r })
                    }
                    _ => Ok(r),
                }
            }
        },
        ("POST", ["v1", "reload"]) => {
            let a = super::admin_socket::reload(admin);
            let status = if a.applied {
                200
            } else if a.errors.is_empty() {
                503
            } else {
                400
            };
            Ok(reply(status, json!(a)))
        }
        ("GET", ["v1", "log", "debug"]) => {
            Ok(reply(200, json!(super::admin_socket::debug(admin, &crate::obs::debug::DebugOp::Status))))
        }
        ("POST", ["v1", "log", "debug"]) => body::<crate::obs::debug::DebugOp>(req).map(|op| {
            let a = super::admin_socket::debug(admin, &op);
            answered(&a, a.error.as_ref())
        }),
        ("POST", ["v1", "handover"]) => Ok(reply(200, json!(super::admin_socket::handover()))),
        ("POST", ["v1", "directory", "usage"]) => {
            let a = super::admin_socket::refresh_usage(admin);
            Ok(answered(&a, a.error.as_ref()))
        }
        ("POST", ["v1", "lists", list, "moderate"]) => body::<ModerateBody>(req).map(|b| {
            let m = super::lists::Moderate { list: list.to_string(), op: b.op, code: b.code, reason: b.reason };
            let a = admin.answerers.lists.moderate(m, TIMEOUT);
            answered(&a, a.error.as_ref())
        }),
        ("GET", ["v1", "directory", kind]) => directory_list(kind, &[], admin),
        ("GET", ["v1", "directory", "lists", list, "members"]) => directory_list("members", &[list], admin),
        ("POST", ["v1", "directory", "commands"]) => body::<CommandBody>(req).map(|b| directory_command(b, admin)),
        (m, ["v1", ..]) if !matches!(m, "GET" | "POST" | "DELETE") => Err(error(405, format!("{m}: not allowed"))),
        _ => Err(error(404, "no such endpoint (see /v1/openapi.yaml)")),
    };
    r.unwrap_or_else(|e| e)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    ip: std::net::IpAddr,
    /// How long; none or 0: for ever.
    seconds: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LiftBody {
    ips: Vec<std::net::IpAddr>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModerateBody {
    op: String,
    code: String,
    #[serde(default)]
    reason: String,
}

/// A `ringmx directory` command: its arguments after `directory`, and what it reads on its
/// standard input (`--password-stdin`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    pub args: Vec<String>,
    #[serde(default)]
    pub input: String,
}

/// What a directory command printed, and its error.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CommandAnswer {
    pub output: String,
    pub error: Option<String>,
    /// The command line's exit status for it.
    pub exit: u8,
}

fn bans(admin: &Admin, op: &crate::admin::bans::BanOp) -> Reply {
    let a = super::admin_socket::bans(admin, op);
    answered(&a, a.error.as_ref())
}

fn filter_of(req: &Request) -> Result<QueueFilter, Reply> {
    let mut f = QueueFilter::default();
    for (k, v) in &req.query {
        if query::FILTER_KEYS.contains(&k.as_str()) {
            f.set(k, v).map_err(|e| error(400, e))?;
        }
    }
    Ok(f)
}

fn parse_id(id: &str) -> Result<crate::spool::QueueId, Reply> {
    crate::spool::QueueId::parse(id)
        .ok_or_else(|| error(400, format!("{id:?} is not a queue id (16 hexadecimal digits)")))
}

/// `GET /v1/queue`: a page of the messages the filters select.
fn queue_page(req: &Request, admin: &Admin) -> Result<Reply, Reply> {
    for (k, _) in &req.query {
        if !query::FILTER_KEYS.contains(&k.as_str()) && !matches!(k.as_str(), "limit" | "after") {
            return Err(error(400, format!("unknown parameter {k:?}")));
        }
    }
    let filter = filter_of(req)?;
    let limit = match req.param("limit") {
        None => 100,
        Some(l) => l.parse().map_err(|_| error(400, format!("limit: {l:?} is not a number")))?,
    };
    let after = req.param("after").map(parse_id).transpose()?;
    let spool = &admin.answerers.spool;
    // A first page reads the spool afresh; the pages after it (`after=`) use that reading
    // while it is recent, so paging through the queue costs one replay.
    let listing = {
        let mut kept = admin.listing.lock().unwrap_or_else(|e| e.into_inner());
        match kept.as_ref() {
            Some((at, l)) if after.is_some() && at.elapsed() < LISTING_KEPT => l.clone(),
            _ => {
                let l = std::sync::Arc::new(query::Listing::read(spool).map_err(|e| error(500, e.to_string()))?);
                *kept = Some((Instant::now(), l.clone()));
                l
            }
        }
    };
    let page = query::page_in(&listing, spool, &filter, after, limit, query::now_ms())
        .map_err(|e| error(500, e.to_string()))?;
    Ok(reply(200, json!(page)))
}

/// The message `id` as listed, or 404.
fn find(id: &str, admin: &Admin) -> Result<crate::spool::StoredMessage, Reply> {
    let qid = parse_id(id)?;
    let after = qid.0.checked_sub(1).map(crate::spool::QueueId);
    let mut found = None;
    query::each_after(&admin.answerers.spool, after, |m| {
        if m.envelope.id == qid {
            found = Some(m.clone());
        }
        Ok(false)
    })
    .map_err(|e| error(500, e.to_string()))?;
    found.ok_or_else(|| error(404, format!("no queued message with id {id}")))
}

/// `GET /v1/queue/{id}`.
fn queue_show(id: &str, admin: &Admin) -> Result<Reply, Reply> {
    find(id, admin).map(|m| reply(200, crate::admin::message_json(&m)))
}

/// `GET /v1/queue/{id}/content`: the message as spooled (RFC 5322), Received header first.
fn queue_content(id: &str, admin: &Admin) -> Result<Reply, Reply> {
    let qid = parse_id(id)?;
    // Found through the queue's index: a few reads, whatever the queue's size.
    let a = super::admin_socket::queue(admin, QueueRequest { op: QueueOp::Locate, ids: Some(vec![id.to_string()]) });
    if !a.not_found.is_empty() {
        return Err(error(404, format!("no queued message with id {id}")));
    }
    if let Some(l) = a.located.first() {
        let mut reader = crate::spool::RecordReader::new(&admin.answerers.spool);
        if let Ok((envelope, content)) = reader.read(l.shard, l.seq, l.offset)
            && envelope.id == qid
        {
            return Ok(Reply { status: 200, content_type: "message/rfc822", body: content.to_vec() });
        }
    }
    // Moved by compaction since the answer: the listing finds it.
    let m = find(id, admin)?;
    let body = m.read_content().map_err(|e| error(500, e.to_string()))?;
    Ok(Reply { status: 200, content_type: "message/rfc822", body })
}

fn op_of(op: &str) -> Result<QueueOp, Reply> {
    match op {
        "retry" => Ok(QueueOp::Retry),
        "delete" => Ok(QueueOp::Delete),
        "bounce" => Ok(QueueOp::Bounce),
        "hold" => Ok(QueueOp::Hold),
        "release" => Ok(QueueOp::Release),
        other => Err(error(404, format!("{other:?}: not an operation (retry, delete, bounce, hold, release)"))),
    }
}

/// Applies `op` to `ids` (none: every queued message) in chunks; the answers merged.
fn queue_op(op: &str, ids: Option<Vec<String>>, admin: &Admin) -> Result<(QueueAnswer, usize), Reply> {
    let op = op_of(op)?;
    let Some(ids) = ids else {
        return Ok((super::admin_socket::queue(admin, QueueRequest { op, ids: None }), 0));
    };
    for id in &ids {
        parse_id(id)?;
    }
    let mut all = QueueAnswer::default();
    for chunk in ids.chunks(BULK_CHUNK) {
        let a = super::admin_socket::queue(admin, QueueRequest { op, ids: Some(chunk.to_vec()) });
        all.done.extend(a.done);
        all.not_found.extend(a.not_found);
        all.skipped.extend(a.skipped);
        if a.error.is_some() {
            all.error = a.error;
            break;
        }
    }
    Ok((all, ids.len()))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    ids: Option<Vec<String>>,
}

/// `POST /v1/queue/{op}`: by the ids of the body, by the filters of the query, or every
/// message with `all=true`.
fn queue_bulk(op: &str, req: &Request, admin: &Admin) -> Result<Reply, Reply> {
    op_of(op)?;
    let b: BulkBody = body(req)?;
    let filter = filter_of(req)?;
    let all = req.param("all") == Some("true");
    let (ids, matched) = match (b.ids, filter.is_empty(), all) {
        (Some(ids), true, false) => (Some(ids), None),
        (None, false, false) => {
            let ids =
                query::ids(&admin.answerers.spool, &filter, query::now_ms()).map_err(|e| error(500, e.to_string()))?;
            let n = ids.len();
            (Some(ids.into_iter().map(|i| i.to_string()).collect()), Some(n))
        }
        (None, true, true) => (None, None),
        _ => return Err(error(400, "name the messages one way: ids in the body, filters in the query, or all=true")),
    };
    let (a, _) = queue_op(op, ids, admin)?;
    let mut v = json!(a);
    if let Some(n) = matched {
        v["matched"] = json!(n);
    }
    Ok(match a.error {
        Some(_) => answered(&v, a.error.as_ref()),
        None => reply(200, v),
    })
}

/// `GET /v1/directory/{kind}`: the `--json` listing of that kind, as an array.
fn directory_list(kind: &str, extra: &[&str], admin: &Admin) -> Result<Reply, Reply> {
    let noun = match kind {
        "postoffices" => "postoffice",
        "domains" => "domain",
        "mailboxes" => "mailbox",
        "groups" => "group",
        "blocked" => "blocked",
        "lists" => "list",
        "members" => "member",
        _ => return Err(error(404, format!("{kind:?}: not a kind of directory entry"))),
    };
    let mut args = vec![noun.to_string(), "list".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--json".into());
    let a = directory_command(CommandBody { args, input: String::new() }, admin);
    if a.status != 200 {
        return Err(a);
    }
    let answer: CommandAnswer = serde_json::from_slice(&a.body).unwrap_or_default();
    let out = answer.output.trim();
    let v = match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(v)) => Value::Array(v),
        _ => Value::Array(out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
    };
    Ok(reply(200, v))
}

/// `POST /v1/directory/commands`: a `ringmx directory` command, run by the server.
fn directory_command(b: CommandBody, admin: &Admin) -> Reply {
    let mut out = Vec::new();
    let mut input = std::io::Cursor::new(b.input.into_bytes());
    let r = crate::admin::directory::run_args(
        &admin.answerers.data_dir,
        &admin.answerers.maildir_root,
        &b.args,
        &mut input,
        &mut out,
    );
    let output = String::from_utf8_lossy(&out).into_owned();
    match r {
        Ok(()) => reply(200, json!(CommandAnswer { output, error: None, exit: 0 })),
        Err((status, e, exit)) => reply(status, json!(CommandAnswer { output, error: Some(e), exit })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, (u16, String)> {
        let b = text.as_bytes();
        read_request(b[0], &mut &b[1..], Instant::now() + TIMEOUT)
    }

    #[test]
    fn a_request_with_query_and_body() {
        let r = parse("POST /v1/queue/retry?domain=ex%41mple.test&sender=a+b%40x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nAuthorization: Bearer t\r\n\r\n{}\r\nextra").unwrap();
        assert_eq!(
            (r.method.as_str(), r.segments.as_slice()),
            ("POST", &["v1".to_string(), "queue".into(), "retry".into()][..])
        );
        assert_eq!(r.param("domain"), Some("exAmple.test"));
        assert_eq!(r.param("sender"), Some("a+b@x"), "a plus sign stays one");
        assert_eq!(r.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(r.body, b"{}\r\n");
    }

    #[test]
    fn limits_get_their_status() {
        let big = format!("GET /v1/status HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&big).unwrap_err().0, 431);
        let body = format!("POST /v1/reload HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse(&body).unwrap_err().0, 413);
        assert_eq!(parse("POST /v1/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err().0, 411);
        assert_eq!(parse("GET /v1/status HTTP/1.1\r\n").unwrap_err().0, 400, "ended before the head did");
        assert_eq!(parse("GET /v1/%zz HTTP/1.1\r\n\r\n").unwrap_err().0, 400);
        assert_eq!(parse("GET /v1/status SPDY/3\r\n\r\n").unwrap_err().0, 400);
    }

    /// A peer that trickles: one byte a read, and its deadline passes after `left` reads.
    struct Trickle<'a> {
        data: &'a [u8],
        left: usize,
    }

    impl ReadWithin for Trickle<'_> {
        fn read_within(&mut self, buf: &mut [u8], _: Instant) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the request took too long"));
            }
            self.left -= 1;
            let n = self.data.len().min(1).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// However it trickles, a request gets its deadline (408), in the head or in the body.
    /// The deadline is the reader's to enforce ([`ReadWithin`]); here `Trickle` says when it
    /// is reached (after a count of reads), so no clock is involved.
    #[test]
    fn a_trickling_peer_meets_its_deadline() {
        let head = b"ET /v1/status HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345";
        let deadline = Instant::now() + TIMEOUT;
        let mut t = Trickle { data: head, left: 10 };
        assert_eq!(read_request(b'G', &mut t, deadline).unwrap_err().0, 408, "in the head");
        let mut t = Trickle { data: head, left: head.len() - 2 };
        assert_eq!(read_request(b'G', &mut t, deadline).unwrap_err().0, 408, "in the body");
        let mut t = Trickle { data: head, left: usize::MAX };
        assert_eq!(read_request(b'G', &mut t, deadline).unwrap_err().0, 400, "ended early");
    }

    #[test]
    fn encoding_round_trips() {
        for s in ["a+b@x.test", "100% sure", "ünïcode/slash?q"] {
            assert_eq!(decode(&encode(s)).as_deref(), Some(s));
        }
        assert!(same(b"token", b"token") && !same(b"token", b"tokex") && !same(b"tok", b"token"));
    }
}

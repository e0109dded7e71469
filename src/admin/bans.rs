//! `ringmx ban list|lift|add`: the automatic bans (`[policy] auto_ban`), seen and changed by
//! the operator.
//!
//! With the server running, the request goes over the control socket (the same one as the
//! queue commands: one JSON line each way) and takes effect at once in the list every shard
//! reads; the server saves the file. With the server stopped, the command edits
//! `<data_dir>/bans` itself, holding the spool lock a running server holds.

use super::AdminError;
use crate::policy::BanList;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A request on the control socket: `{"ban": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRequest {
    pub ban: BanOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum BanOp {
    List,
    /// Lift the bans of these addresses.
    Lift {
        ips: Vec<IpAddr>,
    },
    /// Ban an address for `seconds` (0: for ever).
    Add {
        ip: IpAddr,
        seconds: u64,
    },
}

/// The answer: the bans in force after the request (`until` in Unix seconds, 0 for ever),
/// the addresses it changed and those that were not banned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanAnswer {
    pub bans: Vec<(IpAddr, u64)>,
    pub done: Vec<IpAddr>,
    pub not_banned: Vec<IpAddr>,
    pub error: Option<String>,
}

fn now_unix() -> u64 {
    crate::util::time::Now::system().unix_secs()
}

/// Carries out `op` on `list` (the server's, or one loaded from the file).
pub fn apply(list: &BanList, op: &BanOp) -> BanAnswer {
    let now = now_unix();
    let mut a = BanAnswer::default();
    match op {
        BanOp::List => {}
        BanOp::Lift { ips } => {
            for &ip in ips {
                if list.lift(ip, now) { a.done.push(ip) } else { a.not_banned.push(ip) }
            }
        }
        BanOp::Add { ip, seconds } => {
            list.ban(*ip, if *seconds == 0 { 0 } else { now + seconds }, now);
            a.done.push(*ip);
        }
    }
    a.bans = list.list(now);
    a
}

/// Through the running server when there is one, else on the file.
pub fn request(data_dir: &Path, spool: &Path, op: BanOp) -> Result<BanAnswer, AdminError> {
    let socket = crate::queue::requests::socket_path(data_dir);
    match UnixStream::connect(&socket) {
        Ok(s) => over_api(s, &op),
        Err(connect) => match crate::spool::lock_spool(spool).map_err(AdminError::Output)? {
            Some(_lock) => {
                let path = data_dir.join("bans");
                let list = BanList::load(&path, now_unix()).map_err(|e| AdminError::Server(e.to_string()))?;
                let a = apply(&list, &op);
                if op != BanOp::List {
                    list.save(now_unix()).map_err(|e| AdminError::Server(e.to_string()))?;
                }
                Ok(a)
            }
            None => Err(AdminError::Server(format!(
                "the server holds the spool but its control socket {} does not answer: {connect}",
                socket.display()
            ))),
        },
    }
}

/// `GET /v1/bans`, `POST /v1/bans`, `POST /v1/bans/lift`.
fn over_api(s: UnixStream, op: &BanOp) -> Result<BanAnswer, AdminError> {
    use super::api::json;
    let (_, a): (u16, BanAnswer) = match op {
        BanOp::List => json(s, "GET", "/v1/bans", None::<&()>)?,
        BanOp::Add { ip, seconds } => {
            json(s, "POST", "/v1/bans", Some(&serde_json::json!({ "ip": ip, "seconds": seconds })))?
        }
        BanOp::Lift { ips } => json(s, "POST", "/v1/bans/lift", Some(&serde_json::json!({ "ips": ips })))?,
    };
    match a.error {
        Some(e) => Err(AdminError::Server(e)),
        None => Ok(a),
    }
}

/// `ban list`: one line per ban (`ADDRESS until RFC3339` or `for ever`), or JSON lines.
pub fn print_list(a: &BanAnswer, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    for (ip, until) in &a.bans {
        if json {
            writeln!(out, "{}", serde_json::json!({"address": ip.to_string(), "until": until}))?;
        } else if *until == 0 {
            writeln!(out, "{ip}  for ever")?;
        } else {
            writeln!(out, "{ip}  until {}", crate::util::time::rfc3339_ms(until * 1000))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_and_apply_to_a_list() {
        let r = BanRequest { ban: BanOp::Lift { ips: vec!["192.0.2.7".parse().unwrap()] } };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"ban":{"op":"lift","ips":["192.0.2.7"]}}"#);
        assert_eq!(serde_json::from_str::<BanRequest>(&line).unwrap(), r);
        let list = BanList::in_memory();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let a = apply(&list, &BanOp::Add { ip, seconds: 3600 });
        assert_eq!((a.done.clone(), a.bans.len()), (vec![ip], 1));
        let a = apply(&list, &BanOp::Lift { ips: vec![ip, "192.0.2.8".parse().unwrap()] });
        assert_eq!((a.done, a.not_banned, a.bans), (vec![ip], vec!["192.0.2.8".parse().unwrap()], vec![]));
    }
}

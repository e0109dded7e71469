//! The debug log (`<log dir>/debug.log`): protocol traces of SMTP sessions, the client's
//! lines (`C:`) and the server's replies (`S:`) in wire order, never a message's content or
//! a secret (AUTH shows its mechanism, SASL lines are hidden).
//!
//! Off by default. `[log] debug` and `debug_clients` set it at start; `ringmx log debug
//! on|off|status` switches it on the running server, for every client or only for some
//! addresses and networks. A session decides when it begins (and again once a PROXY header
//! named the real client), so a switch applies to connections made after it. When off it
//! costs a session one relaxed load.

use crate::policy::IpList;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Lines a session keeps before handing them to the writer.
pub const BATCH: usize = 64;
/// Longest client line kept, in bytes.
pub const MAX_LINE: usize = 512;

/// Whether sessions trace, and for which clients.
#[derive(Debug)]
pub struct DebugSwitch {
    on: AtomicBool,
    /// The clients traced (their configured text and the parsed list); empty: all.
    clients: Mutex<(Vec<String>, Arc<IpList>)>,
}

impl DebugSwitch {
    pub fn new(on: bool, clients: &[String]) -> Result<DebugSwitch, crate::policy::IpListError> {
        let list = IpList::parse(clients)?;
        Ok(DebugSwitch { on: AtomicBool::new(on), clients: Mutex::new((clients.to_vec(), Arc::new(list))) })
    }

    /// Does a session with this client trace?
    pub fn applies(&self, ip: IpAddr) -> bool {
        if !self.on.load(Ordering::Relaxed) {
            return false;
        }
        let c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        c.0.is_empty() || c.1.contains(ip)
    }

    /// Switches tracing on (for `clients`, or all when empty) or off.
    pub fn set(&self, on: bool, clients: &[String]) -> Result<(), crate::policy::IpListError> {
        let list = IpList::parse(clients)?;
        *self.clients.lock().unwrap_or_else(|e| e.into_inner()) = (clients.to_vec(), Arc::new(list));
        self.on.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub fn state(&self) -> DebugAnswer {
        let c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        DebugAnswer { on: self.on.load(Ordering::Relaxed), clients: c.0.clone(), error: None }
    }
}

/// A request on the control socket: `{"debug": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugRequest {
    pub debug: DebugOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum DebugOp {
    Status,
    /// On for these clients (addresses, networks, wildcards; none: every client).
    On {
        #[serde(default)]
        clients: Vec<String>,
    },
    Off,
}

/// The state after a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugAnswer {
    pub on: bool,
    pub clients: Vec<String>,
    pub error: Option<String>,
}

/// Carries out `op` on the server's switch.
pub fn apply(switch: &DebugSwitch, op: &DebugOp) -> DebugAnswer {
    let r = match op {
        DebugOp::Status => Ok(()),
        DebugOp::On { clients } => switch.set(true, clients),
        DebugOp::Off => switch.set(false, &[]),
    };
    let mut a = switch.state();
    if let Err(e) = r {
        a.error = Some(e.to_string());
    }
    a
}

/// One traced line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugLine {
    pub at_ms: u64,
    /// `C:` (from the client) or `S:` (our reply).
    pub from_client: bool,
    pub text: String,
}

/// A batch of one session's traced lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugLines {
    pub session: u64,
    pub client: IpAddr,
    pub lines: Vec<DebugLine>,
}

impl DebugLines {
    /// Appends the lines to `out`: time, session, client, direction, text.
    pub fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        for l in &self.lines {
            let ts = crate::util::time::rfc3339_ms(l.at_ms);
            let dir = if l.from_client { "C:" } else { "S:" };
            let _ = write!(out, "{ts} session={:016X} client={} {dir} ", self.session, self.client);
            out.extend(l.text.chars().map(|c| if c.is_control() { '?' } else { c }));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switched_on_for_a_network_then_off() {
        let s = DebugSwitch::new(false, &[]).unwrap();
        let (inside, outside): (IpAddr, IpAddr) = ("192.0.2.9".parse().unwrap(), "198.51.100.1".parse().unwrap());
        assert!(!s.applies(inside));
        let a = apply(&s, &DebugOp::On { clients: vec!["192.0.2.0/24".into()] });
        assert_eq!((a.on, a.clients.as_slice(), a.error), (true, &["192.0.2.0/24".to_string()][..], None));
        assert!(s.applies(inside) && !s.applies(outside));
        apply(&s, &DebugOp::On { clients: vec![] });
        assert!(s.applies(outside), "no list: every client");
        assert!(apply(&s, &DebugOp::On { clients: vec!["not an address".into()] }).error.is_some());
        apply(&s, &DebugOp::Off);
        assert!(!s.applies(inside));
        let line = serde_json::to_string(&DebugRequest { debug: DebugOp::On { clients: vec!["::1".into()] } }).unwrap();
        assert_eq!(line, r#"{"debug":{"op":"on","clients":["::1"]}}"#);
    }

    #[test]
    fn lines_with_direction_and_no_control_characters() {
        let b = DebugLines {
            session: 7,
            client: "192.0.2.7".parse().unwrap(),
            lines: vec![
                DebugLine { at_ms: 1_796_288_400_000, from_client: true, text: "EHLO x\u{1b}".into() },
                DebugLine { at_ms: 1_796_288_400_001, from_client: false, text: "250 ok".into() },
            ],
        };
        let mut out = String::new();
        b.write(&mut out);
        assert_eq!(
            out,
            "2026-12-03T09:00:00.000Z session=0000000000000007 client=192.0.2.7 C: EHLO x?\n\
             2026-12-03T09:00:00.001Z session=0000000000000007 client=192.0.2.7 S: 250 ok\n"
        );
    }
}

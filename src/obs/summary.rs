//! `ringmx log summary FILE...`: what activity logs say, in the spirit of pflogsumm:
//! messages received, delivered, deferred and failed, refusals by reason, the top senders,
//! recipients and recipient domains, and the traffic per hour. Reads `key=value` and JSON
//! lines alike (a line starting with `{` is JSON); lines it does not know are counted and
//! skipped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// How many entries the top lists show.
pub const TOP: usize = 10;

/// One parsed line: time stamp, event and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub ts: String,
    pub event: String,
    pub fields: Vec<(String, String)>,
}

impl Line {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
}

/// Parses one line of either format.
pub fn parse(line: &str) -> Option<Line> {
    let line = line.trim_end();
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let o = v.as_object()?;
        let ts = o.get("ts")?.as_str()?.to_string();
        let event = o.get("event")?.as_str()?.to_string();
        let fields = o
            .iter()
            .filter(|(k, _)| *k != "ts" && *k != "event")
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        return Some(Line { ts, event, fields });
    }
    let (ts, rest) = line.split_once(' ')?;
    let (event, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            // A quoted value: `\"` and `\\` inside.
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(e);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, q[end?..].trim_start())
        } else {
            let (v, next) = after.split_once(' ').unwrap_or((after, ""));
            (v.to_string(), next)
        };
        fields.push((k.to_string(), v));
        rest = next;
    }
    Some(Line { ts: ts.to_string(), event: event.to_string(), fields })
}

/// What the lines add up to.
#[derive(Debug, Default)]
pub struct Summary {
    pub lines: u64,
    pub unknown: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    pub generated: u64,
    pub dropped: u64,
    pub refused: BTreeMap<String, u64>,
    /// Commands refused by a rule, by `step rule`.
    pub rejected: BTreeMap<String, u64>,
    pub senders: HashMap<String, u64>,
    pub recipients: HashMap<String, u64>,
    pub domains: HashMap<String, u64>,
    pub refused_clients: HashMap<String, u64>,
    /// `YYYY-MM-DDTHH` → (received, delivered).
    pub hours: BTreeMap<String, (u64, u64)>,
}

impl Summary {
    pub fn add(&mut self, text: &str) {
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            self.lines += 1;
            let Some(line) = parse(l) else {
                self.unknown += 1;
                continue;
            };
            let hour = line.ts.get(..13).unwrap_or("").to_string();
            match line.event.as_str() {
                "received" => {
                    self.received += 1;
                    self.received_bytes += line.get("size").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                    let from = line.get("from").unwrap_or("<>").to_string();
                    *self.senders.entry(from).or_default() += 1;
                    self.hours.entry(hour).or_default().0 += 1;
                }
                "delivered" => {
                    self.delivered += 1;
                    let rcpt = line.get("rcpt").unwrap_or("").to_string();
                    let domain =
                        rcpt.trim_matches(['<', '>']).rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
                    *self.recipients.entry(rcpt).or_default() += 1;
                    *self.domains.entry(domain).or_default() += 1;
                    self.hours.entry(hour).or_default().1 += 1;
                }
                "deferred" => self.deferred += 1,
                "failed" => self.failed += 1,
                "generated" => self.generated += 1,
                "refused" => {
                    *self.refused.entry(line.get("reason").unwrap_or("?").to_string()).or_default() += 1;
                    *self.refused_clients.entry(line.get("client").unwrap_or("?").to_string()).or_default() += 1;
                }
                "rejected" => {
                    let key = format!("{} {}", line.get("step").unwrap_or("?"), line.get("rule").unwrap_or("?"));
                    *self.rejected.entry(key).or_default() += 1;
                    *self.refused_clients.entry(line.get("client").unwrap_or("?").to_string()).or_default() += 1;
                }
                "events-dropped" => self.dropped += line.get("count").and_then(|c| c.parse::<u64>().ok()).unwrap_or(0),
                "operator" => {}
                _ => self.unknown += 1,
            }
        }
    }

    /// The report, as text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "Messages");
        let _ = writeln!(o, "  {:>9}  received ({} bytes)", self.received, self.received_bytes);
        let _ = writeln!(o, "  {:>9}  delivered (recipients)", self.delivered);
        let _ = writeln!(o, "  {:>9}  deferred (attempts)", self.deferred);
        let _ = writeln!(o, "  {:>9}  failed (recipients)", self.failed);
        let _ = writeln!(o, "  {:>9}  generated (reports, auto-replies, forwards)", self.generated);
        let refused: u64 = self.refused.values().sum();
        let _ = writeln!(o, "  {refused:>9}  refused clients");
        for (why, n) in &self.refused {
            let _ = writeln!(o, "  {n:>9}    {why}");
        }
        let rejected: u64 = self.rejected.values().sum();
        let _ = writeln!(o, "  {rejected:>9}  rejected commands (step and rule)");
        for (why, n) in &self.rejected {
            let _ = writeln!(o, "  {n:>9}    {why}");
        }
        let top = |o: &mut String, title: &str, m: &HashMap<String, u64>| {
            if m.is_empty() {
                return;
            }
            let mut v: Vec<(&String, &u64)> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let _ = writeln!(o, "\n{title}");
            for (k, n) in v.into_iter().take(TOP) {
                let _ = writeln!(o, "  {n:>9}  {k}");
            }
        };
        top(&mut o, "Top senders", &self.senders);
        top(&mut o, "Top recipients", &self.recipients);
        top(&mut o, "Top recipient domains", &self.domains);
        top(&mut o, "Top refused clients", &self.refused_clients);
        if !self.hours.is_empty() {
            let _ = writeln!(o, "\nPer hour (UTC)          received  delivered");
            for (h, (r, d)) in &self.hours {
                let _ = writeln!(o, "  {:<19} {r:>9}  {d:>9}", format!("{h}:00"));
            }
        }
        if self.dropped > 0 {
            let _ = writeln!(o, "\n{} event(s) dropped by the server (the log has gaps)", self.dropped);
        }
        if self.unknown > 0 {
            let _ = writeln!(o, "\n{} line(s) not understood, skipped", self.unknown);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::{Activity, LogFormat, What};
    use crate::policy::Refusal;
    use crate::spool::QueueId;

    #[test]
    fn kv_lines_parse_back_as_written() {
        let a = Activity {
            at_ms: 1_764_000_000_123,
            what: What::Deferred {
                id: QueueId(7),
                rcpt: "u@x.example".into(),
                via: "mx.x.example".into(),
                reply: "451 4.4.1 \"no\" answer\\".into(),
                next_attempt_ms: 1_764_000_900_000,
            },
        };
        let l = parse(&a.line(LogFormat::Kv)).unwrap();
        assert_eq!((l.ts.as_str(), l.event.as_str()), ("2025-11-24T16:00:00.123Z", "deferred"));
        assert_eq!(l.get("reply"), Some("451 4.4.1 \"no\" answer\\"));
        assert_eq!(l.get("next_attempt"), Some("2025-11-24T16:15:00.000Z"));
        let sorted = |mut l: Line| {
            l.fields.sort();
            l
        };
        assert_eq!(sorted(parse(&a.line(LogFormat::Json)).unwrap()), sorted(l), "JSON gives the same");
    }

    #[test]
    fn a_summary_of_both_formats() {
        let line = |at_ms: u64, what: What, f: LogFormat| Activity { at_ms, what }.line(f) + "\n";
        let h = 1_764_000_000_000; // 2025-11-24T16:00
        let rcv = |id: u64, from: &str| What::Received {
            id: QueueId(id),
            session: 1,
            client: "192.0.2.7".parse().unwrap(),
            helo: "c".into(),
            from: from.into(),
            rcpts: 1,
            size: 1000,
            tls: None,
            auth: None,
        };
        let dlv = |id: u64, rcpt: &str| What::Delivered {
            id: QueueId(id),
            rcpt: rcpt.into(),
            via: "mailbox".into(),
            reply: "250 2.0.0 ok".into(),
        };
        let mut text = String::new();
        text += &line(h, rcv(1, "a@s.example"), LogFormat::Kv);
        text += &line(h + 1, dlv(1, "x@Example.NET"), LogFormat::Kv);
        text += &line(h + 3_600_000, rcv(2, "a@s.example"), LogFormat::Json);
        text += &line(h + 3_600_001, dlv(2, "y@example.net"), LogFormat::Json);
        text += &line(
            h + 3_600_002,
            What::Refused {
                session: 2,
                client: "203.0.113.9".parse().unwrap(),
                reason: Refusal::Dnsbl,
                rule: "bl".into(),
            },
            LogFormat::Kv,
        );
        text += &line(
            h + 3_600_003,
            What::Rejected {
                session: 3,
                client: "203.0.113.9".parse().unwrap(),
                step: "rcpt",
                rule: "relay",
                from: "a@s.example".into(),
                rcpt: "x@elsewhere.example".into(),
                reply: "550 5.7.1 Error: relay access denied".into(),
            },
            LogFormat::Kv,
        );
        text += "garbage\n";
        let mut s = Summary::default();
        s.add(&text);
        assert_eq!((s.received, s.received_bytes, s.delivered, s.unknown), (2, 2000, 2, 1));
        let r = s.render();
        assert!(r.contains("        2  received (2000 bytes)\n"), "{r}");
        assert!(r.contains("        1  refused clients\n          1    DNSBL\n"), "{r}");
        assert!(r.contains("        1  rejected commands (step and rule)\n          1    rcpt relay\n"), "{r}");
        assert!(r.contains("Top refused clients\n          2  203.0.113.9\n"), "{r}");
        assert!(r.contains("Top senders\n          2  <a@s.example>\n"), "{r}");
        assert!(r.contains("Top recipient domains\n          2  example.net\n"), "{r}");
        assert!(
            r.contains("  2025-11-24T16:00            1          1\n  2025-11-24T17:00            1          1\n"),
            "{r}"
        );
        assert!(r.contains("1 line(s) not understood"), "{r}");
    }
}

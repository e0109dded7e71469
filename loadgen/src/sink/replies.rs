//! Configurable replies and delays per SMTP phase.
//!
//! A reply spec is `"CODE TEXT"` optionally followed by `@P%`, e.g. `450 4.2.1 busy@10%`:
//! that reply is given to P% of the commands of its phase, the default reply to the rest.
//! A delay spec is `PHASE=DURATION`, e.g. `data_end=5ms`.

use std::str::FromStr;
use std::time::Duration;

use crate::rng::Rng;

/// The points at which the sink answers and where replies or delays can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkPhase {
    Banner,
    Ehlo,
    Mail,
    Rcpt,
    /// The reply to DATA (354 by default).
    Data,
    /// The reply after the end of the data (the dot, or `BDAT … LAST`).
    DataEnd,
}

impl SinkPhase {
    pub const ALL: [SinkPhase; 6] =
        [SinkPhase::Banner, SinkPhase::Ehlo, SinkPhase::Mail, SinkPhase::Rcpt, SinkPhase::Data, SinkPhase::DataEnd];

    pub fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for SinkPhase {
    type Err = ReplyError;
    fn from_str(s: &str) -> Result<Self, ReplyError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "banner" | "connect" => SinkPhase::Banner,
            "ehlo" | "helo" => SinkPhase::Ehlo,
            "mail" => SinkPhase::Mail,
            "rcpt" => SinkPhase::Rcpt,
            "data" => SinkPhase::Data,
            "data_end" | "data-end" | "eod" | "dot" => SinkPhase::DataEnd,
            _ => return Err(ReplyError::UnknownPhase(s.to_string())),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply does not start with a three-digit code 2xx–5xx.
    #[error("reply {0:?} must start with a code 200-599 and a space")]
    BadCode(String),
    /// The `@P%` part is not a percentage in (0, 100].
    #[error("bad probability in {0:?}: want e.g. @10%")]
    BadProbability(String),
    /// The probabilities of one phase add up to more than 100%.
    #[error("probabilities of one phase add up to more than 100%")]
    OverHundred,
    #[error("unknown phase {0:?} (banner, ehlo, mail, rcpt, data, data_end)")]
    UnknownPhase(String),
    #[error("bad delay {0:?}: want PHASE=DURATION, e.g. data_end=5ms")]
    BadDelay(String),
    /// A reply text with CR or LF would break the framing.
    #[error("reply {0:?} contains CR or LF")]
    LineBreak(String),
}

/// One configured reply: its wire bytes and the share of commands that get it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplySpec {
    pub code: u16,
    /// The whole reply line, CRLF included.
    pub wire: Vec<u8>,
    /// In [0, 1].
    pub probability: f64,
}

impl FromStr for ReplySpec {
    type Err = ReplyError;
    fn from_str(s: &str) -> Result<Self, ReplyError> {
        let (text, probability) = match s.rsplit_once('@') {
            Some((t, p)) if p.ends_with('%') => {
                let v: f64 = p[..p.len() - 1].trim().parse().map_err(|_| ReplyError::BadProbability(s.into()))?;
                if !(v > 0.0 && v <= 100.0) {
                    return Err(ReplyError::BadProbability(s.into()));
                }
                (t, v / 100.0)
            }
            _ => (s, 1.0),
        };
        let text = text.trim().trim_matches('"');
        if text.contains(['\r', '\n']) {
            return Err(ReplyError::LineBreak(s.into()));
        }
        let code: u16 = text.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| ReplyError::BadCode(s.into()))?;
        if !(200..600).contains(&code) || !matches!(text.as_bytes().get(3), None | Some(b' ')) {
            return Err(ReplyError::BadCode(s.into()));
        }
        let mut wire = text.as_bytes().to_vec();
        wire.extend_from_slice(b"\r\n");
        Ok(ReplySpec { code, wire, probability })
    }
}

/// The replies of one phase: the configured ones by probability, else the default.
#[derive(Debug, Clone)]
pub struct PhaseReplies {
    choices: Vec<ReplySpec>,
    default: ReplySpec,
}

impl PhaseReplies {
    pub fn new(default: &str) -> Self {
        PhaseReplies { choices: Vec::new(), default: default.parse().expect("built-in reply is valid") }
    }

    pub fn push(&mut self, spec: ReplySpec) -> Result<(), ReplyError> {
        let total: f64 = self.choices.iter().map(|c| c.probability).sum::<f64>() + spec.probability;
        if total > 1.0 + 1e-9 {
            return Err(ReplyError::OverHundred);
        }
        self.choices.push(spec);
        Ok(())
    }

    /// Whether any reply other than the default is configured.
    pub fn is_overridden(&self) -> bool {
        !self.choices.is_empty()
    }

    /// Picks a reply. Draws a random number only when a choice is configured.
    pub fn pick(&self, rng: &mut Rng) -> &ReplySpec {
        if self.choices.is_empty() {
            return &self.default;
        }
        let mut x = rng.next_f64();
        for c in &self.choices {
            if x < c.probability {
                return c;
            }
            x -= c.probability;
        }
        &self.default
    }
}

/// A delay before the reply of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelaySpec {
    pub phase: SinkPhase,
    pub delay: Duration,
}

impl FromStr for DelaySpec {
    type Err = ReplyError;
    fn from_str(s: &str) -> Result<Self, ReplyError> {
        let (p, d) = s.split_once('=').ok_or_else(|| ReplyError::BadDelay(s.into()))?;
        let phase = p.trim().parse()?;
        let delay = crate::units::parse_duration(d.trim()).map_err(|_| ReplyError::BadDelay(s.into()))?;
        Ok(DelaySpec { phase, delay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reply_specs() {
        let r: ReplySpec = "450 4.2.1 busy@10%".parse().unwrap();
        assert_eq!((r.code, r.wire.as_slice(), r.probability), (450, &b"450 4.2.1 busy\r\n"[..], 0.1));
        let r: ReplySpec = "\"554 5.7.1 no\"@100%".parse().unwrap();
        assert_eq!(r.wire, b"554 5.7.1 no\r\n");
        let r: ReplySpec = "250 ok@example".parse().unwrap();
        assert_eq!((r.code, r.probability), (250, 1.0));
        assert!("45 x".parse::<ReplySpec>().is_err());
        assert!("650 x".parse::<ReplySpec>().is_err());
        assert!("450x".parse::<ReplySpec>().is_err());
        assert!("450 x@0%".parse::<ReplySpec>().is_err());
        assert!("450 x@101%".parse::<ReplySpec>().is_err());
    }

    #[test]
    fn picks_by_probability() {
        let mut p = PhaseReplies::new("250 2.1.5 Ok");
        p.push("450 4.2.1 busy@10%".parse().unwrap()).unwrap();
        p.push("550 5.1.1 unknown@20%".parse().unwrap()).unwrap();
        assert_eq!(p.push("451 x@80%".parse().unwrap()), Err(ReplyError::OverHundred));
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 600];
        for _ in 0..100_000 {
            counts[usize::from(p.pick(&mut rng).code)] += 1;
        }
        let share = |c: usize| f64::from(counts[c]) / 100_000.0;
        assert!((share(450) - 0.1).abs() < 0.01);
        assert!((share(550) - 0.2).abs() < 0.01);
        assert!((share(250) - 0.7).abs() < 0.01);
    }

    #[test]
    fn parses_delays() {
        let d: DelaySpec = "data_end=5ms".parse().unwrap();
        assert_eq!(d, DelaySpec { phase: SinkPhase::DataEnd, delay: Duration::from_millis(5) });
        assert!("nowhere=5ms".parse::<DelaySpec>().is_err());
        assert!("rcpt".parse::<DelaySpec>().is_err());
    }
}

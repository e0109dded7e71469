//! The retry schedule, the message lifetime and delay notices as pure functions of the
//! attempt number and the message's age (SPEC §7).
//!
//! Times are Unix milliseconds. `attempts` counts the delivery attempts already made, so
//! the decision after the first failed attempt is `decide(1, …)`.

use crate::util::units;
use serde::Deserialize;
use std::time::Duration;

/// What to do with a recipient after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this Unix time (ms).
    RetryAt(u64),
    /// Stop: the attempts or the lifetime are used up; the recipient has failed.
    GiveUp,
}

/// `[delivery.retry]`: when to try again and when to give up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay after the 1st, 2nd, … failed attempt; the last one repeats. Default
    /// `["15m", "30m", "60m", "240m"]`.
    #[serde(default = "default_intervals", deserialize_with = "units::de_duration_vec")]
    pub intervals: Vec<Duration>,
    /// Attempts after which the recipient fails; none for no limit. Default none.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Age (since arrival) after which a recipient that still fails temporarily fails for
    /// good; the last retry is moved up to this age. Default `"120h"` (5 days, RFC 5321
    /// §4.5.4.1 asks for at least 4–5 days).
    #[serde(default = "default_lifetime", deserialize_with = "units::de_duration")]
    pub lifetime: Duration,
    /// What becomes of a message whose recipients failed because its lifetime ran out
    /// (MailEnable's choice): a report to the sender (`report`, default), or the message
    /// kept in the bad-mail folder for the operator without a report (`badmail`).
    #[serde(default)]
    pub expired: Expired,
}

/// [`RetryConfig::expired`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expired {
    #[default]
    Report,
    Badmail,
}

fn default_intervals() -> Vec<Duration> {
    [15, 30, 60, 240].iter().map(|m| Duration::from_secs(m * 60)).collect()
}

fn default_lifetime() -> Duration {
    Duration::from_secs(5 * 24 * 3600)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            intervals: default_intervals(),
            max_attempts: None,
            lifetime: default_lifetime(),
            expired: Expired::Report,
        }
    }
}

impl RetryConfig {
    /// The delay before the next attempt after `attempts` attempts (≥ 1) failed.
    pub fn interval(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) - 1) as usize;
        self.intervals.get(i).or(self.intervals.last()).copied().unwrap_or(Duration::from_secs(15 * 60))
    }

    /// Unix ms after which the message fails: arrival plus the lifetime.
    pub fn expires_at(&self, arrival_ms: u64) -> u64 {
        arrival_ms.saturating_add(self.lifetime.as_millis() as u64)
    }

    /// Retry or give up after `attempts` attempts failed temporarily, the last one at
    /// `now_ms`, for a message that arrived at `arrival_ms`.
    ///
    /// Gives up when the maximum number of attempts is reached or the message is at least
    /// as old as its lifetime. Otherwise the next attempt is `interval(attempts)` from now,
    /// but never later than the expiry, so that one last attempt happens at the lifetime's
    /// end (and `Will-Retry-Until` in a delay notice is exact).
    pub fn decide(&self, attempts: u32, arrival_ms: u64, now_ms: u64) -> RetryDecision {
        if self.max_attempts.is_some_and(|max| attempts >= max) {
            return RetryDecision::GiveUp;
        }
        let expires = self.expires_at(arrival_ms);
        if now_ms >= expires {
            return RetryDecision::GiveUp;
        }
        let next = now_ms.saturating_add(self.interval(attempts).as_millis() as u64);
        RetryDecision::RetryAt(next.min(expires))
    }

    /// Problems with the settings, each naming its key (for config validation).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.intervals.is_empty() {
            p.push("delivery.retry.intervals: at least one interval is needed".to_string());
        }
        if self.intervals.iter().any(|d| d.is_zero()) {
            p.push("delivery.retry.intervals: an interval of 0 would retry in a loop".to_string());
        }
        if self.max_attempts == Some(0) {
            p.push("delivery.retry.max_attempts: must be at least 1".to_string());
        }
        p
    }
}

/// When delay notices (DSN `Action: delayed`) are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DelayNoticeMode {
    /// Never.
    Off,
    /// Once, at the first deferral (past `after`).
    #[default]
    First,
    /// At every deferral (past `after`).
    Each,
}

/// `[delivery.delay_notice]`: when the sender hears about a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DelayNoticeConfig {
    /// `off`, `first` or `each`. Default `first`.
    #[serde(default)]
    pub mode: DelayNoticeMode,
    /// Only once this long has passed since the first attempt. Default none (at once).
    #[serde(default, deserialize_with = "units::de_duration_opt")]
    pub after: Option<Duration>,
}

impl DelayNoticeConfig {
    /// Whether the deferral at `now_ms` earns a delay notice.
    ///
    /// `first_attempt_ms` is the time of the first attempt; `prev_deferral_ms` the time of
    /// the previous deferral of this recipient (none at the first). With `first`, the notice
    /// goes out at the first deferral past `after`: nothing needs storing to know that one
    /// was already sent, so the decision survives a restart.
    pub fn should_notify(&self, first_attempt_ms: u64, prev_deferral_ms: Option<u64>, now_ms: u64) -> bool {
        let after = self.after.map_or(0, |d| d.as_millis() as u64);
        let past = |t: u64| t.saturating_sub(first_attempt_ms) >= after;
        match self.mode {
            DelayNoticeMode::Off => false,
            DelayNoticeMode::Each => past(now_ms),
            DelayNoticeMode::First => past(now_ms) && !prev_deferral_ms.is_some_and(past),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_795_000_000_000;

    /// Runs attempts that all fail, each at the time the previous decision asked for;
    /// returns the minutes since arrival of each retry, and whether it ended with GiveUp.
    fn simulate(cfg: &RetryConfig, limit: usize) -> (Vec<u64>, bool) {
        let mut now = T0;
        let mut out = Vec::new();
        for attempts in 1..=limit as u32 {
            match cfg.decide(attempts, T0, now) {
                RetryDecision::RetryAt(t) => {
                    assert!(t > now, "time goes forward");
                    out.push((t - T0) / MIN);
                    now = t;
                }
                RetryDecision::GiveUp => return (out, true),
            }
        }
        (out, false)
    }

    #[test]
    fn default_intervals_in_minutes() {
        let cfg = RetryConfig::default();
        let gaps: Vec<u64> = (1..=8).map(|n| cfg.interval(n).as_secs() / 60).collect();
        assert_eq!(gaps, vec![15, 30, 60, 240, 240, 240, 240, 240]);
    }

    #[test]
    fn default_schedule_cumulative() {
        let (at, gave_up) = simulate(&RetryConfig::default(), 8);
        assert_eq!(at, vec![15, 45, 105, 345, 585, 825, 1065, 1305]);
        assert!(!gave_up);
    }

    #[test]
    fn lifetime_moves_the_last_retry_up_then_gives_up() {
        let cfg = RetryConfig { lifetime: Duration::from_secs(12 * 3600), ..Default::default() };
        let (at, gave_up) = simulate(&cfg, 100);
        assert_eq!(at, vec![15, 45, 105, 345, 585, 720]);
        assert!(gave_up);
        assert_eq!(cfg.expires_at(T0), T0 + 720 * MIN);
    }

    #[test]
    fn max_attempts() {
        let cfg = RetryConfig { max_attempts: Some(3), ..Default::default() };
        let (at, gave_up) = simulate(&cfg, 100);
        assert_eq!(at, vec![15, 45]);
        assert!(gave_up);
        assert_eq!(cfg.decide(3, T0, T0 + 45 * MIN), RetryDecision::GiveUp);
    }

    #[test]
    fn custom_list_and_late_first_attempt() {
        let cfg = RetryConfig {
            intervals: vec![Duration::from_secs(60), Duration::from_secs(600)],
            max_attempts: None,
            lifetime: Duration::from_secs(3600),
            expired: Expired::Report,
        };
        let (at, gave_up) = simulate(&cfg, 100);
        assert_eq!(at, vec![1, 11, 21, 31, 41, 51, 60]);
        assert!(gave_up);
        // A message already past its lifetime (queue stalled) gives up at once.
        assert_eq!(cfg.decide(1, T0, T0 + 61 * MIN), RetryDecision::GiveUp);
    }

    #[test]
    fn config_from_toml() {
        let cfg: RetryConfig =
            toml::from_str("intervals = [\"5m\", 600]\nmax_attempts = 4\nlifetime = \"48h\"").unwrap();
        assert_eq!(cfg.intervals, vec![Duration::from_secs(300), Duration::from_secs(600)]);
        assert_eq!(cfg.max_attempts, Some(4));
        assert_eq!(cfg.lifetime, Duration::from_secs(48 * 3600));
        assert_eq!(toml::from_str::<RetryConfig>("").unwrap(), RetryConfig::default());
        assert!(toml::from_str::<RetryConfig>("interval = [1]").is_err());
        assert!(RetryConfig { intervals: vec![], ..Default::default() }.problems().len() == 1);
        let d: DelayNoticeConfig = toml::from_str("mode = \"each\"\nafter = \"4h\"").unwrap();
        assert_eq!(d, DelayNoticeConfig { mode: DelayNoticeMode::Each, after: Some(Duration::from_secs(4 * 3600)) });
    }

    /// Deferrals on the default schedule; which of them send a notice.
    fn notices(cfg: DelayNoticeConfig) -> Vec<u64> {
        let (at, _) = simulate(&RetryConfig::default(), 8);
        // Deferrals happen at the first attempt (minute 0) and at each retry.
        let deferrals: Vec<u64> = std::iter::once(0).chain(at).collect();
        let mut prev = None;
        let mut out = Vec::new();
        for m in deferrals {
            let now = T0 + m * MIN;
            if cfg.should_notify(T0, prev, now) {
                out.push(m);
            }
            prev = Some(now);
        }
        out
    }

    #[test]
    fn delay_notice_vectors() {
        let h4 = Some(Duration::from_secs(4 * 3600));
        assert_eq!(notices(DelayNoticeConfig { mode: DelayNoticeMode::Off, after: None }), Vec::<u64>::new());
        assert_eq!(notices(DelayNoticeConfig { mode: DelayNoticeMode::First, after: None }), vec![0]);
        assert_eq!(notices(DelayNoticeConfig { mode: DelayNoticeMode::First, after: h4 }), vec![345]);
        assert_eq!(
            notices(DelayNoticeConfig { mode: DelayNoticeMode::Each, after: None }),
            vec![0, 15, 45, 105, 345, 585, 825, 1065, 1305]
        );
        assert_eq!(
            notices(DelayNoticeConfig { mode: DelayNoticeMode::Each, after: h4 }),
            vec![345, 585, 825, 1065, 1305]
        );
    }
}

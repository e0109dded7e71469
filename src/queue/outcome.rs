//! What one delivery attempt's outcomes mean for the queue, as a pure function: the mark
//! each recipient gets, the reports owed to the sender (non-delivery, relayed, delay
//! notice), and when the message is due again. The control thread executes the result
//! (appends the marks, builds the reports, reschedules); nothing here reads a clock or
//! touches a file, so the rules are tested on literal vectors below.

use super::{DelayNoticeConfig, RetryConfig, RetryDecision};
use crate::delivery::client::Response;
use crate::delivery::dsn::{Action as DsnAction, RecipientReport};
use crate::spool::MarkStatus;

/// One recipient's result in one attempt, with the reply that decided it (the server's,
/// or ours in the same form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered { reply: Response },
    Deferred { reply: Response },
    Failed { reply: Response },
}

/// The message's side of the judgement: what the queue knows of it.
#[derive(Debug, Clone, Copy)]
pub struct Attempted {
    /// Unix ms the message arrived.
    pub received_ms: u64,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// When delivery was first tried, and last deferred (for delay notices).
    pub first_attempt_ms: Option<u64>,
    pub last_deferral_ms: Option<u64>,
    /// When the message is due again already (other recipients), if at all.
    pub due_ms: Option<u64>,
}

/// The remote server's side: who answered, and whether it reports success itself.
#[derive(Debug, Clone, Default)]
pub struct Answered {
    pub remote_mta: Option<String>,
    /// It offers DSN (RFC 3461): it got the parameters and reports success itself.
    pub peer_dsn: bool,
}

/// A recipient's new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkFor {
    pub rcpt: u16,
    pub status: MarkStatus,
    pub text: String,
    /// Unix ms of the next attempt (deferred), else 0.
    pub next_attempt_ms: u64,
}

/// What the attempt comes to.
#[derive(Debug, Clone, Default)]
pub struct Judgement {
    pub marks: Vec<MarkFor>,
    /// Reports owed to the sender (each is still filtered by its recipient's NOTIFY).
    pub reports: Vec<RecipientReport>,
    /// Some recipient was deferred: the message's last deferral is now.
    pub deferred: bool,
    /// Recipients handed to the next hop.
    pub relayed: u64,
    /// When the message is due again, if any recipient waits.
    pub next_due_ms: Option<u64>,
}

/// Judges the outcomes of one attempt at `now_ms`.
pub fn judge(
    retry: &RetryConfig,
    delay: &DelayNoticeConfig,
    m: Attempted,
    server: &Answered,
    outcomes: Vec<(u16, RcptOutcome)>,
    now_ms: u64,
) -> Judgement {
    let expires = retry.expires_at(m.received_ms);
    let mut j = Judgement { next_due_ms: m.due_ms, ..Judgement::default() };
    let mut delays = Vec::new();
    for (i, outcome) in outcomes {
        let report = |action, reply: &Response| RecipientReport {
            rcpt: i as usize,
            action,
            status: reply.status(),
            remote_mta: server.remote_mta.clone(),
            diagnostic: Some(reply.to_string()),
            last_attempt_ms: Some(now_ms),
            will_retry_until_ms: (action == DsnAction::Delayed).then_some(expires),
        };
        let (status, text, next_attempt_ms) = match outcome {
            RcptOutcome::Delivered { reply } => {
                j.relayed += 1;
                // RFC 3461 §5.2.2 (b): passed to a server without DSN, NOTIFY=SUCCESS gets a
                // "relayed" report from us; a server with DSN got the parameters and reports
                // itself (§5.2.1).
                if !server.peer_dsn {
                    j.reports.push(report(DsnAction::Relayed, &reply));
                }
                (MarkStatus::Delivered, reply.to_string(), 0)
            }
            RcptOutcome::Failed { reply } => {
                j.reports.push(report(DsnAction::Failed, &reply));
                (MarkStatus::Failed, reply.to_string(), 0)
            }
            RcptOutcome::Deferred { reply } => match retry.decide(m.attempts, m.received_ms, now_ms) {
                RetryDecision::RetryAt(t) => {
                    delays.push(report(DsnAction::Delayed, &reply));
                    j.next_due_ms = Some(j.next_due_ms.map_or(t, |n| n.min(t)));
                    (MarkStatus::Deferred, reply.to_string(), t)
                }
                RetryDecision::GiveUp => {
                    // The last reply stays in the text. Out of time: RFC 3463 4.4.7 (delivery
                    // time expired); out of attempts: the last reply's own status.
                    let out_of_attempts = retry.max_attempts.is_some_and(|max| m.attempts >= max);
                    let mut given_up = reply.clone();
                    if out_of_attempts {
                        given_up.text.push_str(&format!(" (given up after {} attempts)", m.attempts));
                    } else {
                        given_up.text.push_str(" (given up: message expired)");
                    }
                    let mut r = report(DsnAction::Failed, &given_up);
                    if !out_of_attempts {
                        r.status = "4.4.7".into();
                    }
                    j.reports.push(r);
                    (MarkStatus::Failed, given_up.to_string(), 0)
                }
            },
        };
        j.marks.push(MarkFor { rcpt: i, status, text, next_attempt_ms });
    }
    if !delays.is_empty() {
        j.deferred = true;
        if delay.should_notify(m.first_attempt_ms.unwrap_or(now_ms), m.last_deferral_ms, now_ms) {
            j.reports.extend(delays);
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::DelayNoticeMode;
    use std::time::Duration;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_795_000_000_000;

    fn reply(code: u16, enhanced: &str, text: &str) -> Response {
        Response::new(code, Some(enhanced), text)
    }
    fn deferred() -> RcptOutcome {
        RcptOutcome::Deferred { reply: reply(451, "4.3.0", "try later") }
    }
    fn attempted(attempts: u32, now: u64) -> Attempted {
        Attempted {
            received_ms: T0,
            attempts,
            first_attempt_ms: Some(T0),
            last_deferral_ms: (attempts > 1).then_some(now - MIN),
            due_ms: None,
        }
    }

    /// The default schedule: 15, 30, 60, then every 240 minutes, the last attempt moved up
    /// to the lifetime's end, then 4.4.7.
    #[test]
    fn the_15_30_60_240_minute_schedule_and_the_lifetime() {
        let retry = RetryConfig::default();
        let delay = DelayNoticeConfig { mode: DelayNoticeMode::Off, after: None };
        let mut now = T0;
        let mut times = Vec::new();
        for attempts in 1..=6 {
            let j = judge(&retry, &delay, attempted(attempts, now), &Answered::default(), vec![(0, deferred())], now);
            let next = j.next_due_ms.unwrap();
            times.push((next - now) / MIN);
            now = next;
        }
        assert_eq!(times, [15, 30, 60, 240, 240, 240]);
        // At the lifetime's end: the last retry lands exactly on it, then the recipient fails.
        let late = T0 + 120 * 60 * MIN - 10 * MIN;
        let j = judge(&retry, &delay, attempted(30, late), &Answered::default(), vec![(0, deferred())], late);
        assert_eq!(j.next_due_ms, Some(T0 + 120 * 60 * MIN));
        let end = T0 + 120 * 60 * MIN;
        let j = judge(&retry, &delay, attempted(31, end), &Answered::default(), vec![(0, deferred())], end);
        assert_eq!(j.next_due_ms, None);
        assert_eq!(j.marks[0].status, MarkStatus::Failed);
        assert_eq!(j.marks[0].text, "451 4.3.0 try later (given up: message expired)");
        assert_eq!((j.reports[0].action, j.reports[0].status.as_str()), (DsnAction::Failed, "4.4.7"));
    }

    #[test]
    fn max_attempts() {
        let retry = RetryConfig { max_attempts: Some(3), ..RetryConfig::default() };
        let delay = DelayNoticeConfig::default();
        let j = judge(&retry, &delay, attempted(2, T0 + MIN), &Answered::default(), vec![(0, deferred())], T0 + MIN);
        assert_eq!(j.marks[0].status, MarkStatus::Deferred);
        let j = judge(&retry, &delay, attempted(3, T0 + MIN), &Answered::default(), vec![(0, deferred())], T0 + MIN);
        assert_eq!(j.marks[0].status, MarkStatus::Failed);
    }

    /// Delay notices: off, first (once, past `after`), each.
    #[test]
    fn delay_notices_off_first_each() {
        let retry = RetryConfig::default();
        let notices = |mode, after: Option<u64>, last_deferral: Option<u64>, now: u64| {
            let delay = DelayNoticeConfig { mode, after: after.map(|m| Duration::from_millis(m * MIN)) };
            let m = Attempted { last_deferral_ms: last_deferral, ..attempted(1, now) };
            let j = judge(&retry, &delay, m, &Answered::default(), vec![(0, deferred())], now);
            assert!(j.deferred);
            j.reports.iter().filter(|r| r.action == DsnAction::Delayed).count()
        };
        assert_eq!(notices(DelayNoticeMode::Off, None, None, T0), 0);
        assert_eq!(notices(DelayNoticeMode::First, None, None, T0), 1);
        assert_eq!(notices(DelayNoticeMode::First, None, Some(T0), T0 + 15 * MIN), 0, "once");
        assert_eq!(notices(DelayNoticeMode::Each, None, Some(T0), T0 + 15 * MIN), 1);
        assert_eq!(notices(DelayNoticeMode::First, Some(60), Some(T0), T0 + 15 * MIN), 0, "not before `after`");
        let past = notices(DelayNoticeMode::First, Some(60), Some(T0 + 45 * MIN), T0 + 105 * MIN);
        assert_eq!(past, 1, "the first deferral past `after`");
        assert_eq!(notices(DelayNoticeMode::First, Some(60), Some(T0 + 105 * MIN), T0 + 345 * MIN), 0, "only that one");
    }

    /// A mixed attempt: one recipient delivered to a server without DSN, one deferred, one
    /// refused: exactly these marks and reports, and the message is due at the retry.
    #[test]
    fn a_mixed_attempt() {
        let retry = RetryConfig::default();
        let delay = DelayNoticeConfig::default();
        let server = Answered { remote_mta: Some("mx1.remote.example".into()), peer_dsn: false };
        let outcomes = vec![
            (0, RcptOutcome::Delivered { reply: reply(250, "2.0.0", "ok") }),
            (1, deferred()),
            (2, RcptOutcome::Failed { reply: reply(550, "5.1.1", "no such user") }),
        ];
        let j = judge(&retry, &delay, attempted(1, T0), &server, outcomes, T0);
        let marks: Vec<(u16, MarkStatus, &str, u64)> =
            j.marks.iter().map(|m| (m.rcpt, m.status, m.text.as_str(), m.next_attempt_ms)).collect();
        assert_eq!(
            marks,
            [
                (0, MarkStatus::Delivered, "250 2.0.0 ok", 0),
                (1, MarkStatus::Deferred, "451 4.3.0 try later", T0 + 15 * MIN),
                (2, MarkStatus::Failed, "550 5.1.1 no such user", 0),
            ]
        );
        let reports: Vec<(usize, DsnAction, &str)> =
            j.reports.iter().map(|r| (r.rcpt, r.action, r.status.as_str())).collect();
        assert_eq!(
            reports,
            [(0, DsnAction::Relayed, "2.0.0"), (2, DsnAction::Failed, "5.1.1"), (1, DsnAction::Delayed, "4.3.0")]
        );
        assert_eq!(j.reports[1].remote_mta.as_deref(), Some("mx1.remote.example"));
        assert_eq!(j.reports[2].will_retry_until_ms, Some(T0 + 120 * 60 * MIN));
        assert_eq!((j.next_due_ms, j.relayed, j.deferred), (Some(T0 + 15 * MIN), 1, true));
        // A next hop with DSN reports success itself: no "relayed" report from us.
        let server = Answered { peer_dsn: true, ..server };
        let j = judge(
            &retry,
            &delay,
            attempted(1, T0),
            &server,
            vec![(0, RcptOutcome::Delivered { reply: reply(250, "2.0.0", "ok") })],
            T0,
        );
        assert!(j.reports.is_empty());
        // The message stays due at the earlier of its own due time and this retry.
        let m = Attempted { due_ms: Some(T0 + 5 * MIN), ..attempted(1, T0) };
        let j = judge(&retry, &delay, m, &Answered::default(), vec![(0, deferred())], T0);
        assert_eq!(j.next_due_ms, Some(T0 + 5 * MIN));
    }
}

//! The open-loop schedule: when each message is meant to start.
//!
//! Message `k` (counted over the whole run) is due at [`Schedule::intended`]`(k)` after the
//! start. Its latency is measured from that moment, not from when a connection was free to
//! send it, so a server that stalls is charged for the messages that queued behind the stall
//! (the coordinated-omission correction of wrk2). Workers take every `n`-th message.
//!
//! With a ramp-up of `T`, the rate grows linearly from 0 to `R` over `T`: the number due by
//! time `t < T` is `R t² / 2T`, so message `k` is due at `√(2kT/R)`; after the ramp it is
//! `T + (k − RT/2) / R`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Messages per second over the whole run, after the ramp.
    pub rate: f64,
    pub ramp_up: Duration,
}

impl Schedule {
    pub fn new(rate: f64, ramp_up: Duration) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        Schedule { rate, ramp_up }
    }

    /// When message `k` (0-based, global) is due, from the start of the run.
    pub fn intended(&self, k: u64) -> Duration {
        let k = k as f64;
        let ramp = self.ramp_up.as_secs_f64();
        let in_ramp = self.rate * ramp / 2.0;
        let secs = if k < in_ramp { (2.0 * k * ramp / self.rate).sqrt() } else { ramp + (k - in_ramp) / self.rate };
        Duration::from_secs_f64(secs)
    }

    /// How many messages are due by `t` (the inverse of [`Self::intended`]).
    pub fn due_by(&self, t: Duration) -> u64 {
        let t = t.as_secs_f64();
        let ramp = self.ramp_up.as_secs_f64();
        let n =
            if t < ramp { self.rate * t * t / (2.0 * ramp) } else { self.rate * ramp / 2.0 + self.rate * (t - ramp) };
        n.floor() as u64 + 1
    }
}

/// The messages of one worker: global indices `worker, worker + workers, …`.
#[derive(Debug, Clone)]
pub struct WorkerSchedule {
    pub schedule: Schedule,
    worker: u64,
    workers: u64,
    /// Next local index not yet due.
    next: u64,
}

impl WorkerSchedule {
    pub fn new(schedule: Schedule, worker: usize, workers: usize) -> Self {
        WorkerSchedule { schedule, worker: worker as u64, workers: workers.max(1) as u64, next: 0 }
    }

    /// When this worker's next message is due.
    pub fn next_due(&self) -> Duration {
        self.schedule.intended(self.next * self.workers + self.worker)
    }

    /// If this worker's next message is due by `elapsed`, takes it and returns its
    /// intended start.
    pub fn take_due(&mut self, elapsed: Duration) -> Option<Duration> {
        let t = self.next_due();
        (t <= elapsed).then(|| {
            self.next += 1;
            t
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let s = Schedule::new(1000.0, Duration::ZERO);
        let got: Vec<u128> = (0..5).map(|k| s.intended(k).as_micros()).collect();
        assert_eq!(got, vec![0, 1000, 2000, 3000, 4000]);
        assert_eq!(s.due_by(Duration::from_millis(10)), 11);
    }

    #[test]
    fn ramp_is_quadratic_then_linear() {
        // 100/s after a 2 s ramp: 100 messages in the ramp, then one every 10 ms.
        let s = Schedule::new(100.0, Duration::from_secs(2));
        assert_eq!(s.intended(0), Duration::ZERO);
        assert!((s.intended(25).as_secs_f64() - 1.0).abs() < 1e-9);
        assert!((s.intended(100).as_secs_f64() - 2.0).abs() < 1e-9);
        assert!((s.intended(101).as_secs_f64() - 2.01).abs() < 1e-9);
        for k in [0u64, 10, 50, 99, 100, 150, 1000] {
            let t = s.intended(k);
            assert!(s.due_by(t + Duration::from_nanos(1)) > k, "k {k}");
        }
    }

    #[test]
    fn workers_share_the_schedule_without_overlap() {
        let s = Schedule::new(1000.0, Duration::ZERO);
        let mut a = WorkerSchedule::new(s, 0, 2);
        let mut b = WorkerSchedule::new(s, 1, 2);
        let mut all = Vec::new();
        let end = Duration::from_millis(9);
        while let Some(t) = a.take_due(end) {
            all.push(t.as_micros());
        }
        while let Some(t) = b.take_due(end) {
            all.push(t.as_micros());
        }
        all.sort_unstable();
        assert_eq!(all, (0..10).map(|i| i * 1000).collect::<Vec<_>>());
    }
}

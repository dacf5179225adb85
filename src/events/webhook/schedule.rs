//! The retry schedule of webhook deliveries: the delays between attempts
//! (`--webhook-retry-schedule`, or the older `--webhook-max-attempts`),
//! parsed from the command line and jittered per retry. Pure functions.

use std::time::Duration;

/// The default schedule: eight attempts over about 28 hours.
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// The delays before attempts 2, 3, …: one entry per retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// A schedule of these delays.
    pub fn new(delays: Vec<Duration>) -> RetrySchedule {
        RetrySchedule(delays)
    }

    /// `--webhook-max-attempts N`: N attempts, the delay doubling from half
    /// a second and capped at a minute (the schedule before there was one).
    pub fn doubling(attempts: u32) -> RetrySchedule {
        let delays = (1..attempts)
            .map(|retry| {
                Duration::from_millis(500)
                    .saturating_mul(1u32 << (retry - 1).min(20))
                    .min(Duration::from_secs(60))
            })
            .collect();
        RetrySchedule(delays)
    }

    /// Attempts an event gets before it is given up on.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The nominal delays.
    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// The delay after failed attempt `attempt` (1-based), ±20% jitter so
    /// that many failing events do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        let nominal = self.0.get(i).or(self.0.last()).copied().unwrap_or_default();
        nominal.mul_f64(0.8 + fastrand::f64() * 0.4)
    }
}

/// Parses `5s,5m,30m,2h` (humantime units: ms, s, m, h, d).
///
/// # Errors
///
/// A sentence naming the bad entry.
pub fn parse(text: &str) -> Result<Vec<Duration>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|part| {
            let part = part.trim();
            humantime::parse_duration(part)
                .map_err(|e| format!("bad delay {part:?} in the retry schedule: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Vec<u64>, ()>) {
        let got = parse(text).map(|d| d.iter().map(|d| d.as_secs()).collect::<Vec<_>>());
        assert_eq!(got.map_err(|_| ()), expected, "{text:?}");
    }

    #[test]
    fn parses_lists_of_durations() {
        check(
            DEFAULT_SCHEDULE,
            Ok(vec![5, 300, 1800, 7200, 18000, 36000, 36000]),
        );
        check("1s, 2s,4s", Ok(vec![1, 2, 4]));
        check("", Ok(vec![]));
        check("1d", Ok(vec![86400]));
        check("5", Err(()));
        check("1s,,2s", Err(()));
        check("soon", Err(()));
    }

    #[test]
    fn delays_are_jittered_and_attempts_count_the_first() {
        let schedule = RetrySchedule::new(parse("1s,10s").expect("parse"));
        assert_eq!(schedule.attempts(), 3);
        for (attempt, nominal_ms) in [(1u32, 1000u64), (2, 10_000), (3, 10_000)] {
            let got = schedule.delay(attempt).as_millis() as u64;
            assert!(
                got >= nominal_ms * 8 / 10 && got <= nominal_ms * 12 / 10,
                "attempt {attempt}: {got} ms"
            );
        }
        let old = RetrySchedule::doubling(8);
        assert_eq!(old.attempts(), 8);
        assert_eq!(old.delays()[0], Duration::from_millis(500));
        assert_eq!(old.delays()[6], Duration::from_secs(32));
        assert_eq!(RetrySchedule::doubling(1).attempts(), 1);
        assert_eq!(
            RetrySchedule::doubling(30).delays()[29 - 1],
            Duration::from_secs(60)
        );
    }
}

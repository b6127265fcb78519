//! When a failed delivery is tried again: a list of delays with jitter, a maximum, and `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A destination's retry schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delay before attempt n+1 after attempt n failed; the last entry repeats.
    pub delays_ms: Vec<u64>,
    /// Attempts in all (the first included); then the delivery is `dead`.
    pub max_attempts: u32,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1 + jitter]` (0 to 1), so retries never storm.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            delays_ms: vec![5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000],
            max_attempts: 9,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1");
        }
        if self.delays_ms.is_empty() && self.max_attempts > 1 {
            return Err("retry.delays_ms must not be empty when retries are allowed");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("retry.jitter must be between 0 and 1");
        }
        Ok(())
    }

    /// The delay before the next attempt after `attempts_made` failed attempts, or `None` when they are exhausted.
    pub fn next_delay(&self, attempts_made: u32) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let index = (attempts_made.max(1) - 1) as usize;
        let base = *self.delays_ms.get(index).or(self.delays_ms.last())? as f64;
        let factor =
            if self.jitter > 0.0 { rand::thread_rng().gen_range(1.0 - self.jitter..=1.0 + self.jitter) } else { 1.0 };
        Some(Duration::from_millis((base * factor).round() as u64))
    }
}

/// The shortest wait a `Retry-After` can ask for: a receiver answering `Retry-After: 0` (or a date in the past)
/// must not turn the retry schedule into a tight loop that ends the delivery `dead` within minutes.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

impl RetryPolicy {
    /// The lower bound of [`RetryPolicy::next_delay`] (its delay with the most jitter taken off), or `None` when
    /// attempts are exhausted.
    pub fn min_delay(&self, attempts_made: u32) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let index = (attempts_made.max(1) - 1) as usize;
        let base = *self.delays_ms.get(index).or(self.delays_ms.last())? as f64;
        Some(Duration::from_millis((base * (1.0 - self.jitter.clamp(0.0, 1.0))).round() as u64))
    }

    /// The delay before the next attempt when the receiver asked for `retry_after` (429 or 503): honoured up to
    /// `cap`, but never sooner than the policy's own lower bound or [`MIN_RETRY_AFTER`]. `None` when attempts are
    /// exhausted.
    pub fn delay_after(&self, attempts_made: u32, retry_after: Option<Duration>, cap: Duration) -> Option<Duration> {
        let scheduled = self.next_delay(attempts_made)?;
        let Some(asked) = retry_after else { return Some(scheduled) };
        let floor = self.min_delay(attempts_made).unwrap_or_default().max(MIN_RETRY_AFTER);
        Some(asked.min(cap).max(floor))
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date. Past dates give zero.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_list_then_stop_at_the_maximum() {
        let p = RetryPolicy { delays_ms: vec![100, 200], max_attempts: 4, jitter: 0.0 };
        let got: Vec<_> = (1..=4).map(|n| p.next_delay(n).map(|d| d.as_millis())).collect();
        assert_eq!(got, vec![Some(100), Some(200), Some(200), None]);
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let p = RetryPolicy { delays_ms: vec![1_000], max_attempts: 10, jitter: 0.25 };
        for _ in 0..500 {
            let d = p.next_delay(1).unwrap().as_millis();
            assert!((750..=1_250).contains(&d), "{d}");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT").unwrap().with_timezone(&Utc);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn retry_after_is_honoured_but_floored_and_capped() {
        let p = RetryPolicy { delays_ms: vec![5_000], max_attempts: 3, jitter: 0.2 };
        let cap = Duration::from_secs(3_600);
        // Zero (or a past date) never retries at once: the policy's lower bound (5 s less 20 %).
        assert_eq!(p.delay_after(1, Some(Duration::ZERO), cap), Some(Duration::from_secs(4)));
        // A longer wait is honoured, up to the cap.
        assert_eq!(p.delay_after(1, Some(Duration::from_secs(120)), cap), Some(Duration::from_secs(120)));
        assert_eq!(p.delay_after(1, Some(Duration::from_secs(86_400)), cap), Some(cap));
        // A policy of tiny delays still waits at least MIN_RETRY_AFTER.
        let fast = RetryPolicy { delays_ms: vec![10], max_attempts: 3, jitter: 0.0 };
        assert_eq!(fast.delay_after(1, Some(Duration::ZERO), cap), Some(MIN_RETRY_AFTER));
        // Exhausted is exhausted, whatever the receiver asks.
        assert_eq!(p.delay_after(3, Some(Duration::from_secs(1)), cap), None);
        // Without Retry-After the schedule applies.
        let d = p.delay_after(1, None, cap).unwrap();
        assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(6), "{d:?}");
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(RetryPolicy { max_attempts: 0, ..Default::default() }.validate().is_err());
        assert!(RetryPolicy { delays_ms: vec![], max_attempts: 2, jitter: 0.0 }.validate().is_err());
        assert!(RetryPolicy { jitter: 1.5, ..Default::default() }.validate().is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }
}

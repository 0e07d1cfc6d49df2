//! Retries. A run that fails transiently (an engine, server or the registry unreachable, a
//! timeout) is tried again after an exponential backoff with jitter, through the kind's
//! delayed-retry queue, until `worker.max-attempts` runs are spent. Separately, a message
//! whose handling keeps failing before any outcome can be recorded (the registry refuses
//! it, the instance lock stays taken) is requeued only up to `worker.max-deliveries` times,
//! counted by the quorum queue's `x-delivery-count`, and then dead-lettered with its
//! reason: nothing loops.

use std::time::Duration;

use dfe_shared::config::WorkerConfig;
use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// How jobs and messages are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Runs a job gets before a transient failure becomes its final failure.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay between two attempts.
    pub max: Duration,
    /// Deliveries of one message before it is dead-lettered instead of requeued.
    pub max_deliveries: u32,
}

impl RetryPolicy {
    /// The policy of the `[worker]` section.
    pub fn from_config(w: &WorkerConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: w.max_attempts.max(1),
            base: Duration::from_millis(w.retry_base_ms),
            max: Duration::from_millis(w.retry_max_ms),
            max_deliveries: w.max_deliveries.max(1),
        }
    }

    /// The delay before attempt `attempt + 1` after `attempt` failed transiently:
    /// exponential from the base, capped at the maximum, times `jitter` (0.8-1.2).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap = u64::try_from(self.max.as_millis()).unwrap_or(u64::MAX);
        let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let ms = exp.min(cap) as f64 * jitter.clamp(0.5, 1.5);
        Duration::from_millis(ms as u64)
    }

    /// Whether a run that failed transiently after `attempts` runs gets another.
    pub fn retries(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// Whether a message delivered `delivery` times (1 for the first) may be requeued once
    /// more after its handling failed.
    pub fn may_requeue(&self, delivery: u32) -> bool {
        delivery < self.max_deliveries
    }
}

/// Which delivery of its message this is (1 for the first): quorum queues count returns in
/// `x-delivery-count`; a message without it has not been returned before.
pub fn delivery_number(props: &BasicProperties, redelivered: bool) -> u32 {
    let count = props.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count")).and_then(|v| match v {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    });
    match count {
        Some(n) => n.saturating_add(1),
        // A classic queue does not count; a redelivered message is at least the second.
        None if redelivered => 2,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, ShortString};

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 5, base: Duration::from_secs(1), max: Duration::from_secs(10), max_deliveries: 3 }
    }

    #[test]
    fn retry_delays_grow_exponentially_up_to_the_cap() {
        let p = policy();
        let secs: Vec<u64> = (1..=6).map(|a| p.delay(a, 1.0).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(p.delay(1, 1.2).as_millis(), 1200);
        assert!(p.retries(4) && !p.retries(5));
    }

    #[test]
    fn deliveries_are_counted_from_the_quorum_queues_header() {
        let p = policy();
        assert_eq!(delivery_number(&BasicProperties::default(), false), 1);
        assert_eq!(delivery_number(&BasicProperties::default(), true), 2);
        let mut h = FieldTable::default();
        h.insert(ShortString::from("x-delivery-count"), AMQPValue::LongLongInt(2));
        let props = BasicProperties::default().with_headers(h);
        assert_eq!(delivery_number(&props, true), 3);
        assert!(p.may_requeue(2) && !p.may_requeue(3));
    }
}

//! The snapshot schedules (`[snapshots.schedules.<name>]`): one worker at a time runs them,
//! the holder of the registry lease `snapshot-schedules` (renewed every tick; when its
//! holder dies another worker takes it within `snapshots.lease-secs`).
//!
//! Time is cut into slots of `every`, counted from the Unix epoch on the registry's clock
//! (the one clock all workers share). In each slot, the holder submits one ordinary
//! ExportJob per instance the schedule selects, through the registry's `submit` like any
//! client (recorded, visible, retried; `requested-by: schedule:<name>`, source
//! `schedule`), with a job id derived from (schedule, every, instance, slot): a take-over,
//! or a holder that stalled past its lease, submits the same id again and finds it
//! recorded, so a slot is exported at most once. An instance that is busy in the slot is
//! tried again at the next tick. Missed slots are not caught up: the next slot exports.
//!
//! A slot that passes without a snapshot of an instance the schedule ran for before (no
//! worker held the lease then, or the export failed) is announced once as
//! `dfe.snapshot.overdue`, by the holder of the lease at the time or the next one (it looks
//! back over the slots a lease's length covers). After the slots, each schedule's retention prunes
//! (`dfe_registry::retention`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dfe_registry::{Registry, SubmitOutcome, Submitter};
use dfe_shared::broker::BrokerHandle;
use dfe_shared::config::{Config, ScheduleConfig};
use dfe_shared::event::{names, Event, EventError};
use dfe_shared::ids::{InstanceId, Tag};
use dfe_shared::job::{ExportJob, Job};
use dfe_shared::records::{InstanceRecord, JobState};
use dfe_shared::store::Stores;
use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::events::{Events, SERVICE};
use crate::metrics::Metrics;

/// The lease of the schedules.
pub const LEASE: &str = "snapshot-schedules";

/// Namespace of the slots' job ids (UUID v5).
const SLOT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6466_652e_7363_6865_6475_6c65_2d76_0001);

/// The job id of the export of `instance` in slot `slot` of schedule `name` (of `every`
/// seconds): the same in every worker, so a slot is submitted once.
pub fn slot_job_id(name: &str, every_secs: u64, instance: &str, slot: i64) -> String {
    uuid::Uuid::new_v5(&SLOT_NAMESPACE, format!("{name}\u{0}{every_secs}\u{0}{instance}\u{0}{slot}").as_bytes())
        .to_string()
}

/// The slot of `every_secs` that `at` falls in.
pub fn slot_of(at: OffsetDateTime, every_secs: u64) -> i64 {
    at.unix_timestamp().div_euclid(i64::try_from(every_secs.max(1)).unwrap_or(i64::MAX))
}

fn slot_start(slot: i64, every_secs: u64) -> OffsetDateTime {
    let secs = slot.saturating_mul(i64::try_from(every_secs).unwrap_or(i64::MAX));
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Runs the schedules while this worker holds their lease.
pub struct Scheduler {
    /// This worker (the lease's holder name).
    pub worker_id: String,
    /// The registry (lease, submissions, slots, retention).
    pub registry: Registry,
    /// The schedules and the lease's length.
    pub config: Arc<Config>,
    /// The destinations, for pruning archives.
    pub stores: Stores,
    /// Publishes the submitted jobs and the overdue events.
    pub broker: BrokerHandle,
    /// For the events' outbox accounting.
    pub metrics: Arc<Metrics>,
}

/// What the holder remembers between ticks (lost with it: the registry has the truth).
#[derive(Default)]
struct Memory {
    /// Slot jobs known to be recorded.
    submitted: HashSet<String>,
    /// Slot jobs whose outcome is settled (a snapshot, or announced overdue).
    settled: HashSet<String>,
    /// When retention last ran.
    pruned_at: Option<tokio::time::Instant>,
}

impl Scheduler {
    /// How often the holder looks (and renews its lease): well within the lease, and often
    /// enough for the shortest schedule.
    fn tick(&self) -> Duration {
        let lease = Duration::from_secs(self.config.snapshots.lease_secs) / 3;
        let shortest = self.config.snapshots.schedules.values().map(|s| s.every.0 / 4).min().unwrap_or(lease);
        lease.min(shortest).clamp(Duration::from_millis(250), Duration::from_secs(5))
    }

    /// Until `shutdown`: takes or renews the lease each tick and, while holding it, runs the
    /// schedules. Gives the lease up on the way out, so another worker need not wait.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.config.snapshots.schedules.is_empty() {
            return;
        }
        let ttl = Duration::from_secs(self.config.snapshots.lease_secs);
        let tick = self.tick();
        let mut memory = Memory::default();
        let mut holding = false;
        loop {
            match self.registry.take_lease(LEASE, &self.worker_id, ttl).await {
                Ok(Some(lease)) => {
                    if !holding || lease.new {
                        tracing::info!(worker = %self.worker_id, lease = LEASE, "this worker runs the snapshot schedules");
                        memory = Memory::default();
                    }
                    holding = true;
                    if let Err(e) = self.round(&mut memory).await {
                        tracing::warn!(error = %e, "a round of the snapshot schedules failed; the next tick tries again");
                    }
                }
                Ok(None) => {
                    if holding {
                        tracing::warn!(worker = %self.worker_id, "the snapshot schedules' lease went to another worker");
                    }
                    holding = false;
                }
                Err(e) => tracing::warn!(error = %e, "cannot take the snapshot schedules' lease; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if holding {
            if let Err(e) = self.registry.release_lease(LEASE, &self.worker_id).await {
                tracing::debug!(error = %e, "could not give the schedules' lease up; it expires by itself");
            }
        }
    }

    async fn round(&self, memory: &mut Memory) -> dfe_registry::Result<()> {
        let now = self.registry.now().await?;
        let instances = self.registry.provisioned_instances().await?;
        for (name, schedule) in &self.config.snapshots.schedules {
            let every = schedule.every.secs();
            let slot = slot_of(now, every);
            // Far enough back to see the slots a dead holder missed before its lease lapsed.
            let lookback = (self.config.snapshots.lease_secs.div_ceil(every.max(1)) + 2).min(10);
            let lookback = i64::try_from(lookback).unwrap_or(10);
            for instance in instances.iter().filter(|i| schedule.selects(&i.owner_id, &i.guest_location)) {
                self.submit(name, schedule, instance, slot, memory).await?;
                for past in (slot - lookback)..slot {
                    self.check_overdue(name, schedule, instance, past, memory).await?;
                }
            }
        }
        let shortest = self.config.snapshots.schedules.values().map(|s| s.every.0).min().unwrap_or_default();
        let due = (shortest / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        if memory.pruned_at.is_none_or(|at| at.elapsed() >= due) {
            memory.pruned_at = Some(tokio::time::Instant::now());
            let report = self.registry.prune(&self.stores, &self.config.snapshots.schedules, false).await?;
            if !report.snapshots.is_empty() {
                let removed = report.snapshots.iter().filter(|p| p.removed).count();
                tracing::info!(removed, kept_on_error = report.snapshots.len() - removed, "snapshot retention ran");
            }
        }
        Ok(())
    }

    /// Submits the export of `instance` for `slot` unless it is recorded already.
    async fn submit(
        &self,
        name: &str,
        schedule: &ScheduleConfig,
        instance: &InstanceRecord,
        slot: i64,
        memory: &mut Memory,
    ) -> dfe_registry::Result<()> {
        let job_id = slot_job_id(name, schedule.every.secs(), &instance.instance_id, slot);
        if memory.submitted.contains(&job_id) {
            return Ok(());
        }
        let (Ok(id), Ok(instance_id)) = (Tag::parse(&job_id), InstanceId::parse(&instance.instance_id)) else {
            return Ok(());
        };
        let destination = schedule.destination.as_deref().filter(|d| *d != "default").and_then(|d| Tag::parse(d).ok());
        let job = Job::Export(ExportJob { job_id: Some(id), instance_id, destination });
        let requested_by = format!("schedule:{name}");
        let by = Submitter { source: "schedule", requested_by: &requested_by, ..Default::default() };
        match self.registry.submit(&job, &by, None).await? {
            SubmitOutcome::Created(_) => {
                self.registry.record_slot(&job_id, name, &instance.instance_id, slot).await?;
                tracing::info!(schedule = name, instance = %instance.instance_id, slot, job_id, "scheduled export submitted");
                crate::submitted::publish_now(&self.broker, &self.registry, &self.worker_id, &job, &job_id).await;
                memory.submitted.insert(job_id);
            }
            SubmitOutcome::Existing(_) => {
                // Submitted by an earlier holder (or an earlier tick that lost its answer).
                self.registry.record_slot(&job_id, name, &instance.instance_id, slot).await?;
                memory.submitted.insert(job_id);
            }
            SubmitOutcome::Refused(r) => {
                tracing::debug!(schedule = name, instance = %instance.instance_id, slot, reason = %r.message,
                    "scheduled export refused for now; tried again at the next tick");
            }
            SubmitOutcome::Conflict(why) => {
                tracing::warn!(schedule = name, instance = %instance.instance_id, slot, why, "scheduled export conflicts");
                memory.submitted.insert(job_id);
            }
        }
        Ok(())
    }

    /// Announces `slot` overdue for `instance` if it passed without a snapshot.
    async fn check_overdue(
        &self,
        name: &str,
        schedule: &ScheduleConfig,
        instance: &InstanceRecord,
        slot: i64,
        memory: &mut Memory,
    ) -> dfe_registry::Result<()> {
        let every = schedule.every.secs();
        let job_id = slot_job_id(name, every, &instance.instance_id, slot);
        if memory.settled.contains(&job_id) {
            return Ok(());
        }
        let end = slot_start(slot + 1, every);
        // An instance provisioned during the slot (or after) had no slot to miss.
        if instance.provisioned_at.is_none_or(|p| p >= end) {
            memory.settled.insert(job_id);
            return Ok(());
        }
        let why = match self.registry.job(&job_id).await? {
            Some(job) if job.state == JobState::Succeeded => None,
            Some(job) if !job.state.is_terminal() => return Ok(()),
            Some(job) => Some(match job.error {
                Some(e) => (e.code.clone(), format!("the slot's export failed: {}", e.message)),
                None => ("export-failed".to_owned(), "the slot's export failed".to_owned()),
            }),
            None if self.registry.ran_before(name, &instance.instance_id, slot).await? => Some((
                "not-submitted".to_owned(),
                "no export was submitted in the slot (no worker ran the schedules then, or the instance was busy throughout)"
                    .to_owned(),
            )),
            None => None,
        };
        memory.settled.insert(job_id.clone());
        let Some((code, message)) = why else { return Ok(()) };
        if !self.registry.mark_overdue(&job_id, name, &instance.instance_id, slot).await? {
            return Ok(());
        }
        let start = slot_start(slot, every);
        let fmt = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        tracing::warn!(schedule = name, instance = %instance.instance_id, slot, code, message, "snapshot overdue");
        let owner = serde_json::to_value(&instance.owner_id).unwrap_or_default();
        let event = Event {
            event_id: Event::id_for(&job_id, names::SNAPSHOT_OVERDUE),
            event: names::SNAPSHOT_OVERDUE.to_owned(),
            occurred_at: OffsetDateTime::now_utc(),
            job_id: Some(job_id.clone()),
            service: SERVICE.to_owned(),
            instance_id: Some(instance.instance_id.clone()),
            owner_id: Some(owner),
            request: json!({
                "schedule": name,
                "every": format!("{every}s"),
                "destination": schedule.destination.clone().unwrap_or_else(|| "default".into()),
            }),
            result: json!({ "schedule": name, "slot": slot, "slot-start": fmt(start), "slot-end": fmt(end) }),
            error: Some(EventError { code, message }),
            // The schedules run outside any request: there is no trace to continue.
            trace_id: None,
        };
        match self.broker.publisher().await {
            Ok(publisher) => {
                let events = Events::new(publisher, self.registry.clone(), self.metrics.clone());
                if let Err(e) = events.publish(&event).await {
                    tracing::warn!(error = %e, "could not announce an overdue snapshot");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot announce an overdue snapshot: the broker is away"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_has_one_job_id_in_every_worker() {
        let a = slot_job_id("nightly", 86_400, "acme-1", 20_000);
        assert_eq!(a, slot_job_id("nightly", 86_400, "acme-1", 20_000));
        assert_ne!(a, slot_job_id("nightly", 86_400, "acme-1", 20_001));
        assert_ne!(a, slot_job_id("nightly", 86_400, "acme-2", 20_000));
        assert_ne!(a, slot_job_id("hourly", 86_400, "acme-1", 20_000));
        assert_ne!(a, slot_job_id("nightly", 3_600, "acme-1", 20_000), "a changed `every` counts other slots");
        assert!(Tag::parse(&a).is_ok(), "a job id");
        let at = OffsetDateTime::from_unix_timestamp(86_400 * 3 + 5).expect("time");
        assert_eq!(slot_of(at, 86_400), 3);
        assert_eq!(slot_start(3, 86_400).unix_timestamp(), 86_400 * 3);
    }
}

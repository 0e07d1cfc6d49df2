//! Retention of the schedules' snapshots, and the schedules' slots.
//!
//! Each schedule keeps, of each instance, its `keep-last` newest snapshots and those
//! younger than `keep-days`; a snapshot either rule keeps stays, one neither keeps goes
//! (a schedule with neither keeps everything). Whatever the rules say, the newest snapshot
//! of an instance (from any schedule or client) is never pruned, so an instance never loses
//! its last snapshot to a retention. Only snapshots a schedule made are considered, by
//! that schedule's rules; one whose schedule is no longer configured stays. Removal takes
//! the archive and the row together ([`Registry::remove_snapshot`]).

use std::collections::{BTreeMap, HashMap};

use dfe_shared::config::ScheduleConfig;
use dfe_shared::records::{InstanceRecord, PruneReport, Pruned, SnapshotRecord};
use dfe_shared::store::Stores;
use time::OffsetDateTime;

use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::{Error, Registry, Result};

/// The snapshots of `scheduled` (every snapshot a schedule made, newest first) that their
/// schedule no longer keeps, oldest first, with why. `newest` maps an instance to its
/// newest snapshot of any origin.
pub fn plan(
    schedules: &BTreeMap<String, ScheduleConfig>,
    scheduled: &[SnapshotRecord],
    newest: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Vec<(SnapshotRecord, String)> {
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut out = Vec::new();
    for s in scheduled {
        let Some(name) = s.schedule.as_deref() else { continue };
        let Some(schedule) = schedules.get(name) else { continue };
        let rank = seen.entry((name, s.instance_id.as_str())).or_default();
        let position = *rank;
        *rank += 1;
        if !schedule.has_retention() || newest.get(&s.instance_id) == Some(&s.snapshot_id) {
            continue;
        }
        let by_count = schedule.keep_last.is_some_and(|n| position < n as usize);
        let age = now - s.created_at;
        let by_age = schedule.keep_days.is_some_and(|d| age < time::Duration::days(i64::from(d)));
        if by_count || by_age {
            continue;
        }
        let reason = match (schedule.keep_last, schedule.keep_days) {
            (Some(n), Some(d)) => format!("beyond keep-last {n} and older than keep-days {d}"),
            (Some(n), None) => format!("beyond keep-last {n}"),
            (None, Some(d)) => format!("older than keep-days {d}"),
            (None, None) => continue,
        };
        out.push((s.clone(), reason));
    }
    out.reverse();
    out
}

impl Registry {
    /// Prunes every schedule's snapshots beyond its retention (see the module doc), or with
    /// `dry_run` only lists them. A snapshot whose removal fails is reported with its error
    /// and stays, archive and row.
    pub async fn prune(
        &self,
        stores: &Stores,
        schedules: &BTreeMap<String, ScheduleConfig>,
        dry_run: bool,
    ) -> Result<PruneReport> {
        let scheduled = self.scheduled_snapshots().await?;
        let mut instances: Vec<String> = scheduled.iter().map(|s| s.instance_id.clone()).collect();
        instances.sort();
        instances.dedup();
        let newest = self.newest_snapshots(&instances).await?;
        let mut report = PruneReport { dry_run, snapshots: Vec::new() };
        for (s, reason) in plan(schedules, &scheduled, &newest, OffsetDateTime::now_utc()) {
            let mut pruned = Pruned {
                snapshot_id: s.snapshot_id.clone(),
                instance_id: s.instance_id.clone(),
                schedule: s.schedule.clone().unwrap_or_default(),
                destination: s.destination.clone(),
                key: s.key.clone(),
                created_at: s.created_at,
                reason,
                removed: false,
                error: None,
            };
            if !dry_run {
                match self.remove_snapshot(stores, &s.snapshot_id).await {
                    Ok(_) => {
                        tracing::info!(snapshot = %s.snapshot_id, instance = %s.instance_id, schedule = %pruned.schedule,
                            reason = %pruned.reason, "snapshot pruned");
                        pruned.removed = true;
                    }
                    Err(e) => {
                        tracing::warn!(snapshot = %s.snapshot_id, error = %e, "a snapshot could not be pruned; it stays");
                        pruned.error = Some(e.to_string());
                    }
                }
            }
            report.snapshots.push(pruned);
        }
        Ok(report)
    }

    /// The instances that are provisioned now (what a schedule may export).
    pub async fn provisioned_instances(&self) -> Result<Vec<InstanceRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE state = 'provisioned' ORDER BY instance_id");
        let rows = client.query(&sql, &[]).await.map_err(Error::query("listing provisioned instances"))?;
        rows.iter().map(instance_from_row).collect()
    }

    /// The registry server's clock: the one clock every worker shares, so that all of them
    /// count the same slots.
    pub async fn now(&self) -> Result<OffsetDateTime> {
        let client = self.client().await?;
        let row = client.query_one("SELECT now()", &[]).await.map_err(Error::query("reading the time"))?;
        Ok(row.get(0))
    }

    /// Whether `schedule` submitted an export of `instance_id` for a slot before `slot`
    /// (it ran for that instance before, so a missed slot is a missed one, not its start).
    pub async fn ran_before(&self, schedule: &str, instance_id: &str, slot: i64) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM schedule_slots WHERE schedule = $1 AND instance_id = $2 AND slot < $3
                                  AND submitted_at IS NOT NULL)",
                &[&schedule, &instance_id, &slot],
            )
            .await
            .map_err(Error::query("reading a schedule's slots"))?;
        Ok(row.get(0))
    }

    /// Records that job `job_id` exports slot `slot` of `schedule` for `instance_id`.
    pub async fn record_slot(&self, job_id: &str, schedule: &str, instance_id: &str, slot: i64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO schedule_slots (job_id, schedule, instance_id, slot, submitted_at)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (job_id) DO UPDATE SET submitted_at = coalesce(schedule_slots.submitted_at, now())",
                &[&job_id, &schedule, &instance_id, &slot],
            )
            .await
            .map_err(Error::query("recording a schedule slot"))?;
        Ok(())
    }

    /// Marks the slot of job `job_id` overdue; true the first time only (so the event goes
    /// out once, whichever worker runs the schedules).
    pub async fn mark_overdue(&self, job_id: &str, schedule: &str, instance_id: &str, slot: i64) -> Result<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "INSERT INTO schedule_slots (job_id, schedule, instance_id, slot, overdue_at)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (job_id) DO UPDATE SET overdue_at = now() WHERE schedule_slots.overdue_at IS NULL
                 RETURNING 1",
                &[&job_id, &schedule, &instance_id, &slot],
            )
            .await
            .map_err(Error::query("marking a slot overdue"))?;
        Ok(row.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, instance: &str, schedule: &str, days_old: i64, now: OffsetDateTime) -> SnapshotRecord {
        SnapshotRecord {
            snapshot_id: id.into(),
            instance_id: instance.into(),
            owner_id: None,
            job_id: format!("job-{id}"),
            destination: "default".into(),
            key: format!("{id}.snapshot.tar.gz"),
            encrypted: false,
            schedule: Some(schedule.into()),
            size: 1,
            sha256: "00".into(),
            manifest: serde_json::json!({}),
            created_at: now - time::Duration::days(days_old),
            path: String::new(),
        }
    }

    fn schedule(keep_last: Option<u32>, keep_days: Option<u32>) -> ScheduleConfig {
        let mut s: ScheduleConfig = serde_json::from_value(serde_json::json!({"every": "1d"})).expect("schedule");
        s.keep_last = keep_last;
        s.keep_days = keep_days;
        s
    }

    #[test]
    fn a_schedule_prunes_beyond_its_retention_but_never_an_instances_newest_snapshot() {
        let now = OffsetDateTime::now_utc();
        let schedules = BTreeMap::from([
            ("last2".to_owned(), schedule(Some(2), None)),
            ("days3".to_owned(), schedule(None, Some(3))),
            ("both".to_owned(), schedule(Some(1), Some(3))),
            ("all".to_owned(), schedule(None, None)),
        ]);
        // Newest first, as the registry lists them.
        let scheduled = vec![
            snap("a0", "a", "last2", 0, now),
            snap("b0", "b", "days3", 1, now),
            snap("c0", "c", "both", 1, now),
            snap("a1", "a", "last2", 1, now),
            snap("c1", "c", "both", 2, now),
            snap("a2", "a", "last2", 2, now),
            snap("c2", "c", "both", 5, now),
            snap("a3", "a", "last2", 3, now),
            snap("b1", "b", "days3", 4, now),
            snap("d0", "d", "all", 9, now),
            snap("e0", "e", "days3", 10, now),
            snap("x0", "x", "gone", 10, now),
        ];
        let newest: HashMap<String, String> =
            [("a", "a0"), ("b", "b0"), ("c", "c0"), ("d", "d0"), ("e", "e0"), ("x", "x0")]
                .into_iter()
                .map(|(i, s)| (i.to_owned(), s.to_owned()))
                .collect();
        let pruned: Vec<(String, String)> =
            plan(&schedules, &scheduled, &newest, now).into_iter().map(|(s, why)| (s.snapshot_id, why)).collect();
        assert_eq!(
            pruned,
            [
                ("b1".to_owned(), "older than keep-days 3".to_owned()),
                ("a3".to_owned(), "beyond keep-last 2".to_owned()),
                ("c2".to_owned(), "beyond keep-last 1 and older than keep-days 3".to_owned()),
                ("a2".to_owned(), "beyond keep-last 2".to_owned()),
            ]
        );
        // e0 is older than keep-days but the only snapshot of e: it stays, until e has a
        // newer one of any origin.
        let mut newer_elsewhere = newest.clone();
        newer_elsewhere.insert("e".into(), "manual".into());
        let pruned = plan(&schedules, &scheduled, &newer_elsewhere, now);
        assert!(pruned.iter().any(|(s, _)| s.snapshot_id == "e0"), "a newer snapshot of e exists");
    }
}

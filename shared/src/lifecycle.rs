//! The expiry schedule, as pure logic: for an instance with an `expires-at`, which warnings
//! and which job are due now, and which come later and when. The worker that holds the
//! schedule's lease acts on what is due; `GET /api/v1/lifecycle` (and `dfe expire
//! --dry-run`) shows the same steps without acting, so both always agree.

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::records::InstanceState;

/// What is submitted once an instance's `expires-at` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum ExpiryAction {
    /// A DeprovisionJob.
    Deprovision,
    /// A SuspendJob.
    Suspend,
}

impl ExpiryAction {
    /// From `lifecycle.on-expiry` (checked when the configuration is loaded).
    pub fn from_config(on_expiry: &str) -> ExpiryAction {
        if on_expiry == "suspend" {
            ExpiryAction::Suspend
        } else {
            ExpiryAction::Deprovision
        }
    }
}

/// One step of an instance's schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Step {
    /// `dfe.instance.expiring`, `days` before the expiry.
    Warning {
        /// The warning's day in `lifecycle.warn-days`.
        days: f64,
        /// When it is due.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// Due now: the schedule's next run sends it.
        due: bool,
    },
    /// The job submitted at the expiry.
    Expiry {
        /// What is submitted.
        action: ExpiryAction,
        /// When (the instance's `expires-at`).
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// Due now: the schedule's next run submits it.
        due: bool,
    },
}

impl Step {
    /// Whether the step is due now.
    pub fn due(&self) -> bool {
        match self {
            Step::Warning { due, .. } | Step::Expiry { due, .. } => *due,
        }
    }
}

/// When the warning `days` before `expires_at` is due (fractions of a day are seconds).
pub fn warning_at(expires_at: OffsetDateTime, days: f64) -> OffsetDateTime {
    expires_at - Duration::seconds_f64(days * 86_400.0)
}

/// Whether an instance in `state` is one the schedule acts on for `action`: a settled
/// instance that the action would change. One that a job is changing now waits for it; a
/// suspended one is not suspended again.
pub fn applies(state: InstanceState, action: ExpiryAction) -> bool {
    match state {
        InstanceState::Provisioned => true,
        InstanceState::Suspended | InstanceState::Failed => action == ExpiryAction::Deprovision,
        InstanceState::Provisioning | InstanceState::Deprovisioning | InstanceState::Deprovisioned => false,
    }
}

/// The steps still to come for an instance expiring at `expires_at`, soonest first, given
/// the warnings already `sent` (or passed over). Of the warnings whose time has passed,
/// only the nearest to the expiry is sent: an instance given an expiry 2 days ahead with
/// `warn-days = [10, 3]` gets the 3-day warning at once and never a late 10-day one. Once
/// the expiry itself is due, no warning is sent at all.
pub fn steps(
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
    warn_days: &[f64],
    sent: &[f64],
    action: ExpiryAction,
) -> Vec<Step> {
    let expiry_due = expires_at <= now;
    let mut days: Vec<f64> = warn_days.iter().copied().filter(|d| *d > 0.0 && !sent.contains(d)).collect();
    days.sort_by(|a, b| b.total_cmp(a));
    days.dedup();
    let passed: Vec<f64> = days.iter().copied().filter(|d| warning_at(expires_at, *d) <= now).collect();
    let nearest_passed = passed.iter().copied().reduce(f64::min);
    let mut out: Vec<Step> = days
        .iter()
        .copied()
        .filter(|d| !expiry_due && (warning_at(expires_at, *d) > now || Some(*d) == nearest_passed))
        .map(|d| {
            let at = warning_at(expires_at, d);
            Step::Warning { days: d, at, due: at <= now }
        })
        .collect();
    out.push(Step::Expiry { action, at: expires_at, due: expiry_due });
    out
}

/// The warnings whose time has passed and that are not sent: the runner records them as
/// done alongside the one it sends (or the expiry), so none is sent late.
pub fn passed_over(expires_at: OffsetDateTime, now: OffsetDateTime, warn_days: &[f64], sent: &[f64]) -> Vec<f64> {
    warn_days.iter().copied().filter(|d| *d > 0.0 && !sent.contains(d) && warning_at(expires_at, *d) <= now).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).expect("time")
    }

    const DAY: i64 = 86_400;

    #[test]
    fn far_from_expiry_every_step_is_ahead_in_order() {
        let steps = steps(t(20 * DAY), t(0), &[3.0, 10.0], &[], ExpiryAction::Deprovision);
        assert_eq!(
            steps,
            vec![
                Step::Warning { days: 10.0, at: t(10 * DAY), due: false },
                Step::Warning { days: 3.0, at: t(17 * DAY), due: false },
                Step::Expiry { action: ExpiryAction::Deprovision, at: t(20 * DAY), due: false },
            ]
        );
    }

    #[test]
    fn of_the_passed_warnings_only_the_nearest_is_due_and_sent_ones_are_gone() {
        let s = steps(t(2 * DAY), t(0), &[10.0, 3.0, 1.0], &[], ExpiryAction::Suspend);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0], Step::Warning { days: 3.0, at: t(-DAY), due: true });
        assert_eq!(s[1], Step::Warning { days: 1.0, at: t(DAY), due: false });
        assert!(!s[2].due());
        assert_eq!(passed_over(t(2 * DAY), t(0), &[10.0, 3.0, 1.0], &[]), vec![10.0, 3.0]);
        let s = steps(t(2 * DAY), t(0), &[10.0, 3.0, 1.0], &[10.0, 3.0], ExpiryAction::Suspend);
        assert_eq!(s[0], Step::Warning { days: 1.0, at: t(DAY), due: false });
    }

    #[test]
    fn at_expiry_only_the_job_is_due() {
        let s = steps(t(0), t(5), &[10.0, 0.0001], &[], ExpiryAction::Deprovision);
        assert_eq!(s, vec![Step::Expiry { action: ExpiryAction::Deprovision, at: t(0), due: true }]);
    }

    #[test]
    fn fractional_days_are_seconds() {
        assert_eq!(warning_at(t(100), 50.0 / 86_400.0), t(50));
        let s = steps(t(100), t(60), &[50.0 / 86_400.0, 20.0 / 86_400.0], &[], ExpiryAction::Deprovision);
        assert!(s[0].due() && !s[1].due(), "{s:?}");
    }

    #[test]
    fn a_suspended_instance_is_not_suspended_again_and_busy_ones_wait() {
        assert!(applies(InstanceState::Suspended, ExpiryAction::Deprovision));
        assert!(!applies(InstanceState::Suspended, ExpiryAction::Suspend));
        assert!(!applies(InstanceState::Provisioning, ExpiryAction::Deprovision));
        assert!(applies(InstanceState::Provisioned, ExpiryAction::Suspend));
    }
}

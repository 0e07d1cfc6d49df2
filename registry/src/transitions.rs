//! The state machine that spans jobs and instances, in one place.
//!
//! A job *claims* its instance before it does anything ([`admit`] decides, from the kind
//! and the instance's state, whether and how), and its *end* moves the instance on in the
//! same transaction that ends the job ([`Transition`]). The API claims at submission
//! ([`Registry::submit`]), a worker claims a job that arrived straight on the queue when it
//! runs it ([`Registry::claim`]); both use the same rule, so a job refused at one door is
//! refused at the other with the same code.
//!
//! ```text
//!              provision / import (new)                 deprovision
//!   (none) ─────────────────────────────► provisioning ──────┐
//!  deprovisioned ◄───── released ──────────┘   │ ok           │
//!        ▲                                     ▼              │
//!        │            deprovision ◄─────── provisioned ◄──────┘ (export, import: used as is)
//!        │   ok         │                      ▲
//!        └──────── deprovisioning ──failed──► failed ──deprovision──► deprovisioning
//! ```

use deadpool_postgres::GenericClient;
use dfe_shared::event::EventError;
use dfe_shared::job::{Job, JobKind};
use dfe_shared::placement::Plan;
use dfe_shared::records::{InstanceRecord, InstanceState, JobState};

use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::jobs::{job_from_row, Cancelled, JOB_COLUMNS};
use crate::pipeline::{Begun, Step};
use crate::{Error, Registry, Result};

/// How long the event relay leaves a cancelled job's failure event to the canceller before
/// publishing it itself.
const CANCEL_EVENT_GRACE_SECS: f64 = 30.0;

/// How a job may go on with its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The instance id is free (never used, or deprovisioned): the job claims it as
    /// `provisioning`, with its placement.
    Create,
    /// This very job holds the claim already (a redelivery, or a claim the API took at
    /// submission): nothing to write.
    Continue,
    /// The job moves the instance into this state and owns it.
    Begin(InstanceState),
    /// The job works on the instance as it is (an export; an import into a running instance).
    Use,
}

/// Why a job may not go on with its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `instance-exists`, `instance-not-found`, `instance-busy`, `no-capacity` or
    /// `quota-exceeded`.
    pub code: &'static str,
    /// What a person reads.
    pub message: String,
}

impl Refusal {
    fn exists(id: &str) -> Refusal {
        Refusal { code: "instance-exists", message: format!("instance {id} already exists") }
    }
    fn not_found(id: &str) -> Refusal {
        Refusal { code: "instance-not-found", message: format!("instance {id} does not exist") }
    }
    pub(crate) fn busy(id: &str, why: impl std::fmt::Display) -> Refusal {
        Refusal { code: "instance-busy", message: format!("instance {id} is mid-operation ({why})") }
    }
    pub(crate) fn no_capacity(message: String) -> Refusal {
        Refusal { code: "no-capacity", message }
    }
    fn quota(owner: &str, max: u32, have: i64) -> Refusal {
        Refusal { code: "quota-exceeded", message: format!("owner {owner} has {have} instances, its quota is {max}") }
    }
}

/// The rule: may a job of `kind` (id `job_id`) go on with instance `id`, which is in
/// `current` (state, owning job) or does not exist?
pub fn admit(
    kind: JobKind,
    id: &str,
    current: Option<(InstanceState, &str)>,
    job_id: &str,
) -> Result<Admission, Refusal> {
    use InstanceState as S;
    let mine = |owner: &str| owner == job_id;
    match (kind, current) {
        (JobKind::Provision | JobKind::Import, None | Some((S::Deprovisioned, _))) => Ok(Admission::Create),
        (JobKind::Provision | JobKind::Import, Some((S::Provisioning, owner))) if mine(owner) => {
            Ok(Admission::Continue)
        }
        (JobKind::Provision, Some(_)) => Err(Refusal::exists(id)),
        (JobKind::Import, Some((S::Provisioned, _))) => Ok(Admission::Use),
        (JobKind::Import, Some((S::Failed, _))) => Err(Refusal::busy(id, "failed; deprovision it first")),
        (JobKind::Import, Some((S::Suspended, _))) => Err(Refusal::busy(id, "suspended; resume it first")),
        (JobKind::Import, Some((state, _))) => Err(Refusal::busy(id, state)),
        (JobKind::Deprovision, None | Some((S::Deprovisioned, _))) => Err(Refusal::not_found(id)),
        (JobKind::Deprovision, Some((S::Provisioned | S::Failed | S::Suspended, _))) => {
            Ok(Admission::Begin(S::Deprovisioning))
        }
        (JobKind::Deprovision, Some((S::Deprovisioning, owner))) if mine(owner) => Ok(Admission::Continue),
        (JobKind::Deprovision, Some((state, _))) => Err(Refusal::busy(id, state)),
        (JobKind::Export, None | Some((S::Deprovisioned, _))) => Err(Refusal::not_found(id)),
        (JobKind::Export, Some((S::Provisioned | S::Suspended, _))) => Ok(Admission::Use),
        (JobKind::Export, Some((state, _))) => Err(Refusal::busy(id, state)),
        // Suspending a suspended instance, or resuming a running one, finds it done.
        (JobKind::Suspend | JobKind::Resume, None | Some((S::Deprovisioned, _))) => Err(Refusal::not_found(id)),
        (JobKind::Suspend | JobKind::Resume, Some((S::Provisioned | S::Suspended, _))) => Ok(Admission::Use),
        (JobKind::Suspend | JobKind::Resume, Some((state, _))) => Err(Refusal::busy(id, state)),
        // A move works on a running instance and switches its record itself, mid-job
        // ([`Registry::switch_host`]): it owns nothing, like a suspend.
        (JobKind::Move, None | Some((S::Deprovisioned, _))) => Err(Refusal::not_found(id)),
        (JobKind::Move, Some((S::Provisioned, _))) => Ok(Admission::Use),
        (JobKind::Move, Some((S::Suspended, _))) => Err(Refusal::busy(id, "suspended; resume it first")),
        (JobKind::Move, Some((state, _))) => Err(Refusal::busy(id, state)),
    }
}

/// First key of the transaction locks that serialize one owner's claims ("dfeq").
const QUOTA_LOCK_SPACE: i32 = 0x6466_6571;

/// What a job's end does to its instance. Every change but [`Transition::None`] applies
/// only while the job still owns the instance, so a late or duplicate end changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// No change.
    None,
    /// A provision (or an import into a new instance) succeeded.
    Provisioned {
        /// Where the console talks to it.
        resource_uri: Option<String>,
        /// Names of what was made.
        resources: serde_json::Value,
    },
    /// A provision failed and removed what it made: the claim is handed back.
    Released,
    /// A deprovision succeeded.
    Deprovisioned,
    /// The job ended part-way (a removal that failed, a rollback that could not finish, a
    /// panic, a deadline): the instance is `failed`, and a deprovision finishes it.
    Failed,
    /// A suspend succeeded.
    Suspended,
    /// A resume succeeded; the instance may answer at another address now.
    Resumed {
        /// Where the console talks to it (None: unchanged).
        resource_uri: Option<String>,
    },
}

/// How a job ended, as recorded.
#[derive(Debug, Clone)]
pub struct Ending<'a> {
    /// `succeeded` or `failed`.
    pub state: JobState,
    /// What was made.
    pub result: &'a serde_json::Value,
    /// Why it failed.
    pub error: Option<&'a EventError>,
    /// What it does to the instance.
    pub transition: Transition,
}

/// A claim taken: how the job goes on, and the instance as it now stands.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// How the job may go on.
    pub admission: Admission,
    /// The instance after the claim.
    pub instance: InstanceRecord,
}

impl Registry {
    /// Takes (or finds already taken) the claim of job `job_id` on its instance, by the
    /// same rule as a submission: for a job that arrived straight on the queue, and as the
    /// first step of every job body (a redelivered job finds its own claim and goes on).
    /// `seen` is the instance as the run read it under its lock when it started
    /// ([`crate::Entered::instance`]; None: there was none then).
    pub async fn claim(
        &self,
        job: &Job,
        job_id: &str,
        plan: Option<&Plan>,
        seen: Option<&InstanceRecord>,
    ) -> Result<std::result::Result<Claimed, Refusal>> {
        // Usually the claim was taken already (by the api, or by an earlier run): then what
        // the run read under its lock answers, without a statement. Nothing else changes
        // the instance while its lock is held: any other job on it is refused as busy.
        if let Some(current) = seen {
            let admission =
                admit(job.kind(), job.instance_id().as_str(), Some((current.state, &current.job_id)), job_id);
            if let Ok(admission @ (Admission::Continue | Admission::Use)) = admission {
                return Ok(Ok(Claimed { admission, instance: current.clone() }));
            }
        }
        // `BEGIN` goes out with the read under the row lock: one round trip less than a
        // transaction begun on its own. A refusal drops (and so rolls back) the transaction.
        let client = self.client().await?;
        let read = crate::stmt(&client, &claim_read_sql()).await?;
        let id = job.instance_id().as_str();
        let (tx, rows) = Begun::start(client, &[Step::new(&read, &[&id], "reading an instance")]).await?;
        let current = rows.first().and_then(|r| r.first()).map(instance_from_row).transpose()?;
        let claimed = claim_with(tx.client(), job, job_id, plan, None, current).await?;
        if claimed.is_ok() {
            tx.commit("committing a claim").await?;
        }
        Ok(claimed)
    }

    /// Ends job `job_id` and applies its transition to the instance, atomically. False when
    /// the job had already ended (a duplicate run): then nothing changes.
    pub async fn complete(&self, job_id: &str, instance_id: &str, ending: &Ending<'_>) -> Result<bool> {
        let client = self.client().await?;
        let ended = EndedJob::new(job_id, instance_id, ending);
        let completions = Completions::of(std::iter::once(&ended));
        let row = client
            .query_one(&crate::stmt(&client, completions.sql()).await?, &completions.params())
            .await
            .map_err(Error::query("ending a job"))?;
        Ok(row.get::<_, bool>("completed"))
    }

    /// Cancels job `job_id` for client `by`, if it has not started: a `queued` or `retrying`
    /// job ends `failed` with `error.code` `cancelled`, in one transaction with handing back
    /// its claim, and its failure event is recorded in the event outbox (due in a while: the
    /// caller publishes it now and marks it delivered; if it cannot, the workers' event relay
    /// does). A job of an owner outside `owners` is not found.
    ///
    /// The claim goes back by the job's kind of admission. One that never ran (no attempt)
    /// made nothing: a new instance's claim is released (the id is free again), and an
    /// instance a job moved (a deprovision: `deprovisioning`, from `provisioned` or
    /// `failed`) goes back to the state and last job it had. One waiting for a retry may have
    /// made or removed parts: its instance is left `failed`, as an abort leaves it, for a
    /// deprovision to finish.
    pub async fn cancel(&self, job_id: &str, by: &str, owners: Option<&[String]>) -> Result<Cancelled> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::query("starting a cancellation"))?;
        let sql = format!("SELECT {JOB_COLUMNS}, owner_id FROM jobs WHERE job_id = $1 FOR UPDATE");
        let Some(row) = tx.query_opt(&sql, &[&job_id]).await.map_err(Error::query("reading a job"))? else {
            return Ok(Cancelled::NotFound);
        };
        let owner: Option<serde_json::Value> = row.get("owner_id");
        let owner_text = owner.as_ref().map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned));
        if owners.is_some_and(|o| !owner_text.as_ref().is_some_and(|t| o.contains(t))) {
            return Ok(Cancelled::NotFound);
        }
        let record = job_from_row(&row)?;
        if !matches!(record.state, JobState::Queued | JobState::Retrying) {
            return Ok(Cancelled::TooLate(record.state));
        }
        let error = EventError { code: "cancelled".into(), message: format!("cancelled by {by} before it ran") };
        let sql = format!(
            "UPDATE jobs SET state = 'failed', error = $2, result = '{{}}'::jsonb, finished_at = now(),
                    updated_at = now(), next_retry_at = NULL, deadline_at = NULL
             WHERE job_id = $1 RETURNING {JOB_COLUMNS}"
        );
        let error_json = serde_json::to_value(&error).unwrap_or_default();
        let row = tx.query_one(&sql, &[&job_id, &error_json]).await.map_err(Error::query("cancelling a job"))?;
        let cancelled = job_from_row(&row)?;
        let instance = cancelled.instance_id.as_str();
        let handed_back = if record.attempts == 0 {
            let released = tx
                .execute(
                    "DELETE FROM instances WHERE instance_id = $1 AND job_id = $2 AND state = 'provisioning'",
                    &[&instance, &job_id],
                )
                .await;
            released.and(
                tx.execute(
                    "UPDATE instances SET state = coalesce(previous_state, 'failed'),
                            job_id = coalesce(previous_job_id, job_id), previous_state = NULL,
                            previous_job_id = NULL, updated_at = now()
                     WHERE instance_id = $1 AND job_id = $2
                       AND state NOT IN ('provisioning', 'provisioned', 'deprovisioned', 'failed')",
                    &[&instance, &job_id],
                )
                .await,
            )
        } else {
            tx.execute(
                "UPDATE instances SET state = 'failed', updated_at = now()
                 WHERE instance_id = $1 AND job_id = $2 AND state NOT IN ('provisioned', 'deprovisioned', 'failed')",
                &[&instance, &job_id],
            )
            .await
        };
        handed_back.map_err(Error::query("handing back a cancelled job's claim"))?;
        let name = dfe_shared::event::names::failed(cancelled.kind);
        let event = dfe_shared::event::Event {
            event_id: dfe_shared::event::Event::id_for(job_id, &name),
            event: name.clone(),
            occurred_at: time::OffsetDateTime::now_utc(),
            job_id: Some(job_id.to_owned()),
            service: "dfe-api".to_owned(),
            instance_id: Some(cancelled.instance_id.clone()),
            owner_id: owner,
            request: cancelled.request.clone(),
            result: serde_json::json!({}),
            error: Some(error),
            trace_id: cancelled.trace_id.clone(),
        };
        tx.execute(
            "INSERT INTO event_outbox (event_id, routing_key, body, job_id, attempts, next_attempt_at)
             VALUES ($1, $2, $3, $4, 0, now() + make_interval(secs => $5)) ON CONFLICT (event_id) DO NOTHING",
            &[
                &event.event_id,
                &name,
                &serde_json::to_value(&event).unwrap_or_default(),
                &job_id,
                &CANCEL_EVENT_GRACE_SECS,
            ],
        )
        .await
        .map_err(Error::query("keeping a cancelled job's failure event"))?;
        tx.commit().await.map_err(Error::query("committing a cancellation"))?;
        Ok(Cancelled::Done(Box::new((cancelled, event))))
    }

    /// Places a new instance again, away from `lost` (its host became unreachable before
    /// any of its parts was made there): in one transaction with the cluster's hosts
    /// locked, as a claim. `Ok(None)`: nowhere else fits (the refusal says why).
    pub async fn replace(
        &self,
        instance_id: &str,
        job_id: &str,
        plan: &Plan,
        lost: &str,
    ) -> Result<std::result::Result<InstanceRecord, Refusal>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::query("starting a re-placement"))?;
        tx.query(
            "SELECT 1 FROM instances WHERE instance_id = $1 AND job_id = $2 AND state = 'provisioning' FOR UPDATE",
            &[&instance_id, &job_id],
        )
        .await
        .map_err(Error::query("locking an instance"))?;
        let placement = match crate::fleet::place_in(&tx, plan, &[lost.to_owned()]).await? {
            Ok(p) => p,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let sql = format!(
            "UPDATE instances SET cluster_id = $3, host_id = $4, updated_at = now()
             WHERE instance_id = $1 AND job_id = $2 AND state = 'provisioning' RETURNING {INSTANCE_COLUMNS}"
        );
        let row = tx
            .query_opt(&sql, &[&instance_id, &job_id, &placement.cluster_id, &placement.host_id])
            .await
            .map_err(Error::query("placing an instance again"))?;
        let Some(row) = row else {
            return Err(Error::Inconsistent(format!("instance {instance_id} is no longer claimed by job {job_id}")));
        };
        let record = instance_from_row(&row)?;
        tx.commit().await.map_err(Error::query("committing a re-placement"))?;
        Ok(Ok(record))
    }

    /// Marks an instance that a job left mid-operation `failed` (the reconciler's repair of
    /// an instance whose job ended without moving it on), so a deprovision can finish it.
    pub async fn fail_abandoned(&self, instance_id: &str, job_id: &str) -> Result<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE instances SET state = 'failed', updated_at = now()
                 WHERE instance_id = $1 AND job_id = $2 AND state IN ('provisioning', 'deprovisioning')",
                &[&instance_id, &job_id],
            )
            .await
            .map_err(Error::query("marking an abandoned instance failed"))?;
        Ok(n > 0)
    }
}

/// A job's end as the completion statement takes it: owned, as it may wait in a batch of
/// several runs' ends ([`crate::session`]).
#[derive(Debug, Clone)]
pub(crate) struct EndedJob {
    pub(crate) job_id: String,
    pub(crate) instance_id: String,
    state: &'static str,
    result: serde_json::Value,
    error: Option<serde_json::Value>,
    /// Which instance change of the completion applies (None: [`Transition::None`]).
    change: Option<&'static str>,
    resource_uri: Option<String>,
    resources: Option<serde_json::Value>,
}

impl EndedJob {
    pub(crate) fn new(job_id: &str, instance_id: &str, ending: &Ending<'_>) -> EndedJob {
        let (change, resource_uri, resources) = match &ending.transition {
            Transition::None => (None, None, None),
            Transition::Provisioned { resource_uri, resources } => {
                (Some("provisioned"), resource_uri.clone(), Some(resources.clone()))
            }
            Transition::Released => (Some("released"), None, None),
            Transition::Deprovisioned => (Some("deprovisioned"), None, None),
            Transition::Failed => (Some("failed"), None, None),
            Transition::Suspended => (Some("suspended"), None, None),
            Transition::Resumed { resource_uri } => (Some("resumed"), resource_uri.clone(), None),
        };
        EndedJob {
            job_id: job_id.to_owned(),
            instance_id: instance_id.to_owned(),
            state: ending.state.as_str(),
            result: ending.result.clone(),
            error: ending.error.map(|e| serde_json::to_value(e).unwrap_or_default()),
            change,
            resource_uri,
            resources,
        }
    }
}

/// The instance changes of a completion, by name: each a data-modifying CTE over `ended`,
/// the given rows whose jobs did end here. Every change but a suspend's or a resume's
/// applies only while the job still owns the instance; a suspend or resume uses the
/// instance without owning it (nothing else may run on it meanwhile: the instance lock), so
/// only the state it starts from is checked.
const CHANGES: [(&str, &str); 6] = [
    (
        "provisioned",
        "UPDATE instances SET state = 'provisioned', resource_uri = r_uri, resources = r_resources,
                provisioned_at = now(), updated_at = now()
         FROM ended WHERE r_change = 'provisioned' AND instance_id = ANY($5::text[]) AND instance_id = r_instance
           AND job_id = r_job",
    ),
    (
        "released",
        "DELETE FROM instances USING ended
         WHERE r_change = 'released' AND instance_id = ANY($5::text[]) AND instance_id = r_instance AND job_id = r_job
           AND state = 'provisioning'",
    ),
    (
        "deprovisioned",
        "UPDATE instances SET state = 'deprovisioned', deprovisioned_at = now(), updated_at = now()
         FROM ended WHERE r_change = 'deprovisioned' AND instance_id = ANY($5::text[]) AND instance_id = r_instance
           AND job_id = r_job",
    ),
    (
        "failed",
        "UPDATE instances SET state = 'failed', updated_at = now()
         FROM ended WHERE r_change = 'failed' AND instance_id = ANY($5::text[]) AND instance_id = r_instance
           AND job_id = r_job
           AND state IN ('provisioning', 'deprovisioning')",
    ),
    (
        "suspended",
        "UPDATE instances SET state = 'suspended', updated_at = now()
         FROM ended WHERE r_change = 'suspended' AND instance_id = ANY($5::text[]) AND instance_id = r_instance
           AND state IN ('provisioned', 'suspended')",
    ),
    (
        "resumed",
        "UPDATE instances SET state = 'provisioned', updated_at = now(), resource_uri = coalesce(r_uri, resource_uri)
         FROM ended WHERE r_change = 'resumed' AND instance_id = ANY($5::text[]) AND instance_id = r_instance
           AND state IN ('suspended', 'provisioned')",
    ),
];

/// The statement that ends jobs and applies their transitions to their instances, in one
/// round trip and one commit for however many jobs it is given: the jobs' update and the
/// instances' are data-modifying CTEs of one statement, so they commit together, and an
/// instance changes only when its job did end here (a late or duplicate end changes
/// nothing). A row per job given says whether it ended here.
///
/// It holds the CTEs of the changes in `present` (a bit per entry of [`CHANGES`]) and no
/// others: PostgreSQL runs every data-modifying CTE of a statement, and one with nothing to
/// do still scans (the release's and the failure's would walk the index of instances
/// mid-operation, dead entries and all). Each table is read by its key
/// (`= ANY` of the given ids), whatever the plan (see [`crate::session`]). The given rows'
/// columns are prefixed `r_`, so that in the CTEs an unqualified name is always the table's.
fn complete_sql(present: usize) -> &'static str {
    static SQL: [std::sync::OnceLock<String>; 1 << CHANGES.len()] = [const { std::sync::OnceLock::new() }; 64];
    SQL[present % SQL.len()].get_or_init(|| {
        let mut sql = String::from(
            "WITH req AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[], $6::text[],
                                     $7::text[], $8::jsonb[])
                    AS r(r_job, r_state, r_result, r_error, r_instance, r_change, r_uri, r_resources)),
             job AS (
                UPDATE jobs SET state = r_state, result = r_result, error = r_error, finished_at = now(),
                       updated_at = now()
                FROM req WHERE job_id = ANY($1::text[]) AND job_id = r_job AND state NOT IN ('succeeded', 'failed')
                RETURNING job_id)",
        );
        if present != 0 {
            sql.push_str(", ended AS (SELECT * FROM req WHERE r_job IN (SELECT job_id FROM job))");
        }
        for (i, (name, change)) in CHANGES.iter().enumerate() {
            if present & (1 << i) != 0 {
                sql.push_str(&format!(", {name} AS ({change})"));
            }
        }
        sql.push_str(" SELECT r_job AS job_id, r_job IN (SELECT job_id FROM job) AS completed FROM req");
        sql
    })
}

/// The completion of some ended jobs: its statement, and its parameters (a column each).
pub(crate) struct Completions<'a> {
    job_ids: Vec<&'a str>,
    states: Vec<&'a str>,
    results: Vec<&'a serde_json::Value>,
    errors: Vec<Option<&'a serde_json::Value>>,
    instances: Vec<&'a str>,
    changes: Vec<Option<&'a str>>,
    uris: Vec<Option<&'a str>>,
    resources: Vec<Option<&'a serde_json::Value>>,
    /// The changes among the rows: a bit per entry of [`CHANGES`].
    present: usize,
}

impl<'a> Completions<'a> {
    pub(crate) fn of(jobs: impl Iterator<Item = &'a EndedJob>) -> Completions<'a> {
        let mut c = Completions {
            job_ids: Vec::new(),
            states: Vec::new(),
            results: Vec::new(),
            errors: Vec::new(),
            instances: Vec::new(),
            changes: Vec::new(),
            uris: Vec::new(),
            resources: Vec::new(),
            present: 0,
        };
        for j in jobs {
            c.job_ids.push(&j.job_id);
            c.states.push(j.state);
            c.results.push(&j.result);
            c.errors.push(j.error.as_ref());
            c.instances.push(&j.instance_id);
            c.changes.push(j.change);
            c.uris.push(j.resource_uri.as_deref());
            c.resources.push(j.resources.as_ref());
            if let Some(i) = CHANGES.iter().position(|(name, _)| Some(*name) == j.change) {
                c.present |= 1 << i;
            }
        }
        c
    }

    /// The statement for these rows.
    pub(crate) fn sql(&self) -> &'static str {
        complete_sql(self.present)
    }

    pub(crate) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.job_ids,
            &self.states,
            &self.results,
            &self.errors,
            &self.instances,
            &self.changes,
            &self.uris,
            &self.resources,
        ]
    }
}

/// Reads a job's instance under its row lock: the first statement of a claim.
pub(crate) fn claim_read_sql() -> String {
    format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1 FOR UPDATE")
}

/// The claim inside a transaction, given the instance as [`claim_read_sql`] read it in the
/// round trip that began the transaction: applies [`admit`], and writes what the admission
/// says. `Ok(Err(_))` is a refusal (the caller rolls back). With `owners`, an instance of
/// another owner that the job would work on is refused as not found, exactly as one that
/// does not exist.
pub(crate) async fn claim_with(
    tx: &impl GenericClient,
    job: &Job,
    job_id: &str,
    plan: Option<&Plan>,
    owners: Option<&[String]>,
    current: Option<InstanceRecord>,
) -> Result<std::result::Result<Claimed, Refusal>> {
    let id = job.instance_id().as_str();
    let foreign = current.as_ref().is_some_and(|c| {
        c.state != InstanceState::Deprovisioned && owners.is_some_and(|o| !o.contains(&c.owner_id.as_text()))
    });
    if foreign {
        // An instance this submitter may not see: a job on it finds none; one that would make
        // it finds the id taken, as instance ids are unique across owners.
        return Ok(Err(match job.kind() {
            JobKind::Provision | JobKind::Import => Refusal::exists(id),
            _ => Refusal::not_found(id),
        }));
    }
    let admission = match admit(job.kind(), id, current.as_ref().map(|c| (c.state, c.job_id.as_str())), job_id) {
        Ok(a) => a,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let written = match admission {
        Admission::Create => {
            let plan = plan.ok_or_else(|| {
                Error::Inconsistent(format!("claiming new instance {id} for job {job_id} without a placement"))
            })?;
            if let Some((owner, max)) = &plan.quota {
                // One owner's claims are serialized (a transaction lock on the owner), so
                // concurrent provisions never overshoot the quota. The count is a second
                // statement, sent with the lock: it reads with a snapshot taken after the
                // lock was granted.
                let lock = crate::stmt(tx, "SELECT pg_advisory_xact_lock($1, hashtext($2))").await?;
                let count = crate::stmt(
                    tx,
                    "SELECT count(*) FROM instances WHERE owner_id #>> '{}' = $1 AND state <> 'deprovisioned'
                       AND instance_id <> $2",
                )
                .await?;
                let rows = crate::pipeline::run(
                    tx,
                    &[
                        Step::new(&lock, &[&QUOTA_LOCK_SPACE, owner], "locking an owner's quota"),
                        Step::new(&count, &[owner, &id], "counting an owner's instances"),
                    ],
                )
                .await?;
                let have: i64 = rows
                    .get(1)
                    .and_then(|r| r.first())
                    .map(|r| r.get(0))
                    .ok_or_else(|| Error::Inconsistent("a count without its row".into()))?;
                if have >= i64::from(*max) {
                    return Ok(Err(Refusal::quota(owner, *max, have)));
                }
            }
            let placement = match crate::fleet::place_in(tx, plan, &[]).await? {
                Ok(p) => p,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let (owner, owner_type) = match job {
                Job::Provision(p) => (&p.owner_id, p.owner_type.as_ref()),
                Job::Import(i) => (&i.owner_id, i.owner_type.as_ref()),
                Job::Deprovision(_) | Job::Export(_) | Job::Suspend(_) | Job::Resume(_) | Job::Move(_) => {
                    return Err(Error::Inconsistent(format!("a {} job cannot create an instance", job.kind())))
                }
            };
            let owner = serde_json::to_value(owner).unwrap_or_default();
            let owner_type = owner_type.map(|o| serde_json::to_value(o).unwrap_or_default());
            let offerings = serde_json::to_value(&placement.offerings).unwrap_or_default();
            let sql = format!(
                "INSERT INTO instances (instance_id, owner_id, owner_type, state, guest_location, cluster_id,
                                        host_id, database_server, offerings, job_id, memory_reserved, expires_at)
                 VALUES ($1, $2, $3, 'provisioning', $4, $5, $6, $7, $8, $9, $10,
                         now() + make_interval(secs => $11::float8 * 86400))
                 ON CONFLICT (instance_id) DO UPDATE
                    SET owner_id = EXCLUDED.owner_id, owner_type = EXCLUDED.owner_type,
                        state = 'provisioning', guest_location = EXCLUDED.guest_location,
                        cluster_id = EXCLUDED.cluster_id, host_id = EXCLUDED.host_id,
                        database_server = EXCLUDED.database_server, offerings = EXCLUDED.offerings,
                        memory_reserved = EXCLUDED.memory_reserved, expires_at = EXCLUDED.expires_at,
                        job_id = EXCLUDED.job_id, host = NULL, resource_uri = NULL, resources = '{{}}'::jsonb,
                        created_at = now(), updated_at = now(), provisioned_at = NULL, deprovisioned_at = NULL
                    WHERE instances.state = 'deprovisioned'
                 RETURNING {INSTANCE_COLUMNS}"
            );
            let row = tx
                .query_opt(
                    &crate::stmt(tx, &sql).await?,
                    &[
                        &id,
                        &owner,
                        &owner_type,
                        &placement.guest_location,
                        &placement.cluster_id,
                        &placement.host_id,
                        &placement.database_server,
                        &offerings,
                        &job_id,
                        &placement.memory,
                        &plan.ttl_days,
                    ],
                )
                .await
                .map_err(Error::query("claiming an instance id"))?;
            // The row was read FOR UPDATE (or did not exist: a concurrent insert then wins
            // the conflict and this one returns nothing).
            match row {
                Some(row) => instance_from_row(&row)?,
                None => return Ok(Err(Refusal::exists(id))),
            }
        }
        Admission::Begin(state) => {
            // Where it came from is kept, so that cancelling the job before it runs hands the
            // instance back as it was.
            let sql = format!(
                "UPDATE instances SET previous_state = state, previous_job_id = job_id,
                        state = $2, job_id = $3, updated_at = now()
                 WHERE instance_id = $1 RETURNING {INSTANCE_COLUMNS}"
            );
            let row = tx
                .query_one(&crate::stmt(tx, &sql).await?, &[&id, &state.as_str(), &job_id])
                .await
                .map_err(Error::query("claiming an instance"))?;
            instance_from_row(&row)?
        }
        Admission::Continue | Admission::Use => {
            current.ok_or_else(|| Error::Inconsistent(format!("instance {id} admitted as existing but not found")))?
        }
    };
    Ok(Ok(Claimed { admission, instance: written }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState as S;

    #[test]
    fn every_kind_is_admitted_by_one_rule() {
        let a = |kind, cur: Option<(S, &str)>| admit(kind, "acme", cur, "j1");
        assert_eq!(a(JobKind::Provision, None), Ok(Admission::Create));
        assert_eq!(a(JobKind::Provision, Some((S::Deprovisioned, "j0"))), Ok(Admission::Create));
        assert_eq!(a(JobKind::Provision, Some((S::Provisioning, "j1"))), Ok(Admission::Continue));
        assert_eq!(a(JobKind::Provision, Some((S::Provisioning, "j0"))).map_err(|r| r.code), Err("instance-exists"));
        assert_eq!(a(JobKind::Provision, Some((S::Failed, "j0"))).map_err(|r| r.code), Err("instance-exists"));
        assert_eq!(a(JobKind::Import, Some((S::Provisioned, "j0"))), Ok(Admission::Use));
        assert_eq!(a(JobKind::Import, Some((S::Failed, "j0"))).map_err(|r| r.code), Err("instance-busy"));
        assert_eq!(a(JobKind::Deprovision, None).map_err(|r| r.code), Err("instance-not-found"));
        assert_eq!(a(JobKind::Deprovision, Some((S::Failed, "j0"))), Ok(Admission::Begin(S::Deprovisioning)));
        assert_eq!(a(JobKind::Deprovision, Some((S::Deprovisioning, "j1"))), Ok(Admission::Continue));
        assert_eq!(a(JobKind::Deprovision, Some((S::Deprovisioning, "j0"))).map_err(|r| r.code), Err("instance-busy"));
        assert_eq!(a(JobKind::Deprovision, Some((S::Provisioning, "j0"))).map_err(|r| r.code), Err("instance-busy"));
        assert_eq!(a(JobKind::Export, Some((S::Provisioned, "j0"))), Ok(Admission::Use));
        assert_eq!(a(JobKind::Export, Some((S::Deprovisioned, "j0"))).map_err(|r| r.code), Err("instance-not-found"));
        assert_eq!(a(JobKind::Export, Some((S::Failed, "j0"))).map_err(|r| r.code), Err("instance-busy"));
        assert_eq!(a(JobKind::Move, Some((S::Provisioned, "j0"))), Ok(Admission::Use));
        assert_eq!(a(JobKind::Move, Some((S::Suspended, "j0"))).map_err(|r| r.code), Err("instance-busy"));
        assert_eq!(a(JobKind::Move, Some((S::Failed, "j0"))).map_err(|r| r.code), Err("instance-busy"));
        assert_eq!(a(JobKind::Move, None).map_err(|r| r.code), Err("instance-not-found"));
    }
}

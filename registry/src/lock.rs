//! Per-instance mutual exclusion across all workers: a session-level PostgreSQL advisory
//! lock for the length of a job. Every lock of a process is held by one registry session,
//! the lock session ([`crate::session`]), so that the statements of concurrent runs
//! (entering, ending, unlocking) go out together, several runs' rows to a statement and
//! one commit for them all. When a worker dies, its session closes and PostgreSQL releases
//! its locks, so a redelivered job can go on.
//!
//! One session holds many locks, and a session may take a lock it already holds (they
//! stack), so the lock session keeps the keys it holds and never tries one of them again
//! for another run of the same process: such a run waits as if another worker held it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dfe_shared::job::Job;
use tokio::sync::{mpsc, oneshot};

use crate::jobs::Submitter;
use crate::runs::{EndRow, EnterRow, Entered, RunBy};
use crate::session::{Counts, Request};
use crate::transitions::EndedJob;
use crate::{Ending, Error, Result};

/// How often a job waiting for its instance's lock tries again.
const POLL: Duration = Duration::from_millis(200);

/// What entering a job's run came to.
pub enum Entry {
    /// Recorded (or found) and started, under its instance's lock: run it, then end it with
    /// [`InstanceLock::complete_and_release`] (or release the lock).
    Started(Entered, Box<InstanceLock>),
    /// The job had ended already (a duplicate delivery): its outcome is to be announced again.
    Ended(Entered),
    /// The job id names a job of another kind: the message is not this job.
    OtherKind(Entered),
    /// The instance stayed locked by another job for the whole wait; the job is recorded.
    Busy(Entered),
}

/// The handle on a process's lock session; cheap to clone. The session (one connection to
/// the registry, opened again when it breaks) lives as long as a handle or a lock does.
#[derive(Clone)]
pub struct LockSession {
    pub(crate) requests: mpsc::UnboundedSender<Request>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for LockSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockSession").field("stats", &self.stats()).finish()
    }
}

/// What a lock session has served so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Requests of runs: entering (each try), ending, giving a lock back.
    pub requests: u64,
    /// Batches sent for them (each one round trip); requests ÷ batches is the mean batch.
    pub batches: u64,
}

/// A held lock; end the run with [`InstanceLock::complete_and_release`], or give it back with
/// [`InstanceLock::release`]. Dropped without either, it is released in the background.
pub struct InstanceLock {
    /// The lock session holding it.
    pub(crate) requests: mpsc::UnboundedSender<Request>,
    /// The lock's key (the instance id).
    pub(crate) key: String,
    /// Which connection of the session took it: a lock dies with its connection, and a
    /// newer connection must not end a run that no longer holds its lock.
    pub(crate) generation: u64,
    /// Given back (or handed to the session to end the run): nothing left for Drop.
    pub(crate) settled: bool,
}

impl LockSession {
    /// The lock session of this process, on the registry at `url` (connected on first use).
    pub fn new(url: &str) -> Result<LockSession> {
        let pool = crate::pool(url, 1, deadpool_postgres::RecyclingMethod::Fast)?;
        let (requests, incoming) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(crate::session::serve(pool, incoming, counts.clone()));
        Ok(LockSession { requests, counts })
    }

    /// What the session has served so far.
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            requests: self.counts.requests.load(Ordering::Relaxed),
            batches: self.counts.batches.load(Ordering::Relaxed),
        }
    }

    /// Enters the run of `job` (which must carry its id), arrived on a queue: records it
    /// (or finds it recorded, by the api or an earlier delivery), waits up to
    /// `runner.lock_wait` for the lock of `key`, and starts it. Every try is one row of a
    /// statement shared with the other runs trying at the same moment.
    pub async fn enter(&self, job: &Job, key: &str, by: &Submitter<'_>, runner: &RunBy<'_>) -> Result<Entry> {
        let row = Arc::new(EnterRow {
            job_id: job.job_id().map(|j| j.as_str().to_owned()).unwrap_or_default(),
            kind: job.kind().as_str(),
            instance_id: job.instance_id().as_str().to_owned(),
            owner: job.owner_id().map(|o| serde_json::to_value(o).unwrap_or_default()),
            request: job.to_value(),
            source: by.source.to_owned(),
            requested_by: by.requested_by.to_owned(),
            fingerprint: by.fingerprint.map(str::to_owned),
            traceparent: by.traceparent.map(str::to_owned),
            key: key.to_owned(),
            worker: runner.worker.to_owned(),
            deadline_secs: runner.deadline_secs,
        });
        let deadline = tokio::time::Instant::now() + runner.lock_wait;
        loop {
            let answer = LockSession::ask(&self.requests, |a| Request::Enter(row.clone(), a)).await?;
            if answer.started {
                let entered =
                    answer.entered.ok_or_else(|| Error::Inconsistent("a started job without its row".into()))?;
                let lock = InstanceLock {
                    requests: self.requests.clone(),
                    key: key.to_owned(),
                    generation: answer.generation,
                    settled: false,
                };
                return Ok(Entry::Started(entered, Box::new(lock)));
            }
            match answer.entered {
                Some(e) if e.record.kind != job.kind() => return Ok(Entry::OtherKind(e)),
                Some(e) if e.record.state.is_terminal() => return Ok(Entry::Ended(e)),
                Some(e) if tokio::time::Instant::now() >= deadline => return Ok(Entry::Busy(e)),
                Some(_) => tokio::time::sleep(POLL).await,
                // Inserted by another delivery after this statement's snapshot: the next try
                // sees it.
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Sends `request` and waits for its answer.
    pub(crate) async fn ask<T>(
        requests: &mpsc::UnboundedSender<Request>,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (answer, answered) = oneshot::channel();
        requests.send(request(answer)).map_err(|_| ended())?;
        answered.await.map_err(|_| ended())?
    }
}

/// The session's task is gone (the runtime is shutting down): so is its connection, and with
/// it every lock it held.
fn ended() -> Error {
    Error::LockLost("the lock session has ended".into())
}

impl InstanceLock {
    /// Ends the job this lock was taken for (as [`crate::Registry::complete`] does), then
    /// releases the lock, once the completion has committed. False when the job had already
    /// ended. Whatever the answer, the lock is given up: released after the completion, or
    /// (when the completion failed) released anyway, or lost with its connection.
    pub async fn complete_and_release(mut self, job_id: &str, instance_id: &str, ending: &Ending<'_>) -> Result<bool> {
        self.settled = true;
        let end = EndRow {
            ended: EndedJob::new(job_id, instance_id, ending),
            key: std::mem::take(&mut self.key),
            generation: self.generation,
        };
        LockSession::ask(&self.requests, |a| Request::End(Box::new(end), a)).await
    }

    /// Gives the lock back without ending the run (it runs again later).
    pub async fn release(mut self) -> Result<()> {
        self.settled = true;
        let (key, generation) = (std::mem::take(&mut self.key), self.generation);
        LockSession::ask(&self.requests, |done| Request::Release { key, generation, done: Some(done) }).await
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        if !self.settled {
            // Nobody waits for it; a session that is gone has freed the lock already.
            let key = std::mem::take(&mut self.key);
            let _ = self.requests.send(Request::Release { key, generation: self.generation, done: None });
        }
    }
}

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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::runs::{EndRow, EnterRow, EntryRow};
use crate::{Error, Result};

/// First key of the two-key advisory lock space used for instances ("dfe").
pub(crate) const LOCK_SPACE: i32 = 0x0064_6665;

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

/// The counters behind [`SessionStats`], written by the session's task.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) requests: AtomicU64,
    pub(crate) batches: AtomicU64,
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

/// What the lock session is asked for.
pub(crate) enum Request {
    /// Record, lock and start a run (one try).
    Enter(Arc<EnterRow>, oneshot::Sender<Result<EntryRow>>),
    /// End a run (its completion), then release its lock: true when this ended the job.
    End(Box<EndRow>, oneshot::Sender<Result<bool>>),
    /// Give a lock back without ending its run.
    Release { key: String, generation: u64, done: Option<oneshot::Sender<Result<()>>> },
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

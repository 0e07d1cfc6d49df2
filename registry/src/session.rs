//! The lock session: one connection to the registry that holds every instance lock of the
//! process, and the task that serves the runs' requests on it in batches.
//!
//! The task takes whatever requests have arrived while its last batch was out (no wait is
//! added: under load a batch is what queued meanwhile, alone a request goes out at once)
//! and sends, in one round trip, the completions of the runs that end, then the unlocks
//! (of those runs once their jobs are found ended, and of the locks given back), then the
//! runs that enter and a read of their instances. Each of those is one statement for all
//! the runs in it: one commit for many jobs, where a connection per run cost a round trip
//! and a commit each, and PostgreSQL's share of a job was mostly those (BENCHMARKS.md).
//!
//! A statement that fails for a reason other than the connection (say, a deadlock between
//! two workers' batches) fails every run in it, so a batch of several is tried again one run
//! at a time, and only the run at fault gets the error. A lock this session cannot release
//! must not outlive its run: then the connection is closed, which releases all of them, and
//! every run that held one learns at its end that its lock was lost (its job runs again).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::instances::instance_from_row;
use crate::jobs::job_from_row;
use crate::pipeline::Step;
use crate::runs::{enter_sql, read_sql, EndRow, EnterRow, Entered, EntryRow, LOCK_SPACE, UNLOCK_SQL};
use crate::transitions::Completions;
use crate::{Error, Result};

/// What the lock session is asked for.
pub(crate) enum Request {
    /// Record, lock and start a run (one try).
    Enter(Arc<EnterRow>, oneshot::Sender<Result<EntryRow>>),
    /// End a run (its completion), then release its lock: true when this ended the job.
    End(Box<EndRow>, oneshot::Sender<Result<bool>>),
    /// Give a lock back without ending its run.
    Release { key: String, generation: u64, done: Option<oneshot::Sender<Result<()>>> },
}

/// The counters behind [`SessionStats`], written by the session's task.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) requests: AtomicU64,
    pub(crate) batches: AtomicU64,
}

/// Requests at most in one batch (a statement's rows).
const MAX_BATCH: usize = 64;

/// Serves the requests of a lock session until every handle and lock is gone.
pub(crate) async fn serve(pool: Pool, mut incoming: mpsc::UnboundedReceiver<Request>, counts: Arc<Counts>) {
    let mut session =
        Session { pool, client: None, generation: 0, held: HashSet::new(), broken: false, counts, plans: Plans::new() };
    let mut carried = Vec::new();
    loop {
        let mut batch: Vec<Request> = std::mem::take(&mut carried);
        if batch.is_empty() {
            match incoming.recv().await {
                Some(request) => batch.push(request),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match incoming.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        carried = session.serve(batch).await;
    }
}

type Enter = (Arc<EnterRow>, oneshot::Sender<Result<EntryRow>>);
type End = (Box<EndRow>, oneshot::Sender<Result<bool>>);
type Release = (String, u64, Option<oneshot::Sender<Result<()>>>);

struct Session {
    pool: Pool,
    /// The connection holding the locks (None until needed again after it broke).
    client: Option<Object>,
    /// Counts the connections lost: the locks taken on the current one carry its value.
    generation: u64,
    /// The keys whose locks the current connection holds, each for one run.
    held: HashSet<String>,
    /// The connection was given up: it is closed instead of kept.
    broken: bool,
    /// What it served, for [`crate::LockSession::stats`].
    counts: Arc<Counts>,
    /// When the statements' plans are made again.
    plans: Plans,
}

/// When the lock session's statements are planned again.
///
/// They run with generic plans: each takes its rows as arrays, and planned for the arrays at
/// hand (what PostgreSQL keeps doing while that looks cheaper than a generic plan) it would
/// be planned again at every execution, which costs more than running it. But a generic
/// plan is kept until its tables are analyzed again, and one made while they were nearly
/// empty (a new registry, or one that autovacuum has not analyzed yet) may read a table
/// whole, a hash of every finished job say, at every execution long after the table has
/// grown. So every table is read by its key, sequential scans are off on this connection
/// (no statement here needs one), and the plans are made again after each doubling of the
/// requests served (the tables grow with them) and at least every few minutes.
struct Plans {
    made: std::time::Instant,
    /// Requests served before the plans were last made, and since.
    before: u64,
    since: u64,
}

impl Plans {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(300);

    fn new() -> Plans {
        Plans { made: std::time::Instant::now(), before: 0, since: 0 }
    }

    /// Counts `requests` about to be served; true when the plans are to be made again first.
    fn due(&mut self, requests: usize) -> bool {
        self.since += u64::try_from(requests).unwrap_or(u64::MAX);
        if self.since < self.before.max(64) && self.made.elapsed() < Plans::EVERY {
            return false;
        }
        *self = Plans { made: std::time::Instant::now(), before: self.before + self.since, since: 0 };
        true
    }
}

/// What a batch's statements answered, each on its own.
struct Answers {
    completed: Option<Result<Vec<Row>>>,
    unlocked: Option<Result<Vec<Row>>>,
    entered: Option<Result<Vec<Row>>>,
    read: Option<Result<Vec<Row>>>,
}

impl Session {
    /// Serves one batch; hands back the requests left for the next (a second try of a job
    /// already in this batch: one statement must not insert or start a job twice).
    async fn serve(&mut self, batch: Vec<Request>) -> Vec<Request> {
        let mut carried = Vec::new();
        let (mut ends, mut releases, mut enters) = (Vec::new(), Vec::new(), Vec::new());
        let mut jobs = HashSet::new();
        for request in batch {
            match request {
                Request::End(row, answer) => ends.push((row, answer)),
                Request::Release { key, generation, done } => releases.push((key, generation, done)),
                Request::Enter(row, answer) if !jobs.insert(row.job_id.clone()) => {
                    carried.push(Request::Enter(row, answer));
                }
                Request::Enter(row, answer) => enters.push((row, answer)),
            }
        }
        let served = ends.len() + releases.len() + enters.len();
        self.counts.requests.fetch_add(u64::try_from(served).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.run(ends, releases, enters).await;
        carried
    }

    /// Runs a batch; on a statement's failure, its runs one at a time.
    fn run(
        &mut self,
        ends: Vec<End>,
        releases: Vec<Release>,
        enters: Vec<Enter>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if ends.is_empty() && releases.is_empty() && enters.is_empty() {
                return;
            }
            self.counts.batches.fetch_add(1, Ordering::Relaxed);
            let client = match self.take_connection().await {
                Ok(client) => client,
                Err(e) => return fail_all(ends, releases, enters, &Arc::new(e)),
            };
            // Checked only now: taking the connection may have found the last one lost. A
            // run whose lock died with it must not be ended as if it still held it.
            let (ends, releases) = self.current(ends, releases);
            if self.plans.due(ends.len() + releases.len() + enters.len()) {
                // A failure here is left to the statements that follow to report.
                if let Err(e) = client.batch_execute("DISCARD PLANS").await {
                    tracing::debug!(error = %e, "the lock session could not discard its plans");
                }
            }
            // A key is tried once a batch, and never while this session holds it for a run.
            let mut tried = HashSet::new();
            let may_lock: Vec<bool> =
                enters.iter().map(|(row, _)| !self.held.contains(&row.key) && tried.insert(row.key.clone())).collect();
            let answers = match send(&client, &ends, &releases, &enters, &may_lock).await {
                Ok(answers) if !client.is_closed() => answers,
                Ok(_) => {
                    self.lose("its connection closed");
                    self.put_back(client);
                    let e = Error::LockLost("the lock session's connection closed".into());
                    return fail_all(ends, releases, enters, &Arc::new(e));
                }
                Err(e) => {
                    // Not even prepared: what this connection holds cannot be accounted for.
                    self.lose("preparing its statements failed");
                    self.put_back(client);
                    return fail_all(ends, releases, enters, &Arc::new(e));
                }
            };
            let ends = self.settle_ends(&client, ends, releases, answers.completed, answers.unlocked).await;
            let enters = self.settle_enters(&client, enters, &may_lock, answers.entered, answers.read).await;
            self.put_back(client);
            for end in ends {
                self.run(vec![end], Vec::new(), Vec::new()).await;
            }
            for enter in enters {
                self.run(Vec::new(), Vec::new(), vec![enter]).await;
            }
        })
    }

    /// The ends and releases of locks this connection holds; the others are answered: their
    /// locks were released with the connection that held them.
    fn current(&self, ends: Vec<End>, releases: Vec<Release>) -> (Vec<End>, Vec<Release>) {
        let (ends, lost_ends): (Vec<End>, Vec<End>) =
            ends.into_iter().partition(|(row, _)| row.generation == self.generation);
        for (row, answer) in lost_ends {
            let _ = answer.send(Err(lost(&row.key)));
        }
        let (releases, gone): (Vec<Release>, Vec<Release>) =
            releases.into_iter().partition(|(_, generation, _)| *generation == self.generation);
        for (_, _, done) in gone {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
        }
        (ends, releases)
    }

    /// The connection, opened again if it was lost; [`Session::put_back`] returns it.
    async fn take_connection(&mut self) -> Result<Object> {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                return Ok(client);
            }
            self.lose("its connection closed");
            self.put_back(client);
        }
        let client = self.pool.get().await?;
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
            .await
            .map_err(Error::query("setting up the lock session"))?;
        self.plans = Plans::new();
        Ok(client)
    }

    /// Keeps the connection for the next batch, or closes it if it was given up (closing is
    /// what releases its locks: it never goes back to the pool, where it would stay open).
    fn put_back(&mut self, client: Object) {
        if std::mem::take(&mut self.broken) {
            drop(Object::take(client));
        } else {
            self.client = Some(client);
        }
    }

    /// Gives up the connection, and with it every lock it holds: the runs holding one learn
    /// it at their end. The connection is closed when it is put back.
    fn lose(&mut self, why: &str) {
        if !self.held.is_empty() {
            tracing::warn!(locks = self.held.len(), why, "the lock session gives up its connection and its locks");
        }
        self.broken = true;
        self.generation += 1;
        self.held.clear();
    }

    /// Answers the ends and the releases from the completion and the unlock.
    async fn settle_ends(
        &mut self,
        client: &Object,
        ends: Vec<End>,
        releases: Vec<Release>,
        completed: Option<Result<Vec<Row>>>,
        unlocked: Option<Result<Vec<Row>>>,
    ) -> Vec<End> {
        if let Some(unlocked) = unlocked {
            self.unlocked(unlocked, true);
        }
        for (_, _, done) in releases {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
        }
        match completed {
            None => Vec::new(),
            Some(Ok(rows)) => {
                let by_job: HashMap<String, bool> =
                    rows.iter().map(|r| (r.get::<_, String>("job_id"), r.get::<_, bool>("completed"))).collect();
                for (row, answer) in ends {
                    let done = by_job.get(&row.ended.job_id).copied().ok_or_else(|| {
                        Error::Inconsistent(format!("the completion of job {} came back without it", row.ended.job_id))
                    });
                    let _ = answer.send(done);
                }
                Vec::new()
            }
            Some(Err(e)) if ends.len() > 1 => {
                tracing::warn!(error = %e, runs = ends.len(), "a batch of completions failed; ending its runs one by one");
                ends
            }
            Some(Err(e)) => {
                // One run's completion failed: its job is not ended, so the unlock kept its
                // lock. It is released all the same (the delivery is settled by its error),
                // as it was when each run had a connection of its own.
                if let Some((row, answer)) = ends.into_iter().next() {
                    if self.generation == row.generation {
                        self.unlock_now(client, vec![row.key.clone()], true).await;
                    }
                    let _ = answer.send(Err(e));
                }
                Vec::new()
            }
        }
    }

    /// Answers the entered runs; a lock taken for nothing (the job had ended, is of another
    /// kind, or was inserted by another delivery meanwhile) is given back at once.
    async fn settle_enters(
        &mut self,
        client: &Object,
        enters: Vec<Enter>,
        may_lock: &[bool],
        entered: Option<Result<Vec<Row>>>,
        read: Option<Result<Vec<Row>>>,
    ) -> Vec<Enter> {
        let (Some(entered), Some(read)) = (entered, read) else { return Vec::new() };
        let failed = match (entered, read) {
            (Ok(rows), Ok(instances)) => match self.entries(&enters, &rows, &instances) {
                Ok(entries) => {
                    self.answer_entries(client, enters, entries).await;
                    return Vec::new();
                }
                Err(e) => e,
            },
            (Err(e), _) | (Ok(_), Err(e)) => e,
        };
        // Whatever the statement locked before it failed is given back: its rows were rolled
        // back, and the runs try again (one at a time, or later).
        let tried: Vec<String> =
            enters.iter().zip(may_lock).filter(|(_, may)| **may).map(|((row, _), _)| row.key.clone()).collect();
        if !tried.is_empty() {
            // Some of them may not have been taken (held elsewhere): no word about those.
            self.unlock_now(client, tried, false).await;
        }
        if enters.len() > 1 && failed.sqlstate().is_some() {
            tracing::warn!(error = %failed, runs = enters.len(), "a batch of runs failed to enter; entering them one by one");
            return enters;
        }
        let e = Arc::new(failed);
        for (_, answer) in enters {
            let _ = answer.send(Err(Error::Batch(e.clone())));
        }
        Vec::new()
    }

    /// The entries of the entered runs, from the rows of the statement (one per run, in
    /// order) and of the read: whether the lock was taken, and the run's entry or why its
    /// row could not be read (a row this version cannot read fails its own run alone).
    fn entries(&self, enters: &[Enter], rows: &[Row], instances: &[Row]) -> Result<Vec<(bool, Result<EntryRow>)>> {
        if rows.len() != enters.len() {
            return Err(Error::Inconsistent(format!(
                "entering {} runs came back with {} rows",
                enters.len(),
                rows.len()
            )));
        }
        let mut read = HashMap::new();
        for row in instances {
            let id: String = row.get("instance_id");
            read.insert(id, instance_from_row(row));
        }
        let entry = |enter: &EnterRow, row: &Row| -> Result<EntryRow> {
            let how: Option<String> = row.get("how");
            let instance = match read.get(&enter.instance_id) {
                None => None,
                Some(Ok(instance)) => Some(instance.clone()),
                Some(Err(e)) => return Err(Error::Inconsistent(format!("instance {}: {e}", enter.instance_id))),
            };
            let entered = match &how {
                Some(_) => Some(Entered { record: job_from_row(row)?, owner_id: row.get("owner_id"), instance }),
                None => None,
            };
            let started = row.get::<_, bool>("held") && matches!(how.as_deref(), Some("new" | "started"));
            Ok(EntryRow { started, generation: self.generation, entered })
        };
        Ok(enters.iter().zip(rows).map(|((enter, _), row)| (row.get("held"), entry(enter, row))).collect())
    }

    async fn answer_entries(&mut self, client: &Object, enters: Vec<Enter>, entries: Vec<(bool, Result<EntryRow>)>) {
        // Session locks stack: one kept here would be taken twice by the next try.
        let taken_for_nothing: Vec<String> = enters
            .iter()
            .zip(&entries)
            .filter(|(_, (held, entry))| *held && !entry.as_ref().is_ok_and(|e| e.started))
            .map(|((row, _), _)| row.key.clone())
            .collect();
        if !taken_for_nothing.is_empty() {
            self.unlock_now(client, taken_for_nothing, true).await;
        }
        if self.broken {
            // An unlock of this batch failed: the connection is closed when it is put back,
            // and the locks just taken go with it. No run may start on them.
            let e = Arc::new(Error::LockLost("the lock session gave up its connection".into()));
            for (_, answer) in enters {
                let _ = answer.send(Err(Error::Batch(e.clone())));
            }
            return;
        }
        for ((row, answer), (_, entry)) in enters.into_iter().zip(entries) {
            if entry.as_ref().is_ok_and(|e| e.started) {
                self.held.insert(row.key.clone());
            }
            let _ = answer.send(entry);
        }
    }

    /// Releases `keys` now, in a round trip of their own (`held`: all of them were taken);
    /// the connection is given up if that fails.
    async fn unlock_now(&mut self, client: &Object, keys: Vec<String>, held: bool) {
        let jobs: Vec<Option<&str>> = vec![None; keys.len()];
        let answer = match crate::stmt(client, UNLOCK_SQL).await {
            Ok(unlock) => client
                .query(&unlock, &[&LOCK_SPACE, &keys, &jobs])
                .await
                .map_err(Error::query("releasing instance locks")),
            Err(e) => Err(e),
        };
        self.unlocked(answer, held);
    }

    /// Forgets the keys an unlock released (`held`: each of them should have been). Locks
    /// that cannot be released must not outlive their runs: if the unlock failed, the
    /// connection is given up.
    fn unlocked(&mut self, answer: Result<Vec<Row>>, held: bool) {
        let rows = match answer {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "releasing instance locks failed; closing the lock session's connection");
                return self.lose("an unlock failed");
            }
        };
        for row in &rows {
            let key: String = row.get("u_key");
            match row.get::<_, Option<bool>>("unlocked") {
                Some(true) => {
                    self.held.remove(&key);
                }
                Some(false) => {
                    if held {
                        tracing::error!(key, "an instance lock was not held by the lock session when it was released");
                    }
                    self.held.remove(&key);
                }
                // Its job had not ended (its completion failed): the run's answer says what next.
                None => {}
            }
        }
    }
}

/// Sends a batch's statements together and waits for each one's answer.
async fn send(
    client: &Object,
    ends: &[End],
    releases: &[Release],
    enters: &[Enter],
    may_lock: &[bool],
) -> Result<Answers> {
    // Prepared first (from the connection's cache): then the statements go out in the order
    // of the pipeline.
    let completions = Completions::of(ends.iter().map(|(row, _)| &row.ended));
    let complete = if ends.is_empty() { None } else { Some(crate::stmt(client, completions.sql()).await?) };
    let unlock =
        if ends.is_empty() && releases.is_empty() { None } else { Some(crate::stmt(client, UNLOCK_SQL).await?) };
    let (enter, read) = if enters.is_empty() {
        (None, None)
    } else {
        (Some(crate::stmt(client, enter_sql()).await?), Some(crate::stmt(client, read_sql()).await?))
    };

    let completion_params = completions.params();
    let mut unlock_keys: Vec<&str> = ends.iter().map(|(row, _)| row.key.as_str()).collect();
    let mut unlock_jobs: Vec<Option<&str>> = ends.iter().map(|(row, _)| Some(row.ended.job_id.as_str())).collect();
    unlock_keys.extend(releases.iter().map(|(key, _, _)| key.as_str()));
    unlock_jobs.extend(releases.iter().map(|_| None));
    let unlock_params: [&(dyn ToSql + Sync); 3] = [&LOCK_SPACE, &unlock_keys, &unlock_jobs];
    let columns = EnterColumns::of(enters, may_lock);
    let enter_params = columns.params();
    let instances: Vec<&str> = enters.iter().map(|(row, _)| row.instance_id.as_str()).collect();
    let read_params: [&(dyn ToSql + Sync); 1] = [&instances];

    let steps = [
        complete.as_ref().map(|s| Step::new(s, &completion_params, "ending jobs")),
        unlock.as_ref().map(|s| Step::new(s, &unlock_params, "releasing instance locks")),
        enter.as_ref().map(|s| Step::new(s, &enter_params, "recording and starting jobs")),
        read.as_ref().map(|s| Step::new(s, &read_params, "reading jobs' instances")),
    ];
    let sent: Vec<Step<'_>> = steps.iter().flatten().copied().collect();
    let mut answers = crate::pipeline::each(client, &sent).await.into_iter();
    let mut next = |step: &Option<Step<'_>>| step.as_ref().and_then(|_| answers.next());
    Ok(Answers {
        completed: next(&steps[0]),
        unlocked: next(&steps[1]),
        entered: next(&steps[2]),
        read: next(&steps[3]),
    })
}

/// The parameters of the entering statement: a column each.
struct EnterColumns<'a> {
    job_ids: Vec<&'a str>,
    kinds: Vec<&'a str>,
    instances: Vec<&'a str>,
    owners: Vec<Option<&'a serde_json::Value>>,
    requests: Vec<&'a serde_json::Value>,
    sources: Vec<&'a str>,
    requested_by: Vec<&'a str>,
    fingerprints: Vec<Option<&'a str>>,
    traceparents: Vec<Option<&'a str>>,
    keys: Vec<&'a str>,
    may_lock: &'a [bool],
    workers: Vec<&'a str>,
    deadlines: Vec<f64>,
}

impl<'a> EnterColumns<'a> {
    fn of(enters: &'a [Enter], may_lock: &'a [bool]) -> EnterColumns<'a> {
        let rows = || enters.iter().map(|(row, _)| row.as_ref());
        EnterColumns {
            job_ids: rows().map(|r| r.job_id.as_str()).collect(),
            kinds: rows().map(|r| r.kind).collect(),
            instances: rows().map(|r| r.instance_id.as_str()).collect(),
            owners: rows().map(|r| r.owner.as_ref()).collect(),
            requests: rows().map(|r| &r.request).collect(),
            sources: rows().map(|r| r.source.as_str()).collect(),
            requested_by: rows().map(|r| r.requested_by.as_str()).collect(),
            fingerprints: rows().map(|r| r.fingerprint.as_deref()).collect(),
            traceparents: rows().map(|r| r.traceparent.as_deref()).collect(),
            keys: rows().map(|r| r.key.as_str()).collect(),
            may_lock,
            workers: rows().map(|r| r.worker.as_str()).collect(),
            deadlines: rows().map(|r| r.deadline_secs).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.job_ids,
            &self.kinds,
            &self.instances,
            &self.owners,
            &self.requests,
            &self.sources,
            &self.requested_by,
            &self.fingerprints,
            &self.traceparents,
            &self.keys,
            &self.may_lock,
            &self.workers,
            &self.deadlines,
            &LOCK_SPACE,
        ]
    }
}

/// Answers every request of a batch with one failure (no connection, or one lost mid-way).
fn fail_all(ends: Vec<End>, releases: Vec<Release>, enters: Vec<Enter>, e: &Arc<Error>) {
    for (_, answer) in ends {
        let _ = answer.send(Err(Error::Batch(e.clone())));
    }
    for (_, _, done) in releases {
        if let Some(done) = done {
            // Without a connection, a lock is not held either.
            let _ = done.send(Ok(()));
        }
    }
    for (_, answer) in enters {
        let _ = answer.send(Err(Error::Batch(e.clone())));
    }
}

fn lost(key: &str) -> Error {
    Error::LockLost(format!("the lock of {key} was held by a connection of the lock session that broke"))
}

#[cfg(test)]
mod tests {
    use super::Plans;

    #[test]
    fn plans_are_made_again_as_the_requests_served_double() {
        let mut plans = Plans::new();
        let mut replanned_after = Vec::new();
        let mut served = 0u64;
        for _ in 0..1000 {
            served += 8;
            if plans.due(8) {
                replanned_after.push(served);
            }
        }
        assert_eq!(replanned_after, [64, 128, 256, 512, 1024, 2048, 4096]);
    }
}

//! `--wait`: following a submitted job to its end.
//!
//! Two sources, either of which suffices: the events of the job on `dfe.events` (subscribed
//! before the job was submitted, so none can be missed), and the API's job record, polled
//! every two seconds, so that an event lost with a broker connection cannot hang the wait.
//! Events carry the progress; a terminal job record ends the wait when its final event
//! does not follow shortly.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use dfe_shared::event::{names, EventError};
use dfe_shared::job::JobKind;
use dfe_shared::records::{JobRecord, JobState};
use lapin::Consumer;
use serde_json::{Map, Value};
use tokio::time::{sleep_until, Instant};

use crate::api::ApiClient;
use crate::broker::next_body;
use crate::error::{CliError, EXIT_FAILURE};
use crate::events::{result_pairs, summary, EventView};
use crate::output::{emit, emit_line};

/// How often the job record is polled.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How long one poll may take before it counts as failed (the next one follows).
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final event may lag behind a terminal job record before the record is used.
const EVENT_GRACE: Duration = Duration::from_secs(2);

/// The job being followed.
pub struct Followed<'a> {
    /// Its kind, which names its final events.
    pub kind: JobKind,
    /// Its id, which its events carry.
    pub job_id: &'a str,
    /// How long to wait for its end.
    pub timeout: Duration,
}

/// What an event means for the followed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An intermediate event (a sub-provisioner's).
    Progress,
    /// The final success event.
    Succeeded,
    /// The final failure event (or the job's rejection).
    Failed,
}

/// Classifies `event` for the job `job_id` of `kind`; `None` when it is another job's.
pub fn classify(event: &EventView, kind: JobKind, job_id: &str) -> Option<Step> {
    if event.job_id() != Some(job_id) {
        return None;
    }
    let name = event.name();
    Some(if name == names::succeeded(kind) {
        Step::Succeeded
    } else if name == names::failed(kind) || name == names::JOB_REJECTED {
        Step::Failed
    } else {
        Step::Progress
    })
}

/// `  ✓ dfe.storage.provisioned  volume=dfe-acme-1-storage`. The final event's line has no
/// summary: the report that follows it says it all.
pub fn progress_line(event: &EventView, step: Step) -> String {
    let failed = step == Step::Failed || event.error().is_some() || event.name().ends_with(".failed");
    let mark = if failed { '✗' } else { '✓' };
    let summary = if step == Step::Progress { summary(event) } else { String::new() };
    format!("  {mark} {}  {summary}", event.name()).trim_end().to_owned()
}

/// The block printed when the job succeeded: its instance and what was made.
pub fn success_report(
    kind: JobKind,
    job_id: &str,
    instance_id: Option<&str>,
    result: Option<&Map<String, Value>>,
) -> String {
    let mut pairs = result.map(result_pairs).unwrap_or_default();
    if let Some(id) = instance_id {
        if !pairs.iter().any(|(k, _)| k == "instance-id") {
            pairs.insert(0, ("instance-id".to_owned(), id.to_owned()));
        }
    }
    let mut out = format!("{kind} job {job_id} succeeded\n");
    let width = pairs.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    for (k, v) in pairs {
        out.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    out
}

/// The block printed (on stderr) when the job failed.
pub fn failure_report(kind: JobKind, job_id: &str, error: Option<&EventError>) -> String {
    let (code, message) =
        error.map_or(("unknown", "the job failed without saying why"), |e| (e.code.as_str(), e.message.as_str()));
    format!("error: {kind} job {job_id} failed\n  error.code     {code}\n  error.message  {message}\n")
}

/// The first event source that is still there; pending forever when there is none, so a
/// `select!` simply never picks it.
async fn next_event(events: &mut Option<Consumer>) -> Option<anyhow::Result<Vec<u8>>> {
    match events {
        Some(consumer) => next_body(consumer).await,
        None => std::future::pending().await,
    }
}

/// Waits for the end of `job`, printing its progress; exit 0 on success, 1 on failure,
/// an error on timeout. `api` is polled when given. A failing poll (a 404 included: a job
/// published onto the queue is recorded only once a worker takes it) is retried at the next
/// tick; only a 401, or a record this dfe cannot read (a state it does not know), ends the
/// wait.
pub async fn follow(
    job: &Followed<'_>,
    mut events: Option<Consumer>,
    api: Option<&ApiClient>,
) -> anyhow::Result<ExitCode> {
    if events.is_none() && api.is_none() {
        anyhow::bail!("cannot follow the job: neither the event stream nor the API is available");
    }
    let deadline = Instant::now() + job.timeout;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::new(job);
    loop {
        let grace = async {
            match &watch.terminal {
                Some((_, until)) => sleep_until(*until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            body = next_event(&mut events) => match body {
                Some(Ok(bytes)) => {
                    if let Some(code) = watch.on_event(&bytes)? {
                        return Ok(code);
                    }
                }
                Some(Err(e)) => lose_events(&mut events, api.is_some(), e)?,
                None => {
                    let why = anyhow::anyhow!("RabbitMQ closed the event stream");
                    lose_events(&mut events, api.is_some(), why)?;
                }
            },
            _ = poll.tick(), if api.is_some() && watch.terminal.is_none() => {
                if let Some(api) = api {
                    watch.on_poll(api, events.is_some()).await?;
                }
            },
            () = grace => {
                if let Some((record, _)) = watch.terminal.take() {
                    return finish_from_record(job, &record);
                }
            },
            () = sleep_until(deadline) => return Err(watch.timed_out()),
        }
    }
}

/// What the wait has learnt so far.
struct Watch<'a, 'j> {
    job: &'a Followed<'j>,
    /// Ids of the events already shown: delivery is at-least-once.
    seen: HashSet<String>,
    /// The job's state at the last poll.
    last_state: JobState,
    /// Why the last poll failed, for the timeout message.
    last_poll_error: Option<String>,
    /// The API answered the last poll with 404: a job published onto the queue is recorded
    /// only once a worker takes it, so it has not been taken yet.
    unrecorded: bool,
    /// A terminal job record, and until when its final event may still come.
    terminal: Option<(JobRecord, Instant)>,
}

impl<'a, 'j> Watch<'a, 'j> {
    fn new(job: &'a Followed<'j>) -> Self {
        Watch {
            job,
            seen: HashSet::new(),
            last_state: JobState::Queued,
            last_poll_error: None,
            unrecorded: false,
            terminal: None,
        }
    }

    /// Shows an event of the job; the exit code once it is the final one.
    fn on_event(&mut self, bytes: &[u8]) -> anyhow::Result<Option<ExitCode>> {
        let job = self.job;
        let Some(event) = EventView::parse(bytes) else {
            return Ok(None);
        };
        let Some(step) = classify(&event, job.kind, job.job_id) else {
            return Ok(None);
        };
        let key = event.event_id().map_or_else(|| event.body().to_string(), str::to_owned);
        if !self.seen.insert(key) {
            return Ok(None);
        }
        emit_line(&progress_line(&event, step))?;
        Ok(match step {
            Step::Progress => None,
            Step::Succeeded => {
                let report = success_report(job.kind, job.job_id, event.instance_id(), event.result());
                emit(&report)?;
                Some(ExitCode::SUCCESS)
            }
            Step::Failed => {
                eprint!("{}", failure_report(job.kind, job.job_id, event.error().as_ref()));
                Some(ExitCode::from(EXIT_FAILURE))
            }
        })
    }

    /// Polls the job record: shows state changes, and notes a terminal record.
    async fn on_poll(&mut self, api: &ApiClient, has_events: bool) -> anyhow::Result<()> {
        let record = match tokio::time::timeout(POLL_TIMEOUT, api.job(self.job.job_id)).await {
            Ok(Ok(fetched)) => fetched.record,
            Ok(Err(e)) => {
                match e.downcast_ref::<CliError>() {
                    // A 401 now means the token was revoked meanwhile: no point going on.
                    Some(CliError::Api { status: 401, .. }) => return Err(e),
                    // Asking again gets the same answer: a state this dfe does not know is
                    // not guessed at (nor waited out).
                    Some(CliError::Unreadable(_)) => return Err(e),
                    // Not an error: the job waits in the queue for a worker.
                    Some(CliError::Api { status: 404, .. }) => {
                        self.unrecorded = true;
                        self.last_poll_error = None;
                    }
                    _ => self.last_poll_error = Some(format!("{e:#}")),
                }
                return Ok(());
            }
            Err(_) => {
                self.last_poll_error = Some(format!("no answer within {POLL_TIMEOUT:?}"));
                return Ok(());
            }
        };
        self.last_poll_error = None;
        self.unrecorded = false;
        let state = record.state;
        // Once the job's events are flowing they say more than its state; a late "running"
        // would only repeat them (a "retrying" still shows).
        let told_by_events = state == JobState::Running && !self.seen.is_empty();
        if state != self.last_state && !state.is_terminal() && !told_by_events {
            emit_line(&format!("  · {state} (attempt {})", record.attempts))?;
        }
        if state.is_terminal() {
            // The final event usually follows within moments and says more; without an
            // event stream there is nothing to wait for.
            let grace = if has_events { EVENT_GRACE } else { Duration::ZERO };
            self.terminal = Some((record, Instant::now() + grace));
        }
        self.last_state = state;
        Ok(())
    }

    fn timed_out(&self) -> anyhow::Error {
        let job = self.job;
        let state = if self.unrecorded {
            "published, not yet taken by a worker — is a dfe-worker running?"
        } else if self.last_state == JobState::Queued {
            "queued, not yet taken by a worker — is a dfe-worker running?"
        } else {
            self.last_state.as_str()
        };
        let mut msg = format!(
            "gave up waiting for the {} job {} after {} s (last known state: {state}); the job goes on \
             — `dfe jobs {}` shows how it ends",
            job.kind,
            job.job_id,
            job.timeout.as_secs(),
            job.job_id
        );
        if let Some(e) = &self.last_poll_error {
            msg.push_str(&format!("; the last poll of the API failed: {e}"));
        }
        anyhow::anyhow!(msg)
    }
}

/// Drops a broken event stream: polling carries on alone when there is an API to poll.
fn lose_events(events: &mut Option<Consumer>, can_poll: bool, why: anyhow::Error) -> anyhow::Result<()> {
    *events = None;
    if !can_poll {
        return Err(why.context("following the job"));
    }
    eprintln!("warning: {why:#}; following the job by polling the API");
    Ok(())
}

/// Ends the wait from the (terminal) job record when its final event did not come.
fn finish_from_record(job: &Followed<'_>, record: &JobRecord) -> anyhow::Result<ExitCode> {
    if record.state == JobState::Succeeded {
        let result = record.result.as_ref().and_then(Value::as_object);
        emit(&success_report(job.kind, job.job_id, Some(&record.instance_id), result))?;
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{}", failure_report(job.kind, job.job_id, record.error.as_ref()));
        Ok(ExitCode::from(EXIT_FAILURE))
    }
}

#[cfg(test)]
mod tests {
    use dfe_shared::secret::Secret;
    use serde_json::json;

    use super::*;
    use crate::testing::{job_json, serve, Answer};

    /// Serves the job `records` in turn as 200 answers.
    async fn serve_records(records: Vec<Value>) -> String {
        let answers = records.iter().map(|r| Answer::json(200, r)).collect();
        serve(answers).await
    }

    fn record(state: &str, extra: Value) -> Value {
        let mut r = job_json("j-1", state);
        if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        r
    }

    fn followed(timeout: Duration) -> Followed<'static> {
        Followed { kind: JobKind::Provision, job_id: "j-1", timeout }
    }

    #[tokio::test]
    async fn without_events_a_wait_ends_on_the_polled_job_record() {
        let done = record("succeeded", json!({"result": {"container": "dfe-acme-1"}}));
        let base = serve_records(vec![record("running", json!({})), done]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let code = follow(&followed(Duration::from_secs(20)), None, Some(&api)).await;
        assert_eq!(code.expect("no error"), ExitCode::SUCCESS);
    }

    #[tokio::test]
    async fn a_failed_job_record_exits_1() {
        let failed = record("failed", json!({"error": {"code": "c", "message": "m"}}));
        let base = serve_records(vec![failed]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let code = follow(&followed(Duration::from_secs(20)), None, Some(&api)).await;
        assert_eq!(code.expect("no error"), ExitCode::from(EXIT_FAILURE));
    }

    #[tokio::test]
    async fn a_job_that_does_not_end_in_time_is_an_error_naming_its_state() {
        let base = serve_records(vec![record("running", json!({}))]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let err = follow(&followed(Duration::from_secs(1)), None, Some(&api)).await.expect_err("a timeout");
        assert!(err.to_string().contains("last known state: running"), "{err}");
    }

    #[tokio::test]
    async fn a_job_record_in_an_unknown_state_ends_the_wait_with_a_clear_error() {
        let base = serve_records(vec![record("running", json!({})), record("paused", json!({}))]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let started = Instant::now();
        let err = follow(&followed(Duration::from_secs(30)), None, Some(&api)).await.expect_err("refused");
        assert!(started.elapsed() < Duration::from_secs(10), "not waited out to the timeout");
        let msg = err.to_string();
        assert!(msg.contains("state: unknown variant `paused`"), "{msg}");
        assert!(matches!(err.downcast_ref::<CliError>(), Some(CliError::Unreadable(_))));
    }

    #[tokio::test]
    async fn a_queued_job_no_worker_took_is_named_so_when_the_wait_ends() {
        let problem = json!({"title": "Not found", "status": 404, "detail": "no job j-1"});
        let base = serve(vec![Answer::problem(404, &problem)]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let err = follow(&followed(Duration::from_secs(1)), None, Some(&api)).await.expect_err("a timeout");
        let msg = err.to_string();
        assert!(msg.contains("not yet taken by a worker"), "{msg}");
        assert!(!msg.contains("404"), "a job waiting in the queue is not an API failure: {msg}");
    }

    fn event(name: &str, job_id: &str, extra: Value) -> EventView {
        let mut body = json!({"event-id": format!("{job_id}/{name}"), "event": name, "job-id": job_id,
                              "instance-id": "acme-1", "result": {}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        EventView::parse(body.to_string().as_bytes()).expect("event")
    }

    #[test]
    fn only_the_followed_jobs_events_count_and_the_final_ones_end_it() {
        let k = JobKind::Provision;
        assert_eq!(classify(&event("dfe.provisioned", "other", json!({})), k, "j"), None);
        assert_eq!(classify(&event("dfe.storage.provisioned", "j", json!({})), k, "j"), Some(Step::Progress));
        assert_eq!(classify(&event("dfe.provisioned", "j", json!({})), k, "j"), Some(Step::Succeeded));
        assert_eq!(classify(&event("dfe.provision.failed", "j", json!({})), k, "j"), Some(Step::Failed));
        assert_eq!(classify(&event("dfe.job.rejected", "j", json!({})), k, "j"), Some(Step::Failed));
        // Another kind's final event is not this job's end.
        assert_eq!(classify(&event("dfe.exported", "j", json!({})), k, "j"), Some(Step::Progress));
    }

    #[test]
    fn progress_lines_show_a_mark_the_name_and_what_was_made() {
        let made = json!({"result": {"volume": "dfe-acme-storage"}});
        let e = event("dfe.storage.provisioned", "j", made);
        let line = progress_line(&e, Step::Progress);
        assert_eq!(line, "  ✓ dfe.storage.provisioned  volume=dfe-acme-storage");
        let error = json!({"error": {"code": "c", "message": "m"}});
        let e = event("dfe.database.provisioned", "j", error.clone());
        assert_eq!(progress_line(&e, Step::Progress), "  ✗ dfe.database.provisioned  c: m");
        // The final event's details follow in the report, not on its line.
        let e = event("dfe.provision.failed", "j", error);
        assert_eq!(progress_line(&e, Step::Failed), "  ✗ dfe.provision.failed");
    }

    #[test]
    fn the_success_report_lists_the_result() {
        let result = json!({"container": "dfe-acme-1", "resource-uri": "http://127.0.0.1:3/api/v2/system",
                            "volume": "dfe-acme-1-storage", "database": "dfe_acme_1"});
        let report = success_report(JobKind::Provision, "j", Some("acme-1"), result.as_object());
        assert_eq!(
            report,
            "provision job j succeeded\n\
             \x20 instance-id   acme-1\n\
             \x20 resource-uri  http://127.0.0.1:3/api/v2/system\n\
             \x20 container     dfe-acme-1\n\
             \x20 volume        dfe-acme-1-storage\n\
             \x20 database      dfe_acme_1\n"
        );
    }

    #[test]
    fn the_failure_report_names_code_and_message() {
        let error = EventError { code: "no-instance".into(), message: "acme-1 does not exist".into() };
        let report = failure_report(JobKind::Export, "j", Some(&error));
        assert_eq!(
            report,
            "error: export job j failed\n  error.code     no-instance\n  error.message  acme-1 does not exist\n"
        );
    }
}

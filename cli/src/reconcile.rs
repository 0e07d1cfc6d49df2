//! `dfe reconcile`: asks the workers, through the API, to compare the registry with the
//! Docker hosts and database servers, follows the request to its report, and prints it.
//!
//! The CLI holds no credentials for hosts or servers, and needs no configuration but the
//! API's address and a token: `POST /api/v1/reconcile` records the request, a worker takes it
//! and writes its report back. The API answers that report when a worker finishes within
//! about 25 s, else `202` with the reconciliation's id, which is then polled here.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use dfe_shared::records::{ReconcileReport, Reconciliation};
use tokio::time::Instant;

use crate::api::{ApiClient, Fetched, Reconcile};
use crate::args::ReconcileArgs;
use crate::error::{CliError, EXIT_DIFFERS, EXIT_FAILURE};
use crate::output::{emit, pretty, time_cell};
use crate::settings::Settings;

/// How often a reconciliation the API answered 202 for is polled.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How long one poll may take before it counts as failed (the next one follows).
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a reconciliation is: its `state`, read strictly (an unknown one is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Recorded, waiting for a worker.
    Requested,
    /// A worker runs it.
    Running,
    /// Finished, with a report.
    Done,
    /// It could not run; `error` says why.
    Failed,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Requested, Stage::Running, Stage::Done, Stage::Failed];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Requested => "requested",
            Stage::Running => "running",
            Stage::Done => "done",
            Stage::Failed => "failed",
        }
    }

    /// Whether a worker has finished with it.
    pub fn is_finished(self) -> bool {
        matches!(self, Stage::Done | Stage::Failed)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stage of `r`, as answered by `api`; a state this dfe does not know is an error.
fn stage(api: &ApiClient, r: &Reconciliation) -> Result<Stage, CliError> {
    Stage::ALL.into_iter().find(|s| s.as_str() == r.state).ok_or_else(|| {
        let known: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        CliError::Unreadable(format!(
            "the API at {} answered reconciliation {} in state {:?}, which this dfe does not know \
             (known: {}) — are this dfe ({}) and dfe-api of different versions?",
            api.base(),
            r.id,
            r.state,
            known.join(", "),
            env!("CARGO_PKG_VERSION")
        ))
    })
}

/// `dfe reconcile [--fix] [--timeout SECS] [--json]`, `dfe reconcile --last [--json]`.
pub async fn run(settings: &Settings, args: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    let fetched = if args.last {
        let last = api.last_reconciliation().await?;
        eprintln!("{}", describe(&last.record));
        last
    } else {
        obtain(&api, args.fix, Duration::from_secs(args.timeout), POLL_EVERY).await?
    };
    show(&api, &fetched, args.json)
}

/// Asks for a reconciliation and waits, up to `timeout` in all, until a worker finished it
/// (`done` or `failed`); progress goes to stderr. A 202 is followed by polling its record
/// every `poll_every`; a failing poll is retried, except a 401, a 404 or an answer this dfe
/// cannot read.
pub async fn obtain(
    api: &ApiClient,
    fix: bool,
    timeout: Duration,
    poll_every: Duration,
) -> anyhow::Result<Fetched<Reconciliation>> {
    let deadline = Instant::now() + timeout;
    let what = if fix { "and fix what differs" } else { "(report only; --fix repairs)" };
    eprintln!("asking the workers through {} to reconcile {what}; waiting up to {} s", api.base(), timeout.as_secs());
    let pending = match tokio::time::timeout_at(deadline, api.reconcile(fix)).await {
        Ok(answer) => match answer? {
            Reconcile::Finished(finished) => {
                let s = stage(api, &finished.record)?;
                eprintln!("{}", progress(s, &finished.record));
                return Ok(*finished);
            }
            Reconcile::Pending(pending) => pending,
        },
        Err(_) => anyhow::bail!(
            "gave up waiting for the reconciliation after {} s: the API had not answered the request \
             yet; a worker may still run it — `dfe reconcile --last` shows the last finished report",
            timeout.as_secs()
        ),
    };
    let id = pending.id;
    eprintln!("  · reconciliation {id} requested, waiting for a worker");
    let mut last = Stage::Requested;
    let mut last_worker: Option<String> = None;
    let mut last_poll_error: Option<String> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            let state = match last {
                Stage::Requested => "requested, not yet taken by a worker — is a dfe-worker running?".to_owned(),
                other => format!("{other}{}", last_worker.as_deref().map(|w| format!(" on {w}")).unwrap_or_default()),
            };
            let mut msg = format!(
                "gave up waiting for reconciliation {id} after {} s (last known state: {state}); it goes on \
                 — `dfe reconcile --last` shows its report once it is done",
                timeout.as_secs()
            );
            if let Some(e) = &last_poll_error {
                msg.push_str(&format!("; the last poll of the API failed: {e}"));
            }
            anyhow::bail!(msg);
        }
        tokio::time::sleep_until((now + poll_every).min(deadline)).await;
        match tokio::time::timeout(POLL_TIMEOUT, api.reconciliation(id)).await {
            Ok(Ok(fetched)) => {
                last_poll_error = None;
                let s = stage(api, &fetched.record)?;
                if s.is_finished() {
                    eprintln!("{}", progress(s, &fetched.record));
                    return Ok(fetched);
                }
                if s != last {
                    eprintln!("{}", progress(s, &fetched.record));
                }
                last = s;
                last_worker.clone_from(&fetched.record.worker);
            }
            Ok(Err(e)) => match e.downcast_ref::<CliError>() {
                // The token was revoked, the record vanished, or it cannot be read: asking
                // again gets the same answer.
                Some(CliError::Api { status: 401 | 404, .. } | CliError::Unreadable(_)) => return Err(e),
                _ => last_poll_error = Some(format!("{e:#}")),
            },
            Err(_) => last_poll_error = Some(format!("no answer within {POLL_TIMEOUT:?}")),
        }
    }
}

/// ` by worker-1`, when a worker took it.
fn by_worker(r: &Reconciliation) -> String {
    r.worker.as_deref().map(|w| format!(" by {w}")).unwrap_or_default()
}

/// A progress line: `  · running on worker-1`, `  · done by worker-1`.
fn progress(s: Stage, r: &Reconciliation) -> String {
    match (s, r.worker.as_deref()) {
        (Stage::Running, Some(w)) => format!("  · running on {w}"),
        _ => format!("  · {s}{}", by_worker(r)),
    }
}

/// The line `--last` starts with (on stderr): which reconciliation it was, and when.
pub fn describe(r: &Reconciliation) -> String {
    let mode = if r.fix { "with --fix" } else { "report only" };
    let finished = r.finished_at.map_or_else(|| "-".to_owned(), time_cell);
    format!(
        "reconciliation {} ({mode}), requested by {} at {}, finished {finished}{}",
        r.id,
        r.requested_by,
        time_cell(r.requested_at),
        by_worker(r)
    )
}

/// Prints a finished reconciliation (its report, or with `json` the API's JSON), and returns
/// the exit code: 0 when everything agrees, 3 when anything differs, 1 when it failed.
pub fn show(api: &ApiClient, fetched: &Fetched<Reconciliation>, json: bool) -> anyhow::Result<ExitCode> {
    let r = &fetched.record;
    let stage = stage(api, r)?;
    if json {
        emit(&format!("{}\n", pretty(&fetched.json)))?;
    }
    match stage {
        Stage::Done => {
            let report = r.report.as_ref().ok_or_else(|| {
                CliError::Unreadable(format!(
                    "the API at {} answered reconciliation {} as done, but without its report",
                    api.base(),
                    r.id
                ))
            })?;
            if !json {
                emit(&report_text(report, r.fix))?;
            }
            Ok(exit_code(report))
        }
        Stage::Failed => {
            eprintln!("{}", failure_line(r));
            Ok(ExitCode::from(EXIT_FAILURE))
        }
        Stage::Requested | Stage::Running => {
            anyhow::bail!("reconciliation {} is still {stage}; it has no report yet", r.id)
        }
    }
}

/// The line printed (on stderr) when the reconciliation could not run.
pub fn failure_line(r: &Reconciliation) -> String {
    let why = r.error.as_deref().filter(|e| !e.trim().is_empty()).unwrap_or("the worker did not say why");
    format!("error: reconciliation {} failed{}: {why}", r.id, by_worker(r))
}

/// 0 when everything agrees, 3 when anything differs.
pub fn exit_code(report: &ReconcileReport) -> ExitCode {
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERS)
    }
}

/// The report, one line per difference; `fix` tells whether it was asked to repair them.
pub fn report_text(report: &ReconcileReport, fix: bool) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(l.trim_end());
        out.push('\n');
    };
    for o in &report.orphans {
        let done = if o.removed {
            "removed"
        } else if fix {
            "NOT removed"
        } else {
            "orphan"
        };
        line(format!("{done:<12} {:<9} {:<40} instance={} on {}", o.kind, o.name, o.instance_id, o.location));
    }
    for m in &report.missing {
        line(format!("{:<12} {:<9} of instance {}", "missing", m.kind, m.instance_id));
    }
    for s in &report.stuck {
        let done = if s.failed { "failed" } else { "stuck" };
        line(format!("{done:<12} job {} ({} {}, instance {})", s.job_id, s.kind, s.state, s.instance_id));
    }
    for a in &report.abandoned {
        let marked = if a.failed { " (marked failed)" } else { "" };
        line(format!("{:<12} instance {} left {} by job {}{marked}", "abandoned", a.instance_id, a.state, a.job_id));
    }
    for u in &report.unreachable {
        line(format!("{:<12} {u}", "unreachable"));
    }
    if report.is_clean() {
        line("registry, Docker hosts and database servers agree".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use dfe_shared::secret::Secret;
    use serde_json::{json, Value};

    use super::*;
    use crate::testing::{reconciliation_json, serve, serve_recording, Answer};

    const ID: &str = "6f1c2a4e-0000-4000-8000-0000000000aa";

    fn differences() -> Value {
        json!({
            "orphans": [{"kind": "container", "name": "dfe-ghost", "instance-id": "ghost", "location": "local",
                         "removed": false}],
            "missing": [{"instance-id": "acme-1", "kind": "volume"}],
            "stuck": [{"job-id": "j-7", "type": "export", "state": "running", "instance-id": "acme-2",
                       "failed": false}],
            "abandoned": [{"instance-id": "acme-3", "state": "provisioning", "job-id": "j-8", "failed": true}],
            "unreachable": ["host other (connection refused)"]
        })
    }

    fn clean() -> Value {
        json!({"orphans": [], "missing": [], "stuck": [], "abandoned": [], "unreachable": []})
    }

    fn client(base: &str) -> ApiClient {
        ApiClient::new(base, Secret::new("t")).expect("client")
    }

    #[tokio::test]
    async fn a_202_is_followed_to_the_done_report() {
        let accepted = json!({"id": ID, "state": "requested", "links": {"self": format!("/api/v1/reconcile/{ID}")}});
        let (base, requests) = serve_recording(vec![
            Answer::json(202, &accepted),
            Answer::json(200, &reconciliation_json(ID, "requested", Value::Null)),
            Answer::json(200, &reconciliation_json(ID, "running", Value::Null)),
            Answer::json(200, &reconciliation_json(ID, "done", clean())),
        ])
        .await;
        let api = client(&base);
        let fetched =
            obtain(&api, true, Duration::from_secs(20), Duration::from_millis(10)).await.expect("a finished one");
        assert_eq!(fetched.record.state, "done");
        assert!(fetched.record.report.as_ref().is_some_and(ReconcileReport::is_clean));
        assert_eq!(show(&api, &fetched, false).expect("shown"), ExitCode::SUCCESS);
        let requests = requests.lock().expect("requests").clone();
        assert_eq!(requests[0], r#"POST /api/v1/reconcile {"fix":true}"#);
        let polled = format!("GET /api/v1/reconcile/{ID}");
        assert_eq!(requests[1..], [polled.clone(), polled.clone(), polled]);
    }

    #[tokio::test]
    async fn differences_exit_3_and_a_failed_reconciliation_exits_1() {
        let base = serve(vec![Answer::json(200, &reconciliation_json(ID, "done", differences()))]).await;
        let api = client(&base);
        let fetched = obtain(&api, false, Duration::from_secs(20), Duration::from_millis(10)).await.expect("done");
        assert_eq!(show(&api, &fetched, false).expect("shown"), ExitCode::from(EXIT_DIFFERS));
        let mut failed = reconciliation_json(ID, "failed", Value::Null);
        failed["error"] = json!("registry unreachable: connection refused");
        let base = serve(vec![Answer::json(200, &failed)]).await;
        let api = client(&base);
        let fetched = obtain(&api, false, Duration::from_secs(20), Duration::from_millis(10)).await.expect("failed");
        assert_eq!(show(&api, &fetched, true).expect("shown"), ExitCode::from(EXIT_FAILURE));
        assert_eq!(
            failure_line(&fetched.record),
            format!("error: reconciliation {ID} failed by worker-1: registry unreachable: connection refused")
        );
    }

    #[tokio::test]
    async fn an_unknown_reconciliation_state_is_refused() {
        let accepted = json!({"id": ID, "state": "requested"});
        let base = serve(vec![
            Answer::json(202, &accepted),
            Answer::json(200, &reconciliation_json(ID, "paused", Value::Null)),
        ])
        .await;
        let err = obtain(&client(&base), false, Duration::from_secs(20), Duration::from_millis(10))
            .await
            .expect_err("an unknown state");
        let msg = err.to_string();
        assert!(msg.contains("in state \"paused\", which this dfe does not know"), "{msg}");
        assert!(msg.contains("known: requested, running, done, failed"), "{msg}");
        assert!(matches!(err.downcast_ref::<CliError>(), Some(CliError::Unreadable(_))));
    }

    #[tokio::test]
    async fn a_reconciliation_no_worker_takes_times_out_naming_its_state() {
        let base = serve(vec![
            Answer::json(202, &json!({"id": ID, "state": "requested"})),
            Answer::json(200, &reconciliation_json(ID, "requested", Value::Null)),
        ])
        .await;
        let err = obtain(&client(&base), false, Duration::from_secs(1), Duration::from_millis(50))
            .await
            .expect_err("a timeout");
        let msg = err.to_string();
        assert!(msg.contains(&format!("reconciliation {ID} after 1 s")), "{msg}");
        assert!(msg.contains("not yet taken by a worker — is a dfe-worker running?"), "{msg}");
    }

    #[tokio::test]
    async fn without_a_finished_one_last_says_how_to_run_one() {
        let problem = json!({"title": "Not Found", "status": 404,
                             "detail": "no reconciliation has finished yet; POST /api/v1/reconcile runs one"});
        let base = serve(vec![Answer::problem(404, &problem)]).await;
        let err = client(&base).last_reconciliation().await.expect_err("none yet");
        assert!(err.to_string().starts_with("no reconciliation has finished yet (404 Not Found"), "{err}");
        assert!(err.to_string().ends_with("— `dfe reconcile` runs one"), "{err}");
    }

    #[test]
    fn the_report_has_a_line_per_difference() {
        let report: ReconcileReport = serde_json::from_value(differences()).expect("a report");
        assert_eq!(
            report_text(&report, false),
            "orphan       container dfe-ghost                                instance=ghost on local\n\
             missing      volume    of instance acme-1\n\
             stuck        job j-7 (export running, instance acme-2)\n\
             abandoned    instance acme-3 left provisioning by job j-8 (marked failed)\n\
             unreachable  host other (connection refused)\n"
        );
        assert_eq!(exit_code(&report), ExitCode::from(EXIT_DIFFERS));
        assert!(report_text(&report, true).starts_with("NOT removed  container"));
        let report: ReconcileReport = serde_json::from_value(clean()).expect("a report");
        assert_eq!(report_text(&report, false), "registry, Docker hosts and database servers agree\n");
        assert_eq!(exit_code(&report), ExitCode::SUCCESS);
    }

    #[test]
    fn last_describes_which_reconciliation_it_was() {
        let r: Reconciliation =
            serde_json::from_value(reconciliation_json(ID, "done", clean())).expect("a reconciliation");
        assert_eq!(
            describe(&r),
            format!(
                "reconciliation {ID} (report only), requested by cli at 2026-11-26T18:50:00.000Z, \
                 finished 2026-11-26T18:50:03.000Z by worker-1"
            )
        );
    }
}

//! The REST client of dfe-api, and the one place its answers become messages.
//!
//! Failures are worded for the person at the terminal: what is wrong and what to set to fix
//! it. The token never appears in any of them.

use std::time::Duration;

use anyhow::Context;
use dfe_shared::job::{Job, JobKind};
use dfe_shared::records::{InstanceRecord, JobRecord, JobState, PruneReport, Reconciliation, SnapshotRecord};
use dfe_shared::secret::Secret;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::CliError;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `POST /api/v1/snapshots/prune` may take: it removes archives one by one.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `POST /api/v1/reconcile` may take: the API waits up to 25 s for a worker to
/// finish before it answers 202.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(40);

/// A client of one dfe-api.
pub struct ApiClient {
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    /// The bearer token; sent, never shown.
    token: Secret,
}

/// The API's answer to a submitted job.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Accepted {
    /// The job's state: `queued`, or, for a job an idempotency key found again, wherever it
    /// is by now.
    #[serde(default)]
    pub status: Option<JobState>,
    /// The job's id (assigned by the API unless the job named one).
    pub job_id: String,
    /// Links; `self` is the job's URL.
    #[serde(default)]
    pub links: Option<Value>,
}

/// A record read from the API, with the JSON it was read from: `--json` prints the answer as
/// the API gave it, every member kept, while everything else works on the typed record.
#[derive(Debug, Clone)]
pub struct Fetched<T> {
    /// The answer, read as its `dfe_shared::records` type.
    pub record: T,
    /// The answer as the API sent it.
    pub json: Value,
}

/// `GET /api/v1/ops/jobs`.
#[derive(Debug, Clone, Deserialize)]
pub struct JobList {
    /// The newest jobs first.
    pub jobs: Vec<JobRecord>,
    /// The cursor of the next page; `None` on the last.
    #[serde(rename = "next-cursor", default)]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/instances`.
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceList {
    /// The newest instances first.
    pub instances: Vec<InstanceRecord>,
    /// The cursor of the next page; `None` on the last.
    #[serde(rename = "next-cursor", default)]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/snapshots`.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotList {
    /// The newest snapshots first.
    pub snapshots: Vec<SnapshotRecord>,
    /// The cursor of the next page; `None` on the last.
    #[serde(rename = "next-cursor", default)]
    pub next_cursor: Option<String>,
}

/// The API's answer to `POST /api/v1/reconcile`.
#[derive(Debug, Clone)]
pub enum Reconcile {
    /// 200: a worker finished it (`done` or `failed`) while the API waited.
    Finished(Box<Fetched<Reconciliation>>),
    /// 202: recorded, not finished yet; follow it with [`ApiClient::reconciliation`].
    Pending(PendingReconciliation),
}

/// The 202 answer to `POST /api/v1/reconcile`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PendingReconciliation {
    /// The reconciliation's id.
    pub id: uuid::Uuid,
    /// `requested`.
    #[serde(default)]
    pub state: Option<String>,
    /// Links; `self` is its URL.
    #[serde(default)]
    pub links: Option<Value>,
}

/// What is being asked for, to word a 404.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A job submission.
    Submit(JobKind),
    /// A job by id.
    Job(&'a str),
    /// Cancelling a job.
    Cancel(&'a str),
    /// The job list.
    Jobs,
    /// An instance by id.
    Instance(&'a str),
    /// The instance list.
    Instances,
    /// A snapshot by id (its record or its archive).
    Snapshot(&'a str),
    /// The snapshot list.
    Snapshots,
    /// Asking for a reconciliation.
    Reconcile,
    /// A reconciliation by id.
    Reconciliation(uuid::Uuid),
    /// The last finished reconciliation.
    LastReconciliation,
    /// A Docker host by id.
    Host(&'a str),
    /// The hosts or database servers.
    Fleet,
    /// The expiry schedule.
    Lifecycle,
    /// An owner by id.
    Owner(&'a str),
}

impl ApiClient {
    /// A client of the API at `base` using `token`.
    pub fn new(base: &str, token: Secret) -> anyhow::Result<Self> {
        // No overall timeout on the client: a snapshot download may take long. Requests get
        // REQUEST_TIMEOUT each in `request`; a download is watched for stalls instead.
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("dfe-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient { http, base: base.trim_end_matches('/').to_owned(), token })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/ops/{kind}` with the job as its body.
    pub async fn submit(&self, job: &Job, idempotency_key: Option<&str>) -> anyhow::Result<Accepted> {
        let kind = job.kind();
        let mut req = self.request(Method::POST, &format!("/api/v1/ops/{kind}")).json(&job.to_value());
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(key)
                .map_err(|_| CliError::Usage("--idempotency-key must be printable ASCII (a header value)".into()))?;
            req = req.header("Idempotency-Key", value);
        }
        let answer = self.send(req, Subject::Submit(kind)).await?;
        serde_json::from_value(answer).context("reading the API's answer to the submitted job")
    }

    /// `GET /api/v1/ops/jobs/{id}`.
    pub async fn job(&self, id: &str) -> anyhow::Result<Fetched<JobRecord>> {
        let path = format!("/api/v1/ops/jobs/{}", path_segment(id));
        self.fetch(self.request(Method::GET, &path), Subject::Job(id), "a job record").await
    }

    /// `POST /api/v1/ops/jobs/{id}/cancel`: the job, cancelled.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<Fetched<JobRecord>> {
        let path = format!("/api/v1/ops/jobs/{}/cancel", path_segment(id));
        self.fetch(self.request(Method::POST, &path), Subject::Cancel(id), "a job record").await
    }

    /// `GET /api/v1/ops/jobs?instance-id=&limit=`.
    pub async fn jobs(&self, query: &[(&str, String)]) -> anyhow::Result<Fetched<JobList>> {
        let req = self.request(Method::GET, "/api/v1/ops/jobs").query(query);
        self.fetch(req, Subject::Jobs, "a job list").await
    }

    /// `GET /api/v1/instances/{id}`.
    pub async fn instance(&self, id: &str) -> anyhow::Result<Fetched<InstanceRecord>> {
        let path = format!("/api/v1/instances/{}", path_segment(id));
        self.fetch(self.request(Method::GET, &path), Subject::Instance(id), "an instance record").await
    }

    /// `GET /api/v1/instances?include-removed=&limit=`.
    pub async fn instances(&self, query: &[(&str, String)]) -> anyhow::Result<Fetched<InstanceList>> {
        let req = self.request(Method::GET, "/api/v1/instances").query(query);
        self.fetch(req, Subject::Instances, "an instance list").await
    }

    /// `GET /api/v1/snapshots/{id}`.
    pub async fn snapshot(&self, id: &str) -> anyhow::Result<Fetched<SnapshotRecord>> {
        let path = format!("/api/v1/snapshots/{}", path_segment(id));
        self.fetch(self.request(Method::GET, &path), Subject::Snapshot(id), "a snapshot record").await
    }

    /// `GET /api/v1/snapshots?instance-id=&owner-id=&limit=`.
    pub async fn snapshots(&self, query: &[(&str, String)]) -> anyhow::Result<Fetched<SnapshotList>> {
        let req = self.request(Method::GET, "/api/v1/snapshots").query(query);
        self.fetch(req, Subject::Snapshots, "a snapshot list").await
    }

    /// `DELETE /api/v1/snapshots/{id}`: the deleted snapshot's record.
    pub async fn delete_snapshot(&self, id: &str) -> anyhow::Result<Fetched<SnapshotRecord>> {
        let path = format!("/api/v1/snapshots/{}", path_segment(id));
        self.fetch(self.request(Method::DELETE, &path), Subject::Snapshot(id), "a snapshot record").await
    }

    /// `POST /api/v1/snapshots/prune` `{"dry-run": dry_run}`.
    pub async fn prune(&self, dry_run: bool) -> anyhow::Result<Fetched<PruneReport>> {
        let req = self
            .request(Method::POST, "/api/v1/snapshots/prune")
            .timeout(PRUNE_TIMEOUT)
            .json(&serde_json::json!({ "dry-run": dry_run }));
        self.fetch(req, Subject::Snapshots, "a pruning report").await
    }

    /// `POST /api/v1/reconcile` `{"fix": fix}`: the workers' reconciliation, finished (200)
    /// or still to follow (202).
    pub async fn reconcile(&self, fix: bool) -> anyhow::Result<Reconcile> {
        let req = self
            .request(Method::POST, "/api/v1/reconcile")
            .timeout(RECONCILE_TIMEOUT)
            .json(&serde_json::json!({ "fix": fix }));
        let (status, json) = self.send_full(req, Subject::Reconcile).await?;
        if status == StatusCode::ACCEPTED {
            let pending = self.decode(&json, "a reconciliation request")?;
            Ok(Reconcile::Pending(pending))
        } else {
            let record = self.decode(&json, "a reconciliation")?;
            Ok(Reconcile::Finished(Box::new(Fetched { record, json })))
        }
    }

    /// `GET /api/v1/reconcile/{id}`.
    pub async fn reconciliation(&self, id: uuid::Uuid) -> anyhow::Result<Fetched<Reconciliation>> {
        let req = self.request(Method::GET, &format!("/api/v1/reconcile/{id}"));
        self.fetch(req, Subject::Reconciliation(id), "a reconciliation").await
    }

    /// `GET /api/v1/reconcile`: the last reconciliation that finished.
    pub async fn last_reconciliation(&self) -> anyhow::Result<Fetched<Reconciliation>> {
        let req = self.request(Method::GET, "/api/v1/reconcile");
        self.fetch(req, Subject::LastReconciliation, "a reconciliation").await
    }

    /// `GET /api/v1/hosts` and `GET /api/v1/database-servers`, as the API answers them.
    pub async fn fleet(&self) -> anyhow::Result<(Value, Value)> {
        let hosts = self.send(self.request(Method::GET, "/api/v1/hosts"), Subject::Fleet).await?;
        let servers = self.send(self.request(Method::GET, "/api/v1/database-servers"), Subject::Fleet).await?;
        Ok((hosts, servers))
    }

    /// `POST /api/v1/hosts/{id}/cordon` (or `uncordon`): the host as it now stands.
    pub async fn cordon(&self, id: &str, cordoned: bool) -> anyhow::Result<Value> {
        let verb = if cordoned { "cordon" } else { "uncordon" };
        let path = format!("/api/v1/hosts/{}/{verb}", path_segment(id));
        self.send(self.request(Method::POST, &path), Subject::Host(id)).await
    }

    /// `GET /api/v1/lifecycle[?owner-id=]`: what the expiry schedule will do.
    pub async fn lifecycle(&self, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, "/api/v1/lifecycle").query(query), Subject::Lifecycle).await
    }

    /// `PATCH /api/v1/instances/{id}` `{"expires-at": …}`: the instance with its new expiry.
    pub async fn set_expiry(&self, id: &str, expires_at: Option<&str>) -> anyhow::Result<Fetched<InstanceRecord>> {
        let path = format!("/api/v1/instances/{}", path_segment(id));
        let req = self.request(Method::PATCH, &path).json(&serde_json::json!({ "expires-at": expires_at }));
        self.fetch(req, Subject::Instance(id), "an instance record").await
    }

    /// `GET /api/v1/owners/{id}`: an owner's instances against its quota.
    pub async fn owner(&self, id: &str) -> anyhow::Result<Value> {
        let path = format!("/api/v1/owners/{}", path_segment(id));
        self.send(self.request(Method::GET, &path), Subject::Owner(id)).await
    }

    /// `GET /api/v1/snapshots/{id}/download`: the answer, its body not yet read. The caller
    /// streams it, and watches for stalls itself (there is no overall timeout).
    pub async fn download(&self, id: &str) -> anyhow::Result<reqwest::Response> {
        let path = format!("/api/v1/snapshots/{}/download", path_segment(id));
        let req = self.authorized(Method::GET, &path).header(reqwest::header::ACCEPT, "application/gzip, */*");
        // Waiting for the answer's head is bounded like any request; only the body may take long.
        match tokio::time::timeout(REQUEST_TIMEOUT, self.answer(req, Subject::Snapshot(id))).await {
            Ok(answer) => answer,
            Err(_) => Err(anyhow::anyhow!(
                "the API at {} did not start sending snapshot {id} within {REQUEST_TIMEOUT:?} \
                 — is dfe-api overloaded or stuck?",
                self.base
            )),
        }
    }

    /// Sends `req` and reads its answer as a `T`, keeping the JSON; `what` names the record
    /// in the error when the answer is not one.
    async fn fetch<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        subject: Subject<'_>,
        what: &str,
    ) -> anyhow::Result<Fetched<T>> {
        let json = self.send(req, subject).await?;
        let record = self.decode(&json, what)?;
        Ok(Fetched { record, json })
    }

    /// Reads `json` as a `T`. States parse strictly: an unknown one is refused, naming where
    /// it is and what is known, rather than guessed at.
    pub fn decode<T: DeserializeOwned>(&self, json: &Value, what: &str) -> Result<T, CliError> {
        serde_path_to_error::deserialize(json).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." { String::new() } else { format!("{path}: ") };
            CliError::Unreadable(format!(
                "the API at {} answered {what} this dfe cannot read ({at}{}) — are this dfe ({}) and \
                 dfe-api of different versions?",
                self.base,
                e.inner(),
                env!("CARGO_PKG_VERSION")
            ))
        })
    }

    /// A request for a JSON answer, bounded by REQUEST_TIMEOUT.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.authorized(method, path)
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::ACCEPT, "application/json, application/problem+json")
    }

    fn authorized(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            // The one place the token leaves the process.
            .bearer_auth(self.token.expose())
    }

    /// Sends `req`; a 2xx answer's JSON body is returned, anything else becomes an error
    /// that says what to do.
    async fn send(&self, req: RequestBuilder, subject: Subject<'_>) -> anyhow::Result<Value> {
        Ok(self.send_full(req, subject).await?.1)
    }

    /// [`Self::send`], with the answer's status.
    async fn send_full(&self, req: RequestBuilder, subject: Subject<'_>) -> anyhow::Result<(StatusCode, Value)> {
        let resp = self.answer(req, subject).await?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if body.is_empty() {
            return Ok((status, Value::Null));
        }
        let json = serde_json::from_slice(&body)
            .with_context(|| format!("the API at {} answered {status} with a body that is not JSON", self.base))?;
        Ok((status, json))
    }

    /// Sends `req`; a 2xx answer is returned with its body unread, anything else becomes an
    /// error that says what to do.
    async fn answer(&self, req: RequestBuilder, subject: Subject<'_>) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let is_json =
            resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("json"));
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let problem = if is_json { serde_json::from_slice(&body).ok() } else { None };
        let message = match (status, problem) {
            (StatusCode::UNAUTHORIZED, problem) => {
                let why = problem
                    .as_ref()
                    .and_then(|p: &Problem| p.detail.as_deref())
                    .filter(|d| !d.trim().is_empty())
                    .map_or_else(String::new, |d| format!(": {d}"));
                format!(
                    "the API at {} refused the token (401 Unauthorized{why}) — set DFE_TOKEN or --token-file \
                     to a token whose SHA-256 is listed in [[api.clients]] of its configuration \
                     (`dfe token` mints one)",
                    self.base
                )
            }
            (StatusCode::NOT_FOUND, problem) => not_found(subject, status, problem.as_ref()),
            (_, Some(problem)) => render_problem(status, &problem),
            (_, None) => render_plain(status, &body),
        };
        Err(CliError::Api { status: status.as_u16(), message }.into())
    }

    /// An error of the transport (connecting, sending, reading), worded with the fix.
    pub fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        let cause = root_cause(e);
        if e.is_timeout() {
            anyhow::anyhow!(
                "the API at {} did not answer in time ({cause}) — is dfe-api overloaded or stuck?",
                self.base
            )
        } else if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach the API at {}: {cause} — is dfe-api running? set --api-url or DFE_API_URL",
                self.base
            )
        } else if e.is_builder() {
            anyhow::anyhow!("the API URL {} is not usable: {cause} — fix --api-url or DFE_API_URL", self.base)
        } else {
            anyhow::anyhow!("talking to the API at {} failed: {cause}", self.base)
        }
    }
}

/// An RFC 9457 problem, read leniently: every member may be missing.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Problem {
    /// Short summary, usually the status's reason phrase.
    pub title: Option<String>,
    /// The HTTP status.
    pub status: Option<u16>,
    /// What went wrong with this request.
    pub detail: Option<String>,
    /// The invalid fields.
    pub errors: Vec<ProblemField>,
}

/// One invalid field of a problem.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ProblemField {
    /// The kebab-case field name.
    pub field: Option<String>,
    /// What is wrong with it.
    #[serde(alias = "message")]
    pub detail: Option<String>,
}

/// `422 Unprocessable Entity: instance-id: must start with a lowercase letter`: the status
/// and its reason, then the invalid fields (or the detail when no field is named).
pub fn render_problem(status: StatusCode, problem: &Problem) -> String {
    // The status's reason phrase reads the same whatever the API titles its problem types;
    // the title stands in only for a status without one.
    let title =
        status.canonical_reason().or(problem.title.as_deref().filter(|t| !t.trim().is_empty())).unwrap_or("error");
    let head = format!("{} {title}", status.as_u16());
    let fields: Vec<String> = problem
        .errors
        .iter()
        .map(|f| match (&f.field, &f.detail) {
            (Some(field), Some(detail)) => format!("{field}: {detail}"),
            (Some(field), None) => format!("{field}: is invalid"),
            (None, Some(detail)) => detail.clone(),
            (None, None) => "invalid".to_owned(),
        })
        .collect();
    let detail = problem.detail.as_deref().filter(|d| !d.trim().is_empty());
    match (fields.as_slice(), detail) {
        ([], Some(detail)) => format!("{head}: {detail}"),
        ([], None) => head,
        ([one], _) => format!("{head}: {one}"),
        (many, detail) => {
            let mut out =
                format!("{head}: {}", detail.map_or_else(|| format!("{} invalid fields", many.len()), str::to_owned));
            for f in many {
                out.push_str("\n  ");
                out.push_str(f);
            }
            out
        }
    }
}

/// An error answer that is not a problem document (a proxy's page, an empty body).
fn render_plain(status: StatusCode, body: &[u8]) -> String {
    let head = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("error"));
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        head
    } else {
        let short: String = text.chars().take(200).collect();
        let ellipsis = if short.len() < text.len() { "…" } else { "" };
        format!("{head}: {short}{ellipsis}")
    }
}

fn not_found(subject: Subject<'_>, status: StatusCode, problem: Option<&Problem>) -> String {
    let rendered =
        problem.map_or_else(|| format!("{} {}", status.as_u16(), "Not Found"), |p| render_problem(status, p));
    match subject {
        Subject::Job(id) | Subject::Cancel(id) => {
            format!("no job {id:?} is known to the API ({rendered}) — `dfe jobs` lists them")
        }
        Subject::Instance(id) => {
            format!("no instance {id:?} is known to the API ({rendered}) — `dfe instances` lists them")
        }
        Subject::Snapshot(id) => {
            format!("no snapshot {id:?} is known to the API ({rendered}) — `dfe snapshots` lists them")
        }
        // The API names what it did not find; say where to look it up.
        Subject::Submit(JobKind::Import) => format!("{rendered} — `dfe snapshots` lists the snapshots"),
        Subject::Submit(JobKind::Deprovision | JobKind::Export) => {
            format!("{rendered} — `dfe instances` lists the instances")
        }
        Subject::Submit(_) => rendered,
        Subject::Reconciliation(id) => format!("no reconciliation {id} is known to the API ({rendered})"),
        Subject::LastReconciliation => {
            format!("no reconciliation has finished yet ({rendered}) — `dfe reconcile` runs one")
        }
        Subject::Reconcile => format!(
            "{rendered} — is dfe-api older than this dfe (without /api/v1/reconcile), or --api-url \
             pointing at something else?"
        ),
        Subject::Host(id) => format!("no host {id:?} is configured ({rendered}) — `dfe hosts` lists them"),
        Subject::Owner(id) => format!("{id:?} is not an owner id ({rendered})"),
        Subject::Fleet | Subject::Lifecycle => {
            format!("{rendered} — is dfe-api older than this dfe, or --api-url pointing at something else?")
        }
        Subject::Jobs | Subject::Instances | Subject::Snapshots => {
            format!("{rendered} — is --api-url pointing at dfe-api (and not at something else)?")
        }
    }
}

/// Percent-encodes what is not an unreserved URL character, so an id cannot change the path.
fn path_segment(s: &str) -> String {
    // `url` percent-encodes one path segment ('/', '?', '#', '%', spaces, controls…). A
    // constant http URL always parses and always has path segments, hence the expects.
    let mut u = url::Url::parse("http://x/").expect("a constant URL parses");
    u.path_segments_mut().expect("an http URL has a path").pop().push(s);
    u.path().trim_start_matches('/').to_owned()
}

/// The innermost cause of an error, worded as a clause: "connection refused".
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    // io::Error's Display appends " (os error N)"; the code helps nobody here.
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => text.as_str(),
    };
    // Lowercase the first letter so the cause reads as a clause, but not an acronym's.
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if !second.is_uppercase() => {
            first.to_lowercase().chain(std::iter::once(second)).chain(chars).collect()
        }
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: &str) -> Problem {
        serde_json::from_str(json).expect("a problem document")
    }

    use crate::error::{exit_status, EXIT_FAILURE, EXIT_REJECTED};
    use crate::testing::{instance_json, job_json, serve, Answer};
    use dfe_shared::ids::InstanceId;
    use dfe_shared::job::DeprovisionJob;

    fn deprovision_job() -> Job {
        Job::Deprovision(DeprovisionJob {
            job_id: None,
            instance_id: InstanceId::parse("acme-1").expect("valid"),
            cluster_id: None,
            keep_database: None,
        })
    }

    #[tokio::test]
    async fn an_accepted_job_yields_its_id() {
        let answer = serde_json::json!({"job-id": "j-9", "status": "queued",
                                        "links": {"self": "/api/v1/ops/jobs/j-9"}});
        let base = serve(vec![Answer::json(202, &answer)]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let accepted = api.submit(&deprovision_job(), Some("key-1")).await.expect("accepted");
        assert_eq!(accepted.job_id, "j-9");
        assert_eq!(accepted.status, Some(JobState::Queued));
    }

    #[tokio::test]
    async fn a_rejected_job_is_rendered_and_exits_2() {
        let problem = serde_json::json!({"title": "Invalid field", "status": 422,
            "detail": "instance-id: must start with a lowercase letter (a-z)",
            "errors": [{"field": "instance-id", "detail": "must start with a lowercase letter (a-z)"}]});
        let base = serve(vec![Answer::problem(422, &problem)]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let err = api.submit(&deprovision_job(), None).await.expect_err("rejected");
        assert_eq!(err.to_string(), "422 Unprocessable Entity: instance-id: must start with a lowercase letter (a-z)");
        assert_eq!(exit_status(&err), EXIT_REJECTED);
    }

    #[tokio::test]
    async fn a_refused_token_says_how_to_fix_it_without_showing_it() {
        let problem = serde_json::json!({"title": "Unauthorized", "status": 401});
        let base = serve(vec![Answer::problem(401, &problem)]).await;
        let api = ApiClient::new(&base, Secret::new("s3cret-token")).expect("client");
        let err = api.jobs(&[]).await.expect_err("refused");
        let msg = format!("{err:#}");
        assert!(msg.contains("refused the token") && msg.contains("DFE_TOKEN"), "{msg}");
        assert!(!msg.contains("s3cret-token"));
        assert_eq!(exit_status(&err), EXIT_FAILURE);
    }

    #[tokio::test]
    async fn an_unreachable_api_is_named_with_the_fix() {
        // Bind a port, then free it: nothing listens there any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        drop(listener);
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let err = api.instances(&[]).await.expect_err("unreachable");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the API at {base}: connection refused — is dfe-api running? set --api-url or DFE_API_URL"
            )
        );
    }

    #[test]
    fn a_single_invalid_field_reads_as_one_line() {
        let p = problem(
            r#"{"type":"urn:dfe:problem:invalid-field","title":"Invalid field","status":422,
                "detail":"instance-id: must start with a lowercase letter (a-z)",
                "errors":[{"field":"instance-id","detail":"must start with a lowercase letter (a-z)"}]}"#,
        );
        assert_eq!(
            render_problem(StatusCode::UNPROCESSABLE_ENTITY, &p),
            "422 Unprocessable Entity: instance-id: must start with a lowercase letter (a-z)"
        );
    }

    #[test]
    fn several_invalid_fields_are_listed() {
        let p = problem(
            r#"{"title":"Unprocessable Entity","status":422,"detail":"2 fields are invalid",
                "errors":[{"field":"instance-id","detail":"is required"},
                          {"field":"colour","detail":"is not a known field"}]}"#,
        );
        assert_eq!(
            render_problem(StatusCode::UNPROCESSABLE_ENTITY, &p),
            "422 Unprocessable Entity: 2 fields are invalid\n  instance-id: is required\n  colour: is not a known field"
        );
    }

    #[test]
    fn a_problem_without_fields_shows_its_detail_and_missing_titles_fall_back() {
        let p = problem(r#"{"title":"Conflict","status":409,"detail":"instance acme-1 already exists"}"#);
        assert_eq!(render_problem(StatusCode::CONFLICT, &p), "409 Conflict: instance acme-1 already exists");
        assert_eq!(render_problem(StatusCode::SERVICE_UNAVAILABLE, &Problem::default()), "503 Service Unavailable");
        let odd = StatusCode::from_u16(599).expect("a valid status");
        let titled = problem(r#"{"title":"Upstream gone","detail":"try later"}"#);
        assert_eq!(render_problem(odd, &titled), "599 Upstream gone: try later");
    }

    #[test]
    fn non_problem_bodies_are_shown_shortened() {
        assert_eq!(render_plain(StatusCode::BAD_GATEWAY, b""), "502 Bad Gateway");
        let long = "x".repeat(300);
        let shown = render_plain(StatusCode::BAD_GATEWAY, long.as_bytes());
        assert!(shown.ends_with('…') && shown.len() < 250, "{shown}");
    }

    #[test]
    fn not_found_names_the_missing_thing_and_how_to_list() {
        let p = problem(r#"{"title":"Not Found","status":404,"detail":"no such job"}"#);
        let msg = not_found(Subject::Job("j-1"), StatusCode::NOT_FOUND, Some(&p));
        assert_eq!(msg, "no job \"j-1\" is known to the API (404 Not Found: no such job) — `dfe jobs` lists them");
        let p = problem(r#"{"title":"Not found","status":404,"detail":"snapshot s-1 is not in the snapshot store"}"#);
        let msg = not_found(Subject::Submit(JobKind::Import), StatusCode::NOT_FOUND, Some(&p));
        assert_eq!(
            msg,
            "404 Not Found: snapshot s-1 is not in the snapshot store — `dfe snapshots` lists the snapshots"
        );
        let p = problem(r#"{"title":"Not found","status":404,"detail":"instance acme-1 does not exist"}"#);
        let msg = not_found(Subject::Submit(JobKind::Export), StatusCode::NOT_FOUND, Some(&p));
        assert!(msg.ends_with("does not exist — `dfe instances` lists the instances"), "{msg}");
    }

    #[tokio::test]
    async fn list_answers_are_read_as_typed_records() {
        let answer = serde_json::json!({"jobs": [job_json("j-1", "succeeded")]});
        let base = serve(vec![Answer::json(200, &answer)]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let list = api.jobs(&[]).await.expect("a job list");
        assert_eq!(list.record.jobs.len(), 1);
        assert_eq!(list.record.jobs[0].state, JobState::Succeeded);
        assert_eq!(list.json, answer, "the API's JSON is kept for --json");
        let api =
            ApiClient::new(&serve(vec![Answer::json(200, &serde_json::json!({"other": []}))]).await, Secret::new("t"))
                .expect("client");
        let err = api.jobs(&[]).await.expect_err("no jobs member");
        assert!(err.to_string().contains("missing field `jobs`"), "{err}");
    }

    #[tokio::test]
    async fn a_record_in_an_unknown_state_is_refused_not_guessed() {
        let base = serve(vec![Answer::json(200, &job_json("j-1", "done"))]).await;
        let api = ApiClient::new(&base, Secret::new("t")).expect("client");
        let err = api.job("j-1").await.expect_err("an unknown state");
        let msg = err.to_string();
        assert!(msg.contains("a job record this dfe cannot read"), "{msg}");
        assert!(msg.contains("state: unknown variant `done`") && msg.contains("`succeeded`"), "{msg}");
        assert!(matches!(err.downcast_ref::<CliError>(), Some(CliError::Unreadable(_))));
        assert_eq!(exit_status(&err), EXIT_FAILURE);
        let mut instance = instance_json("acme-1", "provisioned");
        instance["state"] = serde_json::json!("removed");
        let answer = serde_json::json!({"instances": [instance]});
        let api = ApiClient::new(&serve(vec![Answer::json(200, &answer)]).await, Secret::new("t")).expect("client");
        let err = api.instances(&[]).await.expect_err("an unknown state");
        assert!(err.to_string().contains("instances[0].state: unknown variant `removed`"), "{err}");
    }

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        assert_eq!(path_segment("acme-1"), "acme-1");
        assert_eq!(path_segment("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn root_causes_drop_the_os_error_code() {
        let io = std::io::Error::from_raw_os_error(111);
        let wrapped = anyhow::Error::new(io).context("connecting");
        assert_eq!(root_cause(wrapped.as_ref()), "connection refused");
        let acronym = anyhow::anyhow!("AMQP hard error: NOT_ALLOWED");
        assert_eq!(root_cause(acronym.as_ref()), "AMQP hard error: NOT_ALLOWED");
    }
}
